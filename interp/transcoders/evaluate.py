"""Evaluate per-layer transcoders: L0, explained variance of the MLP output, replacement-model loss.

* per layer: ``l0`` (mean active features per token) and ``explained_variance``
  ``1 - sum ||y - y_hat||^2 / sum ||y - mean(y)||^2`` of ``mlp_out`` given the *real* ``mlp_in``;
* the **replacement model**: every MLP replaced by its transcoder (engine ``apply`` on
  ``mlp_out``, fed the ``mlp_in`` of the same, replaced, pass), its next-token loss
  (:func:`interp.metrics.next_token_loss`) vs the original model's.

Positions ``< start_pos`` and padding are left out of every number.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Int
from torch import Tensor

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["replaced_mlps", "evaluate_transcoders"]


@contextlib.contextmanager
def replaced_mlps(model: Model, transcoders: Mapping[int, Any]) -> Iterator[None]:
    """Every forward pass in the block runs with ``mlp_out.l = transcoder_l(mlp_in.l)`` for each given layer."""
    from interp.engine import Intervention, intervening
    from interp.hooks import hooked
    from interp.sites import Site

    seen: dict[int, torch.Tensor] = {}

    def keep(layer: int) -> Any:
        def fn(act: torch.Tensor, site: Site) -> None:
            seen[layer] = act
        return fn

    def out(layer: int) -> Any:
        tc = transcoders[layer]
        return lambda region: tc(seen[layer]).to(region.dtype)

    ivs = [Intervention("apply", Site("mlp_out", layer), value=out(layer)) for layer in transcoders]
    with hooked(model, [(Site("mlp_in", layer), keep(layer)) for layer in transcoders]), intervening(model, ivs):
        yield


def evaluate_transcoders(model: Model, transcoders: Mapping[int, Any], tokens: Int[Tensor, "batch pos"], *,
                         lengths: Int[Tensor, " batch"] | None = None, start_pos: int = 1,
                         batch_size: int = 8) -> dict[str, Any]:
    """Held-out metrics: ``{"layers": {l: {"l0", "explained_variance", "nmse"}}, "loss_original",
    "loss_replacement", "n_tokens"}`` (see the module doc)."""
    from interp.hooks import capturing
    from interp.metrics import next_token_loss
    from interp.sites import Site

    sums = {x: dict(n=0, l0=0.0, err=0.0, sq=0.0, s=None) for x in transcoders}
    loss_o = loss_r = 0.0
    n_pred = 0
    sites = [Site(c, x) for x in transcoders for c in ("mlp_in", "mlp_out")]
    with torch.no_grad():
        for i in range(0, tokens.shape[0], batch_size):
            toks = tokens[i:i + batch_size]
            b, p = toks.shape
            lens = lengths[i:i + batch_size] if lengths is not None else torch.full((b,), p)
            pos = torch.arange(p)[None, :]
            tok_mask = (pos >= start_pos) & (pos < lens[:, None])
            pred_mask = ((pos >= start_pos) & (pos + 1 < lens[:, None]))[:, :-1]
            with capturing(model, sites) as acts:
                logits = model(toks)
            for x, tc in transcoders.items():
                xin, y = acts[Site("mlp_in", x)][tok_mask].float(), acts[Site("mlp_out", x)][tok_mask].float()
                feats = tc.encode(xin)
                yhat = tc.decode(feats)
                st = sums[x]
                st["n"] += y.shape[0]
                st["l0"] += float((feats != 0).sum())
                st["err"] += float((y - yhat).pow(2).sum())
                st["sq"] += float(y.pow(2).sum())
                st["s"] = y.sum(0) if st["s"] is None else st["s"] + y.sum(0)
            with replaced_mlps(model, transcoders):
                rlogits = model(toks)
            k = int(pred_mask.sum())
            if k:
                loss_o += float(next_token_loss(logits, toks, pred_mask)) * k
                loss_r += float(next_token_loss(rlogits, toks, pred_mask)) * k
                n_pred += k
    layers = {}
    for x, st in sums.items():
        n = max(st["n"], 1)
        var = st["sq"] - float(st["s"].pow(2).sum()) / n
        layers[x] = {"l0": st["l0"] / n, "explained_variance": 1 - st["err"] / max(var, 1e-30),
                     "nmse": st["err"] / max(var, 1e-30)}
    n_pred = max(n_pred, 1)
    return {"layers": layers, "loss_original": loss_o / n_pred, "loss_replacement": loss_r / n_pred,
            "n_tokens": sums[next(iter(sums))]["n"] if sums else 0}
