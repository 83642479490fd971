"""The explorer's JSON payload: nodes, edges, the chosen circuit, method agreement and the faithfulness curve.

See :mod:`interp.explorer` for what the page shows and for the definition of method agreement.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from interp.errors import DataError, nearest

if TYPE_CHECKING:
    from interp.graph import CircuitGraph

__all__ = ["page_data", "resolve_circuit", "node_agreement", "orientation", "curve_payload"]

#: metrics where a larger value is more clean-like behaviour (+1) or less (-1); others are not compared
METRIC_SIGN = {"logit_diff": 1, "logit_diff_norm": 1, "logprob": 1, "prob": 1, "accuracy": 1,
               "kl": -1, "next_token_nll": -1, "next_token_loss": -1, "loss": -1}
DIRECTION_SIGN = {"denoising": 1, "noising": -1}
INPUTS = ("q", "k", "v", "mlp", "logits")
_CURVE_COLUMNS = ("n_edges", "faithfulness")
_CURVE_OPTIONAL = ("n_nodes", "random_mean", "random_std", "complement", "method", "selection", "ld")


def orientation(direction: str, metric: str) -> int:
    """+1 / -1: the sign that makes an ``effect`` positive when the component supports the clean behaviour
    (``0`` when the direction or metric is unknown: such scores are not compared)."""
    return DIRECTION_SIGN.get(direction, 0) * METRIC_SIGN.get(metric, 0)


def _source_orientation(source: str) -> tuple[str, int]:
    """``(method, orientation)`` of a node score source ``"method/direction/metric"`` (orientation 0 if not one)."""
    parts = source.split("/")
    if len(parts) != 3:
        return source, 0
    return parts[0], orientation(parts[1], parts[2])


def resolve_circuit(graph: CircuitGraph, circuit: Iterable[Any]) -> dict[str, Any]:
    """The graph edges and nodes of a circuit given as ``(src, dst, dst_input)`` edges and/or node ids.

    Several inputs (q, k, v) of one sender-receiver pair are one edge of the graph. A circuit of
    node ids only keeps the graph edges between its nodes (``EMBED`` and ``LOGITS`` count as in it).

    Returns:
        ``{"edges": {(src, dst): [inputs]}, "nodes": set, "n_model_edges": int, "given": "edges"|"nodes"}``.

    Raises:
        DataError: an item that is neither an edge triple nor a node id, or edges/nodes not in the graph
            (named, at most 5 shown).
    """
    g = graph.nx
    pairs: dict[tuple[str, str], list[str]] = {}
    nodes: set[str] = set()
    bad: list[str] = []
    n_model = 0
    given_nodes = False
    for item in circuit:
        if isinstance(item, str):
            given_nodes = True
            if item in g:
                nodes.add(item)
            else:
                hint = nearest(item, list(g.nodes)).strip().rstrip("?")
                bad.append(f"node {item!r} not in the graph" + (f" ({hint[0].lower()}{hint[1:]})" if hint else ""))
            continue
        if not (isinstance(item, (tuple, list)) and len(item) == 3 and all(isinstance(x, str) for x in item)):
            bad.append(f"{item!r}: not a (src, dst, dst_input) triple of strings nor a node id")
            continue
        src, dst, inp = item
        if inp not in INPUTS:
            bad.append(f"{tuple(item)!r}: unknown dst_input {inp!r} (expected one of {', '.join(INPUTS)})")
        elif not g.has_edge(src, dst):
            missing = [n for n in (src, dst) if n not in g]
            bad.append(f"{tuple(item)!r}: " + (f"node(s) {missing} not in the graph" if missing
                                               else f"no edge {src} -> {dst} in the graph"))
        else:
            inputs = pairs.setdefault((src, dst), [])
            if inp not in inputs:
                inputs.append(inp)
                n_model += 1
            nodes.update((src, dst))
    if bad:
        raise DataError(f"explorer circuit=: {len(bad)} item(s) not in the graph {graph.name!r} "
                        f"({len(g)} nodes, {g.number_of_edges()} edges): " + "; ".join(bad[:5])
                        + (" ..." if len(bad) > 5 else ""))
    if given_nodes and not pairs:
        ends = nodes | {n for n in ("EMBED", "LOGITS") if n in g}
        pairs = {(u, v): [] for u, v in g.edges if u in ends and v in ends}
    return {"edges": pairs, "nodes": nodes, "n_model_edges": n_model if not given_nodes or n_model else len(pairs),
            "given": "nodes" if given_nodes and not n_model else "edges"}


def node_agreement(graph: CircuitGraph, top_k: int) -> dict[str, dict[str, Any]]:
    """Per node: each method's oriented score, its rank (1 = largest ``|score|`` of that source), and agreement.

    Returns ``{node: {"methods": [{"source", "method", "value", "rank", "top"}], "sign": "agree" | "disagree" |
    "single" | "none", "n_top": int, "n_methods": int, "majority": +1/-1/0, "role_conflict": bool}}``.
    """
    g = graph.nx
    by_source: dict[str, list[tuple[float, str]]] = {}
    for n, scores in g.nodes(data="scores"):
        for source, value in scores.items():
            if _source_orientation(source)[1] and isinstance(value, (int, float)) and math.isfinite(value):
                by_source.setdefault(source, []).append((abs(float(value)), n))
    ranks: dict[tuple[str, str], int] = {}
    for source, items in by_source.items():
        for r, (_, n) in enumerate(sorted(items, key=lambda t: (-t[0], t[1])), start=1):
            ranks[(source, n)] = r
    out: dict[str, dict[str, Any]] = {}
    for n, d in g.nodes(data=True):
        methods = []
        for source, value in d["scores"].items():
            method, sign = _source_orientation(source)
            if (source, n) not in ranks:
                continue
            rank = ranks[(source, n)]
            methods.append({"source": source, "method": method, "value": float(value) * sign, "rank": rank,
                            "top": rank <= top_k})
        signs = {1 if m["value"] > 0 else -1 for m in methods if m["value"] != 0}
        pos = sum(m["value"] > 0 for m in methods)
        neg = sum(m["value"] < 0 for m in methods)
        majority = 1 if pos > neg else -1 if neg > pos else 0
        state = "none" if not methods else "single" if len(methods) == 1 else "agree" if len(signs) <= 1 else "disagree"
        roles = d["roles"]
        conflict = bool(methods) and (("facilitating" in roles and majority < 0)
                                      or ("interfering" in roles and majority > 0))
        out[n] = {"methods": methods, "sign": state, "n_top": sum(m["top"] for m in methods),
                  "n_methods": len(methods), "majority": majority, "role_conflict": conflict, "top_k": top_k}
    return out


def _edge_orientation(data: dict[str, Any]) -> int:
    """Orientation of an edge's primary weight from its evidence rows of that method (+1 when unknown)."""
    for ev in data["evidence"]:
        row = ev.get("row", {})
        if row.get("method") == data["method"] and "direction" in row and "metric" in row:
            o = orientation(str(row["direction"]), str(row["metric"]))
            if o:
                return o
    return 1


