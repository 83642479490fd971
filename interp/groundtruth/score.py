"""Score discovery methods against a known circuit: ROC AUC over heads and over edges.

Every method that exists runs on the toy's clean/corrupted pairs (denoising, metric
``logit_diff_norm``): exact activation patching of each head's ``z`` (all positions), AtP
over heads, EAP, EAP-IG (5 steps, inputs interpolated) and EAP-IG-activations (5 steps, each
sender group's output interpolated) over edges (node scores: each sender's summed out-edges,
:func:`interp.patching.attribution.node_sums`), ACDC (:func:`interp.circuits.acdc`, KL metric),
Edge Pruning (:func:`interp.circuits.edge_pruning`, 300 steps with the authors' schedule, 10% of the edges
kept; an edge scores its learned ``P(z > 0)``, a head the largest of its out-edges') and causal head gating
(node score: the facilitation ``G-``, a head kept even when pushed shut).

ACDC returns a circuit, not a ranking; as in Conmy et al. its ROC comes from a sweep of
thresholds: :data:`ACDC_SWEEP` (fractions of the corrupted run's ``KL(clean || corrupted)``),
one ACDC run each on one shared :class:`~interp.circuits.Evaluator`. An edge scores the largest
threshold at which it is still in the circuit (0: in none) and a head the largest score of its
out-edges, so ``roc_auc_score`` traces the ROC through the sweep's points (ties: straight lines
between them, as the paper draws it). Each is scored as auto-circuit does:
``sklearn.metrics.roc_auc_score(is_true, |score|)`` over all heads (node level) and, for the
edge methods, over all edges of the ``patching.edges`` table (edge level). Head gating's
facilitation is already a magnitude in ``[0, 1]`` and is used as is.

Example:
    >>> from interp.groundtruth.score import auc
    >>> auc([True, False, False], [0.9, -0.1, 0.2])
    1.0
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd

from interp.groundtruth.truth import Truth

__all__ = ["auc", "node_auc_rows", "score_methods", "acdc_sweep_scores", "METHODS", "ACDC_SWEEP"]

METHODS = ("exact", "atp", "eap", "eap-ig", "eap-ig-activations", "acdc", "edge-pruning", "chg")
#: Edge Pruning's target on the toys, fixed before any toy was scored: keep 10% of the edges
PRUNE_SPARSITY = 0.9
#: ACDC thresholds of the ground-truth sweep, as fractions of KL(clean || corrupted)
ACDC_SWEEP = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)


def auc(is_true: Any, score: Any) -> float:
    """ROC AUC of ``|score|`` for the labels ``is_true`` (1.0: every true unit ranks above every other)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(is_true, dtype=bool), np.abs(np.asarray(score, dtype=float))))


