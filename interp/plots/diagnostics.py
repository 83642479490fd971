"""Figures of attention diagnostics: per-layer lines, per-head entropy grid, training curves per run.

Example:
    >>> import pandas as pd
    >>> from interp.results import Result
    >>> t = pd.DataFrame({"run": ["wd=0", "wd=0", "wd=1", "wd=1"], "step": [0, 10, 0, 10], "layer": 0,
    ...                   "cos_sim": [0.5, 0.6, 0.5, 0.9], "entropy_std": [0.1, 0.1, 0.1, 0.0], "entropy_mean": 0.5,
    ...                   "n_heads": 4, "n_prompts": 8, "m_test_acc": [0.0, 0.1, 0.0, 1.0]})
    >>> fig = plot(Result("diagnostics.curves", t))
    >>> len(fig.data), fig.data[0].name
    (6, 'wd=0')
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from interp.errors import ConfigError

if TYPE_CHECKING:
    from plotly.graph_objects import Figure

    from interp.results import Result

__all__ = ["plot"]

_LABEL = {"cos_sim": "head cosine sim.", "entropy_std": "entropy std (nats)", "entropy_mean": "entropy (nats)",
          "m_test_acc": "test accuracy", "m_train_acc": "train accuracy", "m_test_loss": "test loss",
          "m_train_loss": "train loss"}


def _curves(result: Result, layer: int | None, panels: tuple[str, ...], width: Any, height: Any) -> Figure:
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    from interp.plots import THEME, apply_theme, escape_text

    t = result.table
    layer = int(t["layer"].min()) if layer is None else layer
    t = t[t["layer"] == layer]
    panels = tuple(p for p in panels if p in t.columns)
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.04)
    for i, run in enumerate(dict.fromkeys(t["run"])):
        r = t[t["run"] == run].sort_values("step")
        for j, col in enumerate(panels):
            fig.add_trace(go.Scatter(x=r["step"], y=r[col], mode="lines", name=escape_text(run),
                                     legendgroup=str(run), showlegend=j == 0,
                                     line=dict(color=THEME.categorical[i % len(THEME.categorical)])), row=j + 1, col=1)
            fig.update_yaxes(title_text=_LABEL.get(col, col), row=j + 1, col=1)
    fig.update_xaxes(title_text="training step", row=len(panels), col=1)
    fig.update_layout(title=f"Attention diagnostics during training (layer {layer})")
    return apply_theme(fig, width=width, height=height or 150 * len(panels) + 80)


def plot(result: Result, *, layer: int | None = None,
         panels: tuple[str, ...] = ("m_train_acc", "m_test_acc", "cos_sim", "entropy_std"),
         width: str | int = "single", height: int | None = None) -> Figure:
    """Figure of a diagnostics Result.

    Args:
        layer: for ``diagnostics.curves``: the layer drawn (default: the first).
        panels: for ``diagnostics.curves``: the columns drawn, one panel each (absent ones skipped).
    """
    import numpy as np

    from interp.plots import escape_text, heatmap, lines

    kind, t = result.kind, result.table
    model = escape_text(result.meta.model) if result.meta.model else ""
    if kind == "diagnostics.curves":
        return _curves(result, layer, panels, width, height)
    if kind == "diagnostics.layers":
        return lines(t["layer"].tolist(), {"head cosine similarity": t["cos_sim"].tolist(),
                                           "entropy std across heads (nats)": t["entropy_std"].tolist()},
                     x_title="layer", title=f"Attention diagnostics per layer - {model}", width=width, height=height)
    if kind == "diagnostics.heads":
        layers, heads = sorted(t["layer"].unique()), sorted(t["head"].unique())
        z = np.full((len(layers), len(heads)), np.nan)
        for r in t.itertuples():
            z[layers.index(r.layer), heads.index(r.head)] = r.entropy
        return heatmap(z, x=[str(h) for h in heads], y=[str(l) for l in layers], x_title="head", y_title="layer",
                       title=f"Attention entropy per head (nats) - {model}", colorbar_title="nats", width=width,
                       height=height)
    raise ConfigError(f"no diagnostics figure for Result kind {kind!r}; expected diagnostics.curves, "
                      "diagnostics.layers or diagnostics.heads")
