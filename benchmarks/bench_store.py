"""Benchmark: activation-store I/O at scale (issue 14 item 10): metadata bytes written, peak RAM, time.

Caches ``resid_post.15`` (d_model 576, float32) of N prompts of 128 tokens to disk with
``interp.collect(..., out=...)`` in a fresh subprocess per run, and reports:

* ``meta_bytes``: bytes written to every file that is not a shard (manifest, token and text
  files, completion record), counted by wrapping the writers both store formats use
  (``interp._fs.atomic_write_bytes`` and the record append), and the number of such writes;
* ``nonshard_wchar``: cross-check independent of that wrapping: the process's ``wchar`` from
  ``/proc/self/io`` minus the bytes of the shard files;
* ``peak_rss_mb`` (``ru_maxrss``) and ``base_rss_mb`` (RSS after loading the model);
* wall time and tokens/s.

``--forward stub`` replaces the forward pass by a table lookup that returns a
``[batch, pos, 576]`` float32 tensor per batch (``interp.cache.collector._run`` patched), so
the run measures the store alone: the same planning, padding, shards, bytes on disk and
metadata as a real model of width 576, in minutes rather than the ~40 min SmolLM2 needs for
1M tokens on this machine. ``--forward model`` runs the model's forward pass.

``--code DIR`` runs another checkout's ``interp`` (e.g. the main branch exported with
``git archive``), so before and after are measured by the same script in one invocation.

Usage::

    git archive main interp | tar -x -C /tmp/before            # the code before
    python benchmarks/bench_store.py --tokens 1000000 --max-memory 1GB 64MB --code /tmp/before .
    python benchmarks/bench_store.py --model smollm2 --forward model --tokens 50000 --code .
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TOY = "toy:llama,n_layers=16,d_model=576,n_heads=9,n_kv_heads=3,d_mlp=64,n_ctx=256"

_CHILD = r"""
import json, os, resource, sys, time
from pathlib import Path
args = json.loads(sys.argv[1])
sys.path.insert(0, args["code"])
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import torch
torch.set_num_threads(args["threads"])
import interp, interp._fs as fs
import interp.cache.collector as col
from interp.models import load_model
assert Path(interp.__file__).resolve().is_relative_to(Path(args["code"]).resolve()), interp.__file__

written = {"bytes": 0, "writes": 0, "by_file": {}}
def count(name, n):
    written["bytes"] += n
    written["writes"] += 1
    written["by_file"][name] = written["by_file"].get(name, 0) + n
real_awb = fs.atomic_write_bytes
def awb(path, data):
    count(Path(path).name, len(data))
    return real_awb(path, data)
fs.atomic_write_bytes = awb
for modname in ("interp.cache.collector", "interp.cache.layout"):
    try:
        mod = __import__(modname, fromlist=["_"])
    except ImportError:   # the code before has no layout module
        continue
    if hasattr(mod, "atomic_write_bytes"):
        mod.atomic_write_bytes = awb
    if hasattr(mod, "_append_record"):
        real_append = mod._append_record
        def append(path, record, _real=real_append):
            count("completed.jsonl", len(json.dumps(record, sort_keys=True)) + 1)
            return _real(path, record)
        mod._append_record = append

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

def wchar():
    for line in open("/proc/self/io"):
        if line.startswith("wchar:"):
            return int(line.split()[1])

model = load_model(args["model"])
site = "resid_post.15"
bos = int(model.cfg.default_prepend_bos)
words = "the of and to in is was for on that with as by it at from his her an were are which this be".split()
prompts, i = [], 0
body = args["length"] - bos
while len(prompts) < args["n_prompts"]:
    ids = model.tokenizer(" ".join(words[(i * 7 + k * 3) % len(words)] + str(i % 97) for k in range(body)),
                          add_special_tokens=False).input_ids[:body]
    prompts.append(model.tokenizer.decode(ids))
    i += 1
if args["forward"] == "stub":
    g = torch.Generator().manual_seed(0)
    table = torch.randn(model.cfg.d_vocab, model.cfg.d_model, generator=g)
    from interp.sites import Site
    def stub(model_, tokens, capture):
        return {s: table[tokens.cpu()] for s in capture}
    col._run = stub
base = rss_mb()
w0 = wchar()
t0 = time.perf_counter()
store = col.collect(model, prompts, site, batch_size=args["batch_size"], out=args["out"],
                    max_memory=args["max_memory"], progress=False)
dt = time.perf_counter() - t0
shard_bytes = sum(p.stat().st_size for p in Path(args["out"]).glob("shard-*.safetensors"))
n_tok = int(store.lengths.sum())
print(json.dumps({"tokens": n_tok, "prompts": len(store), "shards": len(store.manifest["shards"]),
                  "shard_bytes": shard_bytes, "meta_bytes": written["bytes"], "meta_writes": written["writes"],
                  "meta_by_file": written["by_file"], "nonshard_wchar": wchar() - w0 - shard_bytes,
                  "files_on_disk": {p.name: p.stat().st_size for p in Path(args["out"]).iterdir()
                                    if not p.name.startswith("shard-")},
                  "base_rss_mb": round(base, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "seconds": round(dt, 1), "tok_per_s": round(n_tok / dt, 1),
                  "format": store.manifest["format"]}))
"""


def run(code: str, args: argparse.Namespace, max_memory: str, scratch: Path) -> dict:
    out = scratch / "store"
    shutil.rmtree(out, ignore_errors=True)
    child = {"code": str(Path(code).resolve()), "model": args.model, "forward": args.forward,
             "n_prompts": -(-args.tokens // args.length), "length": args.length, "batch_size": args.batch_size,
             "max_memory": max_memory, "out": str(out), "threads": args.threads}
    res = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(child)], capture_output=True, text=True)
    shutil.rmtree(out, ignore_errors=True)
    if res.returncode != 0:
        raise SystemExit(f"run failed ({code}, {max_memory}):\n{res.stderr[-3000:]}")
    row = json.loads(res.stdout.strip().splitlines()[-1])
    row.update(code=code, max_memory=max_memory, model=args.model, forward=args.forward)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=TOY, help="model spec (default: a 16-layer toy Llama of width 576)")
    ap.add_argument("--forward", choices=("stub", "model"), default="stub")
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--length", type=int, default=128, help="tokens per prompt (BOS included)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-memory", nargs="+", default=["1GB"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scratch", default=None, help="folder for the stores (default: a temp folder)")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    ap.add_argument("--code", nargs="+", default=["."], help="checkouts whose interp to run (before, after)")
    args = ap.parse_args()
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="bench_store."))
    rows = []
    for mm in args.max_memory:
        for code in args.code:
            row = run(code, args, mm, scratch)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print("\n| code | format | max_memory | tokens | shards | shard GB | metadata MB written (writes) | "
          "non-shard wchar MB | base RSS MB | peak RSS MB | s | tok/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['code']} | {r['format'].rsplit('/', 1)[-1]} | {r['max_memory']} | {r['tokens']:,} | {r['shards']} | "
              f"{r['shard_bytes'] / 1e9:.2f} | {r['meta_bytes'] / 1e6:.1f} ({r['meta_writes']}) | "
              f"{r['nonshard_wchar'] / 1e6:.1f} | {r['base_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | {r['seconds']} | "
              f"{r['tok_per_s']:,.0f} |")


if __name__ == "__main__":
    main()
