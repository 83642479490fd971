"""Ground-truth toy (a): a 2-layer attention-only Llama trained for induction.

**Data** (:class:`RepeatedSpans`). Each sequence is BOS then ``seq_len`` letters drawn
uniformly (with replacement) from ``n_letters`` letters ``a, b, ...``, in which a span ``A``
of ``span`` random letters is written at a random offset and again at a later random
offset (at least one letter between the copies). The loss is taken only on the predictions
*inside the second copy* (the letters ``A[1:]``): those are predictable only by finding the
earlier occurrence of the current letter and copying the letter after it. Offsets are
random, so position alone cannot solve the task.

**Model**: Llama (RoPE, RMSNorm), 2 layers x 4 heads, d_model 64, attention only: every MLP
weight is zero and frozen, so MLP outputs are exactly 0; only layer 0's head 0 may write (the
other layer-0 heads' ``W_O`` is zero and kept zero, see :class:`InductionTrainConfig`).
AdamW; the defaults of :class:`InductionTrainConfig` produced the committed checkpoint
``data/toy/induction`` (settings, seconds and losses in its ``interp_source.json``: 2000 steps
of 64 sequences, lr 3e-3, ~317 s at 1 thread on the shared 2-core machine, final batch loss 0.29;
the batch loss stays ~2.7-3.0 until step 1600 and falls to 0.66 by step 1700).

Measured on the checkpoint (:func:`~interp.groundtruth.truth.induction_heads`, 64 held-out
sequences): ``L0.H0`` previous-token score 0.74 (the dead layer-0 heads 0.10: uniform over the
prefix); ``L1.H2`` induction score 0.95 (other layer-1 heads 0.14-0.26).

Earlier attempts (recorded, not committed): GPT-2 and Llama with all four layer-0 heads
trainable (1500 steps, fixed span 5) solved the task (99.9% on distinct-letter sequences) without
any previous-token head: two layer-0 heads attended a fixed ``d`` and ``d - 1`` places back
(d ~ 5), and layer-1 heads matched the query letter against the ``d``-back copy and read the
``(d-1)``-back one. One writing layer-0 head rules that out: only ``d = 1`` then solves the task.

**Truth** (:func:`identify_heads`), measured from attention patterns on held-out sequences
whose letters are distinct apart from the repeated span (so every match is unique):

* previous-token head: a layer-0 head whose mean attention from position ``i`` to ``i - 1``
  (every position after the first letter) is above :data:`PREV_THRESHOLD`;
* induction head: a layer-1 head whose mean attention from each second-copy letter ``A[j]``
  to the position right after ``A[j]``'s first occurrence is above :data:`INDUCTION_THRESHOLD`.

Both thresholds are 0.5, a majority chosen from first principles (a head that puts more
than half its attention on one relative position is that position's head), not fitted.

Example:
    >>> s = RepeatedSpans(seq_len=12, max_span=3, max_gap=2).draw(2, seed=0)
    >>> k = int(s.length[0])
    >>> s.tokens.shape, bool((s.tokens[0, 1 + s.first[0]:][:k] == s.tokens[0, 1 + s.second[0]:][:k]).all())
    (torch.Size([2, 13]), True)
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from jaxtyping import Float
from torch import Tensor

from interp.errors import ConfigError

__all__ = ["RepeatedSpans", "Spans", "InductionTrainConfig", "train_induction", "induction_loss",
           "PREV_THRESHOLD", "INDUCTION_THRESHOLD", "BOS_ID", "LETTER0"]

BOS_ID = 256           # <bos> of the byte tokenizer (interp.toy.byte_tokenizer)
LETTER0 = 97           # byte of "a"
#: a head is the previous-token / induction head when more than half its attention is on the target
PREV_THRESHOLD = 0.5
INDUCTION_THRESHOLD = 0.5


@dataclass(frozen=True)
class Spans:
    """A batch of sequences: ``tokens [batch, 1 + seq_len]`` (BOS first), and per row (``[batch]`` each)
    the letter offsets (after BOS) ``first`` and ``second`` of the two copies and the span ``length``."""

    tokens: torch.Tensor
    first: torch.Tensor
    second: torch.Tensor
    length: torch.Tensor


@dataclass(frozen=True, kw_only=True)
class RepeatedSpans:
    """Random letters with one span repeated at random offsets.

    The span length is uniform in ``[2, max_span]``, the gap (filler letters between the copies)
    uniform in ``[0, max_gap]``, the first copy's offset uniform over the places that leave room.
    (With ``max_gap = 2`` and one writing layer-0 head, 2000 steps only reached loss ~0.94; the
    default spreads the distance between the copies.)

    Attributes:
        n_letters: alphabet size (letters ``a, b, ...``; at most 26).
        seq_len: letters per sequence after BOS.
        max_span: longest repeated span (>= 2).
        max_gap: most filler letters between the copies (>= 0).
    """

    n_letters: int = 26
    seq_len: int = 24
    max_span: int = 6
    max_gap: int = 12

    def __post_init__(self) -> None:
        if not 4 <= self.n_letters <= 26:
            raise ConfigError(f"n_letters must be in [4, 26], got {self.n_letters}")
        if self.max_gap < 0 or self.max_span < 2 or 2 * self.max_span + self.max_gap > self.seq_len:
            raise ConfigError(f"need max_span >= 2, max_gap >= 0 and 2*max_span + max_gap <= seq_len, got "
                              f"max_span={self.max_span}, max_gap={self.max_gap}, seq_len={self.seq_len}")

    def draw(self, n: int, seed: int, *, distinct: bool = False) -> Spans:
        """``n`` sequences from a private generator seeded with ``seed``.

        Args:
            distinct: every letter outside the two copies, and every letter of the span, occurs once
                (needs ``seq_len - 2 <= n_letters``); for evaluation, where matches must be unique.
        """
        g = torch.Generator().manual_seed(seed)
        L = self.seq_len
        if distinct and L - 2 > self.n_letters:
            raise ConfigError(f"distinct letters need seq_len - 2 <= n_letters, got {L - 2} > {self.n_letters}")
        length = torch.randint(2, self.max_span + 1, (n,), generator=g)
        gap = torch.randint(0, self.max_gap + 1, (n,), generator=g)
        first = (torch.rand(n, generator=g) * (L - 2 * length - gap + 1)).long()      # [0, L - 2k - gap]
        second = first + length + gap
        local = torch.empty(n, L, dtype=torch.long)
        for i in range(n):
            a, b, k = int(first[i]), int(second[i]), int(length[i])
            letters = torch.randperm(self.n_letters, generator=g)[: L - k] if distinct else \
                torch.randint(0, self.n_letters, (L - k,), generator=g)
            span, filler = letters[:k], letters[k:]
            row = torch.empty(L, dtype=torch.long)
            rest = [j for j in range(L) if not (a <= j < a + k or b <= j < b + k)]
            row[rest] = filler[: len(rest)]
            row[a:a + k] = span
            row[b:b + k] = span
            local[i] = row
        tokens = torch.cat([torch.full((n, 1), BOS_ID, dtype=torch.long), local + LETTER0], 1)
        return Spans(tokens, first, second, length)

    def loss_mask(self, spans: Spans) -> torch.Tensor:
        """``[batch, seq_len]`` True at the logit positions that predict ``A[1:]`` of the second copy
        (token position ``1 + second + j`` holds ``A[j]`` and predicts ``A[j + 1]``)."""
        n = spans.tokens.shape[0]
        pos = torch.arange(self.seq_len).expand(n, -1)
        start = 1 + spans.second[:, None]
        return (pos >= start) & (pos < start + spans.length[:, None] - 1)


@dataclass(frozen=True, kw_only=True)
class InductionTrainConfig:
    """Model and training settings of the induction toy (defaults: the committed checkpoint).

    Attributes:
        data: the task.
        n_layers, n_heads, d_model: Llama sizes (MLPs are zero and frozen: attention only).
        steps, batch_size, lr, weight_decay: AdamW training, constant learning rate after ``warmup_steps``.
        layer0_heads: heads of layer 0 that may write (the others' ``W_O`` is zero and kept zero, so
            they are dead heads: true negatives). With all four trained, the model paired two
            layer-0 heads attending a fixed ``d`` and ``d - 1`` places back (d ~ 5) instead of
            forming a previous-token head; a single writing head can only solve the task with
            ``d = 1``.
        seed: initialisation and data stream (private generators; the global RNG is untouched).
    """

    data: RepeatedSpans = field(default_factory=RepeatedSpans)
    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 64
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    layer0_heads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.layer0_heads <= self.n_heads:
            raise ConfigError(f"layer0_heads must be in [1, n_heads={self.n_heads}], got {self.layer0_heads}")
        if self.n_layers < 2 or self.n_heads < 1 or self.d_model % self.n_heads:
            raise ConfigError(f"need n_layers >= 2 and n_heads dividing d_model, got n_layers={self.n_layers}, "
                              f"n_heads={self.n_heads}, d_model={self.d_model}")
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ConfigError(f"steps, batch_size, lr must be positive and weight_decay, warmup_steps >= 0, got "
                              f"{self.steps}, {self.batch_size}, {self.lr}, {self.weight_decay}, {self.warmup_steps}")


def llama_config(*, n_layers: int, n_heads: int, d_model: int, n_positions: int) -> Any:
    """The Llama config of the induction toy: byte-tokenizer vocabulary, untied embeddings, no GQA."""
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=d_model, intermediate_size=d_model, num_hidden_layers=n_layers,
                       num_attention_heads=n_heads, num_key_value_heads=n_heads, max_position_embeddings=n_positions,
                       vocab_size=259, bos_token_id=256, eos_token_id=257, pad_token_id=258,
                       tie_word_embeddings=False, architectures=["LlamaForCausalLM"])


def _build(cfg: InductionTrainConfig) -> Any:
    from transformers import AutoModelForCausalLM

    hf = llama_config(n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_model=cfg.d_model,
                     n_positions=max(32, cfg.data.seq_len + 1))
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(cfg.seed)
        model = AutoModelForCausalLM.from_config(hf, dtype=torch.float32)
    with torch.no_grad():
        for block in model.model.layers:  # attention only: MLP outputs exactly 0 (SiLU(0) * 0)
            for prm in block.mlp.parameters():
                prm.zero_()
                prm.requires_grad_(False)
        o_proj = model.model.layers[0].self_attn.o_proj.weight          # [d_model, n_heads * d_head]
        dead = torch.zeros_like(o_proj, dtype=torch.bool)
        dead[:, cfg.layer0_heads * (cfg.d_model // cfg.n_heads):] = True
        o_proj[dead] = 0.0
    o_proj.register_hook(lambda grad: grad.masked_fill(dead, 0.0))      # dead heads stay at 0
    return model


def induction_loss(model: Any, data: RepeatedSpans, spans: Spans) -> Float[Tensor, ""]:
    """Mean cross-entropy of the second copy's letters ``A[1:]`` (a HF causal LM)."""
    logits = model(input_ids=spans.tokens).logits[:, :-1]
    mask = data.loss_mask(spans)
    return torch.nn.functional.cross_entropy(logits[mask], spans.tokens[:, 1:][mask])


