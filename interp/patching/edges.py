"""EAP and EAP-IG edge scores (see :mod:`interp.patching.attribution` for the method notes).

Senders: ``EMBED`` (embedding output), every head (``z_u W_O[u]``), every MLP
(``mlp_out``). Receivers: the q, k, v inputs of every head of a later layer, the MLP
input of the same or a later layer (attention precedes the MLP in a block), and the
logits (the residual entering the final norm). All scores come from one matrix product
per prompt chunk: ``[senders, batch*pos*d_model] @ [batch*pos*d_model, receivers]``.

Example:
    >>> from interp.datasets import TaskDataset
    >>> from interp.patching.attribution import AttributionConfig
    >>> ds = TaskDataset("demo", clean=("ab cd x", "ef gh y"), corrupted=("ab ce x", "ef gi y"),
    ...                  answers=("y", "z"), counterfactuals=("z", "y"))
    >>> r = edge_attribution_patching(model, ds, AttributionConfig(ig_steps=5))
    >>> len(r.table)                  # every edge of the toy's graph (2 layers, 4 heads)
    110
    >>> r.table.nlargest(1, "value")[["src", "dst", "dst_input"]].values.tolist()   # the strongest edge
    [['L0.H2', 'LOGITS', 'logits']]
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from interp.nodes import node_id
from interp.results import Result, run_meta
from interp.schemas import add_effect
from interp.sites import Site

from interp.patching._run import Counter
from interp.patching.exact import run_baseline

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["edge_attribution_patching"]


def _receivers(cfg: Any) -> list[tuple[Site, int, str, int, int]]:
    """(site, index along its head axis or -1, dst_input, dst layer, kv group or -1) per receiver column."""
    n_heads = cfg.n_heads
    n_kv = getattr(cfg, "n_key_value_heads", None) or n_heads
    out: list[tuple[Site, int, str, int, int]] = []
    for l in range(cfg.n_layers):
        out += [(Site("q_input", l), h, "q", l, -1) for h in range(n_heads)]
        out += [(Site("k_input", l), g, "k", l, g) for g in range(n_kv)]
        out += [(Site("v_input", l), g, "v", l, g) for g in range(n_kv)]
        out.append((Site("mlp_in", l), -1, "mlp", l, -1))
    out.append((Site("final_resid"), -1, "logits", cfg.n_layers, -1))
    return out


def edge_attribution_patching(model: Model, data: Any, config: Any = None, *, exact: Result | None = None) -> Result:
    """EAP (``config.ig_steps == 0``) or EAP-IG edge scores for every sender -> receiver edge.

    EAP-IG interpolates the input embeddings (``config.ig_mode="inputs"``) or, with
    ``ig_mode="activations"``, each sender group's output in turn (EAP-IG-activations: 1 + 2 x n_layers
    groups, ``ig_steps`` forward + backward rows each; see
    :func:`interp.patching.attribution.activation_ig_gradients`).

    Args:
        model: a model from :func:`interp.load_model` (its split-qkv mode is switched on
            only during the gradient passes).
        data: a TaskDataset of clean/corrupted pairs.
        config: :class:`~interp.patching.attribution.AttributionConfig` (``components`` and
            ``positions`` are ignored: edges always sum over positions).
        exact: an exact head-patching Result; the Spearman/Pearson agreement of the summed
            out-edge scores of each sender is stored in ``meta.extra["agreement"]``.

    Returns:
        Result ``patching.edges``: columns ``method`` (eap|eap-ig|eap-ig-activations), ``direction``, ``metric``,
        ``src``, ``dst``, ``dst_input`` (q|k|v|mlp|logits), ``src_layer``, ``dst_layer``,
        ``kv_head`` (-1 unless a shared GQA k/v input), ``first_in_group``, ``value``
        (estimated metric change through that edge).
    """
    from interp.patching.attribution import (AttributionConfig, _gradients, _grad_for, activation_ig_gradients,
                                             agreement, split_qkv)
    from interp.patching.metrics import prepare_pairs
    from interp.arch import require_arch

    require_arch(model, method="EAP edges", causal=True, parallel_attn_mlp=False, post_attn_norm=False,
                 post_mlp_norm=False)
    config = config or AttributionConfig()
    t0 = time.perf_counter()
    pairs = prepare_pairs(model, data)
    cfg = model.cfg
    n_b, n_layers, n_heads = len(pairs), cfg.n_layers, cfg.n_heads
    n_kv = getattr(cfg, "n_key_value_heads", None) or n_heads
    counter = Counter()
    send_sites = [Site("embed")] + [Site(c, l) for l in range(n_layers) for c in ("z", "mlp_out")]
    base, acts = run_baseline(model, pairs, send_sites, counter, with_logp=False)
    recv = _receivers(cfg)
    recv_sites = list(dict.fromkeys(r[0] for r in recv))
    sign = 1.0 if config.direction == "denoising" else -1.0
    div = (base.mean_clean - base.mean_corr) if config.metric == "logit_diff_norm" else 1.0

    # sender deltas [n_src, B, P, d] and receiver grads [B, P, d, n_dst], contracted per prompt chunk
    src_names = ["EMBED"]
    for l in range(n_layers):
        src_names += [node_id("head", layer=l, head=h) for h in range(n_heads)] + [node_id("mlp", layer=l)]
    scores = torch.zeros(len(src_names), len(recv), dtype=torch.float64, device=pairs.clean.device)

    chunks = [slice(i0, min(n_b, i0 + config.batch_size)) for i0 in range(0, n_b, config.batch_size)]

    def sender_deltas(sl: slice) -> torch.Tensor:
        deltas = [sign * (acts[Site("embed")][:n_b][sl] - acts[Site("embed")][n_b:][sl])]
        for l in range(n_layers):
            dz = acts[Site("z", l)][:n_b][sl] - acts[Site("z", l)][n_b:][sl]  # [b, P, H, dh]
            w_o = model.blocks[l].attn.W_O.detach()  # [H, dh, d]
            deltas += list((sign * torch.einsum("bphk,hkd->hbpd", dz, w_o)).unbind(0))
            deltas.append(sign * (acts[Site("mlp_out", l)][:n_b][sl] - acts[Site("mlp_out", l)][n_b:][sl]))
        return torch.stack([d.reshape(-1) for d in deltas])  # [n_src, b*P*d]

    d_mats = [sender_deltas(sl) for sl in chunks] if config.ig_mode == "activations" and config.ig_steps else None

    def add_scores(g: dict[Site, torch.Tensor], rows: slice) -> None:
        """``scores[rows] += deltas[rows] . g`` (rows: the senders whose edges these gradients score)."""
        for c, sl in enumerate(chunks):
            d_mat = (d_mats[c] if d_mats is not None else sender_deltas(sl))[rows]
            cols = []
            for site, idx, _, _, _ in recv:
                gr = g[site][sl]
                cols.append((gr.select(2, idx) if idx >= 0 else gr).reshape(-1))
            g_mat = torch.stack(cols, dim=1)  # [b*P*d, n_dst]
            scores[rows] += (d_mat @ g_mat).double()

    if config.ig_steps and config.ig_mode == "activations":
        # one group of senders at a time: the embedding, each layer's heads, each MLP (their own gradients)
        groups = [(Site("embed"), slice(0, 1))]
        for l in range(n_layers):
            b0 = 1 + l * (n_heads + 1)
            groups += [(Site("z", l), slice(b0, b0 + n_heads)),
                       (Site("mlp_out", l), slice(b0 + n_heads, b0 + n_heads + 1))]
        for group, rows in groups:
            with split_qkv(model):
                g = activation_ig_gradients(model, pairs, config, recv_sites, acts, counter, group)
            add_scores(g, rows)
            del g
    else:
        with split_qkv(model):
            grads = _gradients(model, pairs, config, recv_sites, acts, counter)
        add_scores(_grad_for(grads, config), slice(None))
    scores = (scores / div).cpu()

    def src_layer(i: int) -> int:
        return -1 if i == 0 else (i - 1) // (n_heads + 1)

    rep = n_heads // n_kv
    rows = []
    for j, (site, idx, inp, dl, kv) in enumerate(recv):
        if inp in ("q", "k", "v"):
            dst_heads = [idx] if inp == "q" else list(range(idx * rep, (idx + 1) * rep))
            dsts = [(node_id("head", layer=dl, head=h), h == dst_heads[0]) for h in dst_heads]
        elif inp == "mlp":
            dsts = [(node_id("mlp", layer=dl), True)]
        else:
            dsts = [("LOGITS", True)]
        for i, src in enumerate(src_names):
            sl_ = src_layer(i)
            is_mlp = src.endswith(".MLP")
            ok = sl_ < dl or (inp == "mlp" and sl_ == dl and not is_mlp)
            if not ok:
                continue
            v = float(scores[i, j])
            for dst, first in dsts:
                rows.append({"method": config.method.replace("atp", "eap"), "direction": config.direction,
                             "metric": config.metric, "src": src, "dst": dst, "dst_input": inp, "src_layer": sl_,
                             "dst_layer": dl, "kv_head": kv if (inp in ("k", "v") and rep > 1) else -1,
                             "first_in_group": first, "value": v})
    table = add_effect(pd.DataFrame(rows), base.reference(config.direction), estimated=True)
    extra: dict[str, Any] = {"ld_clean": base.mean_clean, "ld_corr": base.mean_corr, "n_prompts": n_b,
                             "forward_passes": counter.forward, "backward_passes": counter.backward,
                             "ig_steps": config.ig_steps, "seconds": round(time.perf_counter() - t0, 3),
                             "note": "k/v edges of grouped-query attention are per KV head; the score is repeated on "
                                     "each query head of the group (first_in_group marks one copy)."}
    if exact is not None:
        extra["agreement"] = agreement(table, exact)
    meta = run_meta(model, dataset=pairs.dataset.name, data=list(zip(pairs.texts, pairs.corrupted_texts)),
                    config=config, **extra)
    return Result("patching.edges", table, meta, name=f"{table['method'].iloc[0]}-{config.direction}")
