"""Edge Pruning on SmolLM2's IOI: is there a circuit of a few hundred edges with faithfulness >= 0.8?

    python analyses/edge_pruning_ioi.py OUT_DIR [--n 16] [--edges 300] [--steps 150] [--reg-lr 8] [--warmup 0.1]
                                                [--sizes ...] [--measure]
    python analyses/edge_pruning_ioi.py OUT_DIR --load          # re-use OUT_DIR's saved Result (no training)

Trains Edge Pruning's edge masks (:func:`interp.circuits.edge_pruning`, Bhaskar et al. 2024) on the main job's
16 IOI prompts (the same builder, seed 0; ``--n`` for more), saves the Result in OUT_DIR, then evaluates at edge
level (every edge outside the circuit patched with the corrupted sender output: the main job's evaluation) the
circuits its learned ranking (``P(z > 0)``) selects at each size, on those prompts AND on 16 held-out prompts
(seeds 1 and 2): 70k masks fitted on 16 prompts could fit the prompts rather than the task. The learned circuit's own size is one of the sizes.
Cost: ~6-8 s per step on 2 quiet cores with 16 prompts (150 steps: ~20 min), ~15 s with 32; ~3 forward passes per
evaluated size. ``--measure`` also measures each kept edge's removal effect (PruneConfig.measure; about half a
forward pass of the batch per kept edge, the engine's measured per-circuit cost: an hour is the estimate for ~2,000
edges on 32 prompts; off by default here).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(out: Path, n: int, edges: int, steps: int, sizes: tuple[int, ...], load: bool, reg_lr: float,
         warmup: float, measure: bool = False) -> None:
    import pandas as pd

    from interp import load_model
    from interp.circuits import CurveConfig, EdgeEvalConfig, PruneConfig, edge_pruning, faithfulness_curve
    from interp.circuits import pruning_scores
    from interp.datasets.registry import build_task
    from interp.results import load_results

    model = load_model("smollm2")
    train = build_task("ioi", model=model, n=n, seed=0)
    held = {seed: build_task("ioi", model=model, n=16, seed=seed) for seed in (1, 2)}
    if load:
        (r,) = [x for x in load_results(out).values() if x.kind == "patching.edges"]
    else:
        r = edge_pruning(model, train, PruneConfig(target_edges=edges, steps=steps, reg_lr=reg_lr, warmup=warmup,
                                                        progress=True, measure=measure))
        out.mkdir(parents=True, exist_ok=True)
        r.save(out)
    x = r.meta.extra
    print(f"edge pruning: {x['n_edges']} edges ({x['n_nodes']} nodes), faithfulness {x['faithfulness']:.3f} "
          f"(train prompts), KL {x['kl']:.3f}, {x['seconds']:.0f} s")
    scores = pruning_scores(r)
    sizes = tuple(sorted({*sizes, int(x["n_edges"])}))
    cfg = CurveConfig(sizes=sizes, n_random=1, complement=False, seed=0, evaluation=EdgeEvalConfig())
    cols = {}
    for name, ds in (("train", train), ("held-out 1", held[1]), ("held-out 2", held[2])):
        t = faithfulness_curve(model, ds, scores, cfg).table.set_index("n_edges")
        cols[f"nodes"], cols[name], cols[f"random ({name})"] = t["n_nodes"], t["faithfulness"], t["random_mean"]
    print(pd.DataFrame(cols).round(3).to_string())


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=16, help="training prompts (the main job's 16; README: 16 and 32)")
    ap.add_argument("--edges", type=int, default=300)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--sizes", default="30,100,200,300,500,1000,3000,10000")
    ap.add_argument("--load", action="store_true")
    ap.add_argument("--measure", action="store_true", help="measure each kept edge's removal (long; module doc)")
    ap.add_argument("--reg-lr", type=float, default=8.0, help="the multipliers' lr (authors 0.8; 8: README run)")
    ap.add_argument("--warmup", type=float, default=0.1, help="target ramp fraction (authors 0.83; 0.1: README run)")
    a = ap.parse_args()
    main(a.out, a.n, a.edges, a.steps, tuple(int(s) for s in a.sizes.split(",")), a.load, a.reg_lr, a.warmup, a.measure)
