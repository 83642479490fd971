"""The pipeline's circuit at edge level (:mod:`interp.circuits`), and agreement between discovery methods.

:func:`edge_circuit` turns a task's EAP (or EAP-IG) edge Result into the job's circuit: a
faithfulness curve against the number of edges (and nodes) with random circuits and the
complement at each size (Result ``circuits.curve``), the smallest evaluated circuit reaching the
target faithfulness, re-evaluated on its own (Result ``circuits.eval``, whose ``meta.extra["edges"]``
holds the circuit's ``(src, dst, dst_input)`` edges), and the circuit as a subgraph of the job's graph.

:func:`method_agreement` compares the per-head effects of exact head patching, AtP and EAP(-IG)
(edge effects summed over each head's out-edges): Spearman through
:func:`interp.patching.attribution.agreement`, and the overlap of the top-k heads by ``|effect|``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

__all__ = ["edge_result", "edge_circuit", "circuit_size", "method_agreement"]


def edge_result(results: list[Any]) -> Any:
    """The first ``patching.edges`` Result with an ``effect`` column (EAP / EAP-IG), or None."""
    return next((r for r in results if r.kind == "patching.edges" and len(r.table)), None)


def circuit_size(edges: list[tuple[str, str, str]]) -> dict[str, int]:
    """Edges, heads and MLPs of an edge-set circuit (EMBED and LOGITS not counted as nodes)."""
    from interp.circuits import circuit_nodes

    nodes = circuit_nodes(edges)
    return {"n_edges": len(edges), "n_heads": sum(".H" in n for n in nodes),
            "n_mlps": sum(n.endswith(".MLP") for n in nodes)}


def edge_circuit(job: Any, task: str, graph: Any, eap: Any) -> dict[str, Any]:
    """Choose and evaluate ``task``'s circuit at edge level; add its edges to ``graph`` when the graph lacks them.

    Returns:
        ``{"edges", "curve" (circuits.curve Result), "eval" (circuits.eval Result), "graph" (the circuit
        as a CircuitGraph), "faithfulness", "reached", "target", "size"}``.
    """
    from interp.circuits import (CurveConfig, EdgeEvalConfig, edge_scores, evaluate_circuits, faithfulness_curve,
                                 greedy, smallest_circuit, top_n)

    c = job.cfg.graph
    ds = job.subset(task, c.faithfulness_prompts)
    ccfg = CurveConfig(sizes=tuple(c.curve_sizes) or None, n_sizes=c.curve_points, selection=c.selection,
                       n_random=c.random_samples, complement=True, seed=job.cfg.seed,
                       evaluation=EdgeEvalConfig(ablation=c.edge_ablation, max_rows=c.max_rows))
    if c.faithfulness_target is not None:
        choice = smallest_circuit(job.model, ds, eap, target=c.faithfulness_target, config=ccfg, refine=c.refine)
        edges, curve, reached = list(choice.edges), choice.curve, choice.reached
    else:   # no target: the top_k_edges circuit, its size added to the curve
        scores = edge_scores(job.model, eap)
        if ccfg.sizes is None:
            from interp.circuits.curves import _grid

            ccfg = dataclasses.replace(ccfg, sizes=tuple(_grid(len(scores), c.curve_points)))
        ccfg = dataclasses.replace(ccfg, sizes=tuple(sorted({*ccfg.sizes, c.top_k_edges})))
        curve = faithfulness_curve(job.model, ds, eap, ccfg)
        edges = (top_n if c.selection == "top_n" else greedy)(scores, c.top_k_edges)
        reached = None
    curve = dataclasses.replace(curve, name=f"{task}_curve")
    if getattr(job, "engine", None) is not None:    # [engine] kind = "ray": the evaluation's passes on a worker
        from interp.distributed import evaluate_circuits_ray

        ev = evaluate_circuits_ray(job.model, ds, {f"{task}_circuit": edges}, ccfg.evaluation, engine=job.engine)
    else:
        ev = evaluate_circuits(job.model, ds, {f"{task}_circuit": edges}, ccfg.evaluation)
    ev.meta.extra["edges"] = [list(e) for e in edges]
    ev.meta.extra["target"] = c.faithfulness_target
    ev = dataclasses.replace(ev, name=f"{task}_circuit")
    _add_missing_pairs(graph, eap, edges)
    return {"edges": edges, "curve": curve, "eval": ev, "graph": _subgraph(graph, edges, f"{task}_circuit"),
            "faithfulness": float(ev.table["faithfulness"].iloc[0]), "reached": reached,
            "target": c.faithfulness_target, "size": circuit_size(edges)}


def _add_missing_pairs(graph: Any, eap: Any, edges: list[tuple[str, str, str]]) -> None:
    """Add to ``graph`` the EAP rows of circuit node pairs it does not hold (it keeps only the strongest edges)."""
    missing = {(s, d) for s, d, _ in edges} - set(graph.nx.edges)
    if not missing:
        return
    t = eap.table
    sub = t[[(s, d) in missing for s, d in zip(t["src"], t["dst"])]]
    graph.add_result(dataclasses.replace(eap, table=sub.reset_index(drop=True)))


def _subgraph(graph: Any, edges: list[tuple[str, str, str]], name: str) -> Any:
    """The circuit as a CircuitGraph: ``graph``'s nodes and (summed) edges that the circuit's edges touch."""
    pairs = {(s, d) for s, d, _ in edges}
    nodes = {n for p in pairs for n in p} | {"EMBED", "LOGITS"}
    out = graph.copy()
    g = out.nx
    g.remove_edges_from([e for e in list(g.edges) if e not in pairs])
    g.remove_nodes_from([n for n in list(g.nodes) if n not in nodes])
    g.graph["name"] = name
    return out


def _head_table(r: Any, metric: str) -> pd.DataFrame | None:
    """Per-head ``effect`` (one row per layer, head) of a node or edge Result, for ``metric``."""
    from interp.patching.attribution import node_sums

    t = r.table
    if "metric" in t.columns:
        t = t[t["metric"] == metric]
    if "src" in t.columns:
        t = node_sums(t)
    if "component" in t.columns:
        t = t[t["component"] == "head"]
    t = t[t["head"] >= 0]
    if not len(t):
        return None
    return t.groupby(["layer", "head"], as_index=False)["effect"].sum()


def method_agreement(results: list[Any], metric: str, *, k: int = 10) -> pd.DataFrame:
    """Agreement of AtP and EAP(-IG) head effects with exact head patching.

    Returns:
        one row per method: method, n_heads, spearman (:func:`interp.patching.attribution.agreement`,
        component ``head``), ``top{k}_overlap`` (share of exact patching's top-k heads by ``|effect|`` among the
        method's top k), and the method's top-3 heads. Empty when there is no exact ``z`` patching.
    """
    from interp.patching.attribution import agreement

    exact = next((r for r in results if r.kind == "patching.nodes" and r.name.startswith("exact-z")), None)
    if exact is None:
        return pd.DataFrame()
    ex = _head_table(exact, metric)
    if ex is None:
        return pd.DataFrame()
    top = set(map(tuple, ex.reindex(ex["effect"].abs().sort_values(ascending=False).index)[["layer", "head"]]
                  .head(k).to_numpy().tolist()))
    rows = []
    for r in results:
        if r is exact or r.kind not in ("patching.nodes", "patching.edges") or r.name.startswith("exact"):
            continue
        t = _head_table(r, metric)
        if t is None:
            continue
        rho = agreement(r, exact).get("head", {}).get("spearman", float("nan"))
        ranked = t.reindex(t["effect"].abs().sort_values(ascending=False).index)
        mine = [tuple(x) for x in ranked[["layer", "head"]].head(k).to_numpy().tolist()]
        method = str(r.table["method"].iloc[0]) if "method" in r.table.columns else r.name
        if method.startswith("eap-ig") and r.kind == "patching.nodes":
            method = f"{method} (nodes)"      # node attribution with IG steps shares the edge method's name
        rows.append({"method": method, "n_heads": len(t), "spearman": rho,
                     f"top{k}_overlap": len(top & set(mine)) / max(1, min(k, len(top))),
                     "top3": ", ".join(f"L{l}.H{h}" for l, h in mine[:3])})
    ex_rank = ex.reindex(ex["effect"].abs().sort_values(ascending=False).index)
    rows.insert(0, {"method": "exact", "n_heads": len(ex), "spearman": 1.0, f"top{k}_overlap": 1.0,
                    "top3": ", ".join(f"L{int(l)}.H{int(h)}" for l, h in ex_rank[["layer", "head"]].head(3).to_numpy())})
    return pd.DataFrame(rows)
