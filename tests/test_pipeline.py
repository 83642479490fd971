"""The main-job runner: TOML configs, every stage on the toy model, skipped stages, report.md."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from interp.datasets import registry
from interp.errors import ConfigError
from interp.pipeline import (GatingStage, GraphStage, PatchingStage, PipelineConfig, SinksStage, load_config,
                             run_pipeline)

ROOT = Path(__file__).resolve().parents[1]

_CLEAN = ["When Mary and John went, John gave it to", "Then Anna and Bobo sat, Bobo gave it to",
          "When Lisa and Mark ran, Mark gave it to", "Then Rosa and Tim sat, Tim gave it to"]
_CORR = ["When Kate and Paul went, Luke gave it to", "Then Ruth and Carl sat, Dave gave it to",
         "When Nina and Otto ran, Ivan gave it to", "Then Vera and Ned sat, Kim gave it to"]


def toy_task(model, n=4, seed=0):
    """A tiny IOI-shaped task for the byte-level toy tokenizer (equal clean/corrupted lengths)."""
    from interp.datasets.base import TaskDataset

    k = min(n, len(_CLEAN))
    return TaskDataset("toy", tuple(_CLEAN[:k]), tuple(_CORR[:k]), answers=tuple(c[5] for c in _CLEAN[:k]),
                       counterfactuals=tuple(c.split(", ")[1][0] for c in _CLEAN[:k]))


def test_shipped_configs_parse():
    cfg = load_config(ROOT / "analyses" / "ioi_circuit.toml")
    assert cfg.tasks == ("ioi",) and cfg.patching.prompts == 16 and cfg.gating.steps >= 1
    assert cfg.graph.formats == ("json", "graphml", "gexf") and not cfg.compare.enabled
    cmp = load_config(ROOT / "analyses" / "compare_ioi_colored.toml")
    assert cmp.tasks == ("ioi", "colored_objects") and cmp.compare.enabled and not cmp.gating.enabled


def test_config_errors(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('name = "x"\n[patching]\npromts = 3\n')
    with pytest.raises(ConfigError, match="promts.*Did you mean.*prompts"):
        load_config(p)
    p.write_text('tasks = ["ioj"]\n')
    with pytest.raises(ConfigError, match="unknown task 'ioj'"):
        load_config(p)
    p.write_text('[gatting]\nsteps = 3\n')
    with pytest.raises(ConfigError, match="gatting"):
        load_config(p)
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        GatingStage(steps=0)


def test_runs_every_stage_on_toy_and_skips_missing(tmp_path, monkeypatch):
    import interp.pipeline as pl

    monkeypatch.setitem(registry.TASKS, "toy", registry.Task("toy", toy_task))
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "prose.txt").write_text("The cat sat on the mat.\nA dog ran in the park today.\n")
    (tmp_path / "prompts" / "code.txt").write_text("def f(x): return x + 1\nfor i in range(3): print(i)\n")
    real_need = pl._need

    def need(module, *names):       # pretend the gating module has not landed
        if module == "interp.gating":
            raise pl._Skip("module interp.gating is not available (test)")
        return real_need(module, *names)

    monkeypatch.setattr(pl, "_need", need)
    cfg = PipelineConfig(name="toyjob", model="toy:llama", tasks=("toy",), out=str(tmp_path / "out"),
                         patching=PatchingStage(prompts=4, exact_prompts=2, batch_size=4),
                         gating=GatingStage(steps=2, prompts=4, batch_size=4),
                         sinks=SinksStage(prompt_dir=str(tmp_path / "prompts"), prompts=2, max_len=16),
                         graph=GraphStage(top_k_edges=10, faithfulness_prompts=4, random_samples=2,
                                          sweep_edges=(3, 10), faithfulness_target=-1e9, figures=("svg",)))
    report = run_pipeline(cfg, log=lambda m: None)
    status = {r.name: r.status for r in report.stages}
    notes = {r.name: r.note for r in report.stages}
    assert status["gating"] == "skipped" and "interp.gating" in notes["gating"]
    assert all(status[s] == "ok" for s in ("load", "cache", "patching", "sinks", "graph", "figures")), report.stages
    assert status["compare"] == "disabled"
    out = tmp_path / "out"
    text = report.path.read_text()
    for stage in ("load", "cache", "patching", "gating", "sinks", "graph", "figures"):
        assert f"| {stage} |" in text
    assert "## Missing or failed" in text and "interp.gating" in text and "faithfulness" in text
    for f in ("graph/toy_graph.json", "graph/toy_circuit.graphml", "graph/toy_circuit.gexf",
              "toy_explorer.html", "figures/toy_circuit.svg", "results/manifest.json"):
        assert (out / f).exists(), f
    from interp.graph import load_graph
    from interp.results import load_results

    g = load_graph(out / "graph" / "toy_graph.json")
    assert g.nx.number_of_edges() > 0 and g.meta["model"] == "toy:llama"
    from interp.graph import prune

    # every swept size reaches the (trivial) target, so the circuit is the smallest one: top-3 edges
    circuit = load_graph(out / "graph" / "toy_circuit.json")
    assert set(circuit.nx.nodes) == set(prune(g, top_k_edges=3).nx.nodes) != set(prune(g, top_k_edges=10).nx.nodes)
    kinds = {r.kind for r in load_results(out / "results").values()}
    assert {"patching.nodes", "patching.edges", "sinks.heads", "graph.faithfulness"} <= kinds
    faith = {r.name: r.table for r in load_results(out / "results").values() if r.kind == "graph.faithfulness"}
    assert list(faith["toy_random_baseline"].circuit) == ["toy_circuit", "random0", "random1"]
    assert list(faith["toy_size_sweep"].circuit) == ["top3_edges", "top10_edges"]


def test_failed_stage_is_reported_and_job_continues(tmp_path, monkeypatch):
    import interp.pipeline as pl

    monkeypatch.setitem(registry.TASKS, "toy", registry.Task("toy", toy_task))

    def boom(job):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(pl, "_stage_cache", boom)
    cfg = PipelineConfig(name="t", model="toy:llama", tasks=("toy",), out=str(tmp_path / "o"),
                         patching=dataclasses.replace(PatchingStage(), enabled=False),
                         gating=GatingStage(enabled=False), sinks=SinksStage(enabled=False),
                         graph=GraphStage(enabled=False))
    report = run_pipeline(cfg, log=lambda m: None)
    rec = {r.name: r for r in report.stages}
    assert rec["cache"].status == "failed" and "planted failure" in rec["cache"].note and not report.ok
    assert (tmp_path / "o" / "logs" / "cache.traceback.txt").exists()
    assert "planted failure" in report.path.read_text()


def test_smallest_faithful_circuit_size():
    import pandas as pd

    from interp.pipeline import _smallest_faithful

    sweep = pd.DataFrame({"circuit": ["top100_edges", "top400_edges", "top1000_edges"],
                          "faithfulness": [-0.2, 0.85, 0.95]})
    assert _smallest_faithful(sweep, (100, 400, 1000), 0.8) == 400
    assert _smallest_faithful(sweep, (100, 400, 1000), 0.9) == 1000
    assert _smallest_faithful(sweep, (100, 400, 1000), 0.99) == 1000      # none reaches it: the largest
    with pytest.raises(ConfigError, match="sweep_edges"):
        GraphStage(faithfulness_target=0.8)
