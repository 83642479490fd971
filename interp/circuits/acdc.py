"""ACDC: automatic circuit discovery by recursive edge pruning (Conmy et al. 2023), batched.

**The algorithm** (sequential ACDC, as in the authors' ``acdc/TLACDCExperiment.py``, ``step``):
start from the full graph ``C`` (:func:`interp.circuits.model_edges`) and its metric ``m(C)``.
Visit the receivers (``LOGITS``, MLP inputs, the q/k/v inputs of heads) from the logits backwards
(reverse topological order). At each receiver, for each edge ``e`` still into it, in order::

    result = m(C \\ {e}) - m(C)          # the edge removed: its receiver reads the sender's corrupted output
    if result < threshold:  C = C \\ {e}  # (|result| with abs_value=True) and m(C) becomes m(C \\ {e})

``m`` is to be minimised: ``kl`` = ``KL(clean || circuit)`` at each prompt's last token, mean over
prompts (the authors' ``kl_divergence``), or the negated logit difference for ``logit_diff`` /
``logit_diff_norm`` (their ``logit_diff_metric`` carries the same minus sign). A receiver whose
node has no out-edge left in ``C`` is not connected to the logits: its edges are all removed
untested (the authors' ``current_node_connected``), their measured change being exactly 0 (in the
edge-level evaluation a node without out-edges reaches no receiver). Order followed from the authors'
defaults: receivers in reverse forward order (``reversed(interp.circuits.edges.receivers)``:
logits, then per layer from the last the MLP input, v, k, q inputs), and the senders of one receiver
by layer from the last, in a layer the MLP first then heads in ascending index, ``EMBED`` last (their
setup order with ``names_mode="normal"``, ``indices_mode="reverse"``).

**Batching (exactly the sequential result, not an approximation).** Each edge's test depends on the
decisions before it, so the tests of one receiver are run as a *speculative chain*: every edge still
pending gets a predicted decision (below); the chain of circuits the sequential algorithm would test
under those predictions, ``T_i = S_(i-1) \\ {e_i}`` with ``S_i = T_i`` for a predicted removal and
``S_(i-1)`` otherwise, is evaluated in one batched call of :meth:`interp.circuits.Evaluator.run_masks`
(each circuit a world of the one engine, ``max_rows`` rows per forward pass). Then the chain is walked in
order with the real rule: while decisions match the predictions every test was made on the exact circuit the sequential
algorithm has at that point, so it is the sequential test; at the first mismatch that edge's decision
is still exact (its circuits were), and the edges after it are re-run in a new chain with their
predictions updated. A chain is one forward pass of circuits (``max_rows // n_prompts``), so a wrong
prediction wastes at most the rest of that pass. An edge not yet measured is predicted to get the run's
majority decision so far ("remove" at the start: with the usual thresholds ACDC removes most edges);
an edge measured on a speculative circuit, its measurement. A receiver then costs about one circuit per
edge when the predictions hold, and each round settles at least one edge. (Before: a first round of every
edge against the current circuit, then chains over all the receiver's remaining edges, re-run after each
misprediction: on SmolLM2 IOI at tau 0.02, 2,822 circuits for the logits' 301 edges; BENCHMARKS.md.) The
one difference to the sequential run is floating-point: a circuit computed among other worlds can
differ in the last digits, which matters only for a result within ~1e-6 of the threshold.

**Entering late (exact).** Every circuit tested at a receiver of layer ``l`` equals the start circuit on
every receiver below ``l`` (those are visited later), so its run below ``l`` is the start circuit's run:
each tested circuit enters the pass at layer ``l`` (the engine's ``World(enter=l, entry=...)``) from the
start circuit's residual entering ``l`` and its sender outputs before ``l``
(:meth:`~interp.circuits.Evaluator.record`; for the full graph these are the clean run's, recorded by the
evaluator's baseline pass). A test at the logits enters at the last layer. Same results as running
every circuit from the tokens, up to float rounding (:class:`~interp.circuits.EdgeEvalConfig` ``enter``).

**Candidates (approximate, for big models).** ``candidates=N`` tests only the ``N`` edges of largest
``|score|`` (EAP-IG by default, computed with :func:`interp.patching.edge_attribution_patching`; or
``scores=`` any edge Result). Every other edge is **removed before the first test**, i.e. assumed
unnecessary, so the run starts from the top-``N`` circuit ``C_N`` instead of the full graph and can
only remove edges from it. Why removed and not kept: keeping the untested edges would start from the
full model (faithful by definition) but return a "circuit" holding every untested edge (70k - N on
SmolLM2), and would test each candidate against a nearly full model where redundant paths hide it.
Removing them makes the start circuit's faithfulness the assumption to check: it is measured
(edge-level, normalised logit difference) and stored in ``meta.extra["approximation"]``
(``start_faithfulness``, ``start_metric``); choose ``N`` from the faithfulness curve of the same scores
(:func:`interp.circuits.faithfulness_curve`, :func:`interp.circuits.smallest_circuit`) so that ``C_N`` is
faithful. ``N`` at least the number of edges is exact ACDC (the same code path). Untested edges have
effect 0 in the table; ``meta.extra["approximation"]`` is None for exact ACDC.

Returned: the ``patching.edges`` Result (method ``acdc``, one row per edge, k/v edges of a GQA group
repeated per query head with ``first_in_group`` as in EAP) with ``effect`` = the measured change of
the metric (``kl``, ``logit_diff`` or ``logit_diff_norm``) when the edge was removed from the circuit
of its test, ``reference_value`` = the metric of that circuit, ``value`` = after the removal
(untested edges of disconnected receivers: effect 0). The discovered circuit is
``meta.extra["circuit"]`` (read it with :func:`acdc_circuit`; per edge: :func:`acdc_membership`,
Result ``circuits.acdc``), with its edge-level ``faithfulness`` (normalised logit difference,
:class:`~interp.circuits.Evaluator`), rounds (batched calls), forward passes and worlds.

Example:
    >>> from interp import load_model
    >>> from interp.datasets import TaskDataset
    >>> model = load_model("toy:llama,n_layers=2")
    >>> ds = TaskDataset("demo", clean=("ab cd x", "ef gh y"), corrupted=("ab ce x", "ef gi y"),
    ...                  answers=("y", "z"), counterfactuals=("z", "y"))
    >>> r = acdc(model, ds, threshold=0.0)
    >>> len(acdc_circuit(r)) == r.meta.extra["n_edges"], r.table["method"].iloc[0]
    (True, 'acdc')
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from interp.errors import ConfigError, DataError

from interp.circuits.edges import Edge, canonical
from interp.circuits.evaluate import EdgeEvalConfig, Evaluator

__all__ = ["ACDC_METRICS", "acdc", "acdc_circuit", "acdc_membership"]

ACDC_METRICS = ("kl", "logit_diff", "logit_diff_norm")


def _layer_of(name: str) -> int:
    return -1 if name == "EMBED" else int(name[1:].split(".")[0])


def _sender_order(ev: Evaluator) -> list[int]:
    """Sender rows in the authors' test order: layers from the last, MLP before heads, heads ascending, EMBED last."""
    def key(i: int) -> tuple[int, int, int]:
        s = ev.senders[i]
        if s == "EMBED":
            return (1, 0, 0)
        mlp = s.endswith(".MLP")
        return (-_layer_of(s), 0 if mlp else 1, 0 if mlp else int(s.split(".H")[1]))
    return sorted(range(len(ev.senders)), key=key)


