"""Figures of sparse attention decomposition Results (``sad.signals``): the signals into one receiver.

Example:
    >>> import pandas as pd
    >>> from interp.results import Result
    >>> t = pd.DataFrame({"method": "sad", "src": ["L0.H0", "EMBED"], "dst": "L1.H2", "dst_input": ["k", "q"],
    ...                   "signal": [11.0, 9.5], "depth": 0})
    >>> fig = plot(Result("sad.signals", t))
    >>> [d.name for d in fig.data], fig.data[0].y
    (['k', 'q'], ('EMBED', 'L0.H0'))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from interp.errors import ConfigError

if TYPE_CHECKING:
    from plotly.graph_objects import Figure

    from interp.results import Result

__all__ = ["plot"]


def plot(result: Result, *, dst: str | None = None, top: int = 12, width: str | int = "single",
         height: int | None = None) -> Figure:
    """Horizontal bars: the ``top`` senders into ``dst`` (default: the traced head, depth 0) by
    ``|signal|`` summed over q and k, split by ``dst_input``."""
    import plotly.graph_objects as go

    from interp.plots import THEME, apply_theme, empty_figure, escape_text

    if result.kind != "sad.signals":
        raise ConfigError(f"no sad figure for Result kind {result.kind!r}; expected 'sad.signals'")
    t = result.table
    if t.empty:
        return empty_figure("SAD signals")
    if dst is None:
        dst = str(t.sort_values("depth")["dst"].iloc[0])
    rows = t[t["dst"] == dst]
    if rows.empty:
        raise ConfigError(f"sad figure: no signals into {dst!r}; receivers: {sorted(set(t['dst']))}")
    total = rows.groupby("src")["signal"].sum()
    keep = list(total.abs().sort_values(ascending=False).index[:top])[::-1]   # largest at the top
    fig = go.Figure()
    for i, side in enumerate(("k", "q")):
        part = rows[rows["dst_input"] == side].set_index("src")["signal"]
        fig.add_trace(go.Bar(y=[escape_text(s) for s in keep], x=[float(part.get(s, 0.0)) for s in keep],
                             name=side, orientation="h", marker_color=THEME.categorical[i]))
    model = escape_text(result.meta.model) if result.meta.model else ""
    fig.update_layout(barmode="relative", title=f"SAD signals into {escape_text(dst)}" + (f" - {model}" if model else ""),
                      xaxis_title="signal (attention-score units)", yaxis_title="sender", legend_title="via")
    return apply_theme(fig, width=width, height=height or max(220, 22 * len(keep) + 90))
