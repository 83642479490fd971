"""Test an attribution graph by intervening on its features and comparing with what its edges predict.

For a feature ``s`` scaled by ``factor`` (0 = ablated), the graph predicts the change of every
logit target through all its paths: with ``M[t, s] = A[t, s] / a_s`` the Jacobian of a target's
pre-activation with respect to a source feature's activation, the features change by
``da = (I - M_ff)^-1 e_s (factor - 1) a_s`` (active downstream features pass changes through
unchanged: JumpReLU is the identity above its threshold) and the (demeaned) logits by ``M_lf da``.

Observed, in a replacement model where every feature downstream is *recomputed* by its transcoder
(so it may switch on or off), with the graph's error terms added as constants:

* ``mode="frozen"``: the local replacement model (attention patterns and norm scales frozen) —
  the graph's prediction is exact unless some feature crosses its threshold;
* ``mode="open"``: attention and norms recomputed (the replacement model's own forward pass).

:func:`intervention_agreement` reports, per top feature (by node influence), predicted and observed
changes of the top logit, whether any feature switched state, and the agreement over them
(Pearson correlation, sign agreement).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from interp.errors import ConfigError

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["predicted_logit_change", "observed_logit_change", "intervention_agreement"]


def predicted_logit_change(graph: Any, feature: int, factor: float) -> Float[Tensor, " n_logits"]:
    """The graph's prediction of the change in each logit target when feature node ``feature`` is scaled."""
    n_f, lo = graph.n_features, graph.logit_start
    a = graph.activations.double()
    adj = graph.adjacency.double()
    m_ff = adj[:n_f, :n_f] / a[None, :]
    m_lf = adj[lo:, :n_f] / a[None, :]
    e = torch.zeros(n_f, dtype=torch.float64)
    e[feature] = (factor - 1.0) * float(a[feature])
    da = torch.linalg.solve(torch.eye(n_f, dtype=torch.float64) - m_ff, e)
    return (m_lf @ da).float()


def _targets(model: Model, graph: Any, logits: Tensor) -> Tensor:
    last = logits[..., -1, :].float()
    ids = graph.logit_tokens.to(last.device)
    return last[..., ids] - last.mean(-1, keepdim=True)


def _run(model: Model, rec: Any, transcoders: Mapping[int, Any], modify: Callable[[int, Tensor], Tensor],
         mode: str) -> tuple[Tensor, dict[int, Tensor]]:
    from interp.hooks import hooked
    from interp.sites import Site
    from interp.transcoders.train import encode_tokens

    n_layers = int(model.cfg.n_layers)
    seen: dict[int, Tensor] = {}
    active: dict[int, Tensor] = {}

    def keep(x: int) -> Any:
        def fn(act: Tensor, site: Site) -> None:
            seen[x] = act
        return fn

    def out(x: int) -> Any:
        tc = transcoders[x]

        def fn(act: Tensor, site: Site) -> Tensor:
            acts = modify(x, encode_tokens(tc, seen[x][0]))
            active[x] = acts != 0
            return (tc.decode(acts) + rec.error[x]).to(act.dtype)[None]
        return fn

    def const(value: Tensor) -> Any:
        return lambda act, site: value.to(act.dtype)

    hooks: list[tuple[Site, Any]] = []
    for x in range(n_layers):
        if mode == "frozen":
            hooks += [(Site("ln1_scale", x), const(rec.ln1_scale[x])), (Site("pattern", x), const(rec.pattern[x]))]
        hooks += [(Site("mlp_in", x), keep(x)), (Site("mlp_out", x), out(x))]
    if mode == "frozen":
        hooks.append((Site("ln_final_scale"), const(rec.ln_final_scale)))
    with torch.no_grad(), hooked(model, hooks), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="A forward hook edited hook_scale")
        logits = model(rec.tokens[None])
    return logits[0], active


def observed_logit_change(model: Model, graph: Any, transcoders: Mapping[int, Any], feature: int, factor: float, *,
                          mode: str = "frozen", rec: Any = None) -> tuple[Float[Tensor, " n_logits"], bool]:
    """Observed change of each logit target, and whether any other feature switched on or off."""
    from interp.transcoders.attribution import record_prompt

    if mode not in ("frozen", "open"):
        raise ConfigError(f"intervention mode {mode!r} unknown; expected 'frozen' or 'open'")
    rec = rec or record_prompt(model, torch.tensor(graph.tokens), transcoders)
    layer, pos, feat = graph.features[feature].tolist()

    def scale(x: int, acts: Tensor) -> Tensor:
        if x == layer:
            acts = acts.clone()
            acts[pos, feat] = acts[pos, feat] * factor
        return acts

    base, on0 = _run(model, rec, transcoders, lambda x, a: a, mode)
    new, on1 = _run(model, rec, transcoders, scale, mode)
    switched = False
    for x in on0:
        diff = on0[x] ^ on1[x]
        if x == layer:
            diff[pos, feat] = False
        switched = switched or bool(diff.any())
    return _targets(model, graph, new) - _targets(model, graph, base), switched


def intervention_agreement(model: Model, graph: Any, transcoders: Mapping[int, Any], *, top: int = 10,
                           factor: float = 0.0, mode: str = "frozen") -> dict[str, Any]:
    """Scale each of the ``top`` most influential features; compare the top logit's predicted and observed change.

    Returns:
        ``{"rows": [{"node", "influence", "predicted", "observed", "switched"}], "pearson", "sign_agreement"}``.
    """
    from interp.transcoders.attribution import record_prompt

    rec = record_prompt(model, torch.tensor(graph.tokens), transcoders)
    infl = graph.node_influence()[: graph.n_features]
    order = torch.argsort(infl, descending=True)[:top].tolist()
    ids = graph.node_ids()
    rows = []
    for i in order:
        pred = predicted_logit_change(graph, i, factor)
        obs, switched = observed_logit_change(model, graph, transcoders, i, factor, mode=mode, rec=rec)
        rows.append({"node": ids[i], "influence": float(infl[i]), "predicted": float(pred[0]),
                     "observed": float(obs[0]), "switched": switched})
    p = torch.tensor([r["predicted"] for r in rows], dtype=torch.float64)
    o = torch.tensor([r["observed"] for r in rows], dtype=torch.float64)
    pearson = float(torch.corrcoef(torch.stack([p, o]))[0, 1]) if len(rows) > 1 else float("nan")
    sign = float(((p.sign() == o.sign()) | ((p.abs() < 1e-9) & (o.abs() < 1e-9))).double().mean()) if rows else float("nan")
    return {"rows": rows, "pearson": pearson, "sign_agreement": sign, "mode": mode, "factor": factor}
