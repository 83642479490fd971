"""Paper-theme figures of SAE Results (pure functions Result -> plotly Figure).

* ``sae.training`` — loss, L0 and explained variance over training tokens.
* ``sae.eval`` — L0 vs CE loss recovered, one point per SAE (pass several eval Results as ``others``).
* ``sae.histogram`` — activation histogram of one feature (``feature=``) or all features summed.
* ``sae.features`` — histogram of log10 feature density.
* ``sae.dfa`` — heatmap feature x head of direct feature attribution.

Example:
    >>> import pandas as pd
    >>> from interp.plots import figure
    >>> from interp.results import Result
    >>> history = Result("sae.training", pd.DataFrame({
    ...     "tokens": [0, 4096, 8192], "mse_loss": [1.0, 0.5, 0.4], "l0": [32.0, 12.0, 9.0],
    ...     "explained_variance": [0.1, 0.6, 0.7]}))
    >>> [a.text for a in figure(history).layout.annotations]         # as figure(train_sae(...).history)
    ['mse_loss', 'l0', 'explained_variance']
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from interp.errors import ConfigError
from interp.plots import escape_text

if TYPE_CHECKING:
    from plotly.graph_objects import Figure

    from interp.results import Result

__all__ = ["plot", "training_curve", "l0_vs_ce", "histogram", "density", "dfa_heatmap"]


def training_curve(result: Result, *, metrics: Sequence[str] = ("mse_loss", "l0", "explained_variance"),
                   width: str | int = "double") -> Figure:
    """One subplot per metric over training tokens."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from interp.plots import THEME, apply_theme

    t = result.table
    metrics = [m for m in metrics if m in t.columns] or ["loss"]
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[escape_text(m) for m in metrics],
                        horizontal_spacing=0.1)
    for i, m in enumerate(metrics):
        fig.add_trace(go.Scatter(x=t["tokens"], y=t[m], mode="lines", name=m, showlegend=False,
                                 line=dict(color=THEME.categorical[i % len(THEME.categorical)])), row=1, col=i + 1)
        fig.update_xaxes(title_text="training tokens", row=1, col=i + 1)
    fig.update_layout(title=escape_text(f"SAE training {result.name}"))
    return apply_theme(fig, width=width)


def l0_vs_ce(results: Sequence[Result], *, width: str | int = "single") -> Figure:
    """Scatter of L0 against CE loss recovered, one labelled point per ``sae.eval`` Result."""
    import plotly.graph_objects as go

    from interp.plots import apply_theme

    xs, ys, names = [], [], []
    for r in results:
        v = r.table.set_index("metric")["value"]
        xs.append(float(v["l0"]))
        ys.append(float(v["ce_loss_recovered"]))
        names.append(escape_text(r.name or r.meta.extra.get("site", "")))
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="markers+text", text=names, textposition="top center"))
    fig.update_layout(title="SAE sparsity vs fidelity", xaxis_title="L0 (active latents per token)",
                      yaxis_title="CE loss recovered")
    return apply_theme(fig, width=width)


def histogram(result: Result, *, feature: int | None = None, width: str | int = "single") -> Figure:
    """Bar chart of log10 activation counts (one feature, or summed over features)."""
    import plotly.graph_objects as go

    from interp.plots import apply_theme

    t = result.table
    if feature is not None:
        t = t[t.feature == feature]
        if t.empty:
            raise ConfigError(f"feature {feature} has no activations in this histogram Result")
    g = t.groupby(["bin_left", "bin_right"], as_index=False)["count"].sum()
    fig = go.Figure(go.Bar(x=(g.bin_left + g.bin_right) / 2, y=g["count"], width=(g.bin_right - g.bin_left)))
    fig.update_layout(title=f"activations{'' if feature is None else f' of feature {feature}'}",
                      xaxis_title="log10 activation", yaxis_title="count")
    return apply_theme(fig, width=width)


def density(result: Result, *, width: str | int = "single") -> Figure:
    """Histogram of log10 feature density (dead features counted at the left edge)."""
    import numpy as np
    import plotly.graph_objects as go

    from interp.plots import apply_theme

    d = result.table["density"].to_numpy(dtype=float)
    logd = np.log10(np.clip(d, 1e-7, None))
    fig = go.Figure(go.Histogram(x=logd, nbinsx=40))
    fig.update_layout(title="feature density", xaxis_title="log10 fraction of tokens active", yaxis_title="features")
    return apply_theme(fig, width=width)


def dfa_heatmap(result: Result, *, width: str | int = "single") -> Figure:
    """Features x heads heatmap of mean direct feature attribution."""
    from interp.plots import heatmap

    p = result.table.pivot(index="feature", columns="head", values="value")
    return heatmap(p.to_numpy(), x=[f"H{h}" for h in p.columns], y=[str(f) for f in p.index], x_title="head",
                   y_title="feature", title=escape_text(f"DFA {result.name}"), diverging=True, width=width)


def plot(result: Result, **kwargs: Any) -> Figure:
    """Dispatch on ``result.kind`` (``interp.plots.figure`` calls this)."""
    kind = result.kind
    if kind == "sae.training":
        return training_curve(result, **kwargs)
    if kind == "sae.eval":
        return l0_vs_ce([result, *kwargs.pop("others", [])], **kwargs)
    if kind == "sae.histogram":
        return histogram(result, **kwargs)
    if kind == "sae.features":
        return density(result, **kwargs)
    if kind == "sae.dfa":
        return dfa_heatmap(result, **kwargs)
    raise ConfigError(f"no SAE figure for Result kind {kind!r}; known: sae.training, sae.eval, sae.histogram, "
                      "sae.features, sae.dfa")
