"""Benchmark: the Ray engine against a local run, side by side in one process (caching and exact patching).

For each job: local (this process, ``--threads`` torch threads), Ray with 1 worker and Ray with 2
workers (each worker one CPU, one torch thread, model loaded once). Worker start-up (Ray start,
model load in each actor) is timed separately and not in the job times. Reports:

* wall seconds per job and engine, and that the outputs agree (store bytes equal; patching max |diff|);
* per task: worker-side seconds (compute, shard write), Ray overhead = wall x workers / tasks -
  mean worker-side seconds, bytes moved through Ray (pickled arguments + answer) and written;
* a projection for N workers: T(N) = S + W / N fitted to the 1- and 2-worker walls (S: the driver's
  serial part, W: the parallel work), plus the transfer time per task at 1 GB/s for a cluster
  whose workers write to a shared file system.

Jobs (bundled SmolLM2 unless ``--model toy:llama``):

* caching: ``data/prompts/prose.txt`` (40 prompts), ``resid_post`` of every layer, batch 8,
  ``--max-memory`` cut so each shard is one batch (one task per shard);
* exact patching: head outputs ``z`` over all positions, ``--n`` IOI prompts, denoising.

Usage::

    PYTHONPATH=. python benchmarks/bench_ray.py --out benchmarks/out/ray.json
    PYTHONPATH=. python benchmarks/bench_ray.py --model toy:llama,n_layers=4 --n 8      # quick
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's interp, wherever this runs from
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

ROOT = Path(__file__).resolve().parents[1]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _task_stats(engine, wall: float, n_workers: int, worker_s: list[float], sent: list[int], got: list[int],
                written: list[int]) -> dict:
    n = len(worker_s)
    mean = sum(worker_s) / n
    return {"tasks": n, "wall_s": round(wall, 3), "worker_s_mean": round(mean, 4),
            "overhead_s_per_task": round(wall * n_workers / n - mean, 4),
            "bytes_sent_per_task": int(sum(sent) / n), "bytes_returned_per_task": int(sum(got) / n),
            "bytes_written_per_task": int(sum(written) / n)}


def bench_cache(model, spec: str, engines: dict, tmp: Path, batch: int) -> dict:
    from interp.cache import collect
    from interp.datasets import load_prompts
    from interp.distributed.cache import RayShardRunner

    prompts = load_prompts(ROOT / "data/prompts/prose.txt")
    n_tok = max(len(model.tokenizer(p).input_ids) for p in prompts) + 1
    per_batch = batch * n_tok * model.cfg.n_layers * model.cfg.d_model * 4
    budget = 3 * per_batch           # shard budget = half: one batch per shard
    out: dict = {"prompts": len(prompts), "max_memory": budget}
    if not (tmp / "local").exists():   # the local run once per job
        t0 = time.perf_counter()
        collect(model, prompts, "resid_post", out=tmp / "local", batch_size=batch, max_memory=budget,
                progress=False)
        out["local_s"] = round(time.perf_counter() - t0, 3)
    local = _files(tmp / "local")
    out["shards"] = len(json.loads(local["manifest.json"])["shards"])
    for name, eng in engines.items():
        runner = RayShardRunner(eng, model, progress=False)
        t0 = time.perf_counter()
        collect(model, prompts, "resid_post", out=tmp / name, batch_size=batch, max_memory=budget, progress=False,
                shard_runner=runner)
        wall = time.perf_counter() - t0
        same = _files(tmp / name) == local
        ans = runner.answers
        sent = [len(pickle.dumps([p for p in prompts[:batch]])) for _ in ans]   # prompt texts of one batch
        stats = _task_stats(eng, wall, len(eng.workers(model)), [a["compute_s"] + a["write_s"] for a in ans], sent,
                            [len(pickle.dumps(a)) for a in ans], [a["record"]["bytes"] for a in ans])
        out[name] = {**stats, "store_equal_bytes": same}
        print(f"cache {name}: {stats} equal={same}", flush=True)
    return out


_LOCAL: dict = {}


def bench_patch(model, engines: dict, n: int) -> dict:
    from interp.distributed import activation_patching_ray
    from interp.patching import PatchConfig, activation_patching

    if model.interp_info.spec.startswith("toy:"):   # byte tokenizer: no IOI names; equal-length pairs by hand
        from interp.datasets import TaskDataset

        words = ["cat on", "a dog to", "Al in a", "the red", "big sun", "my hat"]
        alt = ["cow on", "a dog at", "Ed in a", "the big", "red sun", "my cat"]
        ds = TaskDataset("toy", tuple(words[i % 6] for i in range(n)), tuple(alt[i % 6] for i in range(n)),
                         ("x",) * n, ("q",) * n)
    else:
        from interp.cli.patch import _task

        ds = _task(model, "ioi", n, 0)   # the CLI's IOI pairs (equal clean/corrupted token lengths)
    cfg = PatchConfig(component="z", positions="all")
    out: dict = {}
    if "patch" not in _LOCAL:   # the local run once per job
        t0 = time.perf_counter()
        _LOCAL["patch"] = local = activation_patching(model, ds, cfg)
        out = {"n": n, "patches": local.meta.extra["n_patches"], "local_s": round(time.perf_counter() - t0, 3),
               "local_forward_passes": local.meta.extra["forward_passes"]}
    local = _LOCAL["patch"]
    for name, eng in engines.items():
        t0 = time.perf_counter()
        r = activation_patching_ray(model, ds, cfg, engine=eng)
        wall = time.perf_counter() - t0
        diff = float((r.table["value"] - local.table["value"]).abs().max())
        task_s = r.meta.extra["engine"]["task_seconds"]
        nw = r.meta.extra["engine"]["workers"]
        sent = len(pickle.dumps((ds, cfg)))
        stats = _task_stats(eng, wall, nw, task_s, [sent] * len(task_s), [len(pickle.dumps(r)) // len(task_s)]
                            * len(task_s), [0] * len(task_s))
        out[name] = {**stats, "max_abs_diff": diff, "forward_passes": r.meta.extra["forward_passes"]}
        print(f"patch {name}: {out[name]}", flush=True)
    return out


def bench_trace(model, engines: dict, n_facts: int, rnd: int) -> dict:
    """Causal tracing grid (``tokens="key"``, 3 noise copies, every layer) of ``n_facts`` known facts."""
    from interp.datasets import facts_dataset, known_facts
    from interp.distributed import causal_trace_ray
    from interp.tracing import TracingConfig, causal_trace

    if "facts" not in _LOCAL:
        _LOCAL["facts"] = known_facts(model, facts_dataset(model), limit=n_facts)
    ds = _LOCAL["facts"]
    cfg = TracingConfig(n_samples=3, tokens="key", batch_size=128)
    out: dict = {"facts": len(ds)}
    for name, eng in engines.items():   # A then B, back to back: the local run, then the same grid on Ray
        t0 = time.perf_counter()
        grid, _ = causal_trace(model, ds, cfg, progress=False)
        local_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        g, _ = causal_trace_ray(model, ds, cfg, engine=eng, progress=False)
        wall = time.perf_counter() - t0
        diff = float((g.table["p_restored"] - grid.table["p_restored"]).abs().max())
        out["rows"] = len(grid.table) * cfg.n_samples
        out[f"{name}_round{rnd}"] = {"local_s": round(local_s, 3), "wall_s": round(wall, 3),
                                     "tasks": g.meta.extra["engine"]["tasks"], "max_abs_diff": diff}
        print(f"trace {name} round {rnd}: {out[f'{name}_round{rnd}']}", flush=True)
    return out


def project(job: dict, bandwidth: float = 1e9) -> dict:
    """T(N) = S + W / N through the 1- and 2-worker walls; transfer per task at ``bandwidth`` B/s."""
    t1, t2 = job["ray1"]["wall_s"], job["ray2"]["wall_s"]
    w = max(2 * (t1 - t2), 0.0)
    s = max(t1 - w, 0.0)
    per_task_bytes = job["ray2"]["bytes_sent_per_task"] + job["ray2"]["bytes_returned_per_task"] + \
        job["ray2"]["bytes_written_per_task"]
    return {"serial_s": round(s, 2), "parallel_work_s": round(w, 2),
            "transfer_s_per_task_at_1GBps": round(per_task_bytes / bandwidth, 4),
            **{f"T({k})": round(s + w / k, 2) for k in (1, 2, 4, 8, 16, 32)},
            "tasks": job["ray2"]["tasks"], "note": "beyond N = tasks more workers idle"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--n", type=int, default=8, help="IOI prompts of the patching sweep")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the local run (workers use 1)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--jobs", default="cache,patch", help="cache, patch, trace (comma-separated)")
    ap.add_argument("--facts", type=int, default=2, help="known facts of the tracing grid")
    args = ap.parse_args()

    import ray
    import torch

    from interp.distributed import EngineConfig, RayEngine
    from interp.models import load_model

    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    model = load_model(args.model)
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    report: dict = {"model": args.model, "cpus": os.cpu_count(), "load_avg_start": [round(x, 1) for x in load],
                    "ray_init_s": round(time.perf_counter() - t0, 2), "threads_local": args.threads}
    tmp = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    try:
        results = {}
        if "trace" in args.jobs.split(","):   # A/B: local, 1 worker, 2 workers, twice, in that order
            res = {}
            for rnd in (1, 2):
                for workers in (1, 2):
                    eng = RayEngine(EngineConfig(kind="ray", workers=workers))
                    eng.connect()
                    t0 = time.perf_counter()
                    eng.workers(model)
                    start = round(time.perf_counter() - t0, 2)
                    r = bench_trace(model, {f"ray{workers}": eng}, args.facts, rnd)
                    r[f"ray{workers}_round{rnd}"]["worker_start_s"] = start
                    res.update(r)
                    eng.close()
                    res[f"load_avg_after_ray{workers}_round{rnd}"] = [round(x, 1) for x in os.getloadavg()]
            results["trace"] = res
            print("trace", json.dumps(res, indent=1), flush=True)
        for job in [j for j in ("cache", "patch") if j in args.jobs.split(",")]:
            res = {}
            for workers in (1, 2):
                eng = RayEngine(EngineConfig(kind="ray", workers=workers))
                eng.connect()
                t0 = time.perf_counter()
                eng.workers(model)
                res_start = round(time.perf_counter() - t0, 2)
                if job == "cache":
                    r = bench_cache(model, args.model, {f"ray{workers}": eng}, tmp / job, args.batch)
                else:
                    r = bench_patch(model, {f"ray{workers}": eng}, args.n)
                r[f"ray{workers}"]["worker_start_s"] = res_start
                res.update(r)
                eng.close()
            res["projection"] = project(res)
            results[job] = res
            print(job, json.dumps(res, indent=1), flush=True)
        report.update(results)
        report["load_avg_end"] = [round(x, 1) for x in os.getloadavg()]
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
