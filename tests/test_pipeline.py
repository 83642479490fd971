"""The main-job runner: TOML configs, every stage on the toy model, failing loudly, report.md."""

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
    assert cfg.graph.evaluation == "edges" and cfg.graph.faithfulness_target == 0.8 and cmp.graph.evaluation == "nodes"
    assert cfg.gating.patience >= 1 and cfg.gating.batch_size == 0 and cfg.gating.validate


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


def test_runs_every_stage_on_toy(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.TASKS, "toy", registry.Task("toy", toy_task))
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "prose.txt").write_text("The cat sat on the mat.\nA dog ran in the park today.\n")
    (tmp_path / "prompts" / "code.txt").write_text("def f(x): return x + 1\nfor i in range(3): print(i)\n")
    cfg = PipelineConfig(name="toyjob", model="toy:llama", tasks=("toy",), out=str(tmp_path / "out"),
                         patching=PatchingStage(prompts=4, exact_prompts=2, batch_size=4),
                         gating=GatingStage(steps=2, prompts=4, batch_size=4),
                         sinks=SinksStage(prompt_dir=str(tmp_path / "prompts"), prompts=2, max_len=16),
                         graph=GraphStage(evaluation="nodes", top_k_edges=10, faithfulness_prompts=4,
                                          random_samples=2, sweep_edges=(3, 10), faithfulness_target=-1e9,
                                          figures=("svg",)))
    report = run_pipeline(cfg, log=lambda m: None)
    status = {r.name: r.status for r in report.stages}
    assert all(status[s] == "ok" for s in ("load", "cache", "patching", "gating", "sinks", "graph", "figures")), \
        report.stages
    assert status["compare"] == "disabled" and report.ok and not report.failed
    out = tmp_path / "out"
    text = report.path.read_text()
    for stage in ("load", "cache", "patching", "gating", "sinks", "graph", "figures"):
        assert f"| {stage} |" in text
    assert "FAILED" not in text and "faithfulness" in text
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


def _small(tmp_path, **kw):
    base = dict(patching=PatchingStage(enabled=False), gating=GatingStage(enabled=False),
                sinks=SinksStage(enabled=False))
    return PipelineConfig(name="t", model="toy:llama", tasks=("toy",), out=str(tmp_path / "o"), **{**base, **kw})


def test_failed_stage_fails_the_job_and_blocks_what_needs_it(tmp_path, monkeypatch):
    import interp.pipeline as pl

    monkeypatch.setitem(registry.TASKS, "toy", registry.Task("toy", toy_task))

    def boom(job):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(pl, "_stage_patching", boom)
    cfg = _small(tmp_path, cache=pl.CacheStage(prompts=2), patching=PatchingStage(prompts=2),
                 graph=GraphStage(faithfulness_prompts=2, random_samples=1, figures=("html",)))
    report = run_pipeline(cfg, log=lambda m: None)
    rec = {r.name: r for r in report.stages}
    assert rec["cache"].status == "ok"                      # independent stages still run
    assert rec["patching"].status == "failed" and "planted failure" in rec["patching"].note and not report.ok
    assert rec["graph"].status == "not run" and "patching" in rec["graph"].note
    assert rec["figures"].status == "not run" and rec["gating"].status == "disabled"
    tb = tmp_path / "o" / "logs" / "patching.traceback.txt"
    assert rec["patching"].traceback == tb and "RuntimeError: planted failure" in tb.read_text()
    text = report.path.read_text()
    assert "**FAILED**" in text and str(tb) in text and "planted failure" in text
    assert [r.name for r in report.failed] == ["patching", "graph", "figures"]


def test_no_skipping_but_by_config(tmp_path, monkeypatch):
    """A missing analysis module is a failure (plain imports), not a silent 'skipped'."""
    import builtins

    monkeypatch.setitem(registry.TASKS, "toy", registry.Task("toy", toy_task))
    real_import = builtins.__import__

    def no_gating(name, *a, **k):
        if name == "interp.gating":
            raise ImportError("planted: no interp.gating")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_gating)
    report = run_pipeline(_small(tmp_path, cache=pl_cache(enabled=False), gating=GatingStage(steps=1, prompts=2),
                                 graph=GraphStage(enabled=False)), log=lambda m: None)
    rec = {r.name: r for r in report.stages}
    assert rec["gating"].status == "failed" and "ImportError" in rec["gating"].note and not report.ok
    assert {r.status for r in report.stages} <= {"ok", "failed", "disabled"}


