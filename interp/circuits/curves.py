"""Faithfulness curves of edge-selected circuits, random baselines, complements, and the smallest faithful circuit.

Given an edge Result (``patching.edges`` from EAP, EAP-IG or path patching), circuits of a sweep of
sizes are chosen by ``|effect|`` (:func:`~interp.circuits.edges.top_n` or EAP-IG's
:func:`~interp.circuits.edges.greedy`) and evaluated at edge level
(:mod:`interp.circuits.evaluate`), all as worlds of a few engine passes. At each size the Result
also holds a random-circuit baseline (``n_random`` seeded draws of that many edges, uniformly
from the model's graph: mean and std) and the complement (every edge but the circuit).

Area under the curve (:func:`curve_auc`): trapezoid of faithfulness over ``x = log(1 + n_edges)``,
divided by the swept range of ``x``: the curve's mean height on the log-size axis auto-circuit
plots (1 = clean behaviour at every size, 0 = corrupted).

Example:
    >>> from interp.datasets import TaskDataset
    >>> from interp.patching.attribution import AttributionConfig
    >>> from interp.patching.edges import edge_attribution_patching
    >>> ds = TaskDataset("demo", clean=("ab cd x", "ef gh y"), corrupted=("ab ce x", "ef gi y"),
    ...                  answers=("y", "z"), counterfactuals=("z", "y"))
    >>> eap_result = edge_attribution_patching(model, ds, AttributionConfig(ig_steps=5))
    >>> r = faithfulness_curve(model, ds, eap_result, CurveConfig(sizes=(0, 10, 100)))
    >>> r.table["n_edges"].tolist()   # 100 is capped at the toy graph's scored edges
    [0, 10, 82]
    >>> r.table[["faithfulness", "complement"]].round(2).abs().values.tolist()  # 0 edges = corrupted, all = clean
    [[0.0, 1.0], [1.03, 0.05], [1.0, 0.0]]
    >>> choice = smallest_circuit(model, ds, eap_result, target=0.8)
    >>> choice.n_edges, choice.reached
    (7, True)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from interp.errors import ConfigError

from interp.circuits.edges import Edge, circuit_nodes, edge_scores, greedy, top_n
from interp.circuits.evaluate import EdgeEvalConfig, Evaluator

__all__ = ["CurveConfig", "CircuitChoice", "faithfulness_curve", "smallest_circuit", "curve_auc", "curve_figure"]

SELECTIONS = ("top_n", "greedy")


@dataclass(frozen=True, kw_only=True)
class CurveConfig:
    """Configuration of :func:`faithfulness_curve` and :func:`smallest_circuit`.

    Attributes:
        sizes: numbers of edges to evaluate; ``None`` = 0, then ``n_sizes`` sizes spaced geometrically up to
            every scored edge.
        n_sizes: grid length when ``sizes`` is None.
        selection: ``"top_n"`` (largest ``|effect|``) or ``"greedy"`` (EAP-IG's, grown from the logits).
        metric: the edge Result's metric to rank by (needed when it holds several).
        n_random: random circuits drawn per size (0 = no baseline).
        complement: also evaluate every edge but the circuit.
        seed: seed of the random circuits (a private generator).
        evaluation: :class:`~interp.circuits.evaluate.EdgeEvalConfig` (ablation, rows per pass).
    """

    sizes: tuple[int, ...] | None = None
    n_sizes: int = 12
    selection: str = "top_n"
    metric: str | None = None
    n_random: int = 3
    complement: bool = True
    seed: int = 0
    evaluation: EdgeEvalConfig = field(default_factory=EdgeEvalConfig)

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise ConfigError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.sizes is not None and (not self.sizes or min(self.sizes) < 0):
            raise ConfigError(f"sizes must be a non-empty tuple of edge counts >= 0, got {self.sizes}")
        if self.n_sizes < 2 or self.n_random < 0:
            raise ConfigError(f"n_sizes must be >= 2 and n_random >= 0, got {self.n_sizes}, {self.n_random}")


@dataclass(frozen=True)
class CircuitChoice:
    """The smallest circuit of a sweep reaching a target faithfulness.

    Attributes:
        edges: the circuit (canonical edges).
        n_edges, n_nodes: its size.
        faithfulness, ld: its edge-level faithfulness and mean logit difference.
        reached: whether it reaches the target (False: the most faithful circuit of the sweep).
        curve: the ``circuits.curve`` Result of the sweep (refinement sizes included).
    """

    edges: list[Edge]
    n_edges: int
    n_nodes: int
    faithfulness: float
    ld: float
    reached: bool
    curve: Any


def _grid(n: int, k: int) -> list[int]:
    if n <= 0:
        return [0]
    return sorted({0, n, *(int(round(x)) for x in np.geomspace(1, n, k - 1))})


def _select(scores: pd.DataFrame, n: int, selection: str) -> list[Edge]:
    return top_n(scores, n) if selection == "top_n" else greedy(scores, n)


def _sweep(ev: Evaluator, scores: pd.DataFrame, sizes: list[int], config: CurveConfig
           ) -> list[dict[str, Any]]:
    """Rows of the curve at ``sizes`` (circuit, random draws and complement as worlds of shared passes)."""
    gen = torch.Generator().manual_seed(config.seed)
    circuits: dict[int, list[Edge]] = {}
    for n in sizes:
        c = _select(scores, n, config.selection)
        circuits.setdefault(len(c), c)
    masks, slots = [], []
    n_all = len(ev.edges)
    for n, c in circuits.items():
        m = ev.mask(c)
        masks.append(m)
        slots.append((n, "circuit"))
        for _ in range(config.n_random):
            pick = torch.randperm(n_all, generator=gen)[:n].tolist()
            masks.append(ev.mask([ev.edges[i] for i in pick]))
            slots.append((n, "random"))
        if config.complement:
            masks.append(ev.valid & ~m)
            slots.append((n, "complement"))
    lds = ev.run_masks(masks).tolist()
    got: dict[int, dict[str, list[float]]] = {}
    for (n, what), ld in zip(slots, lds):
        got.setdefault(n, {}).setdefault(what, []).append(float(ev.faithfulness(ld)) if what != "ld" else ld)
        if what == "circuit":
            got[n]["ld"] = [ld]
    method = ",".join(sorted(set(map(str, scores.attrs.get("method", ["?"])))))
    rows = []
    for n, c in circuits.items():
        g = got[n]
        rnd = g.get("random", [])
        rows.append({"method": method, "selection": config.selection, "n_edges": n, "n_nodes": len(circuit_nodes(c)),
                     "faithfulness": g["circuit"][0], "ld": g["ld"][0],
                     "random_mean": float(np.mean(rnd)) if rnd else math.nan,
                     "random_std": float(np.std(rnd, ddof=1)) if len(rnd) > 1 else math.nan,
                     "complement": g["complement"][0] if "complement" in g else math.nan})
    return rows


def _scores(model: Any, edges: Any, metric: str | None) -> pd.DataFrame:
    scores = edge_scores(model, edges, metric=metric)
    table = getattr(edges, "table", edges)
    scores.attrs["method"] = sorted(set(table["method"])) if "method" in table.columns else ["?"]
    return scores


def _result(ev: Evaluator, rows: list[dict[str, Any]], config: CurveConfig, t0: float, **extra: Any) -> Any:
    from interp.results import Result, run_meta

    table = pd.DataFrame(rows).sort_values("n_edges", kind="stable").reset_index(drop=True)
    meta = run_meta(ev.model, dataset=ev.pairs.dataset.name,
                    data=list(zip(ev.pairs.texts, ev.pairs.corrupted_texts)), config=config,
                    ld_clean=ev.ld_clean, ld_corrupted=ev.ld_corrupted, n_prompts=len(ev.pairs),
                    n_model_edges=len(ev.edges), auc=curve_auc(table), auc_random=curve_auc(table, "random_mean"),
                    auc_complement=curve_auc(table, "complement"), forward_passes=ev.counter.forward,
                    rows=ev.counter.rows, seconds=round(time.perf_counter() - t0, 3), **extra)
    return Result("circuits.curve", table, meta, name=f"curve-{config.selection}")


def faithfulness_curve(model: Any, data: Any, edges: Any, config: CurveConfig = CurveConfig()) -> Any:
    """Edge-level faithfulness of the circuits an edge Result selects, against their size.

    Args:
        model: a model from :func:`interp.load_model`.
        data: a TaskDataset of clean/corrupted pairs (answers and counterfactuals).
        edges: a ``patching.edges`` Result (or its table) with ``effect``.
        config: :class:`CurveConfig`.

    Returns:
        Result ``circuits.curve``: one row per circuit size (method, selection, n_edges, n_nodes,
        faithfulness, ld, random_mean, random_std, complement); ``meta.extra`` holds ``auc``,
        ``auc_random``, ``auc_complement`` (:func:`curve_auc`), the baselines and pass counts.
    """
    t0 = time.perf_counter()
    scores = _scores(model, edges, config.metric)
    ev = Evaluator(model, data, config.evaluation)
    sizes = list(config.sizes) if config.sizes is not None else _grid(len(scores), config.n_sizes)
    return _result(ev, _sweep(ev, scores, sizes, config), config, t0)


def smallest_circuit(model: Any, data: Any, edges: Any, *, target: float, config: CurveConfig = CurveConfig(),
                     refine: int = 8) -> CircuitChoice:
    """The smallest circuit of a size sweep (then ``refine`` sizes in the bracket found) reaching ``target``.

    Faithfulness need not grow monotonically with size; this is the smallest *evaluated* size at or above
    the target. When none reaches it, the most faithful circuit is returned with ``reached=False``.
    """
    t0 = time.perf_counter()
    scores = _scores(model, edges, config.metric)
    ev = Evaluator(model, data, config.evaluation)
    sizes = list(config.sizes) if config.sizes is not None else _grid(len(scores), config.n_sizes)
    rows = _sweep(ev, scores, sizes, config)
    ok = sorted(r["n_edges"] for r in rows if r["faithfulness"] >= target)
    if ok and refine > 0:
        below = [r["n_edges"] for r in rows if r["n_edges"] < ok[0]]
        lo = max(below, default=0)
        extra = sorted({int(x) for x in np.linspace(lo, ok[0], refine + 2)[1:-1]} - {r["n_edges"] for r in rows})
        if extra:
            rows += _sweep(ev, scores, extra, config)
    ok_rows = [r for r in rows if r["faithfulness"] >= target]
    best = min(ok_rows, key=lambda r: r["n_edges"]) if ok_rows else max(rows, key=lambda r: r["faithfulness"])
    curve = _result(ev, rows, config, t0, target=target)
    chosen = _select(scores, best["n_edges"], config.selection)
    return CircuitChoice(chosen, len(chosen), best["n_nodes"], best["faithfulness"], best["ld"], bool(ok_rows), curve)


def curve_auc(table: Any, column: str = "faithfulness") -> float:
    """Trapezoid area of ``column`` over ``log(1 + n_edges)``, divided by the swept range (NaN rows skipped)."""
    t = getattr(table, "table", table)
    t = t[["n_edges", column]].dropna().sort_values("n_edges")
    if len(t) < 2:
        return math.nan
    x = np.log1p(t["n_edges"].to_numpy(dtype=float))
    y = t[column].to_numpy(dtype=float)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / (x[-1] - x[0])) if x[-1] > x[0] else math.nan


def curve_figure(result: Any) -> Any:
    """Plotly figure of a ``circuits.curve`` Result: faithfulness vs edges, random band, complement."""
    import plotly.graph_objects as go

    t = result.table.sort_values("n_edges")
    x = t["n_edges"] + 1
    fig = go.Figure()
    if t["random_mean"].notna().any():
        lo, hi = t["random_mean"] - t["random_std"].fillna(0), t["random_mean"] + t["random_std"].fillna(0)
        fig.add_scatter(x=list(x) + list(x[::-1]), y=list(hi) + list(lo[::-1]), fill="toself", line={"width": 0},
                        fillcolor="rgba(150,150,150,0.3)", name="random ± std", hoverinfo="skip")
        fig.add_scatter(x=x, y=t["random_mean"], mode="lines", line={"color": "gray", "dash": "dot"}, name="random")
    if t["complement"].notna().any():
        fig.add_scatter(x=x, y=t["complement"], mode="lines+markers", line={"color": "#d62728"}, name="complement")
    fig.add_scatter(x=x, y=t["faithfulness"], mode="lines+markers", line={"color": "#1f77b4"},
                    name=f"{t['selection'].iloc[0]} ({t['method'].iloc[0]})",
                    customdata=t[["n_nodes"]], hovertemplate="%{x} edges (+1), %{customdata[0]} nodes: %{y:.3f}")
    fig.update_layout(xaxis={"type": "log", "title": "edges + 1"}, yaxis={"title": "faithfulness (1 = clean)"},
                      template="simple_white", title=f"AUC {result.meta.extra.get('auc', math.nan):.3f}")
    return fig
