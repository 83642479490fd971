"""Figures of circuit graphs: the paper figure of a CircuitGraph, and graph.* Results.

``plot_graph(graph)``: layers on the y axis (embeddings at the bottom, logits at the
top), components on the x axis (heads 0..H-1, then the MLP, then SAE features /
residual nodes), node size by ``|score|``, node colour by role (or kind), edge width
by ``|weight|`` (blue positive, red negative), themed by :data:`interp.plots.THEME`;
export with :func:`interp.plots.export` to PDF/SVG.

``plot(result)``: ``graph.compare`` -> Jaccard / overlap bars per node class;
``graph.faithfulness`` -> faithfulness bars per circuit.

Example:
    >>> import tempfile
    >>> from interp.graph import CircuitGraph
    >>> from interp.plots import export
    >>> g = CircuitGraph(name="demo"); g.add_edge("L0.H1", "L1.H0", weight=0.5, method="eap")
    >>> fig = plot_graph(g)
    >>> node_positions(g)                                    # x = head, y = layer
    {'L0.H1': (1.0, 0.0), 'L1.H0': (0.0, 1.0)}
    >>> export(fig, tempfile.mkdtemp() + "/circuit.svg").stat().st_size > 1000
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from interp.errors import ConfigError
from interp.plots import THEME, apply_theme, escape_text

if TYPE_CHECKING:
    from plotly.graph_objects import Figure

    from interp.graph import CircuitGraph
    from interp.results import Result

__all__ = ["plot_graph", "plot", "node_positions"]

_KIND_COLOR = {"embed": "#999999", "head": THEME.categorical[0], "mlp": THEME.categorical[4],
               "sae": THEME.categorical[2], "resid": THEME.categorical[3], "logits": "#555555"}
_ROLE_COLOR = {"facilitating": THEME.categorical[2], "interfering": THEME.categorical[1], "irrelevant": "#BBBBBB"}


def node_positions(graph: CircuitGraph) -> dict[str, tuple[float, float]]:
    """``node -> (x, y)``: x = head index / MLP column / extra columns, y = layer (EMBED -1, LOGITS n_layers)."""
    g = graph.nx
    layers = [d["layer"] for _, d in g.nodes(data=True)] + [int(k) for k in graph.layers]
    max_layer = max(layers, default=0)
    n_heads = max((d["head"] for _, d in g.nodes(data=True)), default=-1) + 1
    pos: dict[str, tuple[float, float]] = {}
    nxt: dict[int, int] = {}
    order = {"head": 0, "mlp": 1, "resid": 2, "sae": 3, "embed": 4, "logits": 5}
    for n, d in sorted(g.nodes(data=True), key=lambda nd: (order.get(nd[1]["kind"], 9), nd[1]["layer"],
                                                          nd[1]["head"], nd[1]["feature"])):
        kind = d["kind"]
        y = -1 if kind == "embed" else (max_layer + 1 if kind == "logits" else d["layer"])
        if kind == "head":
            x = d["head"]
        elif kind == "mlp":
            x = n_heads
        elif kind in ("embed", "logits"):
            x = (n_heads - 1) / 2 if n_heads else 0
        else:
            x = nxt.setdefault(y, n_heads + 1)
            nxt[y] += 1
        pos[n] = (float(x), float(y))
    return pos


def plot_graph(graph: CircuitGraph, *, title: str | None = None, width: str | int = "double",
               height: int | None = None, max_edges: int = 2000, labels: bool = True) -> Figure:
    """The paper figure of a circuit (plotly). Edges beyond ``max_edges`` (weakest first) are left out."""
    import plotly.graph_objects as go

    g = graph.nx
    pos = node_positions(graph)
    edges = sorted(g.edges(data=True), key=lambda e: -abs(e[2]["weight"]))[:max_edges]
    wmax = max((abs(d["weight"]) for _, _, d in edges), default=0.0) or 1.0
    traces = []
    # bucket edges by width so a figure has a handful of traces, not one per edge
    buckets: dict[tuple[int, bool], list[tuple[str, str]]] = {}
    for u, v, d in edges:
        b = min(4, int(5 * abs(d["weight"]) / wmax))
        buckets.setdefault((b, d["weight"] >= 0), []).append((u, v))
    for (b, positive), es in sorted(buckets.items()):
        xs, ys = [], []
        for u, v in es:
            xs += [pos[u][0], pos[v][0], None]
            ys += [pos[u][1], pos[v][1], None]
        traces.append(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                 line=dict(width=0.5 + 1.0 * b, color="#2166ac" if positive else "#b2182b"),
                                 opacity=0.35 + 0.12 * b))
    smax = max((abs(d["score"]) for _, d in g.nodes(data=True)), default=0.0) or 1.0
    by_color: dict[str, list[str]] = {}
    for n, d in g.nodes(data=True):
        role = next((r for r in d["roles"] if r in _ROLE_COLOR), None)
        key = role or d["kind"]
        by_color.setdefault(key, []).append(n)
    for key, ns in by_color.items():
        color = _ROLE_COLOR.get(key, _KIND_COLOR.get(key, "#888888"))
        d_of = [g.nodes[n] for n in ns]
        traces.append(go.Scatter(
            x=[pos[n][0] for n in ns], y=[pos[n][1] for n in ns], mode="markers+text" if labels else "markers",
            name=escape_text(key), text=[escape_text(_short(n, d)) for n, d in zip(ns, d_of)] if labels else None,
            textposition="top center",
            textfont=dict(size=max(6, THEME.font_size - 4)),
            marker=dict(size=[6 + 10 * abs(d["score"]) / smax for d in d_of], color=color,
                        symbol=["square" if d["kind"] in ("mlp", "embed", "logits") else "circle" for d in d_of],
                        line=dict(width=0.5, color="#333")),
            hovertext=[escape_text(f"{n} score {d['score']:.3g}") for n, d in zip(ns, d_of)], hoverinfo="text"))
    fig = go.Figure(traces)
    ys = [p[1] for p in pos.values()] or [0]
    ticks = list(range(int(min(ys)), int(max(ys)) + 1))
    tick_text = ["embed" if t == -1 else ("logits" if t == max(ys) and "LOGITS" in g else f"L{t}") for t in ticks]
    n_heads = max((d["head"] for _, d in g.nodes(data=True)), default=-1) + 1
    xt = list(range(n_heads + 1))
    fig.update_layout(title=title if title is not None else escape_text(graph.name or "circuit"),
                      xaxis=dict(title="component", showgrid=False, zeroline=False, tickvals=xt,
                                 ticktext=[f"H{h}" for h in range(n_heads)] + ["MLP"]),
                      yaxis=dict(title="layer", tickvals=ticks, ticktext=tick_text, showgrid=True, zeroline=False),
                      legend=dict(orientation="v", x=1.02, y=1, font=dict(size=max(6, THEME.font_size - 2))))
    n_rows = len(ticks)
    apply_theme(fig, width=width, height=height or max(THEME.height, 16 * n_rows + 120))
    fig.update_layout(margin=dict(r=110))
    return fig


def _short(n: str, d: dict[str, Any]) -> str:
    if d["kind"] == "head":
        return f"{d['layer']}.{d['head']}"
    if d["kind"] == "sae":
        return f"f{d['feature']}"
    return n


def plot(result: Result, **kwargs: Any) -> Figure:
    """Figure of a ``graph.*`` Result (compare, faithfulness)."""
    import plotly.graph_objects as go

    t = result.table
    if result.kind == "graph.compare":
        t = t[t["what"] == "nodes"]
        cls = [escape_text(c) for c in t["cls"]]
        fig = go.Figure([go.Bar(x=cls, y=list(t["jaccard"]), name="Jaccard"),
                         go.Bar(x=cls, y=list(t["overlap"]), name="overlap coefficient")])
        fig.update_layout(title=kwargs.get("title", "circuit overlap"), yaxis=dict(title="overlap", range=[0, 1]),
                          barmode="group", xaxis_title="node class")
        return apply_theme(fig, width=kwargs.get("width", "single"))
    if result.kind == "graph.faithfulness":
        fig = go.Figure(go.Bar(x=[escape_text(c) for c in t["circuit"]], y=list(t["faithfulness"]),
                               text=[f"{h}h" for h in t["n_heads"]]))
        fig.update_layout(title=kwargs.get("title", "faithfulness (mean ablation)"),
                          yaxis_title="LD circuit / LD full", xaxis_title="circuit")
        return apply_theme(fig, width=kwargs.get("width", "single"))
    raise ConfigError(f"no figure for Result kind {result.kind!r}; graph figures exist for graph.compare and "
                      "graph.faithfulness (a CircuitGraph: graph.figure())")