def curve_payload(curve: Any, chosen: int | None) -> dict[str, Any]:
    """Rows of a ``circuits.curve`` table (DataFrame or Result) for the side panel, with the chosen size.

    Raises:
        DataError: the table lacks ``n_edges`` or ``faithfulness``.
    """
    import pandas as pd

    from interp.graph.core import jsonable

    table = getattr(curve, "table", curve)
    if not isinstance(table, pd.DataFrame):
        raise DataError(f"explorer curve=: expected a circuits.curve Result or its table (a DataFrame), got "
                        f"{type(curve).__name__}")
    missing = [c for c in _CURVE_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"explorer curve=: the table lacks column(s) {missing}; it has {list(map(str, table.columns))}")
    cols = [c for c in (*_CURVE_COLUMNS, *_CURVE_OPTIONAL) if c in table.columns]
    rows = [{k: jsonable(v) for k, v in r.items()} for r in table[cols].sort_values("n_edges").to_dict("records")]
    extra = getattr(getattr(curve, "meta", None), "extra", {}) or {}
    return {"rows": rows, "chosen": chosen, "auc": jsonable(extra.get("auc")),
            "auc_random": jsonable(extra.get("auc_random")), "target": jsonable(extra.get("target"))}


def page_data(graph: CircuitGraph, *, circuit: Iterable[Any] | None = None, curve: Any = None,
              max_edges: int = 3000, max_nodes: int = 3000, max_evidence: int = 200,
              top_k: int | None = None, features: dict[str, Any] | None = None,
              supernodes: Any = None) -> dict[str, Any]:
    """The JSON payload of the page: meta, notice, nodes, edges, layers, circuit, curve (pruned for huge graphs).

    Args:
        circuit: the chosen circuit, as ``(src, dst, dst_input)`` edges and/or node ids (None: the full graph).
        curve: a ``circuits.curve`` Result or its table, drawn in the side panel.
        max_edges, max_nodes: the most edges/nodes embedded (circuit ones always kept, then the strongest).
        max_evidence: evidence rows kept per node/edge.
        top_k: the rank counted as "top" in method agreement (default: the circuit's head/MLP count, else 10).
        features: the side-panel data of an attribution graph (:func:`interp.explorer.features.attribution_context`
            or ``context_from_neuronpedia``): prompt tokens (column labels), logit effects, examples.
        supernodes: ``[{"name", "members"}]`` or a supernode file (:mod:`interp.explorer.supernodes`).

    A graph with transcoder feature nodes (``L7.TC.1234@3``) gets ``grid`` (``tokens``, ``n_pos``,
    ``n_layers``) and each positioned node ``xy`` (:func:`interp.explorer.features.feature_layout`).

    Each edge carries ``rank``: circuit edges first (by ``|weight|``), then the rest by ``|weight|``; the
    page shows the edges of ``rank < k`` for its edge count ``k`` (``view.default`` = the circuit's size).
    """
    g = graph.nx
    chosen = resolve_circuit(graph, circuit) if circuit is not None else None
    in_c = chosen["edges"] if chosen else {}
    c_nodes = chosen["nodes"] if chosen else set()
    notices = []
    edges = sorted(g.edges(data=True), key=lambda e: ((e[0], e[1]) not in in_c, -abs(e[2]["weight"])))
    n_edges = len(edges)
    if n_edges > max_edges:
        keep_n = max(max_edges, len(in_c))
        edges = edges[:keep_n]
        notices.append(f"Large graph: showing the {keep_n:,} strongest of {n_edges:,} edges (by |weight|"
                       + (", circuit edges first)." if in_c else ")."))
    nodes = list(g.nodes(data=True))
    n_nodes = len(nodes)
    if n_nodes > max_nodes:
        touched = {n for u, v, _ in edges for n in (u, v)}
        nodes = sorted(nodes, key=lambda nd: (nd[0] not in c_nodes, nd[0] not in touched,
                                              -abs(nd[1]["score"])))[:max(max_nodes, len(c_nodes))]
        notices.append(f"Large graph: showing {len(nodes):,} of {n_nodes:,} nodes.")
        keep = {n for n, _ in nodes}
        edges = [e for e in edges if e[0] in keep and e[1] in keep]
    if top_k is None:
        top_k = sum(1 for n in c_nodes if g.nodes[n]["kind"] in ("head", "mlp")) or 10
    agree = node_agreement(graph, top_k)

    out_nodes = []
    for n, d in nodes:
        ag = agree[n]
        # the effect shown: the first comparable method's oriented score, else the primary score (gating's
        # chg.* scores are not effects: a node with only those has no effect, "")
        lead = ag["methods"][0] if ag["methods"] else None
        plain = next((k for k in d["scores"] if not k.startswith("chg.")), "")
        out_nodes.append({"id": n, "kind": d["kind"], "layer": d["layer"], "head": d["head"], "feature": d["feature"],
                          "score": d["score"], "effect": lead["value"] if lead else (d["score"] if plain else 0.0),
                          "effect_source": lead["source"] if lead else plain,
                          "scores": d["scores"], "roles": d["roles"], "flags": d["flags"], "agreement": ag,
                          "in_circuit": n in c_nodes, "evidence": d["evidence"][:max_evidence], "pos": _pos(n),
                          "n_evidence": len(d["evidence"])})
    out_edges = []
    for rank, (u, v, d) in enumerate(edges):
        out_edges.append({"source": u, "target": v, "weight": d["weight"], "weights": d["weights"],
                          "effect": d["weight"] * _edge_orientation(d), "method": d["method"],
                          "result_id": d["result_id"], "rank": rank, "in_circuit": (u, v) in in_c,
                          "inputs": in_c.get((u, v), []), "evidence": d["evidence"][:max_evidence],
                          "n_evidence": len(d["evidence"])})
    n_circ = sum(e["in_circuit"] for e in out_edges)
    circ = None
    if chosen:
        circ = {"n_edges": n_circ, "n_model_edges": chosen["n_model_edges"], "given": chosen["given"],
                "nodes": sorted(c_nodes), "n_heads": sum(g.nodes[n]["kind"] == "head" for n in c_nodes),
                "n_mlps": sum(g.nodes[n]["kind"] == "mlp" for n in c_nodes)}
    view = {"min": n_circ if chosen else len(out_edges), "max": len(out_edges),
            "default": n_circ if chosen else len(out_edges)}
    grid, feats, sns = _feature_parts(graph, out_nodes, features, supernodes)
    return {"meta": dict(graph.meta), "notice": " ".join(notices), "nodes": out_nodes, "edges": out_edges,
            "grid": grid, "attribution": feats, "supernodes": sns,
            "layers": {k: {"flags": v["flags"], "evidence": v["evidence"][:max_evidence]}
                       for k, v in graph.layers.items()},
            "results": graph.results, "totals": {"nodes": n_nodes, "edges": n_edges},
            "circuit": circ, "view": view, "top_k": top_k,
            "curve": curve_payload(curve, chosen["n_model_edges"] if chosen else None) if curve is not None else None}


