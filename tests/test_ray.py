"""The Ray engine on a local 2-CPU Ray cluster started inside the test run (toy models).

Oracles: a local run of the same library function. Caching must give the same files byte for
byte (also after a worker is killed mid-shard); exact patching the same table within 1e-6.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from interp.cache import collect  # noqa: E402
from interp.cli import invoke  # noqa: E402
from interp.datasets import TaskDataset  # noqa: E402
from interp.distributed import EngineConfig, RayEngine, activation_patching_ray, collect_ray  # noqa: E402
from interp.models import load_model  # noqa: E402
from interp.patching import PatchConfig, activation_patching  # noqa: E402

# the module shares one Ray instance and one engine; starting Ray and workers that load a model takes
# 15-45 s on the loaded test machine, so every test that starts workers is marked slow

PROMPTS = [f"prompt {i} " + "ab cd " * (i % 5) for i in range(23)]
SITES = "resid_post,pattern,z.1.2"


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def engine(cluster):
    with RayEngine(EngineConfig(kind="ray", workers=2), retries=3) as eng:
        yield eng


@pytest.fixture
def free_cpus(cluster, engine):
    """For a CLI run, which starts its own workers: the shared engine's workers give their CPUs back."""
    engine.release_workers()
    yield


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _local(model, out: Path) -> dict[str, bytes]:
    collect(model, PROMPTS, SITES, out=out, batch_size=3, max_memory="400kB", progress=False)
    return _files(out)


@pytest.mark.slow
def test_cli_cache_ray_equals_local_byte_for_byte(cluster, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    args = ["cache", "toy:llama", "--prompts", str(prompts), "--sites", SITES, "--batch-size", "3",
            "--max-memory", "400kB", "--no-progress"]
    assert invoke([*args, "--out", str(tmp_path / "local")]) == 0
    assert invoke([*args, "--out", str(tmp_path / "ray"), "--engine", "ray", "--workers", "2"]) == 0
    local, dist = _files(tmp_path / "local"), _files(tmp_path / "ray")
    manifest = json.loads(local["manifest.json"])
    assert len(manifest["shards"]) >= 4              # several tasks per worker
    assert list(dist) == list(local)                 # no temporary files, no lock left
    assert dist == local


def _fault_factory(marker: str, point: str, mode: str):
    """A fault for Worker.set_fault: the first writer reaching ``point`` (any worker) is killed."""
    def fault(p: str, path: Path) -> None:
        import os as _os
        import signal as _signal
        import time as _time

        if p != point:
            return
        try:
            fd = _os.open(marker, _os.O_CREAT | _os.O_EXCL | _os.O_WRONLY)
        except FileExistsError:
            return                                   # only the first one
        _os.write(fd, str(_os.getpid()).encode())
        _os.close(fd)
        if mode == "self":
            _os.kill(_os.getpid(), _signal.SIGKILL)
        _time.sleep(120)                             # "external": the test kills this process now
    return fault


@pytest.mark.slow
@pytest.mark.parametrize("point,mode", [("recorded", "self"), ("shard_written", "external")])
def test_worker_killed_mid_shard_is_retried(engine, toy_llama, tmp_path, point, mode):
    """Killed after the write-ahead record (before the rename) or while its temp file exists: the task is
    retried on the restarted actor and the store equals the local one byte for byte."""
    local = _local(toy_llama, tmp_path / "local")
    marker = str(tmp_path / "killed.pid")
    actors = engine.workers(toy_llama)
    before = {i["pid"] for i in ray.get([a.info.remote() for a in actors])}
    ray.get([a.set_fault.remote(_fault_factory(marker, point, mode)) for a in actors])
    if mode == "external":
        def killer() -> None:
            while not (Path(marker).exists() and Path(marker).read_text()):
                time.sleep(0.05)
            os.kill(int(Path(marker).read_text()), signal.SIGKILL)
        t = threading.Thread(target=killer, daemon=True)
        t.start()
    store = collect_ray(toy_llama, PROMPTS, SITES, out=tmp_path / "ray", engine=engine, batch_size=3,
                        max_memory="400kB", progress=False)
    killed = int(Path(marker).read_text())
    assert killed in before                          # a worker really died mid-task ...
    after = {i["pid"] for i in ray.get([a.info.remote() for a in actors])}
    assert killed not in after and len(after) == 2   # ... and was restarted
    assert store.complete
    dist = _files(tmp_path / "ray")
    assert list(dist) == list(local)                 # the killed writer's temp file is gone
    records = dist["completed.jsonl"].decode().splitlines()
    assert len(records) == len(json.loads(local["manifest.json"])["shards"])   # one record per shard
    assert dist == local


def _toy_ds() -> TaskDataset:
    clean = ("cat on", "a dog to", "Al in a", "the red")
    corrupted = ("cow on", "a dog at", "Ed in a", "the big")
    meta = tuple({"k": i % 2 + 1} for i in range(4))
    return TaskDataset("toy", clean, corrupted, ("x", "y", "z", "w"), ("q", "w", "e", "r"), meta)


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [PatchConfig(component="z", max_rows=8),
                                 PatchConfig(component="resid_pre", positions="each", direction="noising"),
                                 PatchConfig(component="mlp_out", positions=("k",))])
