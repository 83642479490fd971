"""Benchmark: ACDC on IOI with the bundled SmolLM2, 16 prompts (issue 16, item 8).

Job: ``build_task("ioi", model=smollm2, n=16, seed=0)``, :func:`interp.circuits.acdc` with the KL
metric, every candidate edge removal evaluated as a world of the one engine through
:class:`interp.circuits.Evaluator` (speculative chains: one batched call per round, see
:mod:`interp.circuits.acdc`). Timed end to end (the evaluator's clean + corrupted recording pass
included). ``--max-receivers N`` stops after the first N receivers in visiting order (LOGITS first)
— a documented fraction when the full run is too slow; the report then projects the full run from
the measured seconds per evaluated circuit, as a range: the edges still to test if every remaining
receiver stayed connected (upper bound) and if only the receivers of nodes the partial circuit still
uses were tested (what the recursion would do if no further node dropped out; a lower estimate is
not possible without running: pruning can disconnect more).

    PYTHONPATH=. python benchmarks/bench_acdc.py --threads 2 --threshold 0.02 --max-receivers 1 \\
        --out benchmarks/out/acdc.json
    PYTHONPATH=. python benchmarks/bench_acdc.py --threads 2 --sample-circuits 8 --out benchmarks/out/acdc_sample.json

``--sample-circuits K`` does not run ACDC: it times the evaluator on K circuits of ACDC's first round
(the full graph minus one LOGITS edge each, batched as ACDC batches them) and projects the full run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--threshold", type=float, default=0.02)
    ap.add_argument("--metric", default="kl")
    ap.add_argument("--max-rows", type=int, default=64)
    ap.add_argument("--max-receivers", type=int, default=None)
    ap.add_argument("--sample-circuits", type=int, default=0,
                    help="instead of running ACDC: time the evaluator on this many circuits of ACDC's first round "
                         "(the full graph minus one LOGITS edge each) and project")
    ap.add_argument("--out", default="benchmarks/out/acdc.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from interp.circuits import EdgeEvalConfig, Evaluator, acdc
    from interp.datasets.registry import build_task
    from interp.models import load_model

    model = load_model(args.model)
    ds = build_task("ioi", model=model, n=args.n, seed=0)
    t0 = time.perf_counter()
    ev = Evaluator(model, ds, EdgeEvalConfig(max_rows=args.max_rows))
    t_base = time.perf_counter() - t0
    t1 = time.perf_counter()
    tokens = ev.pairs.clean
    with torch.inference_mode():
        model(tokens)
    t_fwd = time.perf_counter() - t1
    if args.sample_circuits:
        sample(args, model, ev, t_base, t_fwd, int(tokens.shape[1]))
        return
    t2 = time.perf_counter()
    r = acdc(model, ds, threshold=args.threshold, metric=args.metric, evaluator=ev,
             max_receivers=args.max_receivers, progress=True)
    t_acdc = time.perf_counter() - t2
    e = r.meta.extra
    per_circuit = t_acdc / max(1, e["circuits_run"])
    # projection of a full run from the receivers not yet visited
    kept = {tuple(x) for x in e["circuit"]}
    used = {s for s, _, _ in kept}
    visited = e["receivers_visited"]
    todo = list(reversed(ev.receivers))[visited:]
    todo_edges_all = sum(int(ev.valid[:, ev._r_index[rc]].sum()) for rc in todo)
    todo_edges_used = sum(int(ev.valid[:, ev._r_index[rc]].sum()) for rc in todo if rc[0] in used)
    rounds_per_edge = e["circuits_run"] / max(1, e["edges_tested"])
    report = {
        "model": args.model, "n_prompts": args.n, "threads": args.threads, "threshold": args.threshold,
        "metric": args.metric, "tokens_per_prompt": int(tokens.shape[1]), "n_model_edges": len(ev.edges),
        "n_receivers": len(ev.receivers), "baseline_pass_s": round(t_base, 2), "one_forward_s": round(t_fwd, 2),
        "acdc_s": round(t_acdc, 2), "complete": e["complete"], "receivers_visited": visited,
        "receivers_tested": e["receivers_tested"], "edges_tested": e["edges_tested"],
        "circuits_run": e["circuits_run"], "rounds": e["rounds"], "forward_passes": e["forward_passes"],
        "edges_kept": e["n_edges"], "nodes_kept": e["n_nodes"], "faithfulness": e["faithfulness"],
        "kl_final": e["metric_value"], "kl_corrupted": e["kl_corrupted"], "seconds_per_circuit": round(per_circuit, 3),
        "circuits_per_edge_tested": round(rounds_per_edge, 3),
        "projection": {
            "edges_left_all_receivers": todo_edges_all,
            "edges_left_used_nodes": todo_edges_used,
            "hours_if_all_left_tested": round(todo_edges_all * rounds_per_edge * per_circuit / 3600, 2),
            "hours_if_used_nodes_only": round(todo_edges_used * rounds_per_edge * per_circuit / 3600, 2),
        },
    }
    print(json.dumps(report, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


def sample(args, model, ev, t_base: float, t_fwd: float, n_tok: int) -> None:
    """Seconds per evaluated circuit on ACDC's own first-round circuits, and the projection of a full run."""
    logits = ev._r_index[("LOGITS", "logits")]
    rows = ev.valid[:, logits].nonzero().flatten().tolist()[: args.sample_circuits]
    masks = []
    for i in rows:
        m = ev.valid.clone()
        m[i, logits] = False
        masks.append(m)
    f0 = ev.counter.forward
    t0 = time.perf_counter()
    ev.run_masks(masks, metric=args.metric if args.metric == "kl" else "logit_diff")
    dt = time.perf_counter() - t0
    per = dt / len(masks)
    n_edges = len(ev.edges)
    into_logits = int(ev.valid[:, logits].sum())
    report = {
        "model": args.model, "n_prompts": args.n, "threads": args.threads, "metric": args.metric,
        "tokens_per_prompt": n_tok, "n_model_edges": n_edges, "n_receivers": len(ev.receivers),
        "baseline_pass_s": round(t_base, 2), "one_forward_s": round(t_fwd, 2), "circuits_timed": len(masks),
        "forward_passes": ev.counter.forward - f0, "seconds": round(dt, 2), "seconds_per_circuit": round(per, 2),
        "forwards_per_circuit": round(per / t_fwd, 3),
        "projection_hours": {
            "logits_receiver_only_1_round": round(into_logits * per / 3600, 2),
            "every_edge_tested_once": round(n_edges * per / 3600, 1),
            "every_edge_tested_twice": round(2 * n_edges * per / 3600, 1),
        },
    }
    print(json.dumps(report, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
