"""Figures of the ``sinks.*`` Results: pure functions Result -> plotly Figure.

* ``sinks.heads``: layer x head heatmap of alpha_first (attention-sink score).
* ``sinks.layers``: Sink_1^eps rate by layer with its spread over prompts.
* ``sinks.secondary``: secondary-sink lifetimes against creation layer, by class.
* ``sinks.dormancy``: sink mass of every head by prompt domain (switching heads marked).
* ``sinks.drain``: layer x head heatmap of the value-norm ratio (sink / other tokens).
* ``sinks.peak``: residual norm of the first token vs the others by layer (log scale).
* ``sinks.interventions``: change of next-token loss per intervention.

Example:
    >>> import tempfile
    >>> from interp.models import load_model
    >>> from interp.plots import export, figure
    >>> from interp.sinks import sink_scores
    >>> heads, layers, rate = sink_scores(load_model("toy:llama"), ["Hello there", "A cat."])
    >>> fig = figure(heads)                                           # layer x head of alpha_first
    >>> fig.layout.xaxis.title.text, len(fig.data[0].z), len(fig.data[0].z[0])
    ('head', 2, 4)
    >>> export(fig, tempfile.mkdtemp() + "/sinks_heads.pdf").read_bytes()[:5]
    b'%PDF-'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from interp.plots import THEME, apply_theme, dispatch, escape_text, heatmap, lines
from interp.plots import empty_figure as _empty

if TYPE_CHECKING:
    from plotly.graph_objects import Figure

    from interp.results import Result

__all__ = ["plot"]


def _grid(table: Any, value: str) -> tuple[np.ndarray, list[int], list[int]]:
    layers = sorted(table.layer.unique().tolist())
    heads = sorted(table["head"].unique().tolist())
    z = np.full((len(layers), len(heads)), np.nan)
    for r in table.itertuples():
        z[layers.index(r.layer), heads.index(r.head)] = getattr(r, value)
    return z, layers, heads



def _heads(result: Result, **kw: Any) -> Figure:
    t = result.table
    if t.empty:
        return _empty("attention sinks")
    z, layers, heads = _grid(t, "alpha_first")
    eps = result.meta.config.get("eps", result.meta.config.get("sinks", {}).get("eps", 0.3))
    return heatmap(z, x=heads, y=layers, x_title="head", y_title="layer", colorbar_title="alpha_1",
                   title=kw.get("title", f"Attention to the first token (sink if > {eps})"),
                   height=kw.get("height", max(260, 14 * len(layers) + 80)))


def _layers(result: Result, **kw: Any) -> Figure:
    import plotly.graph_objects as go

    t = result.table
    if t.empty:
        return _empty("sink rate by layer")
    fig = go.Figure(go.Scatter(x=t.layer, y=t.sink_rate, mode="lines+markers", name="Sink rate",
                               error_y=dict(type="data", array=t.sink_rate_std, thickness=1)))
    fig.update_layout(title=kw.get("title", "Fraction of sink heads per layer"), xaxis_title="layer",
                      yaxis_title="Sink_1 rate", yaxis_range=[0, 1.05])
    return apply_theme(fig)


def _secondary(result: Result, **kw: Any) -> Figure:
    import plotly.graph_objects as go

    t = result.table
    if t.empty:
        return _empty("secondary sinks")
    fig = go.Figure()
    for i, cls in enumerate(("primary", "secondary", "noise")):
        g = t[t["class"] == cls]
        if g.empty:
            continue
        jitter = np.random.default_rng(i).uniform(-0.2, 0.2, len(g))
        fig.add_trace(go.Scatter(x=g.creation_layer + jitter, y=g.lifetime, mode="markers", name=cls,
                                 marker=dict(color=THEME.categorical[i], size=6, opacity=0.7),
                                 text=[escape_text(repr(str(s))) for s in g.token],
                                 hovertemplate="%{text}: L%{x:.0f}, %{y} layers"))
    fig.update_layout(title=kw.get("title", "Sink lifetimes by creation layer"), xaxis_title="creation layer",
                      yaxis_title="lifetime (layers)")
    return apply_theme(fig)


def _dormancy(result: Result, **kw: Any) -> Figure:
    t = result.table
    if t.empty:
        return _empty("dormant heads")
    domains = list(dict.fromkeys(t.domain))
    nodes = list(dict.fromkeys(t.node))
    z = t.pivot_table(index="domain", columns="node", values="sink_mass").reindex(index=domains, columns=nodes)
    switching = sorted(set(t[t.switches].node))
    title = kw.get("title", "Sink mass by domain" + (escape_text(f" (switching: {', '.join(switching[:6])}"
                                                                f"{'...' if len(switching) > 6 else ''})")
                                                    if switching else ""))
    fig = heatmap(z.to_numpy(), x=nodes, y=domains, x_title="head", y_title="domain", colorbar_title="sink mass",
                  title=title, width=kw.get("width", "double"), height=kw.get("height", 120 + 30 * len(domains)))
    fig.update_xaxes(showticklabels=len(nodes) <= 60)
    return fig


def _drain(result: Result, **kw: Any) -> Figure:
    t = result.table
    if t.empty:
        return _empty("value-state drain")
    z, layers, heads = _grid(t, "ratio")
    return heatmap(z, x=heads, y=layers, x_title="head", y_title="layer", colorbar_title="|v_1| / |v_j|",
                   title=kw.get("title", "Value norm of the first token / others"),
                   height=kw.get("height", max(260, 14 * len(layers) + 80)))


def _peak(result: Result, **kw: Any) -> Figure:
    t = result.table
    if t.empty:
        return _empty("residual-state peak")
    return lines(t.layer, {"first token": t.norm_sink.clip(lower=1e-6), "others (median)": t.norm_other.clip(lower=1e-6)},
                 x_title="layer", y_title="residual norm", log_y=True,
                 title=kw.get("title", "Residual norm of the first token"))


def _interventions(result: Result, **kw: Any) -> Figure:
    import plotly.graph_objects as go

    t = result.table
    if t.empty:
        return _empty("interventions")
    fig = go.Figure(go.Bar(x=[escape_text(i) for i in t.intervention], y=t.delta, text=[f"{d:+.3g}" for d in t.delta],
                           hovertext=[escape_text(s) for s in t.target], marker_color=THEME.categorical[0]))
    fig.update_layout(title=kw.get("title", "Change in next-token loss"), yaxis_title="delta loss (nats)")
    return apply_theme(fig)


def _model(result: Result, **kw: Any) -> Figure:
    import plotly.graph_objects as go

    t = result.table
    if t.empty:
        return _empty("Sink rate")
    fig = go.Figure(go.Bar(x=[f"eps={e}" for e in t.eps], y=t.sink_rate,
                           error_y=dict(type="data", array=t.sink_rate_std)))
    fig.update_layout(title=kw.get("title", "Sink_1 rate of the model"), yaxis_range=[0, 1.05])
    return apply_theme(fig)


_PLOTS = {"sinks.heads": _heads, "sinks.layers": _layers, "sinks.secondary": _secondary,
          "sinks.dormancy": _dormancy, "sinks.drain": _drain, "sinks.peak": _peak,
          "sinks.interventions": _interventions, "sinks.model": _model}


def plot(result: Result, **kwargs: Any) -> Figure:
    """The figure of a ``sinks.*`` Result (see the module docstring for each kind)."""
    return dispatch(result, _PLOTS, "sinks", **kwargs)
