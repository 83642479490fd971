"""Tiny models built from a config, for tests and examples (seconds on CPU).

A toy model is a real Hugging Face architecture (Llama with GQA/RoPE/RMSNorm, or
GPT-2 with absolute positions/LayerNorm) with random weights drawn from a seeded
generator, plus a byte-level tokenizer (256 byte tokens + ``<bos>``, ``<eos>``,
``<pad>``) so that any text can be tokenized. It is written once to a local Hugging
Face folder under the interp cache and loaded through the same path as any local
model, so toy models exercise the real loading code.

Example:
    >>> from interp.models import load_model
    >>> model = load_model("toy:llama,n_layers=2")      # doctest: +SKIP
    >>> model.cfg.n_layers                               # doctest: +SKIP
    2
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from interp.errors import ConfigError, ModelNotFoundError, nearest

__all__ = ["ToyConfig", "parse_toy_spec", "build_toy_folder", "byte_tokenizer"]

ARCHS = ("llama", "gpt2")


@dataclass(frozen=True, kw_only=True)
class ToyConfig:
    """Shape of a toy model.

    Attributes:
        arch: ``"llama"`` (RoPE, RMSNorm, SwiGLU, grouped-query attention) or ``"gpt2"``.
        n_layers, n_heads, d_model, d_mlp, n_ctx: sizes.
        n_kv_heads: key/value heads (Llama only); ``None`` = ``n_heads``.
        seed: seed of the weight initialisation (a private generator; global RNG untouched).
    """

    arch: str = "llama"
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = 2
    d_model: int = 64
    d_mlp: int = 128
    n_ctx: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"toy arch must be one of {ARCHS}, got {self.arch!r}.{nearest(self.arch, ARCHS)}")
        for name in ("n_layers", "n_heads", "d_model", "d_mlp", "n_ctx"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"toy {name} must be > 0, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"toy d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        kv = self.n_kv_heads or self.n_heads
        if self.arch == "llama" and self.n_heads % kv:
            raise ConfigError(f"toy n_heads={self.n_heads} is not a multiple of n_kv_heads={kv}")

    @property
    def spec(self) -> str:
        fields = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                  if f.name != "arch" and getattr(self, f.name) != f.default]
        return "toy:" + ",".join([self.arch, *fields])

    @property
    def key(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def parse_toy_spec(spec: str) -> ToyConfig:
    """Parse ``"toy:llama"`` or ``"toy:gpt2,n_layers=3,seed=1"`` into a :class:`ToyConfig`."""
    body = spec.split(":", 1)[1] if ":" in spec else ""
    parts = [p.strip() for p in body.split(",") if p.strip()]
    arch = parts[0] if parts and "=" not in parts[0] else "llama"
    kwargs: dict[str, object] = {"arch": arch}
    names = {f.name: f for f in dataclasses.fields(ToyConfig)}
    for p in parts[1 if parts and "=" not in parts[0] else 0:]:
        key, _, val = p.partition("=")
        if key not in names or key == "arch":
            raise ModelNotFoundError(f"unknown toy option {key!r} in {spec!r}.{nearest(key, names)} "
                                     f"Options: {', '.join(n for n in names if n != 'arch')}")
        kwargs[key] = None if val.lower() == "none" else int(val)
    return ToyConfig(**kwargs)  # type: ignore[arg-type]


def byte_tokenizer():
    """A byte-level tokenizer: ids 0-255 are bytes, then ``<bos>`` 256, ``<eos>`` 257, ``<pad>`` 258; adds BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_map = _bytes_to_unicode()
    vocab = {byte_map[b]: b for b in range(256)}
    assert set(vocab) == set(alphabet)
    vocab |= {"<bos>": 256, "<eos>": 257, "<pad>": 258}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    # Like Llama tokenizers, add BOS to every text (so toy models exercise the BOS path).
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                       special_tokens=[("<bos>", 256)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable-unicode map (the one ByteLevel uses).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _hf_config(cfg: ToyConfig):
    from transformers import GPT2Config, LlamaConfig

    vocab = 259
    if cfg.arch == "llama":
        return LlamaConfig(vocab_size=vocab, hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp,
                           num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                           num_key_value_heads=cfg.n_kv_heads or cfg.n_heads, max_position_embeddings=cfg.n_ctx,
                           bos_token_id=256, eos_token_id=257, pad_token_id=258, tie_word_embeddings=False,
                           architectures=["LlamaForCausalLM"])
    return GPT2Config(vocab_size=vocab, n_embd=cfg.d_model, n_inner=cfg.d_mlp, n_layer=cfg.n_layers,
                      n_head=cfg.n_heads, n_positions=cfg.n_ctx, bos_token_id=256, eos_token_id=257,
                      pad_token_id=258, architectures=["GPT2LMHeadModel"])


def build_toy_folder(cfg: ToyConfig, root: Path) -> Path:
    """Write the toy model as a Hugging Face folder under ``root`` (once) and return its path."""
    import torch
    from transformers import AutoModelForCausalLM

    from interp._fs import atomic_dir

    folder = root / f"{cfg.arch}-{cfg.key}"
    if (folder / "config.json").exists():
        return folder
    with atomic_dir(folder) as tmp:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = AutoModelForCausalLM.from_config(_hf_config(cfg), dtype=torch.float32)
        model.save_pretrained(tmp)
        byte_tokenizer().save_pretrained(tmp)
        (tmp / "interp_source.json").write_text(json.dumps({"toy": dataclasses.asdict(cfg), "spec": cfg.spec}))
    return folder
