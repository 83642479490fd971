"""Massive activations (Sun et al. 2024): huge scalars of the residual stream.

A scalar of a layer's hidden state (``resid_post``, the block output) is *massive*
when ``|value| > min_value`` (100) and ``|value| / median|hidden state| > min_ratio``
(1000). The median is over all real positions and dims of that prompt's hidden state
(the true median, as ``numpy.median``). Per layer and prompt the ``top_k`` largest
``|value|`` are reported with position, token and dimension; across prompts the
dimensions that are massive consistently, with the first and last layer where they are.

Example:
    >>> from interp.models import load_model
    >>> from interp.sinks import massive_activations
    >>> layers, dims = massive_activations(load_model("toy:llama"), ["Hello"])
    >>> layers.kind, dims.kind
    ('massive.layers', 'massive.dims')
    >>> dims.table.columns.tolist()             # empty: a random toy model has no massive activations
    ['dim', 'n_layers', 'first_layer', 'last_layer', 'fraction']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from interp.errors import ConfigError
from interp.models import TokenBatch
from interp.results import Result, run_meta
from interp.sinks._stream import Chunk, prepare, stream, token_strings
from interp.sites import Site

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["MassiveConfig", "MassiveReducer", "massive_activations", "median_abs", "LAYER_COLUMNS", "DIM_COLUMNS"]

LAYER_COLUMNS = ["prompt", "layer", "rank", "value", "abs_value", "pos", "token", "dim", "median", "ratio",
                 "is_massive"]
DIM_COLUMNS = ["dim", "n_layers", "first_layer", "last_layer", "fraction"]


@dataclass(frozen=True, kw_only=True)
class MassiveConfig:
    """Settings of the massive-activation scan.

    Attributes:
        min_value: absolute threshold (Sun et al.: 100).
        min_ratio: threshold on ``|value| / median`` (Sun et al.: about 1000).
        top_k: largest values reported per layer and prompt.
        consistency: a dim counts in a layer when it is massive in at least this
            fraction of prompts (``massive.dims.n_layers``) [U].
        max_len: cut prompts to this many tokens (``None``: all).
        batch_size: prompts per forward pass.
    """

    min_value: float = 100.0
    min_ratio: float = 1000.0
    top_k: int = 3
    consistency: float = 0.5
    max_len: int | None = None
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.min_value < 0 or self.min_ratio < 0:
            raise ConfigError(f"thresholds must be >= 0, got min_value={self.min_value}, min_ratio={self.min_ratio}")
        if self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {self.top_k}")
        if not 0.0 < self.consistency <= 1.0:
            raise ConfigError(f"consistency must be in (0, 1], got {self.consistency}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")


def median_abs(hidden: Float[Tensor, "..."]) -> float:
    """Median of ``|hidden|`` over all entries (mean of the two middle values for even counts)."""
    s = hidden.abs().flatten().sort().values
    n = s.numel()
    if n == 0:
        return float("nan")
    return float((s[(n - 1) // 2] + s[n // 2]) / 2)


class MassiveReducer:
    """Keeps the ``top_k`` |values| of each prompt's hidden state per layer, and its median."""

    def __init__(self, n_prompts: int, n_layers: int, top_k: int) -> None:
        self.n_layers, self.top_k = n_layers, top_k
        self.value = np.zeros((n_prompts, n_layers, top_k))
        self.pos = np.full((n_prompts, n_layers, top_k), -1, dtype=np.int64)
        self.dim = np.full((n_prompts, n_layers, top_k), -1, dtype=np.int64)
        self.median = np.zeros((n_prompts, n_layers))
        self.token_ids: dict[int, list[int]] = {}

    def sites(self) -> list[Site]:
        return [Site("resid_post", layer) for layer in range(self.n_layers)]

    def update(self, act: torch.Tensor, site: Site, chunk: Chunk) -> None:
        x = act.float()
        b, p, d = x.shape
        masked = x.abs().masked_fill(~chunk.mask[:, :, None], -1.0).reshape(b, p * d)
        k = min(self.top_k, p * d)
        _, idx = masked.topk(k, dim=1)
        vals = x.reshape(b, p * d).gather(1, idx)
        for i in range(b):
            row = chunk.offset + i
            n = int(chunk.lengths[i])
            real = min(k, n * d)
            self.value[row, site.layer, :real] = vals[i, :real].cpu().numpy()
            self.pos[row, site.layer, :real] = (idx[i, :real] // d).cpu().numpy()
            self.dim[row, site.layer, :real] = (idx[i, :real] % d).cpu().numpy()
            self.median[row, site.layer] = median_abs(x[i, :n])
            self.token_ids.setdefault(row, chunk.tokens[i, :n].tolist())


def massive_results(red: MassiveReducer, model: Model, config: MassiveConfig, meta: Any) -> list[Result]:
    """``massive.layers`` and ``massive.dims`` from a filled :class:`MassiveReducer`."""
    n_prompts = red.value.shape[0]
    rows = []
    vocab_cache: dict[int, str] = {}
    for prompt in range(n_prompts):
        ids = red.token_ids.get(prompt, [])
        for layer in range(red.n_layers):
            med = red.median[prompt, layer]
            for rank in range(red.top_k):
                pos = int(red.pos[prompt, layer, rank])
                if pos < 0:
                    continue
                v = float(red.value[prompt, layer, rank])
                ratio = abs(v) / med if med > 0 else float("inf") if v != 0 else 0.0
                tid = ids[pos]
                if tid not in vocab_cache:
                    vocab_cache[tid] = token_strings(model, [tid])[0]
                rows.append({"prompt": prompt, "layer": layer, "rank": rank, "value": v, "abs_value": abs(v),
                             "pos": pos, "token": vocab_cache[tid], "dim": int(red.dim[prompt, layer, rank]),
                             "median": float(med), "ratio": float(ratio),
                             "is_massive": bool(abs(v) > config.min_value and ratio > config.min_ratio)})
    layers = pd.DataFrame(rows, columns=LAYER_COLUMNS)
    return [Result("massive.layers", layers, meta), Result("massive.dims", massive_dims(layers, n_prompts,
                                                                                           config.consistency), meta)]


def massive_dims(layers: pd.DataFrame, n_prompts: int, consistency: float = 0.5) -> pd.DataFrame:
    """Dimensions that are massive across prompts, from a ``massive.layers`` table.

    Columns: dim; n_layers (layers where the dim is massive in at least ``consistency``
    of the prompts); first_layer / last_layer of those layers (-1 when none);
    fraction (prompts where the dim is massive in some layer).
    """
    hits = layers[layers.is_massive]
    if hits.empty or n_prompts == 0:
        return pd.DataFrame(columns=DIM_COLUMNS)
    out = []
    for dim, g in hits.groupby("dim"):
        per_layer = g.groupby("layer").prompt.nunique() / n_prompts
        steady = sorted(per_layer[per_layer >= consistency].index.tolist())
        out.append({"dim": int(dim), "n_layers": len(steady), "first_layer": steady[0] if steady else -1,
                    "last_layer": steady[-1] if steady else -1, "fraction": g.prompt.nunique() / n_prompts})
    return pd.DataFrame(out, columns=DIM_COLUMNS).sort_values(["n_layers", "fraction"], ascending=False,
                                                              ignore_index=True)


def massive_activations(model: Model, prompts: Sequence[str] | TokenBatch, config: MassiveConfig = MassiveConfig(),
                        *, dataset: str = "", progress: bool = False) -> list[Result]:
    """Scan the residual stream of every layer for massive activations.

    Args:
        model: a model from :func:`interp.load_model`.
        prompts: texts or a :class:`~interp.models.TokenBatch`.
        config: :class:`MassiveConfig`.

    Returns:
        ``[massive.layers, massive.dims]``. ``massive.layers`` has one row per (prompt,
        layer, rank): value (signed), abs_value, pos, token, dim, median, ratio, is_massive.

    Raises:
        DataError: a prompt longer than the model's context (named).
    """
    batch, kept = prepare(model, prompts, config.max_len, min_tokens=1)
    red = MassiveReducer(len(batch), model.cfg.n_layers, config.top_k)
    stream(model, batch, [red], batch_size=config.batch_size, progress=progress, desc="massive activations")
    meta = run_meta(model, dataset=dataset, data=batch.tokens, config=config, prompts_kept=len(kept))
    return massive_results(red, model, config, meta)
