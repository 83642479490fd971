"""Benchmark: streaming sink statistics vs TransformerLens ``run_with_cache`` of all patterns.

Both sides compute the same statistic (alpha of every key, every layer and head, for
prompts of ``L`` tokens) on the bundled SmolLM2:

* ``stream``: :func:`interp.sinks.sink_scores` (reduces each layer's pattern in its hook);
* ``tl_cache``: ``model.run_with_cache(tokens, names_filter=<hook_pattern>)``, then
  alpha from the cached ``[batch, head, q, k]`` patterns of all layers.

Each measurement runs in a fresh subprocess (``--child``); peak RSS is the kernel's
high-water mark (``VmHWM``) reset after the model is loaded (``/proc/self/clear_refs``),
so "extra peak" is the memory the computation itself needs on top of the loaded model.
Runs alternate A/B; threads are pinned.

Usage:
    python benchmarks/bench_sinks.py --lengths 512 1024 --n 2 --threads 2 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def child(mode: str, length: int, n: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from interp.models import TokenBatch, load_model

    model = load_model("smollm2")
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(100, model.cfg.d_vocab - 100, (n, length), generator=g)
    with torch.inference_mode():
        model(tokens[:1, :8])                                    # warm up kernels
    with open("/proc/self/clear_refs", "w") as f:                # reset the peak-RSS high-water mark
        f.write("5")
    base = _status_kb("VmRSS")
    t0 = time.perf_counter()
    if mode == "stream":
        from interp.sinks import SinkConfig, sink_scores

        batch = TokenBatch(tokens, torch.full((n,), length), tuple("" for _ in range(n)))
        heads = sink_scores(model, batch, SinkConfig(max_len=None, batch_size=n))[0].table
        first = heads.sort_values(["layer", "head"]).alpha_first.to_numpy()
    else:
        with torch.inference_mode():
            _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
            keys = sorted(cache.keys(), key=lambda k: int(k.split(".")[1]))
            pos = torch.arange(length)
            first = []
            for k in keys:
                a = cache[k].float()                             # [batch, head, q, k]
                alpha = a.sum(2) / (length - pos)                # [batch, head, key]
                first.append(alpha[:, :, 0].mean(0))
            first = torch.stack(first).flatten().numpy()
            del cache
    seconds = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    return {"mode": mode, "length": length, "n": n, "seconds": seconds, "base_mb": base / 1024,
            "peak_mb": peak / 1024, "extra_mb": (peak - base) / 1024, "alpha_first_sum": float(first.sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--n", type=int, default=2, help="prompts (one batch)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--child", nargs=2, metavar=("MODE", "LENGTH"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.n, args.threads)))
        return
    rows = []
    for length in args.lengths:
        for rep in range(args.repeats):
            for mode in (("stream", "tl_cache") if rep % 2 == 0 else ("tl_cache", "stream")):
                out = subprocess.run([sys.executable, __file__, "--child", mode, str(length), "--n", str(args.n),
                                      "--threads", str(args.threads)], capture_output=True, text=True, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("\n| tokens | method | time (s) | extra peak RSS (MB) | total peak RSS (MB) |")
    print("|---|---|---|---|---|")
    for length in args.lengths:
        for mode in ("stream", "tl_cache"):
            rs = [r for r in rows if r["length"] == length and r["mode"] == mode]
            t = min(r["seconds"] for r in rs)
            ex = min(r["extra_mb"] for r in rs)
            pk = min(r["peak_mb"] for r in rs)
            print(f"| {length} | {mode} | {t:.2f} | {ex:.0f} | {pk:.0f} |")
        s = [r for r in rows if r["length"] == length and r["mode"] == "stream"]
        c = [r for r in rows if r["length"] == length and r["mode"] == "tl_cache"]
        print(f"| {length} | ratio tl_cache / stream | {min(r['seconds'] for r in c) / min(r['seconds'] for r in s):.2f}x"
              f" | {min(r['extra_mb'] for r in c) / max(min(r['extra_mb'] for r in s), 1e-9):.1f}x | "
              f"{min(r['peak_mb'] for r in c) / min(r['peak_mb'] for r in s):.2f}x |")
        diff = abs(s[0]["alpha_first_sum"] - c[0]["alpha_first_sum"])
        print(f"<!-- {length}: |sum alpha_first stream - tl_cache| = {diff:.2e} -->")


if __name__ == "__main__":
    main()
