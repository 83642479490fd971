"""Does the way edges are picked explain the IOI circuit's size? top-n vs greedy on one main-job output.

    python analyses/circuit_selection.py OUT_DIR [--sizes 0,10,30,100,200,300,500,1000,2000]

Reads the EAP-IG edge Result (``patching.edges``) that ``interp run analyses/ioi_circuit.toml`` saved in
``OUT_DIR/results``, rebuilds the job's 16 IOI prompts (same builder, seed 0) and evaluates, at edge level
(every edge outside the circuit patched with the corrupted sender output: the job's evaluation), the
circuits chosen by ``top_n`` (largest |effect|) and by ``greedy`` (EAP-IG's: grown from the logits) at
each size. Prints one faithfulness column per selection. No random baselines (the job's report has them).
Cost: one edge-level evaluation per size and selection (~3 forward passes of 16 prompts each).
"""

from __future__ import annotations

import argparse


def main(out: str, sizes: tuple[int, ...]) -> None:
    import pandas as pd

    from interp import load_model
    from interp.circuits import CurveConfig, EdgeEvalConfig, faithfulness_curve
    from interp.datasets.registry import build_task
    from interp.results import load_results

    model = load_model("smollm2")
    ds = build_task("ioi", model=model, n=16, seed=0)
    eap = next(r for r in load_results(f"{out}/results").values() if r.kind == "patching.edges")
    cols = {}
    for sel in ("top_n", "greedy"):
        cfg = CurveConfig(sizes=sizes, selection=sel, n_random=0, complement=False, seed=0,
                          evaluation=EdgeEvalConfig(ablation="patching"))
        t = faithfulness_curve(model, ds, eap, cfg).table.set_index("n_edges")
        cols[f"{sel} nodes"], cols[sel] = t["n_nodes"], t["faithfulness"]
    print(pd.DataFrame(cols).round(3).to_string())


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--sizes", default="0,10,30,100,200,300,500,1000,2000")
    a = ap.parse_args()
    main(a.out, tuple(int(s) for s in a.sizes.split(",")))
