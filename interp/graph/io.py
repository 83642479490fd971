"""Export and load CircuitGraphs: JSON (networkx node-link), GraphML and GEXF.

JSON keeps every attribute natively. GraphML and GEXF hold only scalars, so the
list/dict attributes of the schema (``scores``, ``roles``, ``flags``, ``evidence``,
``weights``, graph ``results`` and ``layers``) are written as JSON strings and
restored on load: ``load_graph(to_graphml(g, p))`` equals ``g``.

Example:
    >>> import tempfile
    >>> from interp.graph import CircuitGraph, load_graph
    >>> g = CircuitGraph(model="toy:llama"); g.add_node("L0.H1", score=0.5, roles=["facilitating"])
    >>> h = load_graph(g.to_graphml(tempfile.mkdtemp() + "/g.graphml"))
    >>> h.node("L0.H1")["roles"]
    ['facilitating']
    >>> graphs_equal(g, h)
    True
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import networkx as nx

from interp._fs import atomic_write_bytes
from interp.errors import ConfigError, StoreError
from interp.graph.core import EDGE_ATTRS, NODE_ATTRS, CircuitGraph

__all__ = ["to_json", "to_graphml", "to_gexf", "load_graph", "graph_to_dict", "graph_from_dict", "graphs_equal"]

FORMAT = "interp.graph/1"
_NODE_JSON = tuple(k for k, v in NODE_ATTRS.items() if isinstance(v, (list, dict)))
_EDGE_JSON = tuple(k for k, v in EDGE_ATTRS.items() if isinstance(v, (list, dict)))
_GRAPH_JSON = ("results", "layers")


def graph_to_dict(graph: CircuitGraph) -> dict[str, Any]:
    """``{"format", "graph": networkx node-link data}`` (JSON-able)."""
    return {"format": FORMAT, "graph": nx.node_link_data(graph.nx, edges="edges")}


def graph_from_dict(data: dict[str, Any]) -> CircuitGraph:
    """Inverse of :func:`graph_to_dict`."""
    if data.get("format") != FORMAT:
        raise StoreError(f"not an interp graph (format {data.get('format')!r}, expected {FORMAT!r})")
    g = nx.node_link_graph(data["graph"], directed=True, multigraph=False, edges="edges")
    return CircuitGraph._from_nx(nx.DiGraph(g))


def to_json(graph: CircuitGraph, path: str | Path) -> Path:
    """Write node-link JSON (atomically)."""
    path = Path(path)
    atomic_write_bytes(path, json.dumps(graph_to_dict(graph), allow_nan=False).encode())
    return path


def _flatten(graph: CircuitGraph) -> nx.DiGraph:
    g = copy.deepcopy(graph.nx)
    for k in _GRAPH_JSON:
        g.graph[k] = json.dumps(g.graph[k])
    g.graph["format"] = FORMAT
    for _, d in g.nodes(data=True):
        for k in _NODE_JSON:
            d[k] = json.dumps(d[k])
    for _, _, d in g.edges(data=True):
        for k in _EDGE_JSON:
            d[k] = json.dumps(d[k])
    return g


def _unflatten(g: nx.DiGraph, what: str) -> CircuitGraph:
    if g.graph.get("format") != FORMAT:
        raise StoreError(f"{what} is not an interp graph (format {g.graph.get('format')!r})")
    out = nx.DiGraph()
    out.graph.update({k: v for k, v in g.graph.items() if k not in ("format", "node_default", "edge_default")})
    for k in _GRAPH_JSON:
        out.graph[k] = json.loads(out.graph[k])
    for k in ("model", "model_revision", "tokenizer", "name"):
        out.graph.setdefault(k, "")
    for n, d in g.nodes(data=True):
        d = {k: v for k, v in d.items() if k in NODE_ATTRS}
        for k in _NODE_JSON:
            d[k] = json.loads(d[k])
        for k in ("layer", "head", "feature"):
            d[k] = int(d[k])
        d["score"] = float(d["score"])
        out.add_node(str(n), **{k: d[k] for k in NODE_ATTRS})
    for u, v, d in g.edges(data=True):
        d = {k: val for k, val in d.items() if k in EDGE_ATTRS}
        for k in _EDGE_JSON:
            d[k] = json.loads(d[k])
        d["weight"] = float(d["weight"])
        out.add_edge(str(u), str(v), **{k: d[k] for k in EDGE_ATTRS})
    return CircuitGraph._from_nx(out)


def to_graphml(graph: CircuitGraph, path: str | Path) -> Path:
    """Write GraphML (list/dict attributes as JSON strings)."""
    path = Path(path)
    buf = io.BytesIO()
    nx.write_graphml(_flatten(graph), buf, named_key_ids=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def to_gexf(graph: CircuitGraph, path: str | Path) -> Path:
    """Write GEXF 1.2 for Gephi (list/dict attributes as JSON strings)."""
    path = Path(path)
    g = _flatten(graph)
    for n, d in g.nodes(data=True):
        d["label"] = n
    buf = io.BytesIO()
    nx.write_gexf(g, buf)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_graph(path: str | Path) -> CircuitGraph:
    """Load a graph written by :func:`to_json` (``.json``), :func:`to_graphml` or :func:`to_gexf`.

    GEXF keeps nodes, edges and their attributes but no graph attributes (model, name,
    contributing Results and layer flags are empty after loading a ``.gexf``).
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(f"no graph file {path}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return graph_from_dict(json.loads(path.read_text()))
    if suffix == ".graphml":
        return _unflatten(nx.read_graphml(path), str(path))
    if suffix == ".gexf":
        g = nx.read_gexf(path)
        for _, d in g.nodes(data=True):
            d.pop("label", None)
        # GEXF has no graph attributes: model, name, results and layers are not restored
        g.graph.update(format=FORMAT, results="[]", layers="{}")
        return _unflatten(g, str(path))
    raise ConfigError(f"unknown graph format {path.suffix!r}; expected .json, .graphml or .gexf")


def graphs_equal(a: CircuitGraph, b: CircuitGraph) -> bool:
    """Same graph attributes, nodes, edges and attributes (order-insensitive)."""
    ga, gb = a.nx, b.nx
    if dict(ga.graph) != dict(gb.graph):
        return False
    if dict(ga.nodes(data=True)) != dict(gb.nodes(data=True)):
        return False
    return {(u, v): d for u, v, d in ga.edges(data=True)} == {(u, v): d for u, v, d in gb.edges(data=True)}
