"""The circuit explorer: one self-contained HTML page per graph (no server, no CDN, opens from disk).

``write_html(graph, path)`` (also ``graph.to_html(path)``) inlines the page's CSS and
JavaScript (``explorer.css``, ``explorer.js`` next to this file) and the graph as JSON
inside ``<script type="application/json">`` with ``<``, ``>``, ``&`` (and U+2028/9)
escaped as ``\\u003c`` etc., so no token string or label can close the script
element. The page inserts every data string with ``textContent`` /
``setAttribute``, never as HTML.

Graphs with more than ``max_edges`` edges are pruned to the strongest edges (by
``|weight|``) and the page shows a notice saying so; nodes beyond ``max_nodes``
are dropped the same way, and each node/edge keeps at most ``max_evidence`` rows.

Example:
    >>> import tempfile
    >>> from interp.graph import CircuitGraph
    >>> g = CircuitGraph(name="</script> demo"); g.add_node("L0.H1", score=1.0)
    >>> page = g.to_html(tempfile.mkdtemp() + "/demo.html").read_text()
    >>> page.count("</script>")                                     # only the page's own two scripts close
    2
    >>> print(escape_json({"name": "</script>"}))
    {"name": "\\u003c/script\\u003e"}
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from interp.graph import CircuitGraph

__all__ = ["page_data", "render_html", "write_html", "show", "escape_json"]


def escape_json(data: Any) -> str:
    """JSON text safe inside an HTML ``<script>`` element."""
    text = json.dumps(data, allow_nan=False, ensure_ascii=False)
    for a, b in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(a, b)
    return text


def page_data(graph: CircuitGraph, *, max_edges: int = 3000, max_nodes: int = 3000,
              max_evidence: int = 200) -> dict[str, Any]:
    """The JSON payload of the page: meta, notice, nodes, edges, layers (pruned for huge graphs)."""
    g = graph.nx
    notices = []
    edges = list(g.edges(data=True))
    n_edges = len(edges)
    if n_edges > max_edges:
        edges = sorted(edges, key=lambda e: -abs(e[2]["weight"]))[:max_edges]
        notices.append(f"Large graph: showing the {max_edges:,} strongest of {n_edges:,} edges (by |weight|).")
    nodes = list(g.nodes(data=True))
    n_nodes = len(nodes)
    if n_nodes > max_nodes:
        touched = {n for u, v, _ in edges for n in (u, v)}
        nodes = sorted(nodes, key=lambda nd: (nd[0] not in touched, -abs(nd[1]["score"])))[:max_nodes]
        notices.append(f"Large graph: showing {max_nodes:,} of {n_nodes:,} nodes.")
        keep = {n for n, _ in nodes}
        edges = [e for e in edges if e[0] in keep and e[1] in keep]

    def ev(items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        return items[:max_evidence], len(items)

    out_nodes = []
    for n, d in nodes:
        e, total = ev(d["evidence"])
        out_nodes.append({"id": n, "kind": d["kind"], "layer": d["layer"], "head": d["head"], "feature": d["feature"],
                          "score": d["score"], "scores": d["scores"], "roles": d["roles"], "flags": d["flags"],
                          "evidence": e, "n_evidence": total})
    out_edges = []
    for u, v, d in edges:
        e, total = ev(d["evidence"])
        out_edges.append({"source": u, "target": v, "weight": d["weight"], "weights": d["weights"],
                          "method": d["method"], "result_id": d["result_id"], "evidence": e, "n_evidence": total})
    meta = dict(graph.meta)
    return {"meta": meta, "notice": " ".join(notices), "nodes": out_nodes, "edges": out_edges,
            "layers": {k: {"flags": v["flags"], "evidence": v["evidence"][:max_evidence]}
                       for k, v in graph.layers.items()},
            "results": graph.results, "totals": {"nodes": n_nodes, "edges": n_edges}}


def _asset(name: str) -> str:
    return resources.files("interp.explorer").joinpath(name).read_text(encoding="utf-8")


def render_html(graph: CircuitGraph, **kwargs: Any) -> str:
    """The page as a string (see :func:`page_data` for the keyword arguments)."""
    page = _asset("template.html")
    css, js = _asset("explorer.css"), _asset("explorer.js")
    if "</script" in js.lower() or "</style" in css.lower():
        raise AssertionError("explorer assets must not contain closing script/style tags")
    data = escape_json(page_data(graph, **kwargs))
    # str.replace with fixed markers; the data is inserted last so nothing inside it is re-scanned
    page = page.replace("/*__CSS__*/", css).replace("/*__JS__*/", js)
    head, tail = page.split("/*__DATA__*/")
    return head + data + tail


def write_html(graph: CircuitGraph, path: str | Path, **kwargs: Any) -> Path:
    """Write the self-contained explorer page to ``path`` (atomically)."""
    from interp._fs import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, render_html(graph, **kwargs).encode("utf-8"))
    return path


def show(graph: CircuitGraph, *, height: int = 640, **kwargs: Any) -> Any:
    """An ``IPython.display.HTML`` iframe (``srcdoc`` = the page, attribute-escaped) for Jupyter."""
    import html

    from IPython.display import HTML

    page = render_html(graph, **kwargs)
    return HTML(f'<iframe srcdoc="{html.escape(page, quote=True)}" style="width:100%;height:{int(height)}px;'
                'border:1px solid #ddd" sandbox="allow-scripts"></iframe>')
