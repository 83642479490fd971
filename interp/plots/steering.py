"""Figures of the steering family (pure functions Result -> plotly Figure).

Kinds: ``steering.probe`` (probe and control accuracy by layer), ``steering.sweep``
(target effect and perplexity vs alpha, one line per layer), ``steering.lens``
(decodability vs steerability by layer, or a map over tasks x layers),
``steering.projection`` (projection of labelled data on the axis, by layer),
``steering.fv`` (AIE heatmap layer x head), ``steering.fv_sweep`` (zero-shot accuracy with the
FV by layer), ``steering.axes`` (axis norms), ``steering.cylinder`` (effect vs angle).

Example:
    >>> import torch
    >>> from interp.plots import figure
    >>> from interp.sites import Site
    >>> from interp.steering.axes import axes_result, contrast_axis
    >>> g = torch.Generator().manual_seed(0)
    >>> pos, neg = torch.randn(8, 16, generator=g) + 1, torch.randn(8, 16, generator=g)
    >>> ax = contrast_axis(pos, neg, site=Site("resid_post", 1), name="<sentiment>")
    >>> figure(axes_result([ax])).data[0].x                  # one bar per axis; names escaped
    ('&lt;sentiment&gt;/contrast/L1',)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from interp.plots import dispatch, escape_text

if TYPE_CHECKING:
    from plotly.graph_objects import Figure

    from interp.results import Result

__all__ = ["plot"]


def _probe(t: Any, **kw: Any) -> Figure:
    from interp.plots import lines

    t = t.sort_values("layer")
    series = {"probe (held-out)": t.accuracy}
    if "control_accuracy" in t:
        series["control task"] = t.control_accuracy
    return lines(t.layer, series, x_title="layer", y_title="accuracy", title=kw.get("title", "Linear probe by layer"))


def _sweep(t: Any, **kw: Any) -> Figure:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from interp.plots import THEME, apply_theme

    effect = kw.get("effect") or ("target_share" if "target_share" in t else "target_prob")
    fig = make_subplots(rows=1, cols=2, subplot_titles=(effect.replace("_", " "), "perplexity (neutral text)"))
    for i, (layer, g) in enumerate(t.groupby("layer")):
        g = g.sort_values("alpha")
        color = THEME.categorical[i % len(THEME.categorical)]
        fig.add_trace(go.Scatter(x=g.alpha, y=g[effect], mode="lines+markers", name=f"L{layer}",
                                 line=dict(color=color)), row=1, col=1)
        fig.add_trace(go.Scatter(x=g.alpha, y=g.perplexity, mode="lines+markers", name=f"L{layer}",
                                 line=dict(color=color), showlegend=False), row=1, col=2)
    fig.update_xaxes(title_text="alpha")
    fig.update_layout(title=kw.get("title", "Steering sweep"))
    return apply_theme(fig, width="double")


def _lens(t: Any, **kw: Any) -> Figure:
    from interp.plots import heatmap, lines

    tasks = list(dict.fromkeys(t.task)) if "task" in t else [""]
    if len(tasks) == 1:
        t = t.sort_values("layer")
        series = {"decodable (logit lens)": t.decode_acc, "steerable (FV added)": t.steer_acc}
        if "affine_decode_acc" in t:
            series["decodable (affine lens)"] = t.affine_decode_acc
        return lines(t.layer, series, x_title="layer", y_title="accuracy",
                     title=kw.get("title", escape_text(f"Decodability vs steerability {tasks[0]}".strip())))
    piv = (t.assign(diff=t.steer_acc - t.decode_acc).pivot(index="task", columns="layer", values="diff"))
    return heatmap(piv.values, x=list(piv.columns), y=list(piv.index), x_title="layer", y_title="task",
                   diverging=True, colorbar_title="steer - decode",
                   title=kw.get("title", "Steerable minus decodable"))


def _projection(t: Any, **kw: Any) -> Figure:
    import plotly.graph_objects as go

    from interp.plots import THEME, apply_theme

    fig = go.Figure()
    for lab in sorted(t.label.unique()):
        g = t[t.label == lab]
        fig.add_trace(go.Box(x=g.layer, y=g.projection, name=f"label {lab}", boxpoints=False,
                             marker_color=THEME.categorical[int(lab) % len(THEME.categorical)]))
    fig.update_layout(boxmode="group", title=kw.get("title", "Projection on the axis by layer"),
                      xaxis_title="layer", yaxis_title="projection")
    return apply_theme(fig, width="double")


def _fv(t: Any, **kw: Any) -> Figure:
    from interp.plots import heatmap

    piv = t.pivot(index="layer", columns="head", values="aie")
    return heatmap(piv.values, x=list(piv.columns), y=list(piv.index), x_title="head", y_title="layer",
                   diverging=True, colorbar_title="AIE", title=kw.get("title", "Average indirect effect"))


def _fv_sweep(t: Any, **kw: Any) -> Figure:
    from interp.plots import lines

    t = t.sort_values("layer")
    return lines(t.layer, {"with FV": t.accuracy, "zero-shot baseline": t.baseline}, x_title="layer",
                 y_title="zero-shot accuracy", title=kw.get("title", "Function vector by layer"))


def _axes(t: Any, **kw: Any) -> Figure:
    import plotly.graph_objects as go

    from interp.plots import apply_theme

    fig = go.Figure([go.Bar(x=[escape_text(f"{n}/{m}/L{l}") for n, m, l in zip(t["name"], t.method, t.layer)],
                            y=t.norm)])
    fig.update_layout(title=kw.get("title", "Axis norms"), yaxis_title="norm")
    return apply_theme(fig)


def _cylinder(t: Any, **kw: Any) -> Figure:
    from interp.plots import lines

    t = t.sort_values("angle_deg")
    return lines(t.angle_deg, {"steering effect": t.effect}, x_title="angle to axis (deg)", y_title="effect",
                 title=kw.get("title", "Steering vs angle to the axis"))


_KINDS = {"steering.probe": _probe, "steering.sweep": _sweep, "steering.lens": _lens,
          "steering.projection": _projection, "steering.fv": _fv, "steering.fv_sweep": _fv_sweep,
          "steering.axes": _axes, "steering.cylinder": _cylinder}
# The drawing functions take the table; dispatch hands them the Result.
_BY_KIND = {kind: (lambda result, _fn=fn, **kw: _fn(result.table, **kw)) for kind, fn in _KINDS.items()}


def plot(result: Result, **kw: Any) -> Figure:
    """Figure of a ``steering.*`` Result (see the module docstring for the kinds)."""
    return dispatch(result, _BY_KIND, "steering", **kw)
