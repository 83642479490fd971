"""CircuitGraph: a typed schema over a networkx DiGraph, with the evidence behind every node and edge.

Nodes are the circuit-graph ids of :mod:`interp.nodes` (``"EMBED"``, ``"L5.H1"``,
``"L3.MLP"``, ``"L7.SAE.12"``, ``"L4.RESID"``, ``"LOGITS"``). Every node carries:

* ``kind`` (str), ``layer``, ``head``, ``feature`` (int; ``-1`` where not applicable),
* ``score`` (float, the node's primary score, 0.0 when unscored) and ``scores``
  (dict ``source -> value``, one entry per method/metric that scored it),
* ``roles`` and ``flags`` (lists of str, e.g. ``["facilitating"]``, ``["sink"]``),
* ``evidence``: a list of ``{"result_id", "kind", "row"}`` dicts, the rows of each
  Result that mention the node.

Every edge carries ``weight`` (float, from its primary ``method``), ``weights``
(dict ``method -> value``), ``method``, ``result_id`` and ``evidence``. Layer-wide
facts (massive activations, steering axes) live in ``graph.layers`` as
``{layer: {"flags": [...], "evidence": [...]}}``.

All attribute values are ints, floats, strings, bools, lists or dicts (never
``None``), so the graph round-trips through JSON and GraphML unchanged.

The graph belongs to one model: adding a Result of another model, revision or
tokenizer raises :class:`~interp.errors.DataError`.

Example:
    >>> g = CircuitGraph(model="toy:llama")
    >>> g.add_node("L1.H0", score=0.5)
    >>> g.add_edge("L0.H1", "L1.H0", weight=0.2, method="eap")
    >>> sorted(g.nodes), g.node("L1.H0")["kind"]
    (['L0.H1', 'L1.H0'], 'head')
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Iterable, Iterator

import networkx as nx

from interp.errors import ConfigError, DataError
from interp.nodes import parse_node_id

__all__ = ["CircuitGraph", "NODE_ATTRS", "EDGE_ATTRS", "jsonable"]

#: node attribute -> default (its type is the schema)
NODE_ATTRS: dict[str, Any] = {"kind": "", "layer": -1, "head": -1, "feature": -1, "score": 0.0, "scores": {},
                              "roles": [], "flags": [], "evidence": []}
#: edge attribute -> default
EDGE_ATTRS: dict[str, Any] = {"weight": 0.0, "weights": {}, "method": "", "result_id": "", "evidence": []}
_META_KEYS = ("model", "model_revision", "tokenizer")


def jsonable(value: Any) -> Any:
    """Plain JSON-able Python value of a table cell (numpy scalars, arrays, NaN -> None)."""
    if value is None:
        return None
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


#: node ids of visual token groups (interp.vlm: ``VIS.object``, ``VIS.patch:5``): kind "visual", no layer.
VISUAL_PREFIX = "VIS."


def _node_defaults(node: str) -> dict[str, Any]:
    if node.startswith(VISUAL_PREFIX) and len(node) > len(VISUAL_PREFIX):
        out = copy.deepcopy(NODE_ATTRS)
        out["kind"] = "visual"
        return out
    parts = parse_node_id(node)
    out = copy.deepcopy(NODE_ATTRS)
    out["kind"] = parts["kind"]
    for k in ("layer", "head", "feature"):
        out[k] = -1 if parts[k] is None else int(parts[k])
    return out


class CircuitGraph:
    """A circuit over one model: typed nodes and edges, each with its evidence.

    Wraps (does not subclass) a :class:`networkx.DiGraph`, available as ``.nx`` (treat
    it as read-only; change the graph through the methods here).

    Args:
        model, model_revision, tokenizer: the model the graph describes; empty values
            are filled from the first Result added.
        name: a label (shown in figures and the explorer).

    Example:
        >>> g = CircuitGraph(model="smollm2", name="ioi")
        >>> g.add_node("L9.H6", score=1.2, roles=["facilitating"])
        >>> g.node("L9.H6")["layer"], len(g)
        (9, 1)
    """

    def __init__(self, *, model: str = "", model_revision: str = "", tokenizer: str = "", name: str = "") -> None:
        self._g = nx.DiGraph()
        self._g.graph.update({"model": model, "model_revision": model_revision, "tokenizer": tokenizer,
                              "name": name, "results": [], "layers": {}})

    # ----------------------------------------------------------------- basics
    @property
    def nx(self) -> nx.DiGraph:
        """The underlying networkx graph (read-only by convention)."""
        return self._g

    @property
    def meta(self) -> dict[str, str]:
        """``model``, ``model_revision``, ``tokenizer`` and ``name`` of the graph."""
        return {k: self._g.graph[k] for k in (*_META_KEYS, "name")}

    @property
    def name(self) -> str:
        return self._g.graph["name"]

    @property
    def results(self) -> list[dict[str, str]]:
        """The Results that contributed evidence: ``[{"id", "kind"}]`` in order."""
        return self._g.graph["results"]

    @property
    def layers(self) -> dict[str, dict[str, Any]]:
        """Layer-wide flags and evidence, keyed by the layer as a string (JSON keys)."""
        return self._g.graph["layers"]

    @property
    def nodes(self) -> list[str]:
        return list(self._g.nodes)

    @property
    def edges(self) -> list[tuple[str, str]]:
        return list(self._g.edges)

    def node(self, node: str) -> dict[str, Any]:
        """The attributes of one node (a live dict)."""
        if node not in self._g:
            from interp.errors import nearest

            raise DataError(f"no node {node!r} in the graph.{nearest(node, list(self._g.nodes))}")
        return self._g.nodes[node]

    def edge(self, src: str, dst: str) -> dict[str, Any]:
        """The attributes of one edge (a live dict)."""
        if not self._g.has_edge(src, dst):
            raise DataError(f"no edge {src!r} -> {dst!r} in the graph")
        return self._g.edges[src, dst]

    def __len__(self) -> int:
        return self._g.number_of_nodes()

    def __contains__(self, node: object) -> bool:
        return node in self._g

    def __iter__(self) -> Iterator[str]:
        return iter(self._g.nodes)

    def __repr__(self) -> str:
        kinds: dict[str, int] = {}
        for _, k in self._g.nodes(data="kind"):
            kinds[k] = kinds.get(k, 0) + 1
        desc = ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
        return (f"CircuitGraph(name={self.name!r}, model={self._g.graph['model']!r}, nodes={len(self)} ({desc}), "
                f"edges={self._g.number_of_edges()})")

    def copy(self) -> "CircuitGraph":
        """A deep copy."""
        out = CircuitGraph.__new__(CircuitGraph)
        out._g = copy.deepcopy(self._g)
        return out

    @classmethod
    def _from_nx(cls, g: nx.DiGraph) -> "CircuitGraph":
        out = cls.__new__(cls)
        out._g = g
        return out

    def nodes_of(self, kind: str) -> list[str]:
        """Node ids of one kind (``"head"``, ``"mlp"``, ``"sae"`` ...), in insertion order."""
        return [n for n, k in self._g.nodes(data="kind") if k == kind]

    # ----------------------------------------------------------------- edits
    def add_node(self, node: str, *, score: float | None = None, source: str = "", roles: Iterable[str] = (),
                 flags: Iterable[str] = (), evidence: Iterable[dict[str, Any]] = ()) -> None:
        """Add a node (or update an existing one).

        Args:
            node: a node id (see :mod:`interp.nodes`); kind/layer/head/feature come from it.
            score: the node's score; the first score given becomes the primary ``score``,
                and every score is kept in ``scores[source]``.
            source: name of the score (e.g. ``"atp/denoising/logit_diff"``).
            roles, flags: labels to add (duplicates are ignored).
            evidence: ``{"result_id", "kind", "row"}`` dicts to append.
        """
        if node not in self._g:
            self._g.add_node(node, **_node_defaults(node))
        data = self._g.nodes[node]
        if score is not None:
            score = float(score)
            if not math.isfinite(score):
                raise DataError(f"node {node!r}: score must be finite, got {score}")
            if not data["scores"]:
                data["score"] = score
            data["scores"][source or "score"] = score
        for r in roles:
            if r not in data["roles"]:
                data["roles"].append(str(r))
        for f in flags:
            if f not in data["flags"]:
                data["flags"].append(str(f))
        data["evidence"].extend(_check_evidence(e) for e in evidence)

    def add_edge(self, src: str, dst: str, *, weight: float, method: str, result_id: str = "",
                 evidence: Iterable[dict[str, Any]] = ()) -> None:
        """Add an edge (creating its nodes) or add another method's weight to it.

        The first method that adds an edge sets ``method``, ``weight`` and ``result_id``;
        later ones are kept in ``weights`` and ``evidence``.
        """
        weight = float(weight)
        if not math.isfinite(weight):
            raise DataError(f"edge {src} -> {dst}: weight must be finite, got {weight}")
        for n in (src, dst):
            if n not in self._g:
                self.add_node(n)
        if not self._g.has_edge(src, dst):
            attrs = copy.deepcopy(EDGE_ATTRS)
            attrs.update(weight=weight, method=str(method), result_id=str(result_id))
            self._g.add_edge(src, dst, **attrs)
        data = self._g.edges[src, dst]
        data["weights"][str(method)] = weight
        data["evidence"].extend(_check_evidence(e) for e in evidence)

    def add_layer_info(self, layer: int, *, flags: Iterable[str] = (), evidence: Iterable[dict[str, Any]] = ()) -> None:
        """Attach layer-wide flags/evidence (massive activations, steering axes) to ``layer``."""
        entry = self.layers.setdefault(str(int(layer)), {"flags": [], "evidence": []})
        for f in flags:
            if f not in entry["flags"]:
                entry["flags"].append(str(f))
        entry["evidence"].extend(_check_evidence(e) for e in evidence)

    def check_result(self, result: Any) -> None:
        """Refuse a Result of another model/revision/tokenizer; adopt its model if the graph has none.

        Raises:
            SchemaError: the Result's table does not match its kind's schema (e.g. NaN effects).
            DataError: the Result's model, model_revision or tokenizer differ from the graph's.
        """
        if hasattr(result, "validate"):
            result.validate()  # schema: columns, types, no NaN where the kind allows none
        meta = result.meta
        bad = []
        for key in _META_KEYS:
            mine, theirs = self._g.graph[key], getattr(meta, key, "") or ""
            if mine and theirs and mine != theirs:
                bad.append(f"{key}: graph has {mine!r}, Result has {theirs!r}")
        if bad:
            raise DataError(f"Result {result.id!r} ({result.kind}) is from a different model than graph "
                            f"{self.name!r}; one graph describes one model. " + "; ".join(bad))
        for key in _META_KEYS:
            if not self._g.graph[key] and getattr(meta, key, ""):
                self._g.graph[key] = getattr(meta, key)
        if not any(r["id"] == result.id for r in self.results):
            self.results.append({"id": result.id, "kind": result.kind})

    def add_result(self, result: Any, **kwargs: Any) -> "CircuitGraph":
        """Add a Result's evidence through the builder for its kind (see :mod:`interp.graph.builders`).

        Returns ``self`` so calls chain: ``g.add_result(r1).add_result(r2)``.
        """
        from interp.graph.builders import add_result

        add_result(self, result, **kwargs)
        return self

    # ----------------------------------------------------------------- forwards
    def prune(self, **kwargs: Any) -> "CircuitGraph":
        """A new graph keeping the strongest nodes/edges (see :func:`interp.graph.ops.prune`)."""
        from interp.graph.ops import prune

        return prune(self, **kwargs)

    def merge(self, other: "CircuitGraph") -> "CircuitGraph":
        """Union with another graph of the same model (see :func:`interp.graph.ops.merge`)."""
        from interp.graph.ops import merge

        return merge(self, other)

    def compare(self, other: "CircuitGraph") -> Any:
        """Node/edge overlap Result (see :func:`interp.graph.ops.compare`)."""
        from interp.graph.ops import compare

        return compare(self, other)

    def to_json(self, path: str | Path) -> Path:
        from interp.graph.io import to_json

        return to_json(self, path)

    def to_graphml(self, path: str | Path) -> Path:
        from interp.graph.io import to_graphml

        return to_graphml(self, path)

    def to_gexf(self, path: str | Path) -> Path:
        from interp.graph.io import to_gexf

        return to_gexf(self, path)

    def figure(self, **kwargs: Any) -> Any:
        """The paper figure (see :func:`interp.plots.graph.plot_graph`)."""
        from interp.plots.graph import plot_graph

        return plot_graph(self, **kwargs)

    def to_html(self, path: str | Path, **kwargs: Any) -> Path:
        """Write the self-contained explorer page (see :func:`interp.explorer.write_html`)."""
        from interp.explorer import write_html

        return write_html(self, path, **kwargs)

    def show(self, **kwargs: Any) -> Any:
        """Render the explorer inline in Jupyter (an iframe with the page as ``srcdoc``)."""
        from interp.explorer import show

        return show(self, **kwargs)

    def summary(self) -> dict[str, Any]:
        """Counts of nodes per kind, edges, and the contributing Results."""
        kinds: dict[str, int] = {}
        for _, k in self._g.nodes(data="kind"):
            kinds[k] = kinds.get(k, 0) + 1
        return {"name": self.name, "model": self._g.graph["model"], "nodes": len(self), "by_kind": kinds,
                "edges": self._g.number_of_edges(), "results": [r["id"] for r in self.results]}


def _check_evidence(e: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(e, dict) or not {"result_id", "kind", "row"} <= set(e):
        raise ConfigError(f"evidence must be a dict with result_id, kind and row; got {e!r}")
    out = {"result_id": str(e["result_id"]), "kind": str(e["kind"]), "row": jsonable(dict(e["row"]))}
    json.dumps(out)  # fail early on anything that cannot be exported
    return out
