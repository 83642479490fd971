"""Benchmark: edge-level evaluation of one circuit vs 3 plain forward passes (issue 16, item 8).

Job: the 16-prompt IOI batch on the bundled SmolLM2; one circuit evaluated with every edge outside
it patched (:func:`interp.circuits.evaluate_circuits`, baseline pass included: tokenization, the
clean + corrupted recording pass and the circuit's pass) against 3 plain forward passes
``model(clean_tokens)`` of the same batch. Circuits: the top-``--top`` edges of EAP (computed once,
not timed) and a random half of all edges (the densest mix of the two rewrite forms). Timings
alternate (ours, 3 forwards, ours, ...) ``--reps`` times with torch's threads pinned; the report
keeps every time, and the ratio of the minima. Also the marginal cost of one more circuit once the
baseline pass is shared (:meth:`interp.circuits.Evaluator.run_masks`), what a curve pays per point.

    PYTHONPATH=. python benchmarks/bench_edge_eval.py --threads 2 --reps 3 --out benchmarks/out/edge_eval.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--top", type=int, default=200)
    ap.add_argument("--circuits", default="eap,random_half", help="which circuits to time (eap, random_half)")
    ap.add_argument("--circuits-file", default="",
                    help="JSON of the circuits: read if it exists (EAP not rerun), else written after computing them")
    ap.add_argument("--out", default="benchmarks/out/edge_eval.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from interp.circuits import (EdgeEvalConfig, Evaluator, edge_scores, evaluate_circuits, model_edges, top_n)
    from interp.datasets.registry import build_task
    from interp.models import load_model
    from interp.patching import AttributionConfig, edge_attribution_patching
    from interp.patching.metrics import prepare_pairs

    model = load_model(args.model)
    ds = build_task("ioi", model=model, n=args.n)
    pairs = prepare_pairs(model, ds)
    edges = model_edges(model)
    want = args.circuits.split(",")
    circuits, eap_s = {}, 0.0
    if args.circuits_file and Path(args.circuits_file).exists():
        saved = json.loads(Path(args.circuits_file).read_text())
        circuits = {k: [tuple(e) for e in v] for k, v in saved.items() if k.split("_top")[0] in want or k in want}
        want = []
    if "eap" in want:
        t0 = time.perf_counter()
        eap = edge_attribution_patching(model, ds, AttributionConfig(metric="logit_diff"))
        eap_s = time.perf_counter() - t0
        circuits[f"eap_top{args.top}"] = top_n(edge_scores(model, eap), args.top)
    if "random_half" in want:
        circuits["random_half"] = random.Random(0).sample(edges, len(edges) // 2)
    if args.circuits_file and not Path(args.circuits_file).exists():
        Path(args.circuits_file).write_text(json.dumps({k: [list(e) for e in v] for k, v in circuits.items()}))
    report: dict = {"model": args.model, "n": args.n, "threads": args.threads, "reps": args.reps,
                    "load_average_start": list(os.getloadavg()),
                    "tokens_per_prompt": int(pairs.clean.shape[1]), "n_model_edges": len(edges),
                    "eap_seconds": round(eap_s, 2), "circuits": {}}

    def forwards() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            for _ in range(3):
                model(pairs.clean)
        return time.perf_counter() - t

    cfg = EdgeEvalConfig(max_rows=args.n)
    forwards()  # warm-up
    for name, circ in circuits.items():
        ours, plain, faith = [], [], None
        for _ in range(args.reps):
            t = time.perf_counter()
            r = evaluate_circuits(model, ds, {name: circ}, cfg)
            ours.append(time.perf_counter() - t)
            plain.append(forwards())
            faith = float(r.table["faithfulness"].iloc[0])
        ev = Evaluator(model, ds, cfg)
        mask = ev.mask(circ)
        marginal = []
        for _ in range(args.reps):
            t = time.perf_counter()
            ev.run_masks([mask])
            marginal.append(time.perf_counter() - t)
        report["circuits"][name] = {
            "n_edges": len(circ), "faithfulness": faith, "eval_s": [round(x, 3) for x in ours],
            "three_forwards_s": [round(x, 3) for x in plain], "marginal_circuit_s": [round(x, 3) for x in marginal],
            "ratio_min": round(min(ours) / min(plain), 3),
            "ratio_median": round(statistics.median(ours) / statistics.median(plain), 3),
            "marginal_vs_one_forward": round(min(marginal) / (min(plain) / 3), 3)}
        print(name, json.dumps(report["circuits"][name]), flush=True)
    report["load_average_end"] = list(os.getloadavg())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