def _node_rows(ev: Evaluator, dst: str, inp: str) -> list[int]:
    """Sender rows of the node(s) a receiver belongs to (a GQA k/v input: every head of its group)."""
    if dst == "LOGITS":
        return []
    if inp in ("k", "v") and ev.n_kv < ev.n_heads:
        rep = ev.n_heads // ev.n_kv
        layer, head = _layer_of(dst), int(dst.split(".H")[1])
        return [ev._s_index[f"L{layer}.H{h}"] for h in range(head, head + rep)]
    return [ev._s_index[dst]]


class _Run:
    """State of one ACDC run: the circuit mask, its metric, per-edge measurements, counters."""

    def __init__(self, ev: Evaluator, metric: str, threshold: float, abs_value: bool, start: Tensor) -> None:
        self.ev, self.metric, self.threshold, self.abs_value = ev, metric, threshold, abs_value
        self.sign = 1.0 if metric == "kl" else -1.0          # m = sign * metric, minimised
        self.mask = start.clone()
        # every circuit tested at a receiver of layer l equals the start below l (receivers are visited from the
        # logits backwards): it enters the pass at l from the start circuit's run (the clean run for the full graph)
        self.start = None if bool((start == ev.valid).all()) else ev.record(start)
        self.ref = torch.full(ev.valid.shape, math.nan, dtype=torch.float64)
        self.val = torch.full(ev.valid.shape, math.nan, dtype=torch.float64)
        self.tested = torch.zeros_like(ev.valid)
        self.rounds = self.worlds = 0
        self.n_removed = self.n_decided = 0     # the run's decisions so far: the prediction for an unmeasured edge
        (self.cur,) = self.measure([self.mask]).tolist()

    def measure(self, masks: list[Tensor]) -> Tensor:
        """The metric (its own units) of each circuit: one batched call of the evaluator."""
        ev = self.ev
        before = ev.counter.forward
        v = ev.run_masks(masks, metric="kl" if self.metric == "kl" else "logit_diff", ref=self.start)
        if ev.counter.forward > before:
            self.rounds += 1
        self.worlds += len(masks)
        return ev.faithfulness(v) if self.metric == "logit_diff_norm" else v

    def removes(self, before: float, after: float) -> bool:
        result = self.sign * (after - before)
        return (abs(result) if self.abs_value else result) < self.threshold

    def receiver(self, j: int, order: list[int]) -> None:
        """Run the tests of receiver column ``j`` as speculative chains, one forward pass at a time (module doc)."""
        pending = [i for i in order if bool(self.mask[i, j])]
        predicted: dict[int, bool] = {}          # from a measurement made on a speculative circuit
        per_pass = max(1, self.ev.config.max_rows // len(self.ev.pairs))
        while pending:
            guess = 2 * self.n_removed >= self.n_decided      # the run's majority decision ("remove" at the start)
            tried = pending[:per_pass]
            chain, state, pred = [], self.mask, []
            for i in tried:
                t = state.clone()
                t[i, j] = False
                chain.append(t)
                pred.append(predicted.get(i, guess))
                if pred[-1]:
                    state = t
            vals = self.measure(chain).tolist()
            # the metric of each test's predecessor in the chain (the circuit it removes the edge from)
            before, last = [], self.cur
            for k, i in enumerate(tried):
                before.append(last)
                if pred[k]:
                    last = vals[k]
            settled = len(tried)
            for k, i in enumerate(tried):
                remove = self.removes(self.cur, vals[k])
                self.ref[i, j], self.val[i, j] = self.cur, vals[k]
                self.tested[i, j] = True
                self.n_decided += 1
                if remove:
                    self.mask[i, j] = False
                    self.cur = vals[k]
                    self.n_removed += 1
                if remove != pred[k]:
                    # the rest of the pass assumed the other decision: re-predict it from these measurements
                    for k2 in range(k + 1, len(tried)):
                        predicted[tried[k2]] = self.removes(before[k2], vals[k2])
                    settled = k + 1
                    break
            pending = pending[settled:]


def acdc(model: Any, data: Any, *, threshold: float, metric: str = "kl", ablation: str = "patching",
         abs_value: bool = False, max_rows: int = 64, max_receivers: int | None = None,
         candidates: int | None = None, scores: Any = None, evaluator: Evaluator | None = None,
         progress: bool = False) -> Any:
    """ACDC edge pruning, batched through :class:`~interp.circuits.Evaluator` (see the module doc).

    Args:
        model: a model from :func:`interp.load_model` (no parallel attention/MLP, no post-norms).
        data: a TaskDataset of clean/corrupted pairs with answers and counterfactuals.
        threshold: ``tau``: an edge is removed when removing it raises the minimised metric by less than this.
        metric: ``kl`` (KL(clean || circuit), nats), ``logit_diff`` (logits) or ``logit_diff_norm`` (1 = clean).
        ablation: ``patching`` (a removed edge carries the sender's output on the paired corrupted prompt)
            or ``mean`` (its mean over the corrupted prompts).
        abs_value: compare ``|result|`` with the threshold (the authors' ``abs_value_threshold``).
        max_rows: most batch rows in one forward pass (each circuit tested is one block of n_prompts rows).
        max_receivers: stop after this many receivers (in visiting order) — a partial run, for timing;
            ``meta.extra["complete"]`` is then False and the circuit keeps every edge not yet visited.
        candidates: the approximate mode (module doc, "Candidates"): only the top ``candidates`` edges by
            ``|effect|`` of ``scores`` are tested, every other edge is removed from the start. None (default) or
            at least the number of edges in the graph: exact ACDC.
        scores: an edge Result (``patching.edges``) ranking the candidates; default: EAP-IG computed here
            (:func:`interp.patching.edge_attribution_patching`, ``ig_steps=5``, normalised logit difference).
        evaluator: an Evaluator built on the same model and data (its baseline pass is reused).
        progress: one line per visited receiver on stderr.

    Returns:
        Result ``patching.edges`` (method ``acdc``; see the module doc).

    Raises:
        ConfigError: unknown metric, a non-finite threshold, or an architecture the evaluator refuses.
    """
    from interp.circuits.edges import circuit_nodes
    from interp.results import Result, run_meta

    if metric not in ACDC_METRICS:
        raise ConfigError(f"acdc: metric must be one of {ACDC_METRICS}, got {metric!r}")
    if not math.isfinite(float(threshold)):
        raise ConfigError(f"acdc: threshold must be a finite number, got {threshold!r}")
    if max_receivers is not None and max_receivers < 0:
        raise ConfigError(f"acdc: max_receivers must be >= 0, got {max_receivers}")
    if scores is not None and candidates is None:
        raise ConfigError("acdc: scores= ranks the candidates; pass candidates=N with it")
    if candidates is not None and (isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 0):
        raise ConfigError(f"acdc: candidates must be a number of edges >= 0, got {candidates!r}")
    t0 = time.perf_counter()
    ev = evaluator or Evaluator(model, data, EdgeEvalConfig(ablation=ablation, max_rows=max_rows))
    f0, r0 = ev.counter.forward, ev.counter.rows
    start, approximation = _candidates(model, data, ev, candidates, scores)
    run = _Run(ev, metric, float(threshold), abs_value, start)
    if approximation is not None:
        ld0 = float(ev.run_masks([start], ref=run.start)[0])
        approximation.update(start_metric=run.cur, start_ld=ld0, start_faithfulness=float(ev.faithfulness(ld0)))
    order = _sender_order(ev)
    visited = tested_receivers = 0
    for j in reversed(range(len(ev.receivers))):
        if max_receivers is not None and visited >= max_receivers:
            break
        visited += 1
        dst, inp = ev.receivers[j]
        rows = _node_rows(ev, dst, inp)
        if rows and not bool(run.mask[rows].any()):      # not connected to the logits: drop untested
            col = run.mask[:, j].clone()
            run.ref[col, j] = run.val[col, j] = run.cur
            run.mask[:, j] = False
            continue
        if not bool(run.mask[:, j].any()):                # no edge left into it (candidates): nothing to test
            continue
        tested_receivers += 1
        w0 = run.worlds
        run.receiver(j, order)
        if progress:
            print(f"acdc: {dst}.{inp}: {int(run.mask[:, j].sum())}/{int(ev.valid[:, j].sum())} edges kept, "
                  f"{run.worlds - w0} circuits, {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    circuit = [(ev.senders[s], *ev.receivers[r]) for s, r in run.mask.nonzero().tolist()]
    ld = float(ev.run_masks([run.mask])[0])
    rows_out = _rows(ev, run, metric)
    extra = {"threshold": float(threshold), "abs_value": abs_value, "ablation": ev.config.ablation,
             "circuit": [list(e) for e in circuit], "n_edges": len(circuit), "n_nodes": len(circuit_nodes(circuit)),
             "n_model_edges": ev.n_edges, "metric_value": run.cur, "ld": ld,
             "faithfulness": float(ev.faithfulness(ld)), "ld_clean": ev.ld_clean, "ld_corrupted": ev.ld_corrupted,
             "kl_corrupted": ev.kl_corrupted, "complete": visited == len(ev.receivers),
             "receivers_visited": visited, "receivers_tested": tested_receivers,
             "edges_tested": int(run.tested.sum()), "rounds": run.rounds, "circuits_run": run.worlds,
             "forward_passes": ev.counter.forward - f0, "rows": ev.counter.rows - r0, "n_prompts": len(ev.pairs),
             "seconds": round(time.perf_counter() - t0, 3), "approximation": approximation,
             "note": "effect = metric after removing the edge - metric of the circuit it was removed from; edges of "
                     "receivers never visited (partial run) have effect 0 and stay in the circuit; with candidates, "
                     "edges outside the candidate set have effect 0 and are not in the circuit (never tested)"}
    meta = run_meta(model, dataset=ev.pairs.dataset.name, data=list(zip(ev.pairs.texts, ev.pairs.corrupted_texts)),
                    config={"threshold": float(threshold), "metric": metric, "ablation": ev.config.ablation,
                            "abs_value": abs_value, "max_rows": ev.config.max_rows, "max_receivers": max_receivers,
                            "candidates": candidates},
                    **extra)
    return Result("patching.edges", pd.DataFrame(rows_out), meta, name=f"acdc-{metric}")


def _candidates(model: Any, data: Any, ev: Evaluator, n: int | None, scores: Any) -> tuple[Tensor, dict | None]:
    """The start circuit: the full graph (exact ACDC), or the top-``n`` edges by ``|score|`` (module doc)."""
    from interp.circuits.edges import edge_scores, top_n

    if n is None or n >= ev.n_edges:
        return ev.valid.clone(), None
    t0 = time.perf_counter()
    if scores is None:
        from interp.patching import AttributionConfig, edge_attribution_patching

        scores = edge_attribution_patching(model, data, AttributionConfig(ig_steps=5))
    method = str(scores.table["method"].iloc[0]) if "method" in getattr(scores, "table", {}) else "given"
    keep = top_n(edge_scores(model, scores), n)
    return ev.mask(keep, what="ACDC candidates"), {
        "mode": "candidates", "candidates": n, "scores": method, "untested": "removed",
        "scores_seconds": round(time.perf_counter() - t0, 3),
        "note": f"approximate ACDC: only the top {n} edges by |{method} effect| were tested; every other edge was "
                "removed before the first test (assumed unnecessary), so the run starts from the top-n circuit, "
                "whose faithfulness is start_faithfulness"}


def _rows(ev: Evaluator, run: _Run, metric: str) -> list[dict[str, Any]]:
    rep = ev.n_heads // ev.n_kv
    n_layers = ev.n_layers
    out = []
    for s, r in ev.valid.nonzero().tolist():
        src, (dst, inp) = ev.senders[s], ev.receivers[r]
        ref, val = float(run.ref[s, r]), float(run.val[s, r])
        if not math.isfinite(ref):           # receiver not visited (partial run): nothing measured
            ref = val = run.cur
        dl = n_layers if dst == "LOGITS" else _layer_of(dst)
        dsts = [(dst, True)]
        kv = -1
        if inp in ("k", "v") and rep > 1:
            h0 = int(dst.split(".H")[1])
            kv = h0 // rep
            dsts = [(f"L{dl}.H{h}", h == h0) for h in range(h0, h0 + rep)]
        for d, first in dsts:
            out.append({"method": "acdc", "direction": "noising", "metric": metric, "reference": "clean",
                        "reference_value": ref, "value": val, "effect": val - ref, "src": src, "dst": d,
                        "dst_input": inp, "src_layer": _layer_of(src), "dst_layer": dl, "kv_head": kv,
                        "first_in_group": first})
    return out


def acdc_circuit(result: Any) -> list[Edge]:
    """The edges ACDC kept (canonical form), from an :func:`acdc` Result.

    Raises:
        DataError: the Result has no ``circuit`` in its metadata (not an ACDC Result).
    """
    extra = getattr(getattr(result, "meta", None), "extra", None) or {}
    if "circuit" not in extra:
        raise DataError("acdc_circuit: the Result has no meta.extra['circuit'] (expected a Result of acdc())")
    return [tuple(e) for e in extra["circuit"]]   # type: ignore[misc]


def acdc_membership(model: Any, result: Any) -> Any:
    """Result ``circuits.acdc``: one row per edge (k/v of a GQA group once) with ``in_circuit`` and ``effect``."""
    from interp.circuits.edges import edge_scores
    from interp.results import Result

    kept = set(canonical(model, acdc_circuit(result), what="ACDC circuit"))
    t = edge_scores(model, result)
    t["in_circuit"] = [k in kept for k in zip(t["src"], t["dst"], t["dst_input"])]
    t["metric"] = result.table["metric"].iloc[0]
    return Result("circuits.acdc", t[["src", "dst", "dst_input", "metric", "effect", "in_circuit"]], result.meta,
                  name=f"{result.name}-membership" if getattr(result, "name", None) else "acdc-membership")
