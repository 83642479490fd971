"""Streaming attention-sink statistics: alpha_k per (layer, head, key) and Gu et al.'s Sink_k^eps.

Importance of key ``k`` in head ``(l, h)`` of a prompt of ``T`` tokens (0-indexed):

    alpha_k = 1 / (T - k) * sum_{t >= k} A[t, k]

the mean attention the key receives from the queries that can see it (METHODS.md
section 4; Gu et al. 2025 write the same with 1-indexed ``k``). ``Sink_1^eps`` is the
fraction of (layer, head) with ``alpha_first > eps`` (eps = 0.3, prompts cut to
T = 64 tokens by default).

The statistics are folded into running sums inside the ``pattern`` hooks
(:class:`SinkReducer`): the attention pattern of a layer is reduced the moment it
exists and is never stored. Memory: ``prompts x layer x head`` for the per-prompt
first-key scores plus ``layer x head x pos`` running sums.

Example:
    >>> from interp.models import load_model
    >>> from interp.sinks import sink_scores, SinkConfig
    >>> heads, layers, model_rate = sink_scores(load_model("toy:llama"), ["Hello there"])
    >>> heads.table.columns[:4].tolist()
    ['layer', 'head', 'node', 'alpha_first']
    >>> len(heads.table), layers.table.layer.tolist()      # 2 layers x 4 heads of the toy model
    (8, [0, 1])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.arch import arch_facts
from interp.errors import ConfigError
from interp.models import TokenBatch
from interp.nodes import node_id
from interp.results import Result, run_meta
from interp.sinks._stream import Chunk, prepare, stream
from interp.sites import Site

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["SinkConfig", "SinkReducer", "sink_scores", "alpha_from_pattern", "HEAD_COLUMNS", "LAYER_COLUMNS"]

HEAD_COLUMNS = ["layer", "head", "node", "alpha_first", "alpha_first_std", "is_sink", "top_pos", "top_alpha",
                "sink_mass"]
LAYER_COLUMNS = ["layer", "sink_rate", "sink_rate_std", "n_prompts"]
MODEL_COLUMNS = ["eps", "sink_rate", "sink_rate_std", "n_prompts", "n_heads_total"]


@dataclass(frozen=True, kw_only=True)
class SinkConfig:
    """Settings of the sink statistics.

    Attributes:
        eps: threshold of Sink_k^eps (Gu et al.: 0.3).
        max_len: cut prompts to this many tokens (Gu et al.: T = 64); ``None`` keeps all.
        min_queries: a non-first key counts for ``top_pos`` only if at least this many
            queries see it (the last keys are seen by one or two queries, whose alpha is
            trivially large) [U].
        batch_size: prompts per forward pass.
    """

    eps: float = 0.3
    max_len: int | None = 64
    min_queries: int = 4
    batch_size: int = 8

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps < 1.0:
            raise ConfigError(f"eps must be in [0, 1), got {self.eps}")
        if self.max_len is not None and self.max_len < 2:
            raise ConfigError(f"max_len must be >= 2 or None, got {self.max_len}")
        if self.min_queries < 1:
            raise ConfigError(f"min_queries must be >= 1, got {self.min_queries}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")


def alpha_from_pattern(pattern: Float[Tensor, "batch head pos pos"], lengths: Int[Tensor, " batch"],
                       causal: bool = True) -> tuple[Float[Tensor, "..."], Float[Tensor, "..."]]:
    """alpha_k of every key from one layer's pattern of a right-padded batch.

    Args:
        pattern: ``[batch, head, query_pos, key_pos]`` attention probabilities.
        lengths: ``[batch]`` real tokens per prompt.
        causal: queries ``t >= k`` see key ``k``; ``False`` (bidirectional encoder): every real
            query sees every real key, so alpha_k is the mean over all ``T`` real queries.

    Returns:
        ``alpha`` ``[batch, head, key_pos]`` (0 at padded keys) and ``n_queries``
        ``[batch, key_pos]``, the number of real queries that see each key (0 at padding).
    """
    pos = torch.arange(pattern.shape[-1], device=pattern.device)
    qmask = (pos[None, :] < lengths[:, None]).to(pattern.dtype)              # [batch, q]
    colsum = (qmask[:, None, None, :] @ pattern)[:, :, 0]                    # [batch, head, key], no copy of pattern
    n_queries = (lengths[:, None] - pos[None, :]).clamp(min=0)               # [batch, k]
    if not causal:
        n_queries = lengths[:, None] * (n_queries > 0)
    alpha = colsum / n_queries.clamp(min=1)[:, None, :].to(pattern.dtype)
    return alpha * (n_queries > 0)[:, None, :], n_queries


class SinkReducer:
    """Folds every layer's pattern into alpha statistics (see the module docstring).

    After :func:`~interp.sinks._stream.stream`:

    * ``alpha_first[prompt, layer, head]``: alpha of position 0;
    * ``sink_mass[prompt, layer, head]``: mean attention on position 0 from queries t >= 1;
    * ``alpha_sum[layer, head, pos]`` / ``alpha_count[pos]``: running sums of alpha over
      prompts at keys with at least ``min_queries`` queries.
    """

    def __init__(self, n_prompts: int, n_layers: int, n_heads: int, width: int, min_queries: int = 4,
                 causal: bool = True) -> None:
        self.n_layers, self.n_heads, self.min_queries, self.causal = n_layers, n_heads, min_queries, causal
        self.alpha_first = np.zeros((n_prompts, n_layers, n_heads))
        self.sink_mass = np.zeros((n_prompts, n_layers, n_heads))
        self.alpha_sum = np.zeros((n_layers, n_heads, width))
        self.alpha_count = np.zeros((n_layers, width))

    def sites(self) -> list[Site]:
        return [Site("pattern", layer) for layer in range(self.n_layers)]

    def update(self, act: torch.Tensor, site: Site, chunk: Chunk) -> None:
        pattern = act.float()
        alpha, n_q = alpha_from_pattern(pattern, chunk.lengths, self.causal)
        rows = slice(chunk.offset, chunk.offset + len(chunk))
        layer = site.layer
        self.alpha_first[rows, layer] = alpha[:, :, 0].cpu().numpy()
        qmask = chunk.mask[:, 1:].to(pattern.dtype)                          # queries t >= 1
        mass = (pattern[:, :, 1:, 0] * qmask[:, None, :]).sum(-1) / (chunk.lengths - 1).clamp(min=1)[:, None]
        self.sink_mass[rows, layer] = mass.cpu().numpy()
        ok = (n_q >= self.min_queries)                                        # [batch, k]
        w = alpha.shape[-1]
        self.alpha_sum[layer, :, :w] += (alpha * ok[:, None, :]).sum(0).cpu().numpy()
        self.alpha_count[layer, :w] += ok.sum(0).cpu().numpy()


def _std(x: np.ndarray, axis: int) -> np.ndarray:
    return x.std(axis=axis, ddof=1) if x.shape[axis] > 1 else np.zeros(np.delete(x.shape, axis))


def sink_results(red: SinkReducer, eps: float, meta: Any) -> list[Result]:
    """``sinks.heads``, ``sinks.layers`` and ``sinks.model`` from a filled :class:`SinkReducer`."""
    n = red.alpha_first.shape[0]
    if n == 0:
        return [Result("sinks.heads", pd.DataFrame(columns=HEAD_COLUMNS), meta),
                Result("sinks.layers", pd.DataFrame(columns=LAYER_COLUMNS), meta),
                Result("sinks.model", pd.DataFrame(columns=MODEL_COLUMNS), meta)]
    mean, std = red.alpha_first.mean(0), _std(red.alpha_first, 0)
    mass = red.sink_mass.mean(0)
    rows = []
    for layer in range(red.n_layers):
        count = red.alpha_count[layer]
        for head in range(red.n_heads):
            avg = np.where(count > 0, red.alpha_sum[layer, head] / np.maximum(count, 1), -np.inf)
            avg[0] = -np.inf
            top = int(np.argmax(avg)) if np.isfinite(avg).any() else -1
            rows.append({"layer": layer, "head": head, "node": node_id("head", layer=layer, head=head),
                         "alpha_first": float(mean[layer, head]), "alpha_first_std": float(std[layer, head]),
                         "is_sink": bool(mean[layer, head] > eps), "top_pos": top,
                         "top_alpha": float(avg[top]) if top >= 0 else float("nan"),
                         "sink_mass": float(mass[layer, head])})
    per_prompt = (red.alpha_first > eps).mean(2)                              # [prompt, layer]
    layers = pd.DataFrame({"layer": np.arange(red.n_layers), "sink_rate": per_prompt.mean(0),
                           "sink_rate_std": _std(per_prompt, 0), "n_prompts": n})
    model_rate = (red.alpha_first > eps).mean((1, 2))                        # [prompt]
    model = pd.DataFrame([{"eps": eps, "sink_rate": float(model_rate.mean()),
                           "sink_rate_std": float(_std(model_rate, 0)), "n_prompts": n,
                           "n_heads_total": red.n_layers * red.n_heads}])
    return [Result("sinks.heads", pd.DataFrame(rows, columns=HEAD_COLUMNS), meta),
            Result("sinks.layers", layers[LAYER_COLUMNS], meta),
            Result("sinks.model", model[MODEL_COLUMNS], meta)]


def sink_scores(model: Model, prompts: Sequence[str] | TokenBatch, config: SinkConfig = SinkConfig(), *,
                dataset: str = "", progress: bool = False) -> list[Result]:
    """Attention-sink scores of every head, streamed from the ``pattern`` hooks.

    Args:
        model: a model from :func:`interp.load_model`.
        prompts: texts or a :class:`~interp.models.TokenBatch`; prompts under two tokens
            are skipped with a warning (all skipped: empty, valid Results).
        config: :class:`SinkConfig`.

    Returns:
        ``[sinks.heads, sinks.layers, sinks.model]``:

        * ``sinks.heads``: layer, head, node, alpha_first (mean over prompts),
          alpha_first_std, is_sink (alpha_first > eps), top_pos / top_alpha (the non-first
          key with the largest mean alpha), sink_mass (mean attention on position 0 from
          queries t >= 1);
        * ``sinks.layers``: layer, sink_rate (fraction of the layer's heads with
          alpha_first > eps, mean over prompts), sink_rate_std (over prompts), n_prompts;
        * ``sinks.model``: one row, Sink_1^eps of the whole model with its spread.

    Raises:
        DataError: a prompt longer than the model's context (named).
    """
    batch, kept = prepare(model, prompts, config.max_len)
    cfg = model.cfg
    red = SinkReducer(len(batch), cfg.n_layers, cfg.n_heads, batch.tokens.shape[1], config.min_queries,
                      causal=arch_facts(model).causal)
    stream(model, batch, [red], batch_size=config.batch_size, progress=progress, desc="sink scores")
    meta = run_meta(model, dataset=dataset, data=batch.tokens, config=config, prompts_kept=len(kept))
    return sink_results(red, config.eps, meta)
