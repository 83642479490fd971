"""Benchmark: a steered forward pass, interp ``steered`` vs TransformerLens ``run_with_hooks``.

Job: add ``alpha * v`` to ``resid_post`` of one layer at all positions, batch of B prompts
on the bundled SmolLM2, same TransformerBridge; outputs must agree exactly. A/B runs are
interleaved (other engineers share this CPU) and the median time per pass is reported.

    python benchmarks/bench_steering.py --reps 5 --threads 1 --out benchmarks/out/steering.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--layer", type=int, default=11)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/out/steering.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from interp.datasets.contrast import neutral_texts
    from interp.models import load_model, tokenize
    from interp.sites import Site
    from interp.steering import Axis, steered

    model = load_model(args.model)
    tb = tokenize(model, neutral_texts()[: args.batch])
    site = Site("resid_post", args.layer)
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    ax = Axis(name="bench", vector=v, site=site, method="contrast")
    alpha = 2.0

    def ours() -> torch.Tensor:
        with torch.inference_mode(), steered(model, ax, alpha):
            return model(tb.tokens)

    def tl() -> torch.Tensor:
        def add(act, hook):
            return act + alpha * v.to(act.dtype)
        with torch.inference_mode():
            return model.run_with_hooks(tb.tokens, fwd_hooks=[(site.hook_name, add)])

    a, b = ours(), tl()
    same = bool(torch.equal(a, b))
    t_ours, t_tl = [], []
    for _ in range(args.reps):
        for fn, acc in ((ours, t_ours), (tl, t_tl)):
            t = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t)
    report = {"model": args.model, "batch": args.batch, "tokens": int(tb.tokens.numel()), "threads": args.threads,
              "reps": args.reps, "outputs_equal": same, "ours_median_s": statistics.median(t_ours),
              "tl_median_s": statistics.median(t_tl),
              "ratio_ours_over_tl": statistics.median(t_ours) / statistics.median(t_tl)}
    print(json.dumps(report, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
