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
    PYTHONPATH=. python benchmarks/bench_acdc.py --threads 2 --sample-circuits 4 --sample-layers 0,10,20,29,30 \
        --compare --out benchmarks/out/acdc_sample.json

``--sample-circuits K`` does not run ACDC: it times the evaluator on K circuits like ACDC's (until 1 Dec, its
first round) at the receivers of ``--sample-layers`` (the MLP input of each layer; ``n_layers`` = LOGITS): the
full graph minus one edge into that receiver each, batched as ACDC batches them. Every circuit ACDC tests at a
receiver of layer l is the full graph below l (receivers are visited from the logits backwards), so
it enters the pass at layer l (``EdgeEvalConfig.enter``); ``--compare`` also times the same circuits
run from the tokens (the previous implementation), interleaved. The full run is projected from the
per-layer cost (interpolated) times the edges into each receiver.
"""

from __future__ import annotations

import argparse
import json
import os
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
    ap.add_argument("--candidates", type=int, default=None,
                    help="approximate ACDC: test only the top N edges by |EAP-IG| (computed and timed in the run)")
    ap.add_argument("--sample-circuits", type=int, default=0,
                    help="instead of running ACDC: time the evaluator on this many circuits like ACDC's "
                         "(the full graph minus one LOGITS edge each) and project")
    ap.add_argument("--sample-layers", default="",
                    help="with --sample-circuits: the layers whose MLP input receivers are sampled (comma list; "
                         "n_layers = LOGITS); default LOGITS only")
    ap.add_argument("--compare", action="store_true",
                    help="with --sample-circuits: also time the circuits run from the tokens (enter=False), "
                         "interleaved")
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
    load0 = list(os.getloadavg())
    r = acdc(model, ds, threshold=args.threshold, metric=args.metric, evaluator=ev,
             max_receivers=args.max_receivers, candidates=args.candidates, progress=True)
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
        "forwards_per_circuit": round(per_circuit / t_fwd, 3), "approximation": e["approximation"],
        "load_average_start": load0, "load_average_end": list(os.getloadavg()),
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


def _first_round(ev, receiver, k: int) -> list:
    """ACDC's first-round circuits at ``receiver``: the full graph minus one of its edges each (the first k)."""
    j = ev._r_index[receiver]
    masks = []
    for i in ev.valid[:, j].nonzero().flatten().tolist()[:k]:
        m = ev.valid.clone()
        m[i, j] = False
        masks.append(m)
    return masks


def sample(args, model, ev, t_base: float, t_fwd: float, n_tok: int) -> None:
    """Seconds per evaluated circuit on ACDC's own first-round circuits at receivers of several layers, with the
    circuits entering at their receiver's layer (``EdgeEvalConfig.enter``) and from the tokens, interleaved; and
    the projection of a full run (every edge tested once / twice at the per-layer cost, interpolated)."""
    from dataclasses import replace

    metric = args.metric if args.metric == "kl" else "logit_diff"
    n_layers = ev.n_layers
    layers = [int(x) for x in args.sample_layers.split(",")] if args.sample_layers else [n_layers]
    fwd = [t_fwd]
    per: dict[str, dict[int, float]] = {"enter": {}, "tokens": {}}
    detail = []
    for layer in layers:
        receiver = ("LOGITS", "logits") if layer >= n_layers else (f"L{layer}.MLP", "mlp")
        masks = _first_round(ev, receiver, args.sample_circuits)
        for mode in (["tokens", "enter"] if args.compare else ["enter"]):
            ev.config = replace(ev.config, enter=mode == "enter")
            f0 = ev.counter.forward
            t0 = time.perf_counter()
            ev.run_masks(masks, metric=metric)
            dt = time.perf_counter() - t0
            per[mode][layer] = dt / len(masks)
            detail.append({"receiver": ".".join(receiver), "layer": layer, "mode": mode, "circuits": len(masks),
                           "passes": ev.counter.forward - f0, "seconds": round(dt, 2),
                           "seconds_per_circuit": round(dt / len(masks), 3)})
            print(json.dumps(detail[-1]), flush=True)
        t1 = time.perf_counter()
        with torch.inference_mode():
            model(ev.pairs.clean)
        fwd.append(time.perf_counter() - t1)
    one = min(fwd)

    def cost(mode: str, layer: int) -> float:
        pts = sorted(per[mode].items())
        if layer <= pts[0][0]:
            return pts[0][1]
        for (l0, c0), (l1, c1) in zip(pts, pts[1:]):
            if layer <= l1:
                return c0 + (c1 - c0) * (layer - l0) / (l1 - l0)
        return pts[-1][1]

    proj = {}
    for mode in per:
        if not per[mode]:
            continue
        secs = 0.0
        for r, (dst, _) in enumerate(ev.receivers):
            layer = n_layers if dst == "LOGITS" else int(dst[1:].split(".")[0])
            secs += int(ev.valid[:, r].sum()) * cost(mode, layer)
        proj[mode] = {"every_edge_tested_once_h": round(secs / 3600, 2),
                      "every_edge_tested_twice_h": round(2 * secs / 3600, 2),
                      "forwards_per_circuit_edge_weighted": round(secs / len(ev.edges) / one, 3),
                      "forwards_per_circuit_by_layer": {l: round(c / one, 3) for l, c in sorted(per[mode].items())}}
    report = {
        "model": args.model, "n_prompts": args.n, "threads": args.threads, "metric": args.metric,
        "tokens_per_prompt": n_tok, "n_model_edges": len(ev.edges), "n_receivers": len(ev.receivers),
        "baseline_pass_s": round(t_base, 2), "one_forward_s_min": round(one, 2),
        "one_forward_s_all": [round(x, 2) for x in fwd], "circuits_per_receiver": args.sample_circuits,
        "timings": detail, "projection": proj, "load_average": list(os.getloadavg()),
    }
    print(json.dumps(report, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
