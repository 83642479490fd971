"""Figures of causal tracing Results: ROME-style [tokens x layers] heatmaps.

* ``tracing.grid`` averaged over facts (default): rows are ROME's aligned token
  categories (first / middle / last subject token, first subsequent token, further
  tokens, last token), columns layers, one panel per site kind (hidden state, MLP,
  attention), colour = average indirect effect.
* ``tracing.grid`` with ``fact=i``: the tokens of that prompt (subject tokens marked
  with ``*``) x layers, colour = restored probability of the answer, as in ROME.
* ``tracing.summary``: p clean vs p corrupted per fact.

Example:
    >>> from interp.datasets import TaskDataset
    >>> from interp.models import load_model
    >>> from interp.plots.tracing import plot
    >>> from interp.tracing import TracingConfig, causal_trace
    >>> ds = TaskDataset("facts", ("The Eiffel Tower is in",), answers=("P",),
    ...                  meta=({"subject_start": 5, "subject_end": 17},))     # token span of "Eiffel Tower"
    >>> cfg = TracingConfig(n_samples=2, kinds=("resid", "mlp"), window=1)
    >>> grid, summary = causal_trace(load_model("toy:llama"), ds, cfg, progress=False)
    >>> fig = plot(grid)                                      # averaged over facts: one panel per site kind
    >>> [a.text for a in fig.layout.annotations]
    ['hidden state (block output)', 'MLP output (window)']
    >>> fig = plot(grid, fact=0)                              # the prompt's tokens, subject marked with *
    >>> list(fig.layout.yaxis.ticktext[:7])
    ["'&lt;bos&gt;'", "'T'", "'h'", "'e'", "' '", "'E'*", "'i'*"]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from interp.errors import ConfigError
from interp.plots import escape_text
from interp.tracing import CATEGORIES, aligned_effects

if TYPE_CHECKING:
    from plotly.graph_objects import Figure

    from interp.results import Result

__all__ = ["plot"]
_TITLES = {"resid": "hidden state (block output)", "mlp": "MLP output (window)", "attn": "attention output (window)"}
_SCALES = {"resid": "Purples", "mlp": "Greens", "attn": "Reds"}


def _panels(mats: list[tuple[str, np.ndarray, list[int], list[str]]], title: str, colorbar: str,
            from_zero: bool) -> Figure:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from interp.plots import THEME, apply_theme

    fig = make_subplots(rows=1, cols=len(mats), subplot_titles=[_TITLES[k] for k, *_ in mats],
                        shared_yaxes=True, horizontal_spacing=0.1)
    for c, (kind, z, layers, labels) in enumerate(mats, 1):
        finite = z[np.isfinite(z)]
        lo = float(finite.min()) if finite.size else 0.0
        lo = min(0.0, lo) if from_zero else lo
        hi = float(finite.max()) if finite.size else 1.0
        fig.add_trace(go.Heatmap(z=z, x=layers, y=list(range(len(labels))), zmin=lo, zmax=max(hi, lo + 1e-9),
                                 colorscale=_SCALES[kind], showscale=True,
                                 colorbar=dict(x=fig.layout[f"xaxis{c if c > 1 else ''}"].domain[1] + 0.005,
                                               xanchor="left", len=0.9, thickness=8, title=colorbar),
                                 hovertemplate="layer %{x}, %{customdata}: %{z:.4f}<extra></extra>",
                                 customdata=[[lab] * len(layers) for lab in labels]), row=1, col=c)
        fig.update_xaxes(title_text="layer", row=1, col=c, tick0=0, dtick=max(1, round((max(layers) + 1) / 6)))
    fig.update_yaxes(tickvals=list(range(len(mats[0][3]))), ticktext=mats[0][3], autorange="reversed")
    fig.update_layout(title=title)
    apply_theme(fig, width="double", height=max(THEME.height, 100 + 22 * len(mats[0][3])))
    fig.update_layout(margin=dict(l=150, r=40, t=50, b=40))
    fig.update_annotations(font_size=THEME.font_size)
    return fig


def plot(result: Result, *, fact: int | None = None, kinds: tuple[str, ...] | None = None) -> Figure:
    """Figure of a ``tracing.grid`` (averaged, or one ``fact``) or ``tracing.summary`` Result."""
    t = result.table
    if result.kind == "tracing.summary":
        return _summary(t)
    if result.kind != "tracing.grid":
        raise ConfigError(f"interp.plots.tracing draws tracing.grid and tracing.summary, got {result.kind!r}")
    kinds = tuple(k for k in (kinds or ("resid", "mlp", "attn")) if k in set(t.site_kind))
    if not kinds:
        raise ConfigError(f"tracing grid has none of the site kinds asked; it has {sorted(set(t.site_kind))}")
    mats = []
    if fact is None:
        agg = aligned_effects(t)
        cats = [c for c in CATEGORIES if c in set(agg.category)]
        n_facts = int(t.fact.nunique())
        for kind in kinds:
            p = agg[agg.site_kind == kind].pivot(index="category", columns="layer", values="indirect_effect")
            p = p.reindex(cats)
            mats.append((kind, p.to_numpy(dtype=float), [int(x) for x in p.columns], list(cats)))
        return _panels(mats, f"Average indirect effect over {n_facts} facts", "AIE", True)
    g = t[t.fact == fact]
    if g.empty:
        raise ConfigError(f"fact {fact} is not in this grid (facts {sorted(t.fact.unique())[:10]} ...)")
    for kind in kinds:
        gk = g[g.site_kind == kind]
        p = gk.pivot(index="token_index", columns="layer", values="p_restored").sort_index()
        tok = gk.drop_duplicates("token_index").set_index("token_index")
        labels = [escape_text(repr(tok.token[i])) + ("*" if tok.is_subject[i] else "") for i in p.index]
        mats.append((kind, p.to_numpy(dtype=float), [int(x) for x in p.columns], labels))
    return _panels(mats, f"Fact {fact}: p(answer) with the site restored", "p", False)


def _summary(t: pd.DataFrame) -> Figure:
    import plotly.graph_objects as go

    from interp.plots import apply_theme

    x = [f"{i}: {escape_text(a)}" for i, a in zip(t.fact, t.answer)]
    fig = go.Figure([go.Bar(x=x, y=t.p_clean, name="clean"), go.Bar(x=x, y=t.p_corrupt, name="corrupted")])
    fig.update_layout(barmode="group", title="p(answer): clean vs corrupted subject", yaxis_title="p")
    return apply_theme(fig, width="double")
