"""Figures of the VLM analyses (paper theme): maps over the image grid and per-kind plots.

* :func:`grid_map`: one value per image token drawn over the image's patch grid, optionally over the
  image itself (the processed pixels, semi-transparent heat on top).
* :func:`attention_map`: one head's attention from a query (default: the last token) to the image tokens.
* :func:`recovery_map`: FCCT's recovery of a ``vlm.fcct`` Result with one group per patch
  (:func:`interp.vlm.fcct.patch_groups`) over the grid.
* :func:`plot`: the figure of a ``vlm.*`` Result (``Result.figure()`` dispatches here): ``vlm.fcct``
  (layers x groups, one panel per component; a patch grid for per-patch groups), ``vlm.heads`` /
  ``vlm.vhd`` (layers x heads), ``vlm.sinks`` (sink tokens per layer), ``vlm.var`` / ``vlm.iri`` /
  ``vlm.vhr`` (answer probability before and after, per prompt).

Token strings and group names are data: escaped (:func:`interp.plots.escape_text`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from interp.errors import DataError
from interp.plots import apply_theme, dispatch, escape_text, heatmap

if TYPE_CHECKING:
    from plotly.graph_objects import Figure

    from interp.results import Result
    from interp.types import Model
    from interp.vlm.inputs import VisionBatch

__all__ = ["grid_map", "attention_map", "recovery_map", "plot"]


def _pixels(batch: VisionBatch, image: int) -> np.ndarray:
    """The processed image as ``[H, W, 3]`` uint8 (the processor's normalisation undone to its min/max)."""
    pv = batch.pixel_values[image].detach().float().cpu().numpy().transpose(1, 2, 0)
    lo, hi = float(pv.min()), float(pv.max())
    return ((pv - lo) / (hi - lo if hi > lo else 1.0) * 255).astype(np.uint8)


def grid_map(values: Any, *, rows: int | None = None, title: str = "", colorbar_title: str = "",
             image: np.ndarray | None = None, diverging: bool = False) -> Figure:
    """Values of one image's tokens (raster order) as a ``rows x cols`` map; over ``image`` when given."""
    import plotly.graph_objects as go

    v = np.asarray(values, dtype=float).ravel()
    rows = rows or math.isqrt(v.size)
    if rows * (v.size // rows) != v.size:
        raise DataError(f"{v.size} values do not fill a grid of {rows} rows")
    z = v.reshape(rows, -1)
    fig = heatmap(z, x=list(range(z.shape[1])), y=list(range(rows)), x_title="patch column", y_title="patch row",
                  title=title, diverging=diverging, colorbar_title=colorbar_title)
    if image is not None:
        h, w = image.shape[:2]
        cw, ch = w / z.shape[1], h / rows                  # cells in pixels; image pixels are centred on integers
        fig.data[0].update(x0=cw / 2 - 0.5, dx=cw, y0=ch / 2 - 0.5, dy=ch, x=None, y=None, opacity=0.55)
        fig.add_trace(go.Image(z=image))
        fig.data = (fig.data[1], fig.data[0])
        fig.update_layout(xaxis_title="x (pixels)", yaxis_title="y (pixels)")
    fig.update_yaxes(autorange="reversed", scaleanchor="x")
    return fig


def attention_map(model: Model, batch: VisionBatch, layer: int, head: int, *, row: int = 0,
                  query: int | None = None, over_image: bool = True) -> Figure:
    """Head ``(layer, head)``'s attention from ``query`` (default: the last token) to prompt ``row``'s first image."""
    import torch

    from interp.hooks import run_capture
    from interp.sites import Site
    from interp.vlm.groups import patch_grid

    g_rows, _, offset = patch_grid(model, batch)
    site = Site("pattern", layer)
    with torch.inference_mode(), batch.feed(model):
        pat = run_capture(model, batch.tokens, [site])[site]
    q = int(batch.last[row]) if query is None else int(query)
    pos = batch.image_positions(row)
    per = len(pos) // max(batch.images_per_prompt[row], 1)
    cells = list(pos[offset:per])
    values = pat[row, head, q, cells].float().numpy()
    first = sum(batch.images_per_prompt[:row])
    tok = model.tokenizer.decode([int(batch.tokens[row, q])])
    return grid_map(values, rows=g_rows, image=_pixels(batch, first) if over_image else None,
                    title=f"L{layer}.H{head} attention from {escape_text(repr(tok))} to the image",
                    colorbar_title="attention")


def recovery_map(result: Result, *, component: str | None = None, layer: int | None = None,
                 image: np.ndarray | None = None) -> Figure:
    """FCCT recovery per image patch over the grid (groups ``patch:k`` of a ``vlm.fcct`` Result)."""
    t = result.table[result.table.group.astype(str).str.startswith("patch:")]
    if t.empty:
        raise DataError(f"Result {result.id!r} has no per-patch groups (build them with interp.vlm.fcct.patch_groups)")
    component = component or str(t.component.iloc[0])
    layer = int(t.layer.iloc[0]) if layer is None else int(layer)
    t = t[(t.component == component) & (t.layer == layer)]
    if t.empty:
        raise DataError(f"Result {result.id!r} has no per-patch rows for {component} at layer {layer}")
    k = t.group.str.slice(6).astype(int)
    values = t.recovery.to_numpy()[np.argsort(k.to_numpy())]
    return grid_map(values, image=image, diverging=True, colorbar_title="recovery",
                    title=f"FCCT recovery: {escape_text(component)} at layer {layer}, one patch restored")


def _fcct(result: Result, **kwargs: Any) -> Figure:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from interp.plots import THEME

    t = result.table
    if t.group.astype(str).str.startswith("patch:").all():
        return recovery_map(result, **kwargs)
    comps = list(dict.fromkeys(t.component))
    groups = list(dict.fromkeys(t.group))
    layers = sorted(set(t.layer))
    fig = make_subplots(rows=1, cols=len(comps), subplot_titles=[escape_text(c) for c in comps], shared_yaxes=True)
    lim = max(1.0, float(np.nanmax(np.abs(t.recovery.to_numpy()))))
    for i, c in enumerate(comps, 1):
        piv = t[t.component == c].pivot_table(index="group", columns="layer", values="recovery").reindex(groups)
        fig.add_trace(go.Heatmap(z=piv.reindex(columns=layers).to_numpy(), x=layers,
                                 y=[escape_text(g) for g in groups], zmid=0, zmin=-lim, zmax=lim,
                                 colorscale=THEME.diverging, showscale=i == len(comps),
                                 colorbar=dict(title="recovery"),
                                 hovertemplate="%{y} / layer %{x}: %{z:.3f}<extra></extra>"), row=1, col=i)
        fig.update_xaxes(title_text="layer", row=1, col=i)
    fig.update_layout(title="FCCT recovery rate")
    return apply_theme(fig, width="double")


def _heads(value: str, title: str) -> Any:
    def draw(result: Result, **_: Any) -> Figure:
        t = result.table
        piv = t.pivot_table(index="layer", columns="head", values=value)
        return heatmap(piv.to_numpy(), x=list(piv.columns), y=list(piv.index), x_title="head", y_title="layer",
                       title=title, colorbar_title=value)
    return draw


def _before_after(after: str, label: str) -> Any:
    def draw(result: Result, **_: Any) -> Figure:
        import plotly.graph_objects as go

        t = result.table
        x = [str(p) for p in t.prompt]
        fig = go.Figure([go.Bar(x=x, y=t.p_base, name="base"), go.Bar(x=x, y=t[after], name=escape_text(label))])
        fig.update_layout(barmode="group", xaxis_title="prompt", yaxis_title="P(answer)",
                          title=f"answer probability without and with {escape_text(label)}")
        return apply_theme(fig)
    return draw


def _sinks(result: Result, **_: Any) -> Figure:
    from interp.plots import lines

    t = result.table
    layers = sorted(set(t.layer)) or [0]
    series = {"image sinks": [int(((t.layer == l) & t.is_image).sum()) for l in layers],
              "text sinks": [int(((t.layer == l) & ~t.is_image.astype(bool)).sum()) for l in layers]}
    return lines(layers, series, x_title="layer", y_title="sink tokens", title="sink tokens per layer (VAR)")


_PLOTS = {"vlm.fcct": _fcct, "vlm.heads": _heads("image_attention", "image attention per head"),
          "vlm.vhd": _heads("vhd", "vision-aware head divergence"), "vlm.sinks": _sinks,
          "vlm.var": _before_after("p_var", "VAR"), "vlm.iri": _before_after("p_iri", "IRI"),
          "vlm.vhr": _before_after("p_vhr", "VHR")}


def plot(result: Result, **kwargs: Any) -> Figure:
    """The figure of a ``vlm.*`` Result (see the module doc)."""
    return dispatch(result, _PLOTS, "VLM", **kwargs)
