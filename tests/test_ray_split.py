"""The splits of the Ray engine without Ray: every task runs in this process on real Worker objects.

An in-process stand-in for :class:`~interp.distributed.RayEngine` (same ``workers``/``map``
interface, tasks dealt round-robin to two :class:`~interp.distributed.worker.Worker` objects that
load their own copy of the model) checks that causal tracing (chunks of rows), CHG (groups of masks
with the stop rule replayed on the driver) and edge-level circuit evaluation (chunks of circuits)
give a local run's values within 1e-6. tests/test_ray.py runs the same functions on a real 2-worker
Ray cluster.
"""

from __future__ import annotations

import random

import pytest

from interp.datasets import TaskDataset
from interp.models import load_model


class InProcessEngine:
    """RayEngine's ``workers``/``map`` with Worker objects in this process (round-robin)."""

    def __init__(self, n: int = 2) -> None:
        self.n, self.pool, self.calls = n, None, []

    def workers(self, model):
        from interp.distributed.worker import Worker, model_recipe

        if self.pool is None:
            self.pool = [Worker(model_recipe(model)) for _ in range(self.n)]
            assert not any(w.error for w in self.pool)
        return self.pool

    def map(self, model, method, args, progress=None):
        ws, out = self.workers(model), []
        for i, a in enumerate(args):
            self.calls.append((i % len(ws), method))
            out.append(getattr(ws[i % len(ws)], method)(*a))
            if progress is not None:
                progress(i + 1)
        return out


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as a Ray worker has (two threads on a loaded 2-core machine spin-wait: 20x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model4():
    return load_model("toy:llama,n_layers=4")


def _facts() -> TaskDataset:
    return TaskDataset("facts", ("Paris is in the", "Rome is a city of", "a b c"), answers=(" F", " I", " d"),
                       meta=({"subject_start": 0, "subject_end": 3}, {"subject_start": 0, "subject_end": 2},
                             {"subject_start": 1, "subject_end": 2}))


@pytest.mark.parametrize("kw", [dict(n_samples=3, batch_size=12, window=2),
                                dict(n_samples=2, batch_size=5, tokens="key", kinds=("mlp", "resid"), replace=True)])
def test_trace_split_equals_local(model4, kw):
    from interp.distributed.tracing import causal_trace_ray
    from interp.tracing import TracingConfig, causal_trace

    cfg = TracingConfig(**kw)
    grid, summary = causal_trace(model4, _facts(), cfg, progress=False)
    eng = InProcessEngine()
    grid2, summary2 = causal_trace_ray(model4, _facts(), cfg, engine=eng, progress=False, tasks=5)
    assert len({w for w, _ in eng.calls}) == 2 and len(eng.calls) >= 5   # several chunks on both workers
    num = ["p_restored", "indirect_effect"]
    assert grid.table.drop(columns=num).equals(grid2.table.drop(columns=num))
    assert float((grid.table[num] - grid2.table[num]).abs().max().max()) <= 1e-6
    assert summary.table.equals(summary2.table)
    assert grid2.meta.extra["engine"]["tasks"] == len(eng.calls)


@pytest.mark.parametrize("kw", [dict(max_steps=40, patience=3, n_masks=3, micro_batch=4),   # stops early
                                dict(max_steps=12, patience=0, n_masks=2)])               # fixed budget
def test_chg_split_equals_tiled(toy_llama, kw):
    """Groups of masks on two workers, the stop rule replayed on all masks: the tiled local run."""
    from interp.distributed.gating import causal_head_gating_ray
    from interp.gating import CHGConfig, causal_head_gating

    ds = TaskDataset("abc", clean=("abcabc", "xyzxyz", "abab", "qrsqrs"), answers=("a", "x", "a", "q"))
    cfg = CHGConfig(progress=False, **kw)
    a = causal_head_gating(toy_llama, ds, config=cfg)
    eng = InProcessEngine()
    b = causal_head_gating_ray(toy_llama, ds, config=cfg, engine=eng)
    assert {w for w, _ in eng.calls} == {0, 1}
    assert b.meta.extra["stages"] == a.meta.extra["stages"]
    if kw["patience"]:
        assert a.meta.extra["stages"]["base"]["steps"] < kw["max_steps"]     # the stop rule really stopped
    num = [c for c in a.table.columns if a.table[c].dtype == float]
    assert float((a.table[num] - b.table[num]).abs().max().max()) <= 1e-6
    assert list(a.table.role) == list(b.table.role)
    for k in ("nll_base", "nll_plus", "nll_minus"):
        assert max(abs(x - y) for x, y in zip(a.meta.extra[k], b.meta.extra[k])) <= 1e-5


def test_circuits_split_equals_local():
    from interp.circuits import EdgeEvalConfig, evaluate_circuits
    from interp.circuits.edges import model_edges
    from interp.distributed.circuits import evaluate_circuits_ray

    m = load_model("toy:llama,n_layers=2")
    ds = TaskDataset("demo", clean=("ab cd x", "ef gh y"), corrupted=("ab ce x", "ef gi y"), answers=("y", "z"),
                     counterfactuals=("z", "y"))
    edges, rng = model_edges(m), random.Random(0)
    circuits = {"none": [], "all": edges, **{f"r{k}": rng.sample(edges, k) for k in (3, 10, 20, 40, 60, 5, 7)}}
    for cfg in (EdgeEvalConfig(max_rows=4), EdgeEvalConfig(ablation="mean")):
        a = evaluate_circuits(m, ds, circuits, cfg)
        eng = InProcessEngine()
        b = evaluate_circuits_ray(m, ds, circuits, cfg, engine=eng, tasks=3)
        assert len(eng.calls) == 3
        assert a.table.drop(columns=["ld", "faithfulness"]).equals(b.table.drop(columns=["ld", "faithfulness"]))
        assert float((a.table.ld - b.table.ld).abs().max()) <= 1e-6
        assert float((a.table.faithfulness - b.table.faithfulness).abs().max()) <= 1e-6
        assert b.meta.extra["forward_passes"] > a.meta.extra["forward_passes"]   # each worker's baseline counted
