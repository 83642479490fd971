"""Figures of gating Results: G+, G- and taxonomy heatmaps by layer x head; validation bars.

Example:
    >>> from interp.datasets import TaskDataset
    >>> from interp.gating import CHGConfig, causal_head_gating
    >>> from interp.models import load_model
    >>> ds = TaskDataset("next", clean=("ab", "cd", "ef", "gh"), answers=("c", "e", "g", "i"))
    >>> chg = causal_head_gating(load_model("toy:llama"), ds, config=CHGConfig(steps=5, n_masks=1, progress=False))
    >>> fig = plot(chg, which="g_minus")                  # layer x head
    >>> fig.layout.title.text, len(fig.data[0].z), len(fig.data[0].z[0])
    ('G- (lambda < 0) - toy:llama', 2, 4)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from interp.errors import ConfigError

if TYPE_CHECKING:
    from plotly.graph_objects import Figure

    from interp.results import Result

__all__ = ["plot", "CHG_VIEWS"]

CHG_VIEWS = ("g_plus", "g_minus", "role", "facilitation", "interference", "irrelevance", "g_base")
_ROLE_CODE = {"interfering": -1.0, "irrelevant": 0.0, "facilitating": 1.0}


def _grid(table: Any, column: str) -> tuple[Any, list[int], list[int]]:
    import numpy as np

    layers, heads = sorted(table["layer"].unique()), sorted(table["head"].unique())
    z = np.full((len(layers), len(heads)), np.nan)
    for layer, head, value in zip(table["layer"], table["head"], table[column]):
        z[layers.index(layer), heads.index(head)] = _ROLE_CODE[value] if column == "role" else float(value)
    return z, layers, heads


def plot(result: Result, *, which: str = "g_minus", width: str | int = "single", height: int | None = None) -> Figure:
    """Figure of a gating Result.

    Args:
        which: for ``gating.chg``: one of :data:`CHG_VIEWS` (``"role"`` = taxonomy: +1 facilitating,
            0 irrelevant, -1 interfering); ignored for other kinds.
    """
    from interp.plots import escape_text, heatmap

    kind, t = result.kind, result.table
    if kind == "gating.chg":
        if which not in CHG_VIEWS:
            raise ConfigError(f"which must be one of {CHG_VIEWS}, got {which!r}")
        z, layers, heads = _grid(t, which)
        title = {"g_plus": "G+ (lambda > 0)", "g_minus": "G- (lambda < 0)",
                 "role": "CHG taxonomy (+1 facilitating, -1 interfering)"}.get(which, which)
        text = None
        if which == "role":
            import numpy as np

            text = np.vectorize(lambda v: {1.0: "F", -1.0: "I"}.get(v, ""))(z)
        fig = heatmap(z, x=heads, y=layers, x_title="head", y_title="layer",
                      title=f"{title} - {escape_text(result.meta.model)}",
                      diverging=which in ("role",), colorbar_title=which, width=width,
                      height=height or max(260, 14 * len(layers) + 80), text=text)
        if text is not None:
            fig.update_traces(texttemplate="%{text}", textfont=dict(size=8))
        return fig
    if kind in ("gating.contrastive", "gating.head_patching"):
        column = "g" if kind == "gating.contrastive" else "effect"
        z, layers, heads = _grid(t, column)
        return heatmap(z, x=heads, y=layers, x_title="head", y_title="layer", title=f"{kind} ({column})",
                       diverging=column == "effect", width=width, height=height or max(260, 14 * len(layers) + 80))
    if kind in ("gating.validation", "gating.ablation"):
        import plotly.graph_objects as go

        from interp.plots import apply_theme

        names = [escape_text(n) for n in (t["what"] if kind == "gating.validation" else t["name"])]
        bars = [go.Bar(x=list(names), y=list(t["metric_value"]), name="ablated")]
        if kind == "gating.validation":
            bars.append(go.Bar(x=list(names), y=list(t["baseline_mean"]), name="random heads (mean, std)",
                               error_y=dict(type="data", array=list(t["baseline_std"].fillna(0)))))
        fig = go.Figure(bars)
        fig.update_layout(barmode="group", title=kind, yaxis_title=escape_text(t["metric"].iloc[0]) if len(t) else "")
        return apply_theme(fig, width=width, height=height)
    raise ConfigError(f"no gating figure for Result kind {kind!r}")