def _pos(node: str) -> int:
    from interp.explorer.features import node_pos

    p = node_pos(node)
    return -1 if p is None else p


def _feature_parts(graph: CircuitGraph, out_nodes: list[dict[str, Any]], features: dict[str, Any] | None,
                   supernodes: Any) -> tuple[dict[str, Any] | None, dict[str, Any] | None, list[dict[str, Any]]]:
    """``(grid, features, supernodes)`` of the payload; sets ``xy`` on positioned nodes of a feature graph."""
    from pathlib import Path

    from interp.explorer.features import feature_layout, is_feature_graph
    from interp.explorer.supernodes import check_supernodes, load_supernodes

    if isinstance(supernodes, (str, Path)):
        sns = load_supernodes(supernodes, graph)
    else:
        sns = check_supernodes(supernodes or [], graph)
    if features is not None and not (isinstance(features, dict) and {"tokens", "nodes", "logits"} <= set(features)):
        raise DataError("explorer features=: expected the dict of interp.explorer.features.attribution_context "
                        f"(tokens, nodes, logits), got {type(features).__name__}")
    if not is_feature_graph(graph):
        if features is not None:
            raise DataError(f"explorer features=: graph {graph.name!r} has no transcoder feature nodes (L7.TC.1234@pos)")
        return None, None, sns
    positioned = [n for n in out_nodes if n["pos"] >= 0]
    n_layers = int(features["n_layers"]) if features else max(
        [n["layer"] + 1 for n in positioned if n["kind"] in ("tc", "mlp")] or [0])
    tokens = list(features["tokens"]) if features else []
    n_pos = max([len(tokens)] + [n["pos"] + 1 for n in positioned])
    xy = feature_layout([n["id"] for n in positioned], n_layers, n_pos=n_pos,
                        probs={n["id"]: n["score"] for n in positioned if n["kind"] == "logits"})
    for n in out_nodes:
        if n["id"] in xy:
            n["xy"] = list(xy[n["id"]])
    grid = {"tokens": tokens + [""] * (n_pos - len(tokens)), "n_pos": n_pos, "n_layers": n_layers}
    if features is not None:
        shown = {n["id"] for n in out_nodes}
        features = {**features, "nodes": {k: v for k, v in features["nodes"].items() if k in shown}}
    return grid, features, sns