def test_exact_patching_ray_equals_local(engine, cfg):
    model = load_model("toy:llama,n_layers=4")
    ds = _toy_ds()
    local = activation_patching(model, ds, cfg)
    dist = activation_patching_ray(model, ds, cfg, engine=engine)
    a, b = local.table, dist.table
    assert list(a.columns) == list(b.columns) and len(a) == len(b) == len(a.drop_duplicates(
        ["metric", "layer", "head", "pos"]))
    num = ["value", "effect", "reference_value"]
    other = [c for c in a.columns if c not in num and a[c].dtype != float]
    assert a[other].equals(b[other])                 # same rows in the same order
    for c in [c for c in num if c in a.columns]:
        assert (a[c] - b[c]).abs().max() <= 1e-6, c
    assert dist.meta.extra["n_patches"] == local.meta.extra["n_patches"]
    assert dist.meta.extra["engine"]["tasks"] == 4   # layers 0..3 over 2 workers x 2
    assert dist.meta.config == local.meta.config


@pytest.mark.slow
def test_cli_patch_ray_equals_local(free_cpus, tmp_path):
    from interp.results import load_results

    path = tmp_path / "toy.jsonl"
    _toy_ds().to_jsonl(path)
    args = ["patch", "toy:llama", "--task", str(path), "--method", "exact", "--n", "4", "--figures", "none"]
    assert invoke([*args, "--out", str(tmp_path / "local")]) == 0
    assert invoke([*args, "--out", str(tmp_path / "ray"), "--engine", "ray", "--workers", "2"]) == 0
    (a,), (b,) = ([r.table for r in load_results(tmp_path / d).values()] for d in ("local", "ray"))
    assert a.drop(columns=["value", "effect"]).equals(b.drop(columns=["value", "effect"]))
    assert (a["value"] - b["value"]).abs().max() <= 1e-6