def _head_nodes(model: Any) -> list[str]:
    from interp.nodes import node_id

    return [node_id("head", layer=l, head=h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]


def _ranks(scores: np.ndarray, labels: list[bool]) -> list[float]:
    """Ranks of the true units by ``|score|`` (1 = largest; ties share their average rank, as in the AUC)."""
    r = pd.Series(np.abs(scores)).rank(ascending=False, method="average").to_numpy()
    return sorted(float(r[i]) for i, t in enumerate(labels) if t)


def node_auc_rows(toy: str, method: str, heads: list[str], scores: dict[str, float], truth: Truth) -> dict[str, Any]:
    """One ``groundtruth.auc`` row over ``heads`` (a head missing from ``scores`` scores 0)."""
    vals = np.array([scores.get(n, 0.0) for n in heads], dtype=float)
    labels = [n in truth.nodes for n in heads]
    order = np.argsort(-np.abs(vals), kind="stable")
    return {"toy": toy, "method": method, "level": "node", "auc": auc(labels, vals), "n_true": int(sum(labels)),
            "n_total": len(heads), "true_ranks": _ranks(vals, labels),
            "top": [heads[i] for i in order[: max(1, sum(labels))]]}


def _edge_row(toy: str, method: str, edges: pd.DataFrame, truth: Truth) -> dict[str, Any]:
    e = edges[edges["first_in_group"]] if "first_in_group" in edges else edges
    keys = list(zip(e["src"], e["dst"], e["dst_input"]))
    labels = [k in set(truth.edges) for k in keys]
    missing = sorted(set(truth.edges) - set(keys))
    if missing:
        from interp.errors import DataError

        raise DataError(f"{toy}: true edge(s) {missing} are not in the {method} edge table")
    vals = e["effect"].to_numpy(dtype=float)
    names = [f"{s}->{d}.{i}" for s, d, i in keys]
    order = np.argsort(-np.abs(vals), kind="stable")
    return {"toy": toy, "method": method, "level": "edge", "auc": auc(labels, vals), "n_true": int(sum(labels)),
            "n_total": len(keys), "true_ranks": _ranks(vals, labels),
            "top": [names[i] for i in order[: max(1, sum(labels))]]}


def acdc_sweep_scores(model: Any, dataset: Any, sweep: tuple[float, ...] = ACDC_SWEEP,
                      keep: Callable[[str, Any], None] | None = None,
                      **acdc_options: Any) -> tuple[pd.DataFrame, dict[str, float]]:
    """ACDC (KL) at each threshold ``f * KL(clean || corrupted)`` of ``sweep``; edge and head scores (module doc).

    ``acdc_options`` go to every :func:`interp.circuits.acdc` call (e.g. ``candidates=``, ``scores=``).

    Returns:
        (edge table ``src, dst, dst_input, effect, first_in_group``: effect = the largest threshold fraction
        keeping the edge, 0 if none; ``{head: score}``).
    """
    from interp.circuits import EdgeEvalConfig, Evaluator, acdc, acdc_circuit

    ev = Evaluator(model, dataset, EdgeEvalConfig(max_rows=1024))
    score = {e: 0.0 for e in ev.edges}
    for f in sorted(sweep):
        res = acdc(model, dataset, threshold=f * ev.kl_corrupted, metric="kl", evaluator=ev, **acdc_options)
        for e in acdc_circuit(res):
            score[e] = max(score[e], f)
        if keep is not None:
            keep(f"acdc@{f:g}", res)
    heads: dict[str, float] = {}
    for (src, _, _), v in score.items():
        heads[src] = max(heads.get(src, 0.0), v)
    table = pd.DataFrame({"src": [e[0] for e in score], "dst": [e[1] for e in score],
                          "dst_input": [e[2] for e in score], "effect": list(score.values()),
                          "first_in_group": True})
    return table, heads


def score_methods(model: Any, dataset: Any, truth: Truth, *, toy: str, methods: tuple[str, ...] = METHODS,
                  chg_config: Any = None, ig_steps: int = 5,
                  keep: Callable[[str, Any], None] | None = None) -> Any:
    """Run each discovery method on ``dataset`` and score it against ``truth``.

    Args:
        model: a model from :func:`interp.load_model`.
        dataset: a TaskDataset of clean/corrupted pairs with answers and counterfactuals.
        truth: the known circuit.
        toy: the toy's name (the ``toy`` column).
        methods: any of :data:`METHODS`.
        chg_config: :class:`interp.gating.CHGConfig` for head gating (default: 200 steps, 2 masks).
        ig_steps: EAP-IG interpolation steps.
        keep: optional ``keep(method, result)`` receiving each method's own Result (injected; ACDC: one per
            threshold of the sweep, named ``acdc@<fraction>``).

    Returns:
        Result ``groundtruth.auc``: one row per (method, level).
    """
    from interp.errors import ConfigError
    from interp.patching import AttributionConfig, PatchConfig, activation_patching, attribution_patching
    from interp.patching import edge_attribution_patching
    from interp.patching.attribution import node_sums
    from interp.results import Result, run_meta

    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ConfigError(f"unknown method(s) {bad}; expected some of {METHODS}")
    heads = _head_nodes(model)
    rows = []
    for method in methods:
        if method == "exact":
            res = activation_patching(model, dataset, PatchConfig(component="z", metrics=("logit_diff_norm",)))
            t = res.table
            scores = dict(zip(t["node"], t["effect"]))
        elif method == "atp":
            res = attribution_patching(model, dataset, AttributionConfig(components=("z",)))
            t = res.table
            scores = dict(zip(t["node"], t["effect"]))
        elif method in ("eap", "eap-ig", "eap-ig-activations"):
            res = edge_attribution_patching(model, dataset, AttributionConfig(
                ig_steps=0 if method == "eap" else ig_steps,
                ig_mode="activations" if method == "eap-ig-activations" else "inputs"))
            sums = node_sums(res.table)
            scores = dict(zip(sums["node"], sums["effect"]))
            rows.append(_edge_row(toy, method, res.table, truth))
        elif method == "acdc":
            res, scores = acdc_sweep_scores(model, dataset, keep=keep)
            rows.append(_edge_row(toy, method, res, truth))
        elif method == "edge-pruning":
            from interp.circuits.prune import PruneConfig, edge_pruning, pruning_scores

            cfg = PruneConfig(target_sparsity=PRUNE_SPARSITY, steps=300, warmup=2500 / 3000, reg_lr=0.8, measure=False)
            res = edge_pruning(model, dataset, cfg)
            ranked = pruning_scores(res)
            rows.append(_edge_row(toy, method, ranked, truth))
            scores = ranked.groupby("src")["effect"].max().to_dict()
        else:
            from interp.gating import CHGConfig, causal_head_gating

            res = causal_head_gating(model, dataset, config=chg_config or CHGConfig(steps=200, n_masks=2,
                                                                                     progress=False))
            scores = dict(zip(res.table["node"], res.table["facilitation"]))
        rows.append(node_auc_rows(toy, method, heads, scores, truth))
        if keep is not None and method != "acdc":      # ACDC: each run of the sweep was given to keep
            keep(method, res)
    table = pd.DataFrame(rows)
    meta = run_meta(model, dataset=dataset.name, data=list(zip(dataset.clean, dataset.corrupted)), config=None,
                    truth_nodes=list(truth.nodes), truth_edges=[list(e) for e in truth.edges])
    return Result("groundtruth.auc", table, meta, name=toy)
