"""Benchmark: cost of one CHG optimizer step vs one forward pass of the same (tiled) batch.

Requirement (issue 5): one step (gated forward + backward + Adam on the single gate tensor)
costs at most 3x a bare forward pass of the same batch. Also times a full CHG fit.
There is no CHG in TransformerLens or SAE-Lens, so the reference is the bare forward pass
of the same TransformerBridge model (what a TransformerLens user would run).

Run:
    python benchmarks/bench_gating.py --prompts 32 --masks 3 --reps 5 --fit-steps 0

A/B interleaved, median of ``--reps``; threads pinned with ``torch.set_num_threads``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

# The editable install resolves interp's package data only from the repo root (resources.files
# fails when the script's folder comes first on sys.path), so put the checkout first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--masks", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fit-steps", type=int, default=0, help="also time a full CHG fit with this many steps per stage")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from interp.datasets.ioi import ioi_dataset
    from interp.gating.chg import CHGConfig, _frozen, _gate_hooks, _last_logprobs, causal_head_gating, gate_data
    from interp.models import load_model

    model = load_model(args.model)
    ds = ioi_dataset(model, n=args.prompts, seed=0)
    data = gate_data(model, ds)
    k = args.masks
    tokens = data.tokens.repeat(k, 1)
    last, targets = data.last.repeat(k), data.targets.repeat(k)
    cfg = model.cfg
    logits = torch.zeros(k, cfg.n_layers, cfg.n_heads, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=1.0)

    def forward() -> None:
        with torch.inference_mode():
            model(tokens)

    box = {}
    fwd_t, step_t = [], []
    with _frozen(model), _gate_hooks(model, lambda: box["g"]), _last_logprobs(model) as logprobs:
        def step() -> None:
            box["g"] = torch.sigmoid(logits)
            loss = -logprobs(tokens, last, targets).mean() - 0.1 * logits.clamp(-4, 4).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([logits], 1.0)
            opt.step()

        step()
        for _ in range(args.reps):
            t0 = time.perf_counter(); step(); step_t.append(time.perf_counter() - t0)
            box["g"] = None  # hooks pass through: a bare forward
            t0 = time.perf_counter(); forward(); fwd_t.append(time.perf_counter() - t0)
    f, s = statistics.median(fwd_t), statistics.median(step_t)
    print(f"model={args.model} rows={tokens.shape[0]} ({args.prompts} prompts x {k} masks) width={tokens.shape[1]} "
          f"threads={args.threads}")
    print(f"bare forward (full logits)  : {f * 1000:8.1f} ms  (median of {args.reps})")
    print(f"CHG step (fwd+bwd+Adam)     : {s * 1000:8.1f} ms")
    print(f"ratio step / forward        : {s / f:8.2f}  (requirement <= 3)")
    if args.fit_steps:
        t0 = time.perf_counter()
        res = causal_head_gating(model, ds, config=CHGConfig(steps=args.fit_steps, n_masks=k, progress=False))
        total = time.perf_counter() - t0
        roles = res.table.role.value_counts().to_dict()
        print(f"CHG fit on IOI: {args.prompts} prompts, {k} masks, {args.fit_steps} steps/stage: {total:.1f} s "
              f"(fit {res.meta.extra['fit_seconds']} s); roles {roles}")


if __name__ == "__main__":
    main()
