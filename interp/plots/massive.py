"""Figures of the ``massive.*`` Results.

* ``massive.layers``: by layer, the largest |activation| and the median |activation|
  (means over prompts, log scale), with the massive threshold region marked.
* ``massive.dims``: for each consistently massive dimension, the layers where it is.

Example:
    >>> from interp.models import load_model
    >>> from interp.plots import figure
    >>> from interp.sinks import massive_activations
    >>> layers, dims = massive_activations(load_model("toy:llama"), ["Hello there"])
    >>> [tr.name for tr in figure(layers).data]
    ['top 1', 'top 2', 'top 3', 'median']
    >>> figure(dims).layout.annotations[0].text                       # a random toy has no massive dims
    'no data'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from interp.plots import THEME, apply_theme, dispatch, lines
from interp.plots import empty_figure as _empty

if TYPE_CHECKING:
    from plotly.graph_objects import Figure

    from interp.results import Result

__all__ = ["plot"]



def _layers(result: Result, **kw: Any) -> Figure:
    t = result.table
    if t.empty:
        return _empty("massive activations")
    series = {}
    for rank in sorted(t["rank"].unique())[:3]:
        g = t[t["rank"] == rank].groupby("layer").abs_value.mean()
        series[f"top {rank + 1}"] = g.clip(lower=1e-6)
    layers = series["top 1"].index.tolist()
    series["median"] = t[t["rank"] == 0].groupby("layer")["median"].mean().clip(lower=1e-6).reindex(layers)
    fig = lines(layers, {k: v.reindex(layers).tolist() for k, v in series.items()}, x_title="layer",
                y_title="|activation|", log_y=True, title=kw.get("title", "Massive activations by layer"))
    hits = t[t.is_massive]
    if not hits.empty:
        dims = ", ".join(str(d) for d in hits.dim.value_counts().index[:3])
        fig.add_annotation(text=f"massive dims: {dims}", xref="paper", yref="paper", x=0.02, y=0.98,
                           showarrow=False, font=dict(color=THEME.categorical[1]))
    return fig


def _dims(result: Result, **kw: Any) -> Figure:
    import plotly.graph_objects as go

    t = result.table
    if t.empty:
        return _empty("massive dimensions")
    t = t[t.n_layers > 0]
    if t.empty:
        return _empty("massive dimensions (none consistent)")
    fig = go.Figure(go.Bar(y=[f"dim {d}" for d in t.dim], x=t.last_layer - t.first_layer + 1, base=t.first_layer,
                           orientation="h", marker_color=THEME.categorical[1],
                           hovertext=[f"{f:.0%} of prompts" for f in t.fraction]))
    fig.update_layout(title=kw.get("title", "Layers with massive activations"), xaxis_title="layer")
    return apply_theme(fig)


_PLOTS = {"massive.layers": _layers, "massive.dims": _dims}


def plot(result: Result, **kwargs: Any) -> Figure:
    """The figure of a ``massive.*`` Result."""
    return dispatch(result, _PLOTS, "massive-activation", **kwargs)