def pl_cache(**kw):
    from interp.pipeline import CacheStage

    return CacheStage(**kw)


def test_config_refusals(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('threads = 4\n')
    with pytest.raises(ConfigError, match=r"interp --threads N run"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"\[compare\] needs two tasks"):
        PipelineConfig(tasks=("ioi",), compare=dataclasses.replace(PipelineConfig().compare, enabled=True))


def test_library_sets_no_thread_count():
    import inspect

    import interp.pipeline as pl

    assert "set_num_threads" not in inspect.getsource(pl)


def test_smallest_faithful_circuit_size():
    import pandas as pd

    from interp.pipeline import _smallest_faithful

    sweep = pd.DataFrame({"circuit": ["top100_edges", "top400_edges", "top1000_edges"],
                          "faithfulness": [-0.2, 0.85, 0.95]})
    assert _smallest_faithful(sweep, (100, 400, 1000), 0.8) == 400
    assert _smallest_faithful(sweep, (100, 400, 1000), 0.9) == 1000
    assert _smallest_faithful(sweep, (100, 400, 1000), 0.99) == 1000      # none reaches it: the largest
    with pytest.raises(ConfigError, match="graph.evaluation must be 'edges' or 'nodes'"):
        GraphStage(evaluation="node")
def _toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_interp_run_exits_nonzero_when_a_stage_raises(tmp_path, monkeypatch, capsys):
    import interp.pipeline as pl
    from interp.cli import invoke

    monkeypatch.setitem(registry.TASKS, "toy", registry.Task("toy", toy_task))

    def boom(job):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(pl, "_stage_cache", boom)
    cfg = _toml(tmp_path / "job.toml", f'name = "t"\nmodel = "toy:llama"\ntasks = ["toy"]\nout = "{tmp_path / "o"}"\n'
                "[cache]\nprompts = 2\n[patching]\nenabled = false\n[gating]\nenabled = false\n"
                "[sinks]\nenabled = false\n[graph]\nenabled = false\n")
    code = invoke(["run", str(cfg)])
    err = capsys.readouterr().err
    assert code == 1
    assert "stage cache failed" in err and "planted failure" in err
    tb = tmp_path / "o" / "logs" / "cache.traceback.txt"
    assert tb.exists() and str(tb) in (tmp_path / "o" / "report.md").read_text()


def test_interp_run_checks_prompt_files_before_the_model(tmp_path, monkeypatch, capsys):
    import interp.models
    from interp.cli import invoke

    def refuse(*a, **k):
        raise AssertionError("model loaded before the inputs were checked")

    monkeypatch.setattr(interp.models, "load_model", refuse)
    cfg = _toml(tmp_path / "job.toml", f'model = "toy:llama"\nout = "{tmp_path / "o"}"\n'
                f'[sinks]\nprompt_dir = "{tmp_path}"\ndomains = ["nosuch"]\n')
    code = invoke(["run", str(cfg)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("interp: error: sinks: no prompt file for domain 'nosuch'")


@pytest.mark.bundled
@pytest.mark.slow
def test_interp_run_facts_on_the_bundled_model(tmp_path, capsys):
    """Every registered task runs through `interp run`; facts used to fail (facts_dataset has no n)."""
    from interp.cli import invoke
    from interp.results import load_results

    cfg = _toml(tmp_path / "facts.toml", f'name = "facts_job"\nmodel = "smollm2"\ntasks = ["facts"]\n'
                f'out = "{tmp_path / "o"}"\n'
                "[cache]\nprompts = 2\nsites = \"resid_post.3\"\n"
                "[patching]\nprompts = 4\neap = false\nexact = false\nbatch_size = 4\n"
                "[gating]\nenabled = false\n[sinks]\nenabled = false\n"
                "[graph]\ntop_k_edges = 5\nfaithfulness_prompts = 4\nrandom_samples = 1\nformats = [\"json\"]\n"
                "figures = [\"html\"]\n")
    code = invoke(["run", str(cfg)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "facts: 4 prompts" in out
    kinds = {r.kind for r in load_results(tmp_path / "o" / "results").values()}
    assert {"patching.nodes", "graph.faithfulness"} <= kinds
    assert "FAILED" not in (tmp_path / "o" / "report.md").read_text()


def test_cache_stage_of_an_absolute_task_file_stays_inside_out(tmp_path):
    """A task given as an absolute .jsonl path: its store goes to out/cache/<file stem>, never onto the file."""
    import json

    import interp.pipeline as pl

    task = tmp_path / "data" / "demo.jsonl"
    task.parent.mkdir()
    task.write_text("\n".join(json.dumps({"clean": c, "corrupted": k, "answer": "x", "counterfactual": "y"})
                              for c, k in (("ab cd", "ab ce"), ("ef gh", "ef gi"))) + "\n")
    before = task.read_bytes()
    cfg = PipelineConfig(name="t", model="toy:llama", tasks=(str(task),), out=str(tmp_path / "o"),
                         cache=pl.CacheStage(prompts=2), patching=PatchingStage(enabled=False),
                         gating=GatingStage(enabled=False), sinks=SinksStage(enabled=False),
                         graph=GraphStage(enabled=False))
    report = run_pipeline(cfg, log=lambda m: None)
    assert {r.name: r.status for r in report.stages}["cache"] == "ok"
    assert (tmp_path / "o" / "cache" / "demo" / "manifest.json").is_file() and task.read_bytes() == before


# --------------------------------------------------------------------------- the edge-level circuit (issue 16)
def _explorer_takes_circuit() -> bool:
    """Whether the explorer accepts ``circuit=`` and ``curve=`` (another branch adds them): signature only."""
    import inspect

    import interp.explorer as ex

    params = set(inspect.signature(ex.write_html).parameters)
    if "kwargs" in params and hasattr(ex, "page_data"):
        params |= set(inspect.signature(ex.page_data).parameters)
    return {"circuit", "curve"} <= params


def _record_explorer_calls(monkeypatch, calls: list) -> None:
    """Record the kwargs of every ``CircuitGraph.to_html`` call; drop ``circuit``/``curve`` when the explorer
    does not take them yet (decided by its signature), so the rest of the stage can be checked."""
    from interp.graph.core import CircuitGraph

    real = CircuitGraph.to_html
    takes = _explorer_takes_circuit()

    def to_html(self, path, **kw):
        calls.append((Path(path).name, kw))
        return real(self, path, **(kw if takes else {k: v for k, v in kw.items() if k not in ("circuit", "curve")}))

    monkeypatch.setattr(CircuitGraph, "to_html", to_html)


def test_edge_level_circuit_report_and_reevaluation(tmp_path, monkeypatch):
    """The default graph stage chooses and evaluates the circuit at edge level; report.md shows the curve, the
    chosen size, random baselines, the complement, method agreement and the gating verdict; the chosen circuit
    re-evaluated independently by evaluate_circuits gives the reported faithfulness."""
    import json

    import pandas as pd

    from interp import load_model
    from interp.circuits import EdgeEvalConfig, circuit_nodes, evaluate_circuits, model_edges
    from interp.graph import load_graph
    from interp.results import load_results

    monkeypatch.setitem(registry.TASKS, "toy", registry.Task("toy", toy_task))
    calls: list = []
    _record_explorer_calls(monkeypatch, calls)
    target = 0.8
    cfg = PipelineConfig(name="edgejob", model="toy:llama", tasks=("toy",), out=str(tmp_path / "out"),
                         cache=pl_cache(enabled=False),
                         patching=PatchingStage(prompts=4, exact_prompts=4, batch_size=4),
                         gating=GatingStage(steps=40, patience=3, prompts=4),
                         sinks=SinksStage(enabled=False),
                         graph=GraphStage(faithfulness_prompts=4, random_samples=2, curve_points=6, refine=4,
                                          faithfulness_target=target, formats=("json",), figures=("svg",)))
    report = run_pipeline(cfg, log=lambda m: None)
    assert report.ok, [(r.name, r.status, r.note) for r in report.stages]
    out = tmp_path / "out"
    every = list(load_results(out / "results").values())
    results = {r.name: r for r in every if r.kind.startswith("circuits.")}
    curve, ev = results["toy_curve"], results["toy_circuit"]
    assert curve.kind == "circuits.curve" and ev.kind == "circuits.eval"
    edges = [tuple(e) for e in ev.meta.extra["edges"]]
    assert edges == [tuple(e) for e in json.loads((out / "graph" / "toy_circuit_edges.json").read_text())]
    # the chosen circuit = the smallest evaluated size reaching the target (the curve is the evidence)
    t = curve.table.sort_values("n_edges")
    reached = t[t.faithfulness >= target]
    chosen = int(reached.n_edges.min()) if len(reached) else int(t.loc[t.faithfulness.idxmax(), "n_edges"])
    assert len(edges) == chosen
    # independent re-evaluation of the saved edges on the same prompts and the same (seeded) toy
    model = load_model("toy:llama")
    ds = toy_task(model, n=cfg.max_prompts).subset(range(4))
    again = evaluate_circuits(model, ds, {"c": edges, "rest": sorted(set(model_edges(model)) - set(edges))},
                              EdgeEvalConfig(ablation=cfg.graph.edge_ablation)).table.set_index("circuit")
    reported = float(ev.table.faithfulness.iloc[0])
    assert abs(again.faithfulness["c"] - reported) < 1e-5
    row = t[t.n_edges == chosen].iloc[0]
    assert abs(row.faithfulness - reported) < 1e-5 and abs(row.complement - again.faithfulness["rest"]) < 1e-5
    nodes = circuit_nodes(edges)
    n_heads, n_mlps = sum(".H" in n for n in nodes), sum(n.endswith(".MLP") for n in nodes)
    text = report.path.read_text()
    assert f"**Chosen circuit: {chosen} edges, {n_heads} heads, {n_mlps} MLPs" in text
    assert f"faithfulness {reported:.3f}**" in text
    assert f"random circuits {row.random_mean:.3f} +/- {row.random_std:.3f}, the complement {row.complement:.3f}" \
        in text
    assert f"AUC {curve.meta.extra['auc']:.3f}, random {curve.meta.extra['auc_random']:.3f}" in text
    assert "| n_edges | n_nodes | faithfulness | random_mean | random_std | complement |" in text
    assert (out / "figures" / f"{curve.id}.svg").is_file() and f"figures/{curve.id}.svg" in text
    # the circuit graph holds exactly the node pairs of the chosen edges
    g = load_graph(out / "graph" / "toy_circuit.json")
    assert set(g.nx.edges) == {(s, d) for s, d, _ in edges}
    # method agreement and the gating verdict
    assert "## Method agreement (heads)" in text
    agree = text.split("## Method agreement (heads)")[1].split("\n## ")[0]
    for method in ("| exact |", "| atp |", "| eap |"):
        assert method in agree, agree
    assert "**Validation verdict:" in text and "## Head gating (CHG)" in text
    chg = next(r for r in every if r.kind == "gating.chg")
    for st in chg.meta.extra["stages"].values():     # patience reached the gating (stops when roles are stable)
        assert st["steps"] <= 40 and (not st["converged"] or st["steps"] < 40)
    # the full graph's explorer gets the circuit and the curve
    kw = dict(calls)["toy_explorer.html"]
    assert [tuple(e) for e in kw["circuit"]] == edges and isinstance(kw["curve"], pd.DataFrame)
    assert kw["curve"][["n_edges", "faithfulness"]].round(9).equals(curve.table[["n_edges", "faithfulness"]].round(9))


def test_task_files_are_resolved_against_base(tmp_path, monkeypatch):
    """A relative task file is looked up under the job's base, not the current directory (and before the model)."""
    import json

    from interp.errors import DataError

    base, elsewhere = tmp_path / "job", tmp_path / "elsewhere"
    (base / "data").mkdir(parents=True)
    elsewhere.mkdir()
    (base / "data" / "demo.jsonl").write_text("\n".join(
        json.dumps({"clean": c, "corrupted": k, "answer": "x", "counterfactual": "y"})
        for c, k in (("ab cd", "ab ce"), ("ef gh", "ef gi"))) + "\n")
    monkeypatch.chdir(elsewhere)
    cfg = PipelineConfig(name="t", model="toy:llama", tasks=("data/demo.jsonl",), out="o",
                         cache=pl_cache(prompts=2), patching=PatchingStage(enabled=False),
                         gating=GatingStage(enabled=False), sinks=SinksStage(enabled=False),
                         graph=GraphStage(enabled=False))
    report = run_pipeline(cfg, base=base, log=lambda m: None)
    assert report.ok and "data/demo.jsonl: 2 prompts" in report.stages[0].note
    assert (base / "o" / "cache" / "demo" / "manifest.json").is_file()
    missing = dataclasses.replace(cfg, tasks=("data/none.jsonl",))
    with pytest.raises(DataError, match="none.jsonl"):
        run_pipeline(missing, base=base, log=lambda m: None)
    assert not (base / "o" / "report.md").read_text().count("none.jsonl")   # refused before anything ran
