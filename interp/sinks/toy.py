"""Toy reproduction of extreme-token phenomena: the Bigram-Backcopy task (Guo et al. 2024).

Sequences start with BOS. Ordinary tokens follow a random bigram Markov chain; after
a *trigger* token the next token copies the token just before the trigger. A small
transformer trained on this learns the bigram part in its MLP and copies with
attention only after triggers; on every other query its head can park on BOS. Guo et
al. report three phenomena emerging together: an attention sink on BOS, a value-state
drain (BOS's value vectors are small) and a residual-state peak (BOS's residual norm
is large).

Measured on the committed checkpoint (the :class:`TrainConfig` defaults: Guo et al.'s
minimal layout scaled down, GPT-2 with 2 layers, an MLP-only layer 0 and attention + MLP in
layer 1, 1000 AdamW steps of 256 sequences at lr 1e-2; ~110 s at 1 CPU thread), with
:func:`interp.sinks.analyze` on 16 held-out sequences, trained vs the same model untrained:

* attention sink: head L1.H0 puts 0.73 of its attention on BOS (untrained 0.09);
* value-state drain: BOS's value norm / the other tokens' is 0.20 in that head
  (untrained 1.03);
* residual-state peak: BOS's residual norm / the others' median is 7.5 in layer 0's
  ``resid_post``, the stream the sink head reads its keys from (untrained 0.92). It is
  *not* a peak in every layer: after layer 1 the ratio is 0.85, because layer 1's MLP
  output (the bigram prediction) grows on every token. The bundled SmolLM2-135M is not
  peaked in every layer either (first token's norm / the others' median: 1.2 in layer 0,
  3-9 in layers 1-8, ~1.0 in layers 9-10, 34-157 in layers 11-27, 7-11 in the last two).

The same configuration with seeds 1 and 2: sink 0.82 / 0.83, drain 0.16 / 0.17, layer-0
peak 2.4 / 4.0 (the peak is the least settled of the three after 1000 steps).

What the peak needs (all measured with this module's generator, d_model 64):

* **Guo et al.'s model and optimiser**: PyTorch's default initialisation (embeddings
  N(0, 1)), no linear biases, ReLU, AdamW with betas (0.9, 0.99) and weight decay 1e-4,
  and an MLP-only first layer whose output is the residual stream the sink head reads.
  With GPT-2's own initialisation (std 0.02) and everything else the default, the peak
  is 1.2 and the sink 0.47. In a pre-LN model that norm enters no computation (every
  reader normalises it first), so nothing in the loss asks for it. Guo et al. attribute
  the peak to Adam (they propose SGD to mitigate it). Our reading, not separately
  tested: Adam turns the small but steadily signed gradient on BOS's key direction into
  full-size steps, so BOS's layer-0 state keeps growing along it, while the other
  tokens' states are pulled many ways.
* **Enough learning rate x steps.** Guo et al. train 10,000-100,000 steps at lr 3e-4
  with 512 sequences of 256 tokens (hours on this CPU). Scaled down with 3 layers
  (attention only in layer 1), 512 sequences of 32 tokens: lr 1e-3 gave 0.92 after 750
  steps, lr 3e-3 1.5 after 1500 steps, lr 1e-2 4.1-4.3 after 1000-1250 steps (weight
  decay 0.1 instead: 2.35 after 750). With the default 2 layers at lr 1e-2 and 256
  sequences it reached 6.4 after 1000 steps and 9.5-10 after 1750-2000 (sink 0.8, drain
  0.2 throughout). The batch matters less: 32 sequences per step (~20 s) gave 6.3 / 1.2 /
  5.9 for seeds 0 / 1 / 2 (sink 0.75-0.78, drain 0.16-0.24), so the default keeps 256.
* The peak stays where it is made: where the last layers' MLP output dominates the
  residual stream, every token's norm grows the same way (an MLP-only layer 0 feeding an
  attention-only layer 1 grew all tokens to ~1000 in 2750 steps, ratio 0.86).

Earlier attempts that did not give a peak (HF initialisation, std 0.02; 32 sequences per
step; lr <= 3e-3): Llama (RoPE, RMSNorm) with 1-3 layers; GPT-2 with 1-3 layers and 1-4
heads, weight decay 0.01-0.1, tied embeddings, attention-only, no loss on the first
prediction, a planted large BOS embedding, a slower first layer, and the minimal layout
itself (0.3-1.1). Where a large ratio did appear there (Llama, 2 layers: 12x in the last
layer, with no sink head), it served BOS's own next-token prediction and fell to 0.15
without it; such norms also kept growing without bound.

Tokens are bytes of the interp toy byte tokenizer (:func:`interp.toy.byte_tokenizer`):
ordinary tokens are the letters ``a, b, c, ...``, triggers the digits ``0, 1, 2``, so
the trained model is an ordinary local Hugging Face folder that
:func:`interp.load_model` loads and whose prompts are plain strings.

Example:
    >>> import tempfile
    >>> from interp.models import load_model
    >>> from interp.sinks.toy import BigramBackcopy, TrainConfig, train_bigram_backcopy
    >>> BigramBackcopy().texts(2, seed=1)          # letters follow the bigram chain; after a digit, a copy
    ['b1blcfji1iaelcelcfj2j0j2j1jcfjgh', 'lcfjiadjcel2lc1ce2elc0c0cfjcghfj']
    >>> folder = train_bigram_backcopy(TrainConfig(steps=2, batch_size=4), tempfile.mkdtemp() + "/bb")  # 2 steps
    >>> load_model(str(folder)).cfg.n_layers
    2

    The committed checkpoint is ``train_bigram_backcopy(TrainConfig(), folder)`` (~2 minutes);
    Guo et al.'s earlier one-layer setting, for comparison::

        TrainConfig(n_layers=1, no_attention=(), activation="gelu_new", linear_biases=True,
                    init="hf", steps=4000, batch_size=32, lr=3e-3, weight_decay=0.01)
"""

