"""Toy reproduction of extreme-token phenomena: the Bigram-Backcopy task (Guo et al. 2024).

Sequences start with BOS. Ordinary tokens follow a random bigram Markov chain; after
a *trigger* token the next token copies the token just before the trigger. A small
transformer trained on this learns the bigram part in its MLP and copies with
attention only after triggers; on every other query its head can park on BOS. Guo et
al. report three phenomena emerging together: an attention sink on BOS, a value-state
drain (BOS's value vectors are small) and a residual-state peak (BOS's residual norm
is large).

Measured on the committed checkpoint (the :class:`TrainConfig` defaults: GPT-2, 1
layer, 1 head, d_model 64, MLP 256, 4000 AdamW steps; ~50 s at 1 CPU thread), with
:func:`interp.sinks.analyze` on 16 held-out sequences, trained vs the same
architecture untrained:

* attention sink: head L0.H0 puts 0.82 of its attention on BOS (untrained 0.10);
* value-state drain: BOS's value norm / the other tokens' is 0.08 in that head
  (untrained 0.93). In the training curves it emerged together with the sink
  (~1500 steps) and stayed within 0.05-0.2 afterwards;
* residual-state peak: NOT reproduced. BOS's residual norm / the others' median is
  0.73 in layer 0 (untrained 1.01), i.e. BOS is *smaller*, not a peak.

What was tried for the peak. None gave a ratio above 2 in every layer together with a sink
head. First, with no ratio above ~1.6 unless noted: Llama (RoPE, RMSNorm)
with 1-3 layers up to 5000 steps (sink, but no drain either); GPT-2 with 1-2 layers,
learning rates 3e-3 and 1e-2, weight decay 0.01 / 0.1 (with and without decay on the
embeddings), tied embeddings, attention-only (MLP removed: peak ~1.6, the largest),
no loss on the first prediction, a planted large BOS embedding (it decays back
during training), 2 layers with 1-2 heads for up to 12,000 steps (peak <= 1.6, then falling),
and a slower first layer (moves sink and drain to layer 1; layer 0's ratio reaches 2.0,
through attention, while layer 1's is 0.6). When
there is an MLP, its output on BOS ends up *smaller* than on the ordinary tokens (norm ~65
vs ~80 in a 1-layer run), so the residual stream shows no peak on BOS.

Also tried, after Guo et al.'s own training scripts (GPT-2 with the linear biases frozen
at zero and ReLU MLPs, i.e. their pre-LN model; AdamW weight decay 1e-4; 64-token
sequences): their "minimal residual peak" layout scaled down (3 layers, attention only
in the middle one, d_model 64, lr 1e-3 or 3e-3, 1500-5000 steps: sink 0.44-0.69 in
layer 1, peak 0.3-1.1 in every layer) and 3 layers with attention everywhere (peak
<= 1.5). Llama with 3 layers and no weight decay reached 1.9 in layers 1-2 after
3000 steps, but every token's residual norm was still growing without bound (BOS ~900,
others ~500), so that is not a stable checkpoint. Guo et al. train for 10,000-100,000
steps of 512 sequences of 256 tokens at d_model 256, which is hours, not minutes, on
this CPU. In a pre-LN model BOS's residual norm does not enter any later computation
(every reader normalises it first), so the peak can only come from the optimiser's
dynamics, which these short runs did not reproduce. With 4 heads per layer (3 layers, 6000
steps): GPT-2 sinks all four layer-0 heads (0.8-1.0, drain 0.04-0.08) while BOS's
residual there is 0.06x the others'; its layers 1-2 reach only 1.2, and that excess
disappears (0.2) when BOS's own next-token prediction is left out of the loss, i.e. it
serves BOS's prediction, not the sink. Llama with 2 layers makes BOS's last residual 12x
the others' (concentrated in a few dimensions, as in LLMs), but without any sink head
and with norms still growing (~13,000 at step 6000); without BOS's own prediction in the
loss it falls to 0.15. Llama with 3 layers and 2 heads: 6.9 in layer 1 at step 7000, with
a weak sink (0.41) and norms still growing (~5,600).

For calibration, the bundled SmolLM2-135M shows the peak in most but not all layers:
first token's norm / the others' median is 1.2 in layer 0, 3-9 in layers 1-8, ~1.0 in
layers 9-10, 34-157 in layers 11-27 and 7-11 in the last two (16 prose prompts).

Tokens are bytes of the interp toy byte tokenizer (:func:`interp.toy.byte_tokenizer`):
ordinary tokens are the letters ``a, b, c, ...``, triggers the digits ``0, 1, 2``, so
the trained model is an ordinary local Hugging Face folder that
:func:`interp.load_model` loads and whose prompts are plain strings.

Example:
    >>> from interp.sinks.toy import BigramBackcopy, TrainConfig, train_bigram_backcopy   # doctest: +SKIP
    >>> folder = train_bigram_backcopy(TrainConfig(steps=300), "/tmp/bb")                 # doctest: +SKIP
    >>> llama = TrainConfig(arch="llama", n_layers=2, n_heads=2, d_model=32, d_mlp=64)  # doctest: +SKIP
    >>> texts = BigramBackcopy().texts(8, seed=1)                                         # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from interp.errors import ConfigError, nearest

__all__ = ["BigramBackcopy", "TrainConfig", "train_bigram_backcopy", "BOS_ID"]

BOS_ID = 256           # <bos> of the byte tokenizer
_LETTERS = 97          # byte of "a"
_DIGITS = 48           # byte of "0"


@dataclass(frozen=True, kw_only=True)
class BigramBackcopy:
    """The data generator.

    Attributes:
        n_tokens: ordinary tokens (letters, at most 26).
        n_triggers: trigger tokens (digits, at most 10).
        seq_len: tokens per sequence after BOS.
        trigger_rate: probability mass the bigram chain puts on the triggers (spread evenly).
        sharpness: temperature of the random transition logits (larger: more predictable bigrams).
        seed: seed of the transition matrix.
    """

    n_tokens: int = 12
    n_triggers: int = 3
    seq_len: int = 32
    trigger_rate: float = 0.2
    sharpness: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.n_tokens <= 26:
            raise ConfigError(f"n_tokens must be in [2, 26], got {self.n_tokens}")
        if not 1 <= self.n_triggers <= 10:
            raise ConfigError(f"n_triggers must be in [1, 10], got {self.n_triggers}")
        if self.seq_len < 3:
            raise ConfigError(f"seq_len must be >= 3, got {self.seq_len}")
        if not 0.0 < self.trigger_rate < 0.5:
            raise ConfigError(f"trigger_rate must be in (0, 0.5), got {self.trigger_rate}")

    @property
    def vocab(self) -> list[int]:
        """Byte ids of the ordinary tokens, then the triggers."""
        return [_LETTERS + i for i in range(self.n_tokens)] + [_DIGITS + i for i in range(self.n_triggers)]

    def transitions(self) -> torch.Tensor:
        """``[n_tokens, n_tokens + n_triggers]`` next-token probabilities of the bigram chain."""
        g = torch.Generator().manual_seed(self.seed)
        logits = self.sharpness * torch.randn(self.n_tokens, self.n_tokens, generator=g)
        p = torch.softmax(logits, -1) * (1 - self.trigger_rate)
        trig = torch.full((self.n_tokens, self.n_triggers), self.trigger_rate / self.n_triggers)
        return torch.cat([p, trig], 1)

    def sample(self, n: int, seed: int) -> torch.Tensor:
        """``[n, 1 + seq_len]`` token ids (BOS first), drawn with a private generator."""
        g = torch.Generator().manual_seed(seed)
        p = self.transitions()
        ids = torch.tensor(self.vocab)
        local = torch.empty(n, self.seq_len, dtype=torch.long)
        local[:, 0] = torch.randint(0, self.n_tokens, (n,), generator=g)
        for t in range(1, self.seq_len):
            prev = local[:, t - 1]
            is_trig = prev >= self.n_tokens
            nxt = torch.multinomial(p[prev.clamp(max=self.n_tokens - 1)], 1, generator=g)[:, 0]
            if t >= 2:  # position 0 is never a trigger, so t = 1 needs no copy
                nxt = torch.where(is_trig, local[:, t - 2], nxt)
            local[:, t] = nxt
        # A trigger at the last-but-one place is fine; a trigger right after a trigger copies a trigger.
        return torch.cat([torch.full((n, 1), BOS_ID, dtype=torch.long), ids[local]], 1)

    def texts(self, n: int, seed: int) -> list[str]:
        """Sampled sequences as strings (the byte tokenizer adds BOS back)."""
        return ["".join(chr(int(i)) for i in row[1:]) for row in self.sample(n, seed)]

    def trigger_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[batch, pos]`` True where the token is a trigger."""
        return (tokens >= _DIGITS) & (tokens < _DIGITS + self.n_triggers)