def test_unreachable_address_is_one_line_and_writes_nothing(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a b\n")
    out = tmp_path / "A"
    code = invoke(["cache", "toy:llama", "--prompts", str(prompts), "--out", str(out), "--engine", "ray",
                   "--address", "127.0.0.1:9"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "127.0.0.1:9" in err
    assert "--engine local" in err and "ray start --head" in err
    assert not out.exists()


@pytest.mark.bundled
@pytest.mark.slow
def test_issue_check_smollm2_cache_ray_equals_local(free_cpus, tmp_path):
    """The issue's check: `interp cache smollm2 --prompts data/prompts/prose.txt --sites resid_post --engine ray
    --workers 2` equals the local run byte for byte (with a --max-memory that makes several shards)."""
    root = Path(__file__).resolve().parents[1]
    args = ["cache", "smollm2", "--prompts", str(root / "data/prompts/prose.txt"), "--sites", "resid_post",
            "--max-memory", "60MB", "--no-progress"]
    assert invoke([*args, "--out", str(tmp_path / "local")]) == 0
    assert invoke([*args, "--out", str(tmp_path / "A"), "--engine", "ray", "--workers", "2"]) == 0
    local, dist = _files(tmp_path / "local"), _files(tmp_path / "A")
    assert len(json.loads(local["manifest.json"])["shards"]) >= 2
    assert dist == local


@pytest.mark.slow
def test_pipeline_engine_ray_equals_local(free_cpus, tmp_path, monkeypatch):
    """``[engine] kind = "ray"`` in a pipeline config: the cache stage's store is byte-equal, the exact head
    patching and the head gating Results equal (1e-6) to the same job run locally."""
    from interp.datasets import registry
    from interp.distributed.config import EngineConfig
    from interp.pipeline import run_pipeline
    from interp.pipeline_config import (CacheStage, GatingStage, GraphStage, PatchingStage, PipelineConfig,
                                        SinksStage)
    from interp.results import load_results

    from test_pipeline import toy_task

    monkeypatch.setitem(registry.TASKS, "toy", registry.Task("toy", toy_task))
    tables = {}
    for kind in ("local", "ray"):
        cfg = PipelineConfig(name="eng", model="toy:llama", tasks=("toy",), out=str(tmp_path / kind),
                             cache=CacheStage(prompts=6, sites="resid_post"),
                             patching=PatchingStage(atp=False, eap=False, exact_prompts=4),
                             gating=GatingStage(prompts=4, steps=6, patience=2, n_masks=2, validate=False),
                             sinks=SinksStage(enabled=False),
                             graph=GraphStage(enabled=False),
                             engine=EngineConfig(kind=kind, workers=2) if kind == "ray" else EngineConfig())
        report = run_pipeline(cfg, log=lambda m: None)
        assert report.ok, report.stages
        res = list(load_results(tmp_path / kind / "results").values())
        exact = [r for r in res if r.kind == "patching.nodes"]
        gates = [r for r in res if r.kind == "gating.chg"]
        assert len(exact) == 1 and len(gates) == 1
        tables[kind] = exact[0].table
        tables[kind + "_chg"] = gates[0]
    assert _files(tmp_path / "local" / "cache" / "toy") == _files(tmp_path / "ray" / "cache" / "toy")
    a, b = tables["local"], tables["ray"]
    assert list(a["node"]) == list(b["node"])
    assert float((a["effect"] - b["effect"]).abs().max()) < 1e-6
    ga, gb = tables["local_chg"], tables["ray_chg"]
    assert gb.meta.extra["stages"] == ga.meta.extra["stages"] and "engine" in gb.meta.extra
    num = [c for c in ga.table.columns if ga.table[c].dtype == float]
    assert float((ga.table[num] - gb.table[num]).abs().max().max()) <= 1e-6
    assert list(ga.table.role) == list(gb.table.role)


# ---------------------------------------------------------------- tracing grids, head gating, circuit evaluation
# the same toy as the patching sweeps above, so the module's workers are reused (no reload)

def _facts() -> TaskDataset:
    return TaskDataset("facts", ("Paris is in the", "Rome is a city of", "a b c"), answers=(" F", " I", " d"),
                       meta=({"subject_start": 0, "subject_end": 3}, {"subject_start": 0, "subject_end": 2},
                             {"subject_start": 1, "subject_end": 2}))


@pytest.mark.slow
def test_causal_trace_ray_equals_local(engine):
    from interp.distributed import causal_trace_ray
    from interp.tracing import TracingConfig, causal_trace

    model = load_model("toy:llama,n_layers=4")
    cfg = TracingConfig(n_samples=3, batch_size=12, window=2)
    grid, summary = causal_trace(model, _facts(), cfg, progress=False)
    grid2, summary2 = causal_trace_ray(model, _facts(), cfg, engine=engine, progress=False)
    num = ["p_restored", "indirect_effect"]
    assert grid.table.drop(columns=num).equals(grid2.table.drop(columns=num))
    assert float((grid.table[num] - grid2.table[num]).abs().max().max()) <= 1e-6
    assert summary.table.equals(summary2.table)
    assert grid2.meta.extra["engine"]["workers"] == 2 and grid2.meta.extra["engine"]["tasks"] >= 4


@pytest.mark.slow
def test_chg_ray_equals_tiled_local(engine):
    """Three masks over two workers, stopping early as the tiled run does (the stop rule on all masks)."""
    from interp.distributed import causal_head_gating_ray
    from interp.gating import CHGConfig, causal_head_gating

    model = load_model("toy:llama,n_layers=4")
    ds = TaskDataset("abc", clean=("abcabc", "xyzxyz", "abab", "qrsqrs"), answers=("a", "x", "a", "q"))
    cfg = CHGConfig(max_steps=30, patience=3, n_masks=3, micro_batch=4, progress=False)
    a = causal_head_gating(model, ds, config=cfg)
    b = causal_head_gating_ray(model, ds, config=cfg, engine=engine)
    assert b.meta.extra["stages"] == a.meta.extra["stages"]
    assert a.meta.extra["stages"]["base"]["steps"] < cfg.max_steps
    num = [c for c in a.table.columns if a.table[c].dtype == float]
    assert float((a.table[num] - b.table[num]).abs().max().max()) <= 1e-6
    assert list(a.table.role) == list(b.table.role)
    assert b.meta.extra["engine"]["tasks"] == 4          # 3 masks in 2 groups, then 6 rows in 2 groups


@pytest.mark.slow
def test_evaluate_circuits_ray_equals_local(engine):
    import random

    from interp.circuits import evaluate_circuits
    from interp.circuits.edges import model_edges
    from interp.distributed import evaluate_circuits_ray

    model = load_model("toy:llama,n_layers=4")
    ds = _toy_ds()
    ds = TaskDataset("toy", ds.clean, ds.corrupted, ds.answers, ds.answers[1:] + ds.answers[:1])
    edges, rng = model_edges(model), random.Random(0)
    sizes = (5, 20, 80, len(edges) // 2, len(edges) - 3)
    circuits = {"none": [], "all": edges, **{f"r{k}": rng.sample(edges, k) for k in sizes}}
    a = evaluate_circuits(model, ds, circuits)
    b = evaluate_circuits_ray(model, ds, circuits, engine=engine)
    assert a.table.drop(columns=["ld", "faithfulness"]).equals(b.table.drop(columns=["ld", "faithfulness"]))
    assert float((a.table[["ld", "faithfulness"]] - b.table[["ld", "faithfulness"]]).abs().max().max()) <= 1e-6
    assert b.meta.extra["engine"]["tasks"] == 4


@pytest.mark.slow
def test_cli_trace_and_gate_ray_equal_local(free_cpus, tmp_path):
    from interp.results import load_results

    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps({"prompt": p, "subject": s, "answer": a, "relation": r}) + "\n"
                             for p, s, a, r in [("The Eiffel Tower is in ", "Eiffel Tower", "P", "loc"),
                                                ("Rome is the capital of ", "Rome", "I", "cap")]))
    trace = ["trace", "toy:llama", "--facts", str(facts), "--samples", "2", "--tokens", "key", "--min-prob", "0"]
    gate = ["gate", "toy:llama", "--task", str(tmp_path / "toy.jsonl"), "--n", "4", "--max-steps", "8",
            "--patience", "2", "--masks", "2", "--no-validate", "--figures", "none"]
    _toy_ds().to_jsonl(tmp_path / "toy.jsonl")
    for name, args in (("trace", trace), ("gate", gate)):
        assert invoke([*args, "--out", str(tmp_path / f"{name}_local")]) == 0
        assert invoke([*args, "--out", str(tmp_path / f"{name}_ray"), "--engine", "ray", "--workers", "2"]) == 0
        a, b = (load_results(tmp_path / f"{name}_{k}") for k in ("local", "ray"))
        assert sorted(a) == sorted(b)
        for key in a:
            ta, tb = a[key].table, b[key].table
            num = [c for c in ta.columns if ta[c].dtype == float]
            assert ta.drop(columns=num).equals(tb.drop(columns=num)), key
            assert float((ta[num] - tb[num]).abs().max().max()) <= 1e-6, key
