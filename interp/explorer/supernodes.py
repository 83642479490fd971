"""Supernodes: named groups of a graph's nodes, drawn by the explorer as one node with summed edges.

A supernode is ``{"name": str, "members": [node ids]}``: a non-empty name unique in the graph,
at least one member, members are nodes of the graph and each node belongs to at most one
supernode. The explorer groups them by hand (select nodes, name them, "group") and draws each as
one node at the mean position of its members; an edge between two groups (or a group and a node)
carries the **sum** of the weights of the member edges it stands for, and edges inside one group
are not drawn.

Saved with the graph as a JSON sidecar next to the graph file (``circuit_graph.json`` ->
``circuit_graph.supernodes.json``, :func:`sidecar_path`)::

    {"format": "interp.supernodes/1", "graph": name, "model": ..., "model_revision": ...,
     "supernodes": [{"name": ..., "members": [...]}]}

The page's "download supernodes" button writes the same object (a page opened from disk cannot
write files), and its "load" control and :func:`load_supernodes` read it back; ``write_html(...,
supernodes=path_or_list)`` embeds them. Inside a Neuronpedia graph JSON they travel as circuit-tracer's
``qParams.supernodes`` (``[[name, neuronpedia node id, ...], ...]``, :func:`to_neuronpedia_supernodes`,
:func:`from_neuronpedia_supernodes`).

Example:
    >>> from interp.graph import CircuitGraph
    >>> g = CircuitGraph(model="toy:llama", name="demo")
    >>> g.add_edge("L0.TC.3@1", "L1.TC.4@1", weight=0.5, method="attribution")
    >>> check_supernodes([{"name": "capital", "members": ["L0.TC.3@1", "L1.TC.4@1"]}], g)
    [{'name': 'capital', 'members': ['L0.TC.3@1', 'L1.TC.4@1']}]
    >>> check_supernodes([{"name": "x", "members": ["L9.TC.1@0"]}], g)       # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    interp.errors.DataError: supernodes[0] 'x': member(s) ['L9.TC.1@0'] not in graph 'demo'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interp.errors import DataError, StoreError

if TYPE_CHECKING:
    from interp.graph import CircuitGraph

__all__ = ["FORMAT", "check_supernodes", "save_supernodes", "load_supernodes", "sidecar_path",
           "to_neuronpedia_supernodes", "from_neuronpedia_supernodes"]

FORMAT = "interp.supernodes/1"


def check_supernodes(supernodes: Any, graph: CircuitGraph | None = None, *, where: str = "supernodes"
                     ) -> list[dict[str, Any]]:
    """The supernodes as plain ``[{"name", "members"}]``, checked (against ``graph`` when given).

    Raises:
        DataError: not a list of ``{"name", "members"}``; an empty or repeated name; no members;
            a member twice or in two supernodes; members not in the graph (named).
    """
    if not isinstance(supernodes, list):
        raise DataError(f"{where}: expected a list of {{'name', 'members'}} objects, got {type(supernodes).__name__}")
    out: list[dict[str, Any]] = []
    owner: dict[str, str] = {}
    for i, sn in enumerate(supernodes):
        if not isinstance(sn, dict) or not isinstance(sn.get("name"), str) or not isinstance(sn.get("members"), list):
            raise DataError(f"{where}[{i}]: expected {{'name': str, 'members': [node ids]}}, got {sn!r:.120}")
        name, members = sn["name"].strip(), sn["members"]
        if not name:
            raise DataError(f"{where}[{i}]: empty name")
        if any(o["name"] == name for o in out):
            raise DataError(f"{where}[{i}]: name {name!r} is used twice")
        if not members or not all(isinstance(m, str) for m in members):
            raise DataError(f"{where}[{i}] {name!r}: members must be a non-empty list of node ids, got {members!r:.120}")
        for m in members:
            if m in owner:
                raise DataError(f"{where}[{i}] {name!r}: node {m!r} is already in supernode {owner[m]!r}")
            owner[m] = name
        if graph is not None:
            missing = [m for m in members if m not in graph]
            if missing:
                raise DataError(f"{where}[{i}] {name!r}: member(s) {missing[:5]} not in graph {graph.name!r}")
        out.append({"name": name, "members": list(members)})
    return out


def sidecar_path(graph_path: str | Path) -> Path:
    """``out/circuit_graph.json`` -> ``out/circuit_graph.supernodes.json``."""
    p = Path(graph_path)
    return p.with_name(p.name[: -len(p.suffix)] + ".supernodes.json" if p.suffix else p.name + ".supernodes.json")


def save_supernodes(path: str | Path, supernodes: Any, graph: CircuitGraph) -> Path:
    """Write the checked supernodes of ``graph`` to ``path`` (atomically; see the module doc for the format)."""
    from interp._fs import atomic_write_json

    path = Path(path)
    meta = graph.meta
    atomic_write_json(path, {"format": FORMAT, "graph": meta["name"], "model": meta["model"],
                             "model_revision": meta["model_revision"],
                             "supernodes": check_supernodes(supernodes, graph)})
    return path


def load_supernodes(path: str | Path, graph: CircuitGraph | None = None) -> list[dict[str, Any]]:
    """Read a supernode file (written by :func:`save_supernodes` or the page's download button).

    Raises:
        StoreError: no such file, or not JSON.
        DataError: another format; a file of another model than ``graph``; bad supernodes (named).
    """
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"no supernode file {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path}: not a supernode file (format {got!r}, expected {FORMAT!r})")
    if graph is not None:
        for key in ("model", "model_revision"):
            mine, theirs = graph.meta[key], data.get(key) or ""
            if mine and theirs and mine != theirs:
                raise DataError(f"{path}: supernodes of {key} {theirs!r}, the graph has {mine!r}")
    return check_supernodes(data.get("supernodes"), graph, where=f"{path}: supernodes")


def to_neuronpedia_supernodes(obj: dict[str, Any], supernodes: Any) -> dict[str, Any]:
    """A copy of the Neuronpedia graph JSON ``obj`` with ``qParams.supernodes = [[name, np id, ...]]``.

    Raises:
        DataError: a member that is not a node of ``obj`` (named).
    """
    from interp.explorer.features import _neuronpedia_ids

    back = {ours: np_id for np_id, ours in _neuronpedia_ids(obj).items()}
    rows = []
    for sn in check_supernodes(supernodes):
        missing = [m for m in sn["members"] if m not in back]
        if missing:
            raise DataError(f"supernode {sn['name']!r}: member(s) {missing[:5]} not in the Neuronpedia graph")
        rows.append([sn["name"], *(back[m] for m in sn["members"])])
    return {**obj, "qParams": {**obj["qParams"], "supernodes": rows}}


def from_neuronpedia_supernodes(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``qParams.supernodes`` of a Neuronpedia graph JSON as our supernodes (our node ids).

    Raises:
        DataError: an entry that is not ``[name, node id, ...]`` or names an unknown node.
    """
    from interp.explorer.features import _neuronpedia_ids

    ours = _neuronpedia_ids(obj)
    out = []
    for i, row in enumerate(obj.get("qParams", {}).get("supernodes", [])):
        if not (isinstance(row, list) and len(row) >= 2 and all(isinstance(x, str) for x in row)):
            raise DataError(f"qParams.supernodes[{i}]: expected [name, node id, ...], got {row!r:.120}")
        missing = [x for x in row[1:] if x not in ours]
        if missing:
            raise DataError(f"qParams.supernodes[{i}] {row[0]!r}: node id(s) {missing[:5]} not in the graph")
        out.append({"name": row[0], "members": [ours[x] for x in row[1:]]})
    return check_supernodes(out, where="qParams.supernodes")
