"""Benchmark: activation caching on the bundled SmolLM2 (CPU), interp vs TransformerLens.

Throughput (batch of 8 prompts x 128 tokens, fp32), interleaved A/B repeats with the
order rotated every repeat, torch threads pinned:

* ``forward``      bare forward pass, ``model(tokens)`` (logits);
* ``collect_ram``  ``interp.collect(model, prompts, "resid_post,pattern")`` into RAM
                   (includes tokenization and the returned store);
* ``collect_disk`` the same with ``out=<fresh folder>, max_memory="1GB"`` (safetensors
                   shards + manifest written and renamed before it returns; no fsync);
* ``tl_cache``     TransformerLens ``model.run_with_cache(tokens, names_filter=...)`` on the
                   same bridge and the same hooks.

Peak RAM: a subprocess caches ~50k tokens of every ``resid_post`` with
``max_memory=1GB`` to disk and reports its peak RSS (``ru_maxrss``) and its RSS after
loading the model and one warm-up forward pass.

Usage::

    python benchmarks/bench_cache.py --threads 2 --reps 5            # throughput + peak RAM
    python benchmarks/bench_cache.py --threads 2 --reps 5 --no-peak  # throughput only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's interp, wherever this runs from
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TEXT = ("The history of the city begins with a small settlement on the river, where traders from the north met "
        "farmers from the valley. Over the centuries the market grew into a town, the town into a city, and the "
        "city into the capital of a region known for its bridges, its libraries and its long winters. Visitors "
        "today walk along the old walls, climb the cathedral tower and eat in the narrow streets near the harbour, "
        "where fishing boats still unload their catch every morning before sunrise. ")


def make_prompts(tokenizer, n: int, length: int) -> list[str]:
    """``n`` different prompts that tokenize (without BOS) to exactly ``length`` tokens."""
    ids = tokenizer(TEXT * 40, add_special_tokens=False).input_ids
    prompts, start = [], 0
    while len(prompts) < n:
        text = tokenizer.decode(ids[start: start + length])
        if len(tokenizer(text, add_special_tokens=False).input_ids) == length:
            prompts.append(text)
        start += 7
        if start + length > len(ids):
            raise RuntimeError("TEXT too short for the requested prompts")
    return prompts


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_child(args: argparse.Namespace) -> None:
    """Subprocess body: cache every resid_post of ~args.peak_tokens tokens with max_memory=1GB."""
    import torch

    from interp import collect, load_model
    from interp.models import tokenize

    torch.set_num_threads(args.threads)
    model = load_model("smollm2")
    n_prompts = -(-args.peak_tokens // args.length)
    prompts = make_prompts(model.tokenizer, n_prompts, args.length)
    with torch.inference_mode():
        model(tokenize(model, prompts[:8]).tokens)
    base = rss_mb()
    out = Path(args.peak_out)
    t0 = time.perf_counter()
    store = collect(model, prompts, "resid_post", batch_size=8, out=out, max_memory="1GB", progress=False)
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size = sum(p.stat().st_size for p in out.glob("shard-*.safetensors"))
    print(json.dumps({"tokens": int(store.lengths.sum()), "shards": len(store.manifest["shards"]),
                      "store_mb": size / 1e6, "base_rss_mb": base, "peak_rss_mb": peak, "seconds": secs}))


def throughput(args: argparse.Namespace) -> dict:
    import torch

    from interp import collect, load_model
    from interp.models import tokenize
    from interp.sites import parse_sites

    torch.set_num_threads(args.threads)
    model = load_model("smollm2")
    prompts = make_prompts(model.tokenizer, args.batch, args.length)
    tokens = tokenize(model, prompts).tokens
    n_tok = tokens.numel()
    names = {s.hook_name for s in parse_sites("resid_post,pattern", model.cfg.n_layers)}
    tmp = Path(tempfile.mkdtemp(prefix="bench_cache_"))

    def forward():
        with torch.inference_mode():
            model(tokens)

    def collect_ram():
        collect(model, prompts, "resid_post,pattern", batch_size=args.batch, progress=False)

    counter = [0]

    def collect_disk():
        counter[0] += 1
        out = tmp / f"run{counter[0]}"
        collect(model, prompts, "resid_post,pattern", batch_size=args.batch, out=out, max_memory="1GB",
                progress=False)
        return out

    def tl_cache():
        with torch.inference_mode():
            model.run_with_cache(tokens, names_filter=lambda n: n in names)

    methods = {"forward": forward, "collect_ram": collect_ram, "collect_disk": collect_disk, "tl_cache": tl_cache}
    for fn in methods.values():  # warm-up
        r = fn()
        if isinstance(r, Path):
            shutil.rmtree(r)
    times: dict[str, list[float]] = {k: [] for k in methods}
    keys = list(methods)
    for rep in range(args.reps):
        order = keys[rep % len(keys):] + keys[: rep % len(keys)]
        for k in order:
            t0 = time.perf_counter()
            r = methods[k]()
            times[k].append(time.perf_counter() - t0)
            if isinstance(r, Path):
                shutil.rmtree(r)
        print(f"rep {rep}: " + "  ".join(f"{k} {n_tok / times[k][-1]:.0f} tok/s" for k in keys), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    res = {"threads": args.threads, "batch": args.batch, "length": args.length, "reps": args.reps,
           "load_avg": os.getloadavg()[0], "tok_s": {}, "ratio_to_forward": {}}
    for k in keys:
        res["tok_s"][k] = n_tok / statistics.median(times[k])
        # per-repeat paired ratio (same repeat, adjacent in time), then the median
        res["ratio_to_forward"][k] = statistics.median(f / t for f, t in zip(times["forward"], times[k]))
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--peak-tokens", type=int, default=50_000)
    p.add_argument("--no-peak", action="store_true", help="skip the peak-RAM subprocess")
    p.add_argument("--no-throughput", action="store_true")
    p.add_argument("--peak-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--peak-out", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.peak_child:
        peak_child(args)
        return
    print(f"load average before: {os.getloadavg()}", flush=True)
    if not args.no_throughput:
        res = throughput(args)
        print(json.dumps(res, indent=2), flush=True)
    if not args.no_peak:
        out = Path(tempfile.mkdtemp(prefix="bench_peak_")) / "store"
        cmd = [sys.executable, __file__, "--peak-child", "--peak-out", str(out), "--threads", str(args.threads),
               "--length", str(args.length), "--peak-tokens", str(args.peak_tokens)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        shutil.rmtree(out.parent, ignore_errors=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            sys.exit(proc.returncode)
        peak = json.loads(proc.stdout.strip().splitlines()[-1])
        peak["over_base_mb"] = peak["peak_rss_mb"] - peak["base_rss_mb"]
        print(json.dumps({"peak": peak, "load_avg": os.getloadavg()[0]}, indent=2), flush=True)


if __name__ == "__main__":
    main()
