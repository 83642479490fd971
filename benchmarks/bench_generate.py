"""Benchmark: steered greedy generation, interp.generate (KV cache / recompute) vs TransformerLens ``generate``.

Job: continue B prompts of equal length L by N tokens, greedy, with a steering vector added to
``resid_post`` of one layer at every position (one ``add`` intervention in interp; one forward hook in
TransformerLens), on the same TransformerBridge. Three contenders, A/B interleaved (the CPU is shared),
median wall time per generation, threads pinned:

* ``interp_cache``   — :func:`interp.generate` with the KV cache;
* ``interp_nocache`` — :func:`interp.generate` with ``use_cache=False`` (the whole sequence every step);
* ``tl_generate``    — ``with model.hooks(fwd_hooks=...): model.generate(..., use_past_kv_cache=True)``.

The three must produce the same tokens (checked and reported). With ``--device cuda`` the timings
synchronise the device.

    python benchmarks/bench_generate.py --batch 4 --prompt-len 16 --new 32 --reps 3 --threads 1 \\
        --out benchmarks/out/generate.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--device", default="")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--layer", type=int, default=-1, help="steered layer (-1: n_layers // 2)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-nocache", action="store_true", help="leave out the recompute contender (slow)")
    ap.add_argument("--out", default="benchmarks/out/generate.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from interp.datasets.contrast import neutral_texts
    from interp.engine import Intervention
    from interp.generation import generate
    from interp.models import load_model, tokenize
    from interp.sites import Site

    model = load_model(args.model, device=args.device or None, dtype=args.dtype)
    device = next(model.parameters()).device
    texts = [t for t in neutral_texts() if len(tokenize(model, [t]).tokens[0]) >= args.prompt_len]
    if len(texts) < args.batch:
        raise SystemExit(f"only {len(texts)} neutral texts have >= {args.prompt_len} tokens")
    tokens = torch.stack([tokenize(model, [t]).tokens[0, :args.prompt_len] for t in texts[:args.batch]]).to(device)
    layer = args.layer if args.layer >= 0 else model.cfg.n_layers // 2
    site = Site("resid_post", layer)
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0)).to(device, next(model.parameters()).dtype)
    v = v / v.norm() * 4.0
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def interp_cache() -> torch.Tensor:
        return generate(model, tokens, interventions=[Intervention("add", site, v)], max_new_tokens=args.new,
                        batch_size=args.batch).new_tokens

    def interp_nocache() -> torch.Tensor:
        return generate(model, tokens, interventions=[Intervention("add", site, v)], max_new_tokens=args.new,
                        batch_size=args.batch, use_cache=False).new_tokens

    def tl_generate() -> torch.Tensor:
        def add(act, hook):
            return act + v.to(act.dtype)
        with torch.inference_mode(), model.hooks(fwd_hooks=[(site.hook_name, add)]):
            out = model.generate(tokens, max_new_tokens=args.new, do_sample=False, stop_at_eos=False,
                                 use_past_kv_cache=True, verbose=False, return_type="tokens")
        return out[:, args.prompt_len:].cpu()

    contenders = {"interp_cache": interp_cache, "tl_generate": tl_generate}
    if not args.skip_nocache:
        contenders["interp_nocache"] = interp_nocache
    first = {k: fn() for k, fn in contenders.items()}            # warm-up, and the tokens compared
    ref = first["interp_cache"]
    same = {k: bool(torch.equal(t.cpu(), ref)) for k, t in first.items()}
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(args.reps):
        for k, fn in contenders.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t)
    n_tok = args.batch * args.new
    res = {
        "job": f"greedy generation, {args.batch} prompts x {args.prompt_len} tokens + {args.new} new, add at {site}",
        "model": args.model, "device": str(device), "dtype": args.dtype, "threads": args.threads, "reps": args.reps,
        "torch": torch.__version__, "machine": platform.machine(), "same_tokens_as_interp_cache": same,
        "median_s": {k: statistics.median(t) for k, t in times.items()},
        "tokens_per_s": {k: n_tok / statistics.median(t) for k, t in times.items()},
        "all_s": times,
    }
    med = res["median_s"]
    res["ratio_tl_over_interp_cache"] = med["tl_generate"] / med["interp_cache"]
    if "interp_nocache" in med:
        res["speedup_cache_over_nocache"] = med["interp_nocache"] / med["interp_cache"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps({k: res[k] for k in ("device", "same_tokens_as_interp_cache", "tokens_per_s")}, indent=2))


if __name__ == "__main__":
    main()
