"""Cheap attention diagnostics: head similarity and entropy spread, offline or during training.

Definitions (METHODS.md section 8, after "Weight Decay Regimes in Grokking Transformers: Cheap
Online Diagnostics", Verma 2026). From attention patterns ``P [batch, head, query, key]`` of one layer:

* per head and prompt, the **entropy** is the mean over queries of ``-sum_k P log P`` (nats; the
  first query of a causal model sees one key and is left out, ``skip_first_query``);
* per head: ``entropy`` = its mean over prompts, ``entropy_spread`` = its standard deviation
  over prompts (population std);
* per layer: ``entropy_std`` = the standard deviation across heads of the heads' ``entropy``
  (population std), ``entropy_mean`` its mean, and ``cos_sim`` = the mean over head pairs of the
  cosine similarity between the heads' batch-averaged, flattened patterns (the first query left
  out as well: it is the same one-hot row in every head; 1: every head attends alike; the
  paper's "collapse" regime has identical patterns).

:func:`pattern_stats` computes them from pattern tensors (any model); :func:`diagnose` from a
TransformerLens bridge / interp model on a batch of prompts; :class:`AttentionDiagnostics`
(:mod:`.callback`) records them every ``every`` steps of any torch training loop; :mod:`.modadd` is
the modular-addition toy trained under several weight decays.

Example:
    >>> import torch
    >>> p = torch.full((2, 3, 4, 4), 0.0)
    >>> p[..., 0] = 1.0                                 # every head attends to key 0
    >>> layer, heads = pattern_stats([p])
    >>> round(layer[0]["cos_sim"], 6), round(layer[0]["entropy_std"], 6), heads[0]["entropy"]
    (1.0, 0.0, 0.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.errors import ShapeError

__all__ = ["pattern_stats", "diagnose", "Diagnostics", "entropy", "mean_pairwise_cosine"]


def entropy(pattern: Float[Tensor, "batch head query_pos key_pos"], *, skip_first_query: bool = True) -> Float[Tensor, "batch head"]:
    """``[batch, head]`` mean over queries of the attention entropy (nats) of ``pattern [batch, head, q, k]``."""
    p = pattern.double()
    h = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)       # [batch, head, q]
    if skip_first_query and h.shape[-1] > 1:
        h = h[..., 1:]
    return h.mean(-1)


def mean_pairwise_cosine(vectors: Float[Tensor, "n d"]) -> float:
    """Mean cosine similarity over the pairs of rows of ``vectors [n, d]`` (NaN for fewer than 2 rows)."""
    n = vectors.shape[0]
    if n < 2:
        return float("nan")
    v = torch.nn.functional.normalize(vectors.double(), dim=-1)
    sim = v @ v.T
    iu = torch.triu_indices(n, n, offset=1)
    return float(sim[iu[0], iu[1]].mean())


def pattern_stats(patterns: Sequence[Float[Tensor, "batch head query_pos key_pos"]], *, skip_first_query: bool = True,
                  layers: Sequence[int] | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Layer rows and head rows of the diagnostics from per-layer ``[batch, head, q, k]`` patterns.

    Returns:
        (layer rows ``layer, cos_sim, entropy_std, entropy_mean, n_heads, n_prompts``,
        head rows ``layer, head, entropy, entropy_spread, n_prompts``).
    """
    layer_rows, head_rows = [], []
    for i, p in enumerate(patterns):
        layer = int(layers[i]) if layers is not None else i
        if p.ndim != 4 or p.shape[-1] != p.shape[-2]:
            raise ShapeError(f"attention pattern of layer {layer}: expected [batch, head, query, key], got "
                             f"{tuple(p.shape)}")
        ent = entropy(p, skip_first_query=skip_first_query)                   # [batch, head]
        per_head = ent.mean(0)
        spread = ent.std(0, unbiased=False)
        mean = p.double().mean(0)                                              # [head, q, k]
        if skip_first_query and mean.shape[1] > 1:
            mean = mean[:, 1:]
        flat = mean.flatten(1)                                                 # [head, q*k]
        layer_rows.append({"layer": layer, "cos_sim": mean_pairwise_cosine(flat),
                           "entropy_std": float(per_head.std(unbiased=False)), "entropy_mean": float(per_head.mean()),
                           "n_heads": int(p.shape[1]), "n_prompts": int(p.shape[0])})
        head_rows += [{"layer": layer, "head": h, "entropy": float(per_head[h]), "entropy_spread": float(spread[h]),
                       "n_prompts": int(p.shape[0])} for h in range(p.shape[1])]
    return layer_rows, head_rows


@dataclass(frozen=True)
class Diagnostics:
    """The two Results of :func:`diagnose`: ``diagnostics.layers`` and ``diagnostics.heads``."""

    layers: Any
    heads: Any


def diagnose(model: Any, tokens: Int[Tensor, "batch pos"], *, skip_first_query: bool = True, dataset: str = "") -> Diagnostics:
    """Attention diagnostics of an interp / TransformerLens bridge model on ``tokens [batch, pos]`` (one pass).

    Example:
        >>> from interp.models import load_model
        >>> d = diagnose(load_model("toy:llama"), torch.randint(0, 100, (3, 6)))
        >>> list(d.layers.table.columns)[:3], len(d.heads.table)
        (['layer', 'cos_sim', 'entropy_std'], 8)
    """
    from interp.diagnostics.callback import bridge_patterns
    from interp.nodes import node_id
    from interp.results import Result, run_meta

    pats = bridge_patterns(model, tokens)
    layer_rows, head_rows = pattern_stats(pats, skip_first_query=skip_first_query)
    for r in head_rows:
        r["node"] = node_id("head", r["layer"], head=r["head"])
    meta = run_meta(model, dataset=dataset, n_prompts=int(tokens.shape[0]), skip_first_query=skip_first_query)
    return Diagnostics(Result("diagnostics.layers", pd.DataFrame(layer_rows), meta),
                       Result("diagnostics.heads", pd.DataFrame(head_rows), meta))