from __future__ import annotations

import dataclasses
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


ACTIVATIONS = ("relu", "gelu_new", "silu")
INITS = ("torch", "hf")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Model and training settings (the defaults: ~2 minutes on one CPU thread).

    The defaults produced the checkpoint committed under ``data/toy/bigram_backcopy``:
    Guo et al.'s minimal layout scaled down. GPT-2 with 2 layers and 1 head, d_model 64,
    MLP 256; layer 0 has no attention (an MLP only), layer 1 has attention and an MLP;
    ReLU MLPs, no biases on the linear layers, PyTorch's default initialisation, untied
    embeddings, no dropout; AdamW (lr 1e-2, weight decay 1e-4, betas (0.9, 0.99)), 100
    warm-up steps then a constant learning rate, 1000 steps of 256 sequences.

    Attributes:
        data: the task.
        arch: ``"gpt2"`` (learned absolute positions, LayerNorm; dropout off) or
            ``"llama"`` (RoPE, RMSNorm, gated MLP).
        n_layers, n_heads, d_model, d_mlp: model sizes.
        no_attention: layers without attention (its weights are zero and frozen, so the
            layer's attention output is 0 and its pattern uniform), Guo et al.'s ``no_attn``.
        activation: the MLP's activation (for ``"llama"`` the gate's).
        linear_biases: trainable biases on the linear layers; False: zero and frozen (Guo et
            al.'s model has none). LayerNorm keeps its bias either way.
        init: ``"torch"`` (PyTorch's module defaults, as in Guo et al.: embeddings N(0, 1),
            linear weights U(+-1/sqrt(fan_in))) or ``"hf"`` (the architecture's own, std 0.02).
        tie_embeddings: share the input embedding and the unembedding.
        steps, batch_size, lr, weight_decay, betas: AdamW training (weight decay on every
            trained parameter).
        warmup_steps: linear learning-rate warm-up, then constant.
        seed: seed of the initialisation and the data stream.
    """

    data: BigramBackcopy = field(default_factory=BigramBackcopy)
    arch: str = "gpt2"
    n_layers: int = 2
    n_heads: int = 1
    d_model: int = 64
    d_mlp: int = 256
    no_attention: tuple[int, ...] = (0,)
    activation: str = "relu"
    linear_biases: bool = False
    init: str = "torch"
    tie_embeddings: bool = False
    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-2
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"arch must be one of {ARCHS}, got {self.arch!r}.{nearest(self.arch, ARCHS)}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}."
                              f"{nearest(self.activation, ACTIVATIONS)}")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {INITS}, got {self.init!r}.{nearest(self.init, INITS)}")
        if not 1 <= self.n_layers <= 3:
            raise ConfigError(f"n_layers must be in [1, 3] for the toy reproduction, got {self.n_layers}")
        bad = [layer for layer in self.no_attention if not 0 <= layer < self.n_layers]
        distinct = set(self.no_attention)
        if bad or len(distinct) < len(self.no_attention) or len(distinct) == self.n_layers:
            raise ConfigError(f"no_attention must name distinct layers in [0, {self.n_layers}) and leave at least "
                              f"one layer with attention, got {self.no_attention}")
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
                           hidden_act=cfg.activation, attention_bias=cfg.linear_biases, mlp_bias=cfg.linear_biases,
                           architectures=["LlamaForCausalLM"], **special)
    return GPT2Config(n_embd=cfg.d_model, n_inner=cfg.d_mlp, n_layer=cfg.n_layers, n_head=cfg.n_heads,
                      n_positions=max(64, cfg.data.seq_len + 1), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      activation_function=cfg.activation, architectures=["GPT2LMHeadModel"], **special)


def _build(cfg: TrainConfig) -> Any:
    """The untrained model of ``cfg``: initialised, biases and removed attention zeroed and frozen.

    Seeded with ``cfg.seed`` inside a forked RNG, so the caller's random state is untouched.
    """
    import math

    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(cfg.seed)  # CPU only: CUDA generators stay untouched
        model = AutoModelForCausalLM.from_config(_hf_config(cfg), dtype=torch.float32)
        if cfg.init == "torch":
            with torch.no_grad():
                for name, prm in model.named_parameters():
                    if name.endswith(("wte.weight", "wpe.weight", "embed_tokens.weight")):
                        prm.normal_(0.0, 1.0)
                    elif name.endswith("weight") and prm.dim() == 2:
                        # GPT-2's Conv1D stores [in, out]; nn.Linear (lm_head, Llama) stores [out, in]
                        conv1d = cfg.arch == "gpt2" and not name.startswith("lm_head")
                        bound = 1.0 / math.sqrt(prm.shape[0] if conv1d else prm.shape[1])
                        prm.uniform_(-bound, bound)
    blocks = model.transformer.h if cfg.arch == "gpt2" else model.model.layers
    frozen = []
    if not cfg.linear_biases and cfg.arch == "gpt2":
        frozen += [p for n, p in blocks.named_parameters() if n.endswith("bias") and (".attn." in n or ".mlp." in n)]
    for layer in cfg.no_attention:
        frozen += list((blocks[layer].attn if cfg.arch == "gpt2" else blocks[layer].self_attn).parameters())
    with torch.no_grad():
        for prm in frozen:
            prm.zero_()
            prm.requires_grad_(False)
    return model


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
    from interp.toy import write_model_folder

    folder = Path(folder)
    model = _build(config)
    model.train()
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=config.lr, weight_decay=config.weight_decay, betas=config.betas)
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
    return write_model_folder(model, folder, {"toy": "bigram-backcopy", "train": dataclasses.asdict(config)})
