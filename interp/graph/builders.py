"""Builders: one per Result family, each adding a Result's rows to a CircuitGraph as evidence.

=====================  ==============================================================
Result kind            what it adds
=====================  ==============================================================
``patching.nodes``     head/MLP/resid nodes with ``scores["method/direction/metric"]``
``patching.edges``     edges (path patching, EAP, EAP-IG), summed over ``dst_input``
``gating.chg``         ``roles`` (facilitating / interfering / irrelevant) on heads
``sinks.heads``        ``"sink"`` flag on heads with ``is_sink``
``sinks.dormancy``     ``"dormant"`` flag on heads that switch between active and dormant
``massive.layers``     ``"massive"`` layer flag (``graph.layers``) where ``is_massive``
``sae.dfa``            SAE feature nodes with DFA edges head -> feature
``sae.features``       evidence (density, top tokens, logit effects) on feature nodes
``sae.examples``       top-activating contexts on feature nodes
``steering.axes``      axes attached to layers (``graph.layers``)
``sad.signals``        edges ``method="sad"`` (sparse attention decomposition signals)
``vlm.fcct``           visual token-group nodes ``VIS.<group>`` (score: best recovery) with
                       edges to the top recovering MLP / residual nodes
``vlm.vhd``            ``"vision-aware"`` flag and ``vhd`` score on heads VHR selects
=====================  ==============================================================

Each builder checks the Result's columns first (missing columns -> :class:`DataError`
naming them) and its model against the graph's (see :meth:`CircuitGraph.check_result`).

Example:
    >>> import pandas as pd
    >>> from interp.results import Result, RunMeta
    >>> from interp.graph import CircuitGraph
    >>> r = Result("gating.chg", pd.DataFrame({"layer": [0], "head": [1], "node": ["L0.H1"], "g_plus": [0.9],
    ...     "g_minus": [0.8], "facilitation": [0.8], "interference": [0.1], "irrelevance": [0.1],
    ...     "role": ["facilitating"]}), RunMeta(model="toy:llama"))
    >>> CircuitGraph().add_result(r).node("L0.H1")["roles"]
    ['facilitating']
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from interp.errors import ConfigError, DataError, nearest
from interp.graph.core import CircuitGraph, jsonable
from interp.nodes import node_id

__all__ = ["BUILDERS", "add_result", "require_columns"]


def require_columns(result: Any, columns: tuple[str, ...]) -> None:
    """Raise DataError naming the columns ``result.table`` lacks."""
    missing = [c for c in columns if c not in result.table.columns]
    if missing:
        raise DataError(f"Result {result.id!r} (kind {result.kind!r}) lacks column(s) {missing} needed to build "
                        f"the graph; it has {list(map(str, result.table.columns))}")


def _rows(result: Any) -> list[dict[str, Any]]:
    return [{str(k): jsonable(v) for k, v in row.items()} for row in result.table.to_dict("records")]


class Result_like:
    """A view of a Result with another table (same id, kind, meta)."""

    def __init__(self, result: Any, table: Any) -> None:
        self.table, self.id, self.kind, self.meta = table, result.id, result.kind, result.meta


def _ev(result: Any, row: dict[str, Any]) -> dict[str, Any]:
    return {"result_id": result.id, "kind": result.kind, "row": row}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def build_patching_nodes(g: CircuitGraph, result: Any, *, components: tuple[str, ...] = ("head", "mlp", "resid", "attn"),
                         all_positions_only: bool = False) -> None:
    """Node scores from activation/attribution patching: the signed ``effect`` of each node.

    ``effect`` is ``metric(patched) - metric(reference)`` in the metric's units for every
    method and direction (exact patching measures it, AtP estimates it; see
    :mod:`interp.schemas`), so a node's score is how much patching it changes the metric,
    and ``prune(top_k_nodes=k)`` keeps the nodes that change it most. Each row scores one
    (node, pos); per (node, method, direction, metric) the score is the row with
    ``pos == -1`` if present, else the position with the largest ``|effect|``.
    ``component == "attn"`` rows (whole attention layer) are kept as evidence on the layer.
    """
    require_columns(result, ("method", "direction", "metric", "component", "layer", "head", "pos", "node", "effect"))
    g.check_result(result)
    best: dict[tuple[str, str], tuple[int, float]] = {}
    per_node: dict[str, list[dict[str, Any]]] = {}
    for row in _rows(result):
        if row["component"] not in components:
            continue
        if row["component"] == "attn":
            g.add_layer_info(int(row["layer"]), evidence=[_ev(result, row)])
            continue
        node = str(row["node"])
        per_node.setdefault(node, []).append(row)
        src = f"{row['method']}/{row['direction']}/{row['metric']}"
        pos = int(row["pos"]) if row["pos"] is not None else -1
        if all_positions_only and pos != -1:
            continue
        prev = best.get((node, src))
        whole = pos == -1
        if prev is None or (whole and prev[0] != -1) or (whole == (prev[0] == -1) and abs(row["effect"]) > abs(prev[1])):
            best[(node, src)] = (pos, float(row["effect"]))
    for node, rows in per_node.items():
        g.add_node(node, evidence=[_ev(result, r) for r in rows])
    for (node, src), (_, value) in best.items():
        g.add_node(node, score=value, source=src)


def build_patching_edges(g: CircuitGraph, result: Any, *, top_k: int | None = None, min_abs: float = 0.0) -> None:
    """Edges from path patching / EAP / EAP-IG: weight = signed ``effect``, summed over ``dst_input`` (q, k, v, mlp,
    logits).

    Rows of a *joint* receiver set (path patching with ``dst_input == "joint"``: the effect of one
    sender on several receivers at once) are not an edge: they become evidence on the sender node.

    Args:
        top_k: keep only the ``top_k`` edges with the largest ``|weight|`` per method (EAP on a
            real model scores ~10^5 edges; the graph usually wants the strongest few hundred).
        min_abs: drop edges with ``|weight| < min_abs``.
    """
    require_columns(result, ("method", "src", "dst", "dst_input", "effect"))
    g.check_result(result)
    t = result.table
    joint = t[t["dst_input"] == "joint"]
    for row in _rows(Result_like(result, joint)):
        g.add_node(str(row["src"]), evidence=[_ev(result, row)])
    t = t[t["dst_input"] != "joint"]
    sums = t.groupby(["method", "src", "dst"], sort=False)["effect"].sum()
    sums = sums[sums.abs() >= min_abs]
    if top_k is not None:
        sums = sums.groupby(level="method", group_keys=False).apply(lambda s: s.loc[s.abs().nlargest(top_k).index])
    keep = set(sums.index)
    index = list(zip(t["method"], t["src"], t["dst"]))
    rows_by_edge: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    sub = t[[k in keep for k in index]]
    for row in _rows(Result_like(result, sub)):
        rows_by_edge.setdefault((str(row["method"]), str(row["src"]), str(row["dst"])), []).append(row)
    for (method, src, dst), value in sums.items():
        rows = rows_by_edge.get((str(method), str(src), str(dst)), [])
        g.add_edge(str(src), str(dst), weight=float(value), method=str(method), result_id=result.id,
                   evidence=[_ev(result, r) for r in rows])


def build_chg(g: CircuitGraph, result: Any) -> None:
    """Causal head gating: ``role`` becomes a node role; facilitation/interference/irrelevance scores."""
    require_columns(result, ("layer", "head", "node", "role"))
    g.check_result(result)
    for row in _rows(result):
        node = str(row["node"])
        g.add_node(node, roles=[str(row["role"])], evidence=[_ev(result, row)])
        for key in ("facilitation", "interference", "irrelevance", "g_plus", "g_minus"):
            if _finite(row.get(key)):
                g.node(node)["scores"][f"chg.{key}"] = float(row[key])


def build_sink_heads(g: CircuitGraph, result: Any, *, only_flagged: bool = False) -> None:
    """Attention sinks: ``"sink"`` flag on heads with ``is_sink``; evidence on every head (or only sinks)."""
    require_columns(result, ("layer", "head", "node", "is_sink"))
    g.check_result(result)
    for row in _rows(result):
        sink = bool(row["is_sink"])
        if only_flagged and not sink:
            continue
        g.add_node(str(row["node"]), flags=["sink"] if sink else [], evidence=[_ev(result, row)])


def build_dormancy(g: CircuitGraph, result: Any, *, only_flagged: bool = False) -> None:
    """Active-dormant heads: ``"dormant"`` flag on heads whose ``switches`` is true in any domain."""
    require_columns(result, ("layer", "head", "node", "domain", "dormancy", "switches"))
    g.check_result(result)
    rows_by_node: dict[str, list[dict[str, Any]]] = {}
    for row in _rows(result):
        rows_by_node.setdefault(str(row["node"]), []).append(row)
    for node, rows in rows_by_node.items():
        switch = any(bool(r["switches"]) for r in rows)
        if only_flagged and not switch:
            continue
        g.add_node(node, flags=["dormant"] if switch else [], evidence=[_ev(result, r) for r in rows])


def build_massive(g: CircuitGraph, result: Any) -> None:
    """Massive activations: ``"massive"`` flag on layers with an ``is_massive`` row (evidence: those rows)."""
    require_columns(result, ("layer", "value", "pos", "dim", "is_massive"))
    g.check_result(result)
    for row in _rows(result):
        if bool(row["is_massive"]):
            g.add_layer_info(int(row["layer"]), flags=["massive"], evidence=[_ev(result, row)])


def build_sae_dfa(g: CircuitGraph, result: Any, *, min_abs: float = 0.0) -> None:
    """Direct feature attribution: feature nodes ``L{l}.SAE.{f}`` and edges head -> feature (method ``"dfa"``)."""
    require_columns(result, ("feature", "layer", "head", "value"))
    g.check_result(result)
    for row in _rows(result):
        if not _finite(row["value"]) or abs(row["value"]) < min_abs:
            continue
        layer, feature = int(row["layer"]), int(row["feature"])
        feat = node_id("sae", layer, feature=feature)
        head = node_id("head", layer, head=int(row["head"]))
        g.add_node(feat, evidence=[_ev(result, row)])
        g.add_edge(head, feat, weight=float(row["value"]), method="dfa", result_id=result.id,
                   evidence=[_ev(result, row)])


def build_sae_features(g: CircuitGraph, result: Any, *, create: bool = False) -> None:
    """SAE feature statistics (density, max activation, top examples) as evidence on feature nodes.

    Only features already in the graph get evidence unless ``create=True``.
    """
    require_columns(result, ("feature", "layer"))
    g.check_result(result)
    for row in _rows(result):
        node = node_id("sae", int(row["layer"]), feature=int(row["feature"]))
        if node in g or create:
            g.add_node(node, evidence=[_ev(result, row)])


def build_sae_examples(g: CircuitGraph, result: Any, *, create: bool = False, per_feature: int = 10) -> None:
    """Top-activating examples (token with left/right context) as evidence on feature nodes (the explorer lists them)."""
    require_columns(result, ("feature", "layer", "value", "token"))
    g.check_result(result)
    seen: dict[str, int] = {}
    for row in _rows(result):
        node = node_id("sae", int(row["layer"]), feature=int(row["feature"]))
        if (node in g or create) and seen.get(node, 0) < per_feature:
            seen[node] = seen.get(node, 0) + 1
            g.add_node(node, evidence=[_ev(result, row)])


def build_steering_axes(g: CircuitGraph, result: Any) -> None:
    """Steering axes attached to their layer (``graph.layers[layer]``), flag ``"steering"``."""
    require_columns(result, ("name", "method", "layer"))
    g.check_result(result)
    for row in _rows(result):
        g.add_layer_info(int(row["layer"]), flags=["steering"], evidence=[_ev(result, row)])


def build_sad_signals(g: CircuitGraph, result: Any, *, top_k: int | None = None, min_abs: float = 0.0) -> None:
    """Sparse attention decomposition: edges ``src -> dst`` with ``method="sad"``, weight = the signal (attention-score
    units, summed over ``dst_input``); not an effect, so it never mixes with patching weights (``weights["sad"]``).

    Args:
        top_k: keep the ``top_k`` edges with the largest ``|weight|``.
        min_abs: drop edges with ``|weight| < min_abs``.
    """
    require_columns(result, ("method", "src", "dst", "dst_input", "signal"))
    g.check_result(result)
    t = result.table
    sums = t.groupby(["src", "dst"], sort=False)["signal"].sum()
    sums = sums[sums.abs() >= min_abs]
    if top_k is not None:
        sums = sums.loc[sums.abs().nlargest(top_k).index]
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in _rows(result):
        rows.setdefault((str(row["src"]), str(row["dst"])), []).append(row)
    for (src, dst), value in sums.items():
        g.add_edge(str(src), str(dst), weight=float(value), method="sad", result_id=result.id,
                   evidence=[_ev(result, r) for r in rows.get((str(src), str(dst)), [])])


def build_vlm_fcct(g: CircuitGraph, result: Any, *, top_k: int = 3) -> None:
    """Visual token groups as nodes ``VIS.<group>`` scored by their best FCCT recovery, each with edges to the
    ``top_k`` MLP / residual nodes (layer, component) whose restoration recovers most (weight = recovery)."""
    from interp.graph.core import VISUAL_PREFIX

    require_columns(result, ("layer", "component", "group", "node", "recovery"))
    g.check_result(result)
    rows = _rows(result)
    for group in dict.fromkeys(str(r["group"]) for r in rows):
        mine = sorted((r for r in rows if str(r["group"]) == group and _finite(r["recovery"])),
                      key=lambda r: -r["recovery"])
        if not mine:
            continue
        vis = VISUAL_PREFIX + group
        g.add_node(vis, score=mine[0]["recovery"], source="fcct/recovery", evidence=[_ev(result, mine[0])])
        for r in [r for r in mine if r["node"]][:top_k]:
            g.add_edge(vis, str(r["node"]), weight=r["recovery"], method="fcct", result_id=result.id,
                       evidence=[_ev(result, r)])


def build_vlm_vhd(g: CircuitGraph, result: Any) -> None:
    """``vhd`` scores on heads; the heads VHR selects get the ``"vision-aware"`` flag."""
    require_columns(result, ("node", "vhd", "selected"))
    g.check_result(result)
    for row in _rows(result):
        g.add_node(str(row["node"]), score=row["vhd"], source="vhd", flags=["vision-aware"] if row["selected"] else (),
                   evidence=[_ev(result, row)])


BUILDERS: dict[str, Callable[..., None]] = {
    "patching.nodes": build_patching_nodes,
    "patching.edges": build_patching_edges,
    "gating.chg": build_chg,
    "sinks.heads": build_sink_heads,
    "sinks.dormancy": build_dormancy,
    "massive.layers": build_massive,
    "sae.dfa": build_sae_dfa,
    "sae.features": build_sae_features,
    "sae.examples": build_sae_examples,
    "steering.axes": build_steering_axes,
    "sad.signals": build_sad_signals,
    "vlm.fcct": build_vlm_fcct,
    "vlm.vhd": build_vlm_vhd,
}


def add_result(g: CircuitGraph, result: Any, **kwargs: Any) -> None:
    """Dispatch ``result`` to the builder of its kind.

    Raises:
        ConfigError: no builder for the kind (nearest kinds suggested).
        DataError: missing columns, or a Result of another model.
    """
    builder = BUILDERS.get(result.kind)
    if builder is None:
        raise ConfigError(f"no graph builder for Result kind {result.kind!r}.{nearest(result.kind, BUILDERS)} "
                          f"Builders exist for: {', '.join(BUILDERS)}")
    builder(g, result, **kwargs)
