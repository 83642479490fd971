"""Contrastive causal head gating: keep a behaviour on positive prompts, remove it on negative ones.

Same gates, optimiser and convergence rule as :mod:`interp.gating.chg` (one stage with
``+lambda`` from ``logit(U(0,1))``; it stops when the ``removed`` flags are unchanged for
``CHGConfig.patience`` steps). The loss is not a mean over prompts, so each step runs in one pass
(no micro-batching).

Example:
    >>> from interp.datasets import TaskDataset
    >>> from interp.gating import CHGConfig, contrastive_head_gating
    >>> pos = TaskDataset("copy", clean=("abcabc", "xyzxyz"), answers=("a", "x"))
    >>> neg = TaskDataset("copy", clean=("abcabd", "xyzxyw"), answers=("a", "x"))
    >>> res = contrastive_head_gating(model, pos, neg, config=CHGConfig(max_steps=10, progress=False))
    >>> res.table.columns.tolist()
    ['layer', 'head', 'node', 'g', 'g_std', 'removed']
    >>> res.table[res.table.removed].node.tolist()   # heads whose removal kills the negative case
    []
"""

from __future__ import annotations

import time
from typing import Any

import torch

from interp.gating.chg import (CHGConfig, GateData, _batch_sampler, _optimize, _stages_meta, _std, gate_data,
                               init_gate_logits)
from interp.gating.gates import _target_logprobs, gated

__all__ = ["contrastive_head_gating"]


def _concat(a: GateData, b: GateData, pad: int) -> GateData:
    width = max(a.tokens.shape[1], b.tokens.shape[1])

    def widen(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=pad)

    return GateData(torch.cat([widen(a.tokens), widen(b.tokens)]), torch.cat([a.last, b.last]),
                    torch.cat([a.targets, b.targets]), a.texts + b.texts, f"{a.name}-vs-{b.name}")


def contrastive_head_gating(model: Any, positive: Any, negative: Any, *, config: CHGConfig = CHGConfig()) -> Any:
    """Contrastive CHG: keep the behaviour on ``positive`` while removing it on ``negative``.

    Loss per mask (METHODS.md 3): ``-mean log p_pos + mean(clamp(log p_neg - sg(mean log p_pos),
    min=neg_clamp)) - lambda * mean(clamp(logit(G), -4, 4))`` with ``lambda = +config.lam`` (gates
    pushed open, so only heads whose removal separates the two sets close) [U: one stage,
    from ``logit(U(0,1))``].

    Returns:
        ``gating.contrastive`` Result: per head ``g`` (mean), ``g_std``, ``removed`` (mean gate
        below ``interfering_threshold``), and in meta the per-mask final log-probs.
    """
    import pandas as pd

    from interp.nodes import node_id
    from interp.results import Result, run_meta

    pos, neg = gate_data(model, positive), gate_data(model, negative)
    np_, nn_ = len(pos), len(neg)
    pos_sampler, neg_sampler = _batch_sampler(np_, config.batch_size), _batch_sampler(nn_, config.batch_size)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    data = _concat(pos, neg, pad)
    box: dict[str, int] = {}

    def sampler(gen: torch.Generator) -> torch.Tensor:
        i, j = pos_sampler(gen), neg_sampler(gen)
        box["n_pos"] = len(i)
        return torch.cat([i, j + np_])

    def loss_fn(logp: torch.Tensor) -> torch.Tensor:
        lp_pos, lp_neg = logp[:, : box["n_pos"]], logp[:, box["n_pos"]:]
        keep = lp_pos.mean(1)
        remove = (lp_neg - keep.detach()[:, None]).clamp(min=config.neg_clamp).mean(1)
        return -keep + remove

    t0 = time.perf_counter()
    m, cfg = config.n_masks, model.cfg
    init = init_gate_logits(m, cfg.n_layers, cfg.n_heads, seed=config.seed)
    logits, loss, stage = _optimize(model, data, init, torch.full((m,), config.lam), config, sampler, loss_fn,
                                    "contrastive CHG",
                                    lambda g: g.mean(0) <= config.interfering_threshold,
                                    micro=False)
    seconds = time.perf_counter() - t0
    g = torch.sigmoid(logits.cpu())
    with torch.inference_mode():
        lp = {}
        for name, d in (("pos", pos), ("neg", neg)):
            base = _target_logprobs(model, d.tokens, d.last, d.targets).mean()
            with gated(model, g):
                gl = _target_logprobs(model, d.tokens.repeat(m, 1), d.last.repeat(m), d.targets.repeat(m))
            lp[f"logp_{name}_ungated"] = float(base)
            lp[f"logp_{name}_gated"] = gl.view(m, -1).mean(1).tolist()
    rows = []
    gm, gs = g.mean(0), _std(g)
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            rows.append({"layer": layer, "head": head, "node": node_id("head", layer=layer, head=head),
                         "g": float(gm[layer, head]), "g_std": float(gs[layer, head]),
                         "removed": bool(gm[layer, head] <= config.interfering_threshold)})
    meta = run_meta(model, dataset=data.name, data=list(data.texts), seed=config.seed, config=config,
                    fit_seconds=round(seconds, 3), final_loss=loss.tolist(),
                    stages=_stages_meta({"contrastive": stage}), **lp)
    return Result("gating.contrastive", pd.DataFrame(rows), meta, name=data.name)