ARCHS = ("gpt2", "llama")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Model and training settings (the defaults: ~50 s on one CPU thread).

    The defaults produced the checkpoint committed under ``data/toy/bigram_backcopy``:
    GPT-2, 1 layer, 1 head, d_model 64, MLP 256, untied embeddings, no dropout, AdamW
    (lr 3e-3, weight decay 0.01, betas (0.9, 0.99)), 100 warm-up steps then a constant
    learning rate, 4000 steps of 32 sequences.

    Attributes:
        data: the task.
        arch: ``"gpt2"`` (learned absolute positions, LayerNorm, GELU MLP, biases; dropout
            off) or ``"llama"`` (RoPE, RMSNorm, SwiGLU, no biases).
        n_layers, n_heads, d_model, d_mlp: model sizes.
        tie_embeddings: share the input embedding and the unembedding.
        steps, batch_size, lr, weight_decay, betas: AdamW training (weight decay on every parameter).
        warmup_steps: linear learning-rate warm-up, then constant.
        seed: seed of the initialisation and the data stream.
    """

    data: BigramBackcopy = field(default_factory=BigramBackcopy)
    arch: str = "gpt2"
    n_layers: int = 1
    n_heads: int = 1
    d_model: int = 64
    d_mlp: int = 256
    tie_embeddings: bool = False
    steps: int = 4000
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"arch must be one of {ARCHS}, got {self.arch!r}.{nearest(self.arch, ARCHS)}")
        if not 1 <= self.n_layers <= 3:
            raise ConfigError(f"n_layers must be in [1, 3] for the toy reproduction, got {self.n_layers}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} not divisible by n_heads={self.n_heads}")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"steps, batch_size and lr must be positive, got {self.steps}, {self.batch_size}, {self.lr}")
        if self.weight_decay < 0 or self.warmup_steps < 0:
            raise ConfigError(f"weight_decay and warmup_steps must be >= 0, got {self.weight_decay}, "
                              f"{self.warmup_steps}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas}")


def _hf_config(cfg: TrainConfig) -> Any:
    from transformers import GPT2Config, LlamaConfig

    special = dict(vocab_size=259, bos_token_id=256, eos_token_id=257, pad_token_id=258,
                   tie_word_embeddings=cfg.tie_embeddings)
    if cfg.arch == "llama":
        return LlamaConfig(hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp,
                           num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                           num_key_value_heads=cfg.n_heads, max_position_embeddings=max(256, cfg.data.seq_len + 1),
                           architectures=["LlamaForCausalLM"], **special)
    return GPT2Config(n_embd=cfg.d_model, n_inner=cfg.d_mlp, n_layer=cfg.n_layers, n_head=cfg.n_heads,
                      n_positions=max(64, cfg.data.seq_len + 1), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      architectures=["GPT2LMHeadModel"], **special)


def train_bigram_backcopy(config: TrainConfig, folder: str | Path, *,
                          log: Callable[[int, float], None] | None = None) -> Path:
    """Train a small model on Bigram-Backcopy and save it as a Hugging Face folder (safetensors).

    Args:
        config: :class:`TrainConfig`.
        folder: where to write the model (atomically; an existing folder is replaced).
        log: optional ``log(step, loss)`` called every 100 steps (injected, never printed here).

    Returns:
        The folder, loadable with :func:`interp.load_model`.
    """
    from transformers import AutoModelForCausalLM

    from interp._fs import atomic_dir
    from interp.toy import byte_tokenizer

    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = AutoModelForCausalLM.from_config(_hf_config(config), dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=config.betas)
    warmup = max(config.warmup_steps, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
    for step in range(config.steps):
        tokens = config.data.sample(config.batch_size, seed=config.seed * 1_000_003 + step)
        loss = model(input_ids=tokens, labels=tokens).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log is not None and (step % 100 == 0 or step == config.steps - 1):
            log(step, float(loss.detach()))
    model.eval()
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        byte_tokenizer().save_pretrained(tmp)
        blob = dataclasses.asdict(config)
        (tmp / "interp_source.json").write_text(json.dumps({"toy": "bigram-backcopy", "train": blob}, indent=2))
    return folder
