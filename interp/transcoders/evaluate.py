"""Evaluate per-layer transcoders: L0, explained variance of the MLP output, replacement-model loss.

* per layer (one row of a ``transcoders.eval`` Result): ``l0`` (mean active features per token),
  ``explained_variance`` ``1 - sum ||y - y_hat||^2 / sum ||y - mean(y)||^2`` of ``mlp_out`` given
  the *real* ``mlp_in``, ``nmse`` (= 1 - explained variance), ``dead_features`` (never active on
  the held-out tokens), ``n_tokens`` and ``n_sink_tokens``;
* the **replacement model** (``meta.extra``): every MLP replaced by its transcoder (engine
  ``apply`` on ``mlp_out``, fed the ``mlp_in`` of the same, replaced, pass), its next-token loss
  (:func:`interp.metrics.next_token_loss`) vs the original model's and vs every MLP output zeroed
  (``loss_zero_mlps``), and ``loss_recovered = (zero - replaced) / (zero - original)``.

Sink positions (:func:`interp.transcoders.train.sink_positions`: the first ``start_pos``
positions and massive-activation tokens) are not encoded: the replacement keeps the real MLP
output there (zeroing keeps it too), and they are left out of L0 and explained variance (counted
in ``n_sink_tokens``). Padding and predictions from positions ``< start_pos`` are left out of
every number.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

if TYPE_CHECKING:
    from interp.results import Result
    from interp.types import Model

__all__ = ["replaced_mlps", "evaluate_transcoders"]


@contextlib.contextmanager
def replaced_mlps(model: Model, transcoders: Mapping[int, Any], *, zero: bool = False) -> Iterator[None]:
    """Every forward pass in the block runs with ``mlp_out.l = transcoder_l(mlp_in.l)`` for each given layer.

    At sink positions the real MLP output stands. ``zero=True``: the MLP output is zeroed instead
    of replaced (the reference for ``loss_recovered``), sink positions again kept.
    """
    from interp.engine import Intervention, intervening
    from interp.hooks import hooked
    from interp.sites import Site
    from interp.transcoders.train import encode_tokens, sink_positions

    seen: dict[int, torch.Tensor] = {}

    def keep(layer: int) -> Any:
        def fn(act: torch.Tensor, site: Site) -> None:
            seen[layer] = act
        return fn

    def out(layer: int) -> Any:
        tc = transcoders[layer]

        def fn(region: torch.Tensor) -> torch.Tensor:
            x = seen[layer]
            new = torch.zeros_like(region) if zero else tc.decode(encode_tokens(tc, x)).to(region.dtype)
            return torch.where(sink_positions(tc, x)[..., None], region, new)
        return fn

    ivs = [Intervention("apply", Site("mlp_out", layer), value=out(layer)) for layer in transcoders]
    with hooked(model, [(Site("mlp_in", layer), keep(layer)) for layer in transcoders]), intervening(model, ivs):
        yield


def evaluate_transcoders(model: Model, transcoders: Mapping[int, Any], tokens: Int[Tensor, "batch pos"], *,
                         lengths: Int[Tensor, " batch"] | None = None, start_pos: int = 1,
                         batch_size: int = 8, name: str = "") -> Result:
    """Held-out metrics as a ``transcoders.eval`` Result: one row per layer, losses in ``meta.extra``.

    Args:
        tokens: held-out token rows (right-padded; ``lengths`` gives the real lengths).
        start_pos: predictions made at positions ``< start_pos`` are left out of the losses.
    """
    from interp.hooks import capturing
    from interp.metrics import next_token_loss
    from interp.results import Result, run_meta
    from interp.sites import Site
    from interp.transcoders.train import encode_tokens, sink_positions

    sums = {x: dict(n=0, sinks=0, l0=0.0, err=0.0, sq=0.0, s=None, fired=None) for x in transcoders}
    loss = {"original": 0.0, "replacement": 0.0, "zero_mlps": 0.0}
    n_pred = 0
    sites = [Site(c, x) for x in transcoders for c in ("mlp_in", "mlp_out")]
    with torch.no_grad():
        for i in range(0, tokens.shape[0], batch_size):
            toks = tokens[i:i + batch_size]
            b, p = toks.shape
            lens = lengths[i:i + batch_size] if lengths is not None else torch.full((b,), p)
            pos = torch.arange(p)[None, :]
            real = pos < lens[:, None]
            pred_mask = ((pos >= start_pos) & (pos + 1 < lens[:, None]))[:, :-1]
            with capturing(model, sites) as acts:
                logits = model(toks)
            for x, tc in transcoders.items():
                xin, y = acts[Site("mlp_in", x)].float(), acts[Site("mlp_out", x)].float()
                sink = sink_positions(tc, xin)
                use = real & ~sink
                feats = encode_tokens(tc, xin)[use]
                yhat, y = tc.decode(feats).float(), y[use]
                st = sums[x]
                st["n"] += y.shape[0]
                st["sinks"] += int((real & sink).sum())
                st["l0"] += float((feats != 0).sum())
                st["err"] += float((y - yhat).pow(2).sum())
                st["sq"] += float(y.pow(2).sum())
                st["s"] = y.sum(0) if st["s"] is None else st["s"] + y.sum(0)
                fired = (feats != 0).any(0)
                st["fired"] = fired if st["fired"] is None else st["fired"] | fired
            with replaced_mlps(model, transcoders):
                rlogits = model(toks)
            with replaced_mlps(model, transcoders, zero=True):
                zlogits = model(toks)
            k = int(pred_mask.sum())
            if k:
                for key, lg in (("original", logits), ("replacement", rlogits), ("zero_mlps", zlogits)):
                    loss[key] += float(next_token_loss(lg, toks, pred_mask)) * k
                n_pred += k
    rows = []
    for x, st in sums.items():
        n = max(st["n"], 1)
        var = st["sq"] - (float(st["s"].pow(2).sum()) / n if st["s"] is not None else 0.0)
        nmse = st["err"] / max(var, 1e-30)
        d_sae = int(transcoders[x].cfg.d_sae)
        dead = d_sae - int(st["fired"].sum()) if st["fired"] is not None else d_sae
        rows.append({"layer": int(x), "l0": st["l0"] / n, "explained_variance": 1 - nmse, "nmse": nmse,
                     "dead_features": dead, "d_sae": d_sae, "n_tokens": st["n"], "n_sink_tokens": st["sinks"]})
    table = pd.DataFrame(rows, columns=["layer", "l0", "explained_variance", "nmse", "dead_features", "d_sae",
                                        "n_tokens", "n_sink_tokens"])
    n_pred_safe = max(n_pred, 1)
    lo, lr, lz = (loss[k] / n_pred_safe for k in ("original", "replacement", "zero_mlps"))
    meta = run_meta(model, dataset="held-out", data=tokens, config={"start_pos": start_pos, "batch_size": batch_size},
                    loss_original=lo, loss_replacement=lr, loss_zero_mlps=lz,
                    loss_recovered=(lz - lr) / (lz - lo) if lz != lo else float("nan"), n_predictions=n_pred,
                    layers=sorted(int(x) for x in transcoders))
    return Result("transcoders.eval", table, meta, name=name)