def train_induction(config: InductionTrainConfig, folder: str | Path, *,
                    log: Callable[[int, float], None] | None = None) -> Path:
    """Train the induction toy and save it as a Hugging Face folder (safetensors + byte tokenizer).

    Args:
        config: :class:`InductionTrainConfig`.
        folder: written atomically; an existing folder is replaced.
        log: optional ``log(step, loss)`` every 100 steps and at the last (injected, never printed here).

    Returns:
        The folder, loadable with :func:`interp.load_model`.
    """
    from interp.toy import write_model_folder

    t0 = time.perf_counter()
    folder = Path(folder)
    model = _build(config)
    model.train()
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(config.warmup_steps, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
    losses: list[tuple[int, float]] = []
    for step in range(config.steps):
        spans = config.data.draw(config.batch_size, seed=config.seed * 1_000_003 + step)
        loss = induction_loss(model, config.data, spans)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == config.steps - 1:
            losses.append((step, round(float(loss.detach()), 4)))
            if log is not None:
                log(step, float(loss.detach()))
    model.eval()
    seconds = round(time.perf_counter() - t0, 1)
    return write_model_folder(model, folder, {"toy": "induction", "train": dataclasses.asdict(config),
                                              "seconds": seconds, "threads": torch.get_num_threads(),
                                              "losses": losses})
