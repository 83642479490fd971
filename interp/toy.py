"""Tiny models built from a config, for tests and examples (seconds on CPU).

A toy model is a real Hugging Face architecture with random weights drawn from a seeded
generator, plus a byte-level tokenizer (256 byte tokens + ``<bos>``, ``<eos>``,
``<pad>``) so that any text can be tokenized. It is written once to a local Hugging
Face folder under the interp cache and loaded through the same path as any local
model, so toy models exercise the real loading code.

Architectures (one per family of :data:`interp.arch.FAMILIES` that methods must handle):

* ``llama``: RoPE, RMSNorm, SwiGLU, grouped-query attention.
* ``gpt2``: absolute positions, LayerNorm, GELU MLP.
* ``gemma2``: Gemma-2 style: RMSNorm before *and after* attention and MLP (post-norms),
  GQA, attention and final-logit soft-caps, sliding window (layer 0) + global layers.
* ``gemma3``: Gemma-3 text style: post-norms, query/key norms, GQA, sliding + global layers.
* ``neox``: GPT-NeoX style: parallel attention and MLP (``use_parallel_residual=True``),
  LayerNorm, partial RoPE.
* ``llava``, ``gemma3vl``: vision-language models (a vision tower and projector feeding a
  Llama / Gemma-3 text model) with a processor; see :mod:`interp.vlm.toys`.

Gemma toys use a sliding window of :data:`SLIDING_WINDOW` tokens so that short prompts
already exercise local attention.

Example:
    >>> from interp.models import load_model
    >>> model = load_model("toy:llama,n_layers=2")
    >>> model.cfg.n_layers
    2
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interp.errors import ConfigError, ModelNotFoundError, nearest

__all__ = ["ToyConfig", "parse_toy_spec", "build_toy_folder", "byte_tokenizer", "write_model_folder"]

ARCHS = ("llama", "gpt2", "gemma2", "gemma3", "neox", "llava", "gemma3vl")
#: archs whose config has key/value heads (grouped-query attention)
_GQA = ("llama", "gemma2", "gemma3", "llava", "gemma3vl")
#: vision-language archs (built by :mod:`interp.vlm.toys`)
VLM = ("llava", "gemma3vl")
SLIDING_WINDOW = 4


@dataclass(frozen=True, kw_only=True)
class ToyConfig:
    """Shape of a toy model.

    Attributes:
        arch: one of :data:`ARCHS` (see the module docstring).
        n_layers, n_heads, d_model, d_mlp, n_ctx: sizes.
        n_kv_heads: key/value heads (llama, gemma2, gemma3); ``None`` = ``n_heads``.
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
        if self.arch in _GQA and self.n_heads % kv:
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
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

    ids = dict(vocab_size=259, bos_token_id=256, eos_token_id=257, pad_token_id=258)
    kv = cfg.n_kv_heads or cfg.n_heads
    if cfg.arch == "llama":
        return LlamaConfig(hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp,
                           num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                           num_key_value_heads=kv, max_position_embeddings=cfg.n_ctx,
                           tie_word_embeddings=False, architectures=["LlamaForCausalLM"], **ids)
    if cfg.arch in ("gemma2", "gemma3"):
        from transformers import Gemma2Config, Gemma3TextConfig

        cls, arch = (Gemma2Config, "Gemma2ForCausalLM") if cfg.arch == "gemma2" else \
            (Gemma3TextConfig, "Gemma3ForCausalLM")
        # layer 0 local (sliding window), the rest global: both attention kinds in two layers
        types = ["sliding_attention"] + ["full_attention"] * (cfg.n_layers - 1)
        return cls(hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp, num_hidden_layers=cfg.n_layers,
                   num_attention_heads=cfg.n_heads, num_key_value_heads=kv, head_dim=cfg.d_model // cfg.n_heads,
                   max_position_embeddings=cfg.n_ctx, sliding_window=SLIDING_WINDOW, layer_types=types,
                   architectures=[arch], **ids)
    if cfg.arch == "neox":
        return GPTNeoXConfig(hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp, num_hidden_layers=cfg.n_layers,
                             num_attention_heads=cfg.n_heads, max_position_embeddings=cfg.n_ctx,
                             use_parallel_residual=True, tie_word_embeddings=False,
                             architectures=["GPTNeoXForCausalLM"], **ids)
    return GPT2Config(n_embd=cfg.d_model, n_inner=cfg.d_mlp, n_layer=cfg.n_layers, n_head=cfg.n_heads,
                      n_positions=cfg.n_ctx, architectures=["GPT2LMHeadModel"], **ids)


def write_model_folder(model: Any, folder: Path, source: dict[str, Any]) -> Path:
    """Write a trained or built toy ``model`` as a Hugging Face folder (with the byte tokenizer and an
    ``interp_source.json`` describing where it came from), replacing ``folder`` atomically."""
    import shutil

    from interp._fs import atomic_dir

    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        byte_tokenizer().save_pretrained(tmp)
        (tmp / "interp_source.json").write_text(json.dumps(source, indent=2))
    return folder


def build_toy_folder(cfg: ToyConfig, root: Path) -> Path:
    """Write the toy model as a Hugging Face folder under ``root`` (once) and return its path."""
    import torch
    from transformers import AutoModelForCausalLM

    from interp._fs import atomic_dir

    folder = root / f"{cfg.arch}-{cfg.key}"
    if (folder / "config.json").exists():
        return folder
    if cfg.arch in VLM:
        from interp.vlm.toys import write_vlm_folder

        with atomic_dir(folder) as tmp:
            write_vlm_folder(cfg, tmp)
            (tmp / "interp_source.json").write_text(json.dumps({"toy": dataclasses.asdict(cfg), "spec": cfg.spec}))
        return folder
    with atomic_dir(folder) as tmp:
        # CPU generator only: torch.manual_seed would also reseed every CUDA generator, which
        # fork_rng(devices=[]) does not restore
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(cfg.seed)
            model = AutoModelForCausalLM.from_config(_hf_config(cfg), dtype=torch.float32)
        model.save_pretrained(tmp)
        byte_tokenizer().save_pretrained(tmp)
        (tmp / "interp_source.json").write_text(json.dumps({"toy": dataclasses.asdict(cfg), "spec": cfg.spec}))
    return folder
