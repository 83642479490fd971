"""The main job: cache -> patching/EAP -> gating -> sinks -> graph (-> compare), from one TOML file.

Each stage has a frozen config with its budget (prompts, steps); ``run_pipeline``
runs the enabled stages in order, times them, writes every Result, the circuit graph
in JSON/GraphML/GEXF, the explorer page, PDF/SVG figures and ``report.md``.

The graph stage chooses the circuit and evaluates it at edge level by default
(:mod:`interp.pipeline_circuit`, :mod:`interp.circuits`): a faithfulness curve of the EAP
edges against circuit size with random circuits and the complement, and the smallest circuit
reaching ``graph.faithfulness_target``; ``graph.evaluation = "nodes"`` keeps the node-level
evaluation (heads outside the circuit ablated). Relative task files are resolved against
``base``, like every other path of the job.

The pipeline fails loudly: a stage runs unless the config disables it; a stage that
raises is recorded as failed, its traceback written to ``<out>/logs/<stage>.traceback.txt``
(the path is in ``report.md``), the stages that need it are not run, and
``report.ok`` is False (``interp run`` exits non-zero). Inputs (tasks, prompt files,
the output folder) are checked before the model loads. The library never sets thread
counts: ``interp --threads N run CONFIG`` does.

Example (``analyses/ioi_circuit.toml``)::

    name = "ioi_circuit"
    model = "smollm2"
    tasks = ["ioi"]
    [patching]
    prompts = 16

    >>> cfg = load_config("analyses/ioi_circuit.toml")
    >>> cfg.model, cfg.tasks, cfg.patching.prompts
    ('smollm2', ('ioi',), 16)
    >>> report = run_pipeline(cfg)  # SmolLM2, minutes on a CPU  # doctest: +SKIP
    >>> report.path  # needs the run above  # doctest: +SKIP
    PosixPath('out/ioi_circuit/report.md')

    The same on the toy Llama with a TaskDataset file and the patching stage only (seconds):

    >>> import tempfile
    >>> from pathlib import Path
    >>> from interp.datasets import TaskDataset
    >>> d = Path(tempfile.mkdtemp())
    >>> TaskDataset("demo", clean=("ab cd x", "ef gh y"), corrupted=("ab ce x", "ef gi y"),
    ...             answers=("y", "z"), counterfactuals=("z", "y")).to_jsonl(d / "demo.jsonl")
    >>> _ = (d / "toy.toml").write_text(f'''
    ... model = "toy:llama"
    ... tasks = ["{d / 'demo.jsonl'}"]
    ... out = "out"
    ... [cache]
    ... enabled = false
    ... [patching]
    ... prompts = 2
    ... exact = false
    ... [gating]
    ... enabled = false
    ... [sinks]
    ... enabled = false
    ... [graph]
    ... enabled = false
    ... ''')
    >>> report = run_pipeline(load_config(d / "toy.toml"), base=d, log=lambda line: None)
    >>> report.ok, [s.name for s in report.stages if s.status == "ok"]
    (True, ['load', 'patching'])
    >>> report.path.relative_to(d).as_posix()
    'out/report.md'
"""

from __future__ import annotations

import dataclasses
import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from interp.datasets.registry import build_task
from interp.errors import ConfigError
from interp.pipeline_config import (CacheStage, CompareStage, GatingStage, GraphStage,  # noqa: F401  (re-exported)
                                    PatchingStage, PipelineConfig, SinksStage, load_config)

__all__ = ["CacheStage", "PatchingStage", "GatingStage", "SinksStage", "GraphStage", "CompareStage",
           "PipelineConfig", "StageRecord", "PipelineReport", "load_config", "run_pipeline"]


# --------------------------------------------------------------------------- running
@dataclass
class StageRecord:
    """What happened in one stage."""

    name: str
    status: str            # ok | failed | not run (a stage it needs failed) | disabled (by the config)
    seconds: float
    note: str = ""
    cpu_seconds: float = 0.0   # process CPU time (all threads): compare runs on a shared, loaded machine
    traceback: Path | None = None   # <out>/logs/<stage>.traceback.txt of a failed stage


@dataclass
class PipelineReport:
    """Stage records, produced files and the path of report.md."""

    config: PipelineConfig
    stages: list[StageRecord]
    path: Path
    files: list[Path]

    @property
    def ok(self) -> bool:
        """True when every stage the config enabled ran and succeeded."""
        return all(s.status in ("ok", "disabled") for s in self.stages)

    @property
    def failed(self) -> list[StageRecord]:
        """The stages that raised or could not run because one they need failed."""
        return [s for s in self.stages if s.status not in ("ok", "disabled")]


class _Job:
    def __init__(self, cfg: PipelineConfig, base: Path, log: Callable[[str], None]) -> None:
        self.cfg, self.base, self.log = cfg, base, log
        self.out = Path(cfg.out) if Path(cfg.out).is_absolute() else base / cfg.out
        self.results_dir = self.out / "results"
        self.records: list[StageRecord] = []
        self.files: list[Path] = []
        self.model: Any = None
        self.data: dict[str, Any] = {}
        self.results: dict[str, list[Any]] = {t: [] for t in cfg.tasks}
        self.shared: list[Any] = []     # task-independent Results (sinks)
        self.graphs: dict[str, Any] = {}
        self.circuits: dict[str, Any] = {}
        self.faith: dict[str, Any] = {}
        self.sweeps: dict[str, Any] = {}
        self.edge: dict[str, dict[str, Any]] = {}     # edge-level circuit per task (interp.pipeline_circuit)
        self.task_files = {t: cfg.task_path(t, base) for t in cfg.tasks}   # task files resolved against base
        self.engine: Any = None          # a RayEngine while run_pipeline holds one ([engine] kind = "ray"), else None
        self.compare: list[Any] = []

    def stage(self, name: str, enabled: bool, fn: Callable[[], str | None], needs: tuple[str, ...] = ()) -> None:
        """Run one stage: disabled only by the config; not run when a stage in ``needs`` did not succeed."""
        if not enabled:
            self.records.append(StageRecord(name, "disabled", 0.0, "disabled in the config"))
            return
        done = {r.name: r.status for r in self.records}
        missing = [n for n in needs if done.get(n) != "ok"]
        if missing:
            rec = StageRecord(name, "not run", 0.0, f"needs {', '.join(missing)}, which did not succeed")
            self.records.append(rec)
            self.log(f"[{name}] not run: {rec.note}")
            return
        self.log(f"[{name}] ...")
        t0, c0 = time.perf_counter(), time.process_time()
        tb_path = None
        try:
            note, status = fn() or "", "ok"
        except Exception as e:  # noqa: BLE001 - recorded as failed (traceback on disk); the job exits non-zero
            status = "failed"
            tb_path = self.out / "logs" / f"{name}.traceback.txt"
            tb_path.parent.mkdir(parents=True, exist_ok=True)
            tb_path.write_text(traceback.format_exc(), encoding="utf-8")
            first = (str(e).splitlines() or [""])[0]
            note = f"{type(e).__name__}: {first} (traceback: {tb_path.relative_to(self.out)})"
        rec = StageRecord(name, status, time.perf_counter() - t0, note, time.process_time() - c0, tb_path)
        self.records.append(rec)
        self.log(f"[{name}] {status} in {rec.seconds:.1f}s {note}")

    def save(self, task: str | None, result: Any) -> None:
        result.save(self.results_dir)
        (self.results[task] if task else self.shared).append(result)

    def subset(self, task: str, n: int) -> Any:
        ds = self.data[task]
        return ds.subset(range(min(n, len(ds))))


def _stage_load(job: _Job) -> str:
    from interp.models import load_model

    where = {"device_map": job.cfg.device_map} if job.cfg.device_map else {"device": job.cfg.device or None}
    job.model = load_model(job.cfg.model, dtype=job.cfg.dtype, **where)
    notes = []
    for task in job.cfg.tasks:
        job.data[task] = build_task(job.task_files[task], model=job.model, n=job.cfg.max_prompts, seed=job.cfg.seed)
        notes.append(f"{task}: {len(job.data[task])} prompts")
    return f"model {job.cfg.model}; " + ", ".join(notes)


def _stage_cache(job: _Job) -> str:
    from interp.cache import collect

    notes = []
    for task in job.cfg.tasks:
        ds = job.subset(task, job.cfg.cache.prompts)
        name = Path(task).stem if task.endswith(".jsonl") else task   # a task file: its name, never its path
        if job.engine is not None:
            from interp.distributed import collect_ray

            store = collect_ray(job.model, list(ds.clean), job.cfg.cache.sites, out=job.out / "cache" / name,
                                engine=job.engine, progress=False, overwrite=True)
        else:
            store = collect(job.model, list(ds.clean), job.cfg.cache.sites, out=job.out / "cache" / name,
                            progress=False, overwrite=True)
        notes.append(f"{task}: {len(store)} prompts x {job.cfg.cache.sites}")
    return "; ".join(notes)


def _stage_patching(job: _Job) -> str:
    c = job.cfg.patching
    notes = []
    for task in job.cfg.tasks:
        ds = job.subset(task, c.prompts)
        if c.atp or c.eap:
            from interp.patching import AttributionConfig
            from interp.patching import attribution_patching as atp
            from interp.patching import edge_attribution_patching as eap

            acfg = AttributionConfig(components=("z", "mlp_out"), direction=c.direction, metric=c.metric,
                                     ig_steps=c.ig_steps, batch_size=c.batch_size)
            if c.atp:
                job.save(task, atp(job.model, ds, acfg))
                notes.append(f"{task}: AtP {len(ds)} prompts")
            if c.eap:
                r = eap(job.model, ds, acfg)
                job.save(task, r)
                notes.append(f"{task}: {r.table['method'].iloc[0] if len(r.table) else 'eap'} {len(r.table)} edge rows")
        if c.exact:
            from interp.patching import PatchConfig
            from interp.patching import activation_patching as patch

            pcfg = PatchConfig(component="z", positions="all", direction=c.direction, metrics=(c.metric,))
            if job.engine is not None:
                from interp.distributed import activation_patching_ray

                r = activation_patching_ray(job.model, job.subset(task, c.exact_prompts), pcfg, engine=job.engine)
            else:
                r = patch(job.model, job.subset(task, c.exact_prompts), pcfg)
            job.save(task, r)
            notes.append(f"{task}: exact head patching {c.exact_prompts} prompts")
    return "; ".join(notes)


def _exact_head_patching(job: _Job, task: str) -> Any:
    """The patching stage's exact per-head ``z`` Result for ``task`` (one row per head, its metric), or None."""
    from interp.results import Result

    for r in job.results[task]:
        if r.kind == "patching.nodes" and r.name.startswith("exact-z-"):
            t = r.table
            t = t[(t["metric"] == job.cfg.patching.metric) & (t["head"] >= 0)]
            if len(t) and not t.duplicated(["layer", "head"]).any():
                return Result(r.kind, t.reset_index(drop=True), r.meta, name=r.name)
    return None


def _stage_gating(job: _Job) -> str:
    from interp.gating import CHGConfig
    from interp.gating import causal_head_gating as chg

    c = job.cfg.gating
    notes = []
    if job.engine is not None:   # [engine] kind = "ray": groups of masks on the workers (equal to the tiled run)
        from functools import partial

        from interp.distributed import causal_head_gating_ray

        chg = partial(causal_head_gating_ray, engine=job.engine)
    for task in job.cfg.tasks:
        ds = job.subset(task, c.prompts)
        r = chg(job.model, ds, config=CHGConfig(max_steps=c.steps, patience=c.patience, n_masks=c.n_masks,
                                                 batch_size=min(c.batch_size, len(ds)) or None,
                                                 micro_batch=c.micro_batch, seed=job.cfg.seed, progress=False))
        job.save(task, r)
        roles = r.table["role"].value_counts().to_dict() if "role" in r.table else {}
        stages = ", ".join(f"{k} {v['steps']} steps" + ("" if v["converged"] else " (not converged)")
                           for k, v in r.meta.extra["stages"].items())
        notes.append(f"{task}: {stages}, roles {roles}")
        if c.validate:
            from interp.gating.validate import ValidationConfig, validate_chg

            vcfg = ValidationConfig(seed=job.cfg.seed, patch_prompts=c.prompts, progress=False)
            val = validate_chg(job.model, ds, r, config=vcfg, patching=_exact_head_patching(job, task))
            job.save(task, val)
            ex = val.meta.extra
            notes.append(f"{task}: validation {ex['verdict']}, {len(ex['disagreements'])} disagreement(s)")
    return "; ".join(notes)


def _stage_sinks(job: _Job) -> str:
    from interp.datasets.base import load_prompts
    from interp.sinks import AnalysisConfig, analyze

    c = job.cfg.sinks
    domains = {d: load_prompts(path)[: c.prompts] for d, path in _sink_files(job).items()}
    rs = analyze(job.model, domains, AnalysisConfig(max_len=c.max_len, run_interventions=c.interventions))
    for r in rs:
        job.save(None, r)
    kinds = sorted({r.kind for r in rs})
    return f"{sum(len(v) for v in domains.values())} prompts in {len(domains)} domains -> {', '.join(kinds)}"


def _sink_files(job: _Job) -> dict[str, Path]:
    """The sinks stage's prompt file per domain (``<prompt_dir>/<domain>.txt``), checked to exist.

    A relative ``prompt_dir`` is looked up under ``base`` and then next to the package
    (the checkout's ``data/prompts``).

    Raises:
        DataError: a domain without a prompt file (every place looked is named).
    """
    from interp.errors import DataError

    c = job.cfg.sinks
    if not c.enabled:
        return {}
    files = {}
    for d in c.domains:
        path = Path(c.prompt_dir) / f"{d}.txt"
        candidates = [path] if path.is_absolute() else [job.base / path, Path(__file__).resolve().parents[1] / path]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise DataError(f"sinks: no prompt file for domain {d!r}; looked at {', '.join(map(str, candidates))}")
        files[d] = found
    return files


def _stage_graph(job: _Job) -> str:
    from interp.graph import CircuitGraph
    from interp.graph.builders import BUILDERS
    from interp.pipeline_circuit import edge_circuit, edge_result

    c = job.cfg.graph
    notes = []
    gdir = job.out / "graph"
    gdir.mkdir(parents=True, exist_ok=True)
    for task in job.cfg.tasks:
        g = CircuitGraph(name=task)
        for r in job.results[task] + job.shared:
            if r.kind not in BUILDERS:
                continue
            g.add_result(r, **({"top_k": c.keep_edges} if r.kind == "patching.edges" else {}))
        job.graphs[task] = g
        eap = edge_result(job.results[task])
        explorer: dict[str, Any] = {}
        if c.evaluation == "edges" and eap is not None:
            ec = edge_circuit(job, task, g, eap)
            job.edge[task] = ec
            job.save(task, ec["curve"])
            job.save(task, ec["eval"])
            circuit = ec["graph"]
            explorer = {"circuit": ec["edges"], "curve": ec["curve"].table}
            edges_file = gdir / f"{task}_circuit_edges.json"
            edges_file.write_text(json.dumps([list(e) for e in ec["edges"]]), encoding="utf-8")
            job.files.append(edges_file)
            size, ex = ec["size"], ec["curve"].meta.extra
            reached = "" if ec["reached"] is None else (" (reaches" if ec["reached"] else " (does NOT reach") + \
                f" the target {ec['target']})"
            notes.append(f"{task}: graph {len(g)} nodes / {g.nx.number_of_edges()} edges; edge-level circuit "
                         f"{size['n_edges']} edges, {size['n_heads']} heads, {size['n_mlps']} MLPs, faithfulness "
                         f"{ec['faithfulness']:.3f}{reached}; curve AUC {ex['auc']:.3f} (random "
                         f"{ex['auc_random']:.3f}), {len(ec['curve'].table)} sizes")
        else:
            if c.evaluation == "edges":
                notes.append(f"{task}: no edge Result (patching.eap = false): node-level evaluation")
            circuit = _node_circuit(job, task, g, notes)
        circuit.nx.graph["name"] = f"{task}_circuit"
        job.circuits[task] = circuit
        for fmt in c.formats:
            job.files.append(getattr(g, f"to_{fmt}")(gdir / f"{task}_graph.{fmt}"))
            job.files.append(getattr(circuit, f"to_{fmt}")(gdir / f"{task}_circuit.{fmt}"))
        job.files.append(g.to_html(job.out / f"{task}_explorer.html", **explorer))
    return "; ".join(notes)


def _node_circuit(job: _Job, task: str, g: Any, notes: list[str]) -> Any:
    """The node-level circuit (``graph.evaluation = "nodes"``): nodes of the top-k edges, heads outside it ablated."""
    from interp.graph import FaithfulnessConfig, prune, random_baseline

    c = job.cfg.graph
    has_edges = g.nx.number_of_edges() > 0
    fconfig = FaithfulnessConfig(ablate_mlps=c.ablate_mlps, ablation=c.ablation)
    top_k = c.top_k_edges
    if c.sweep_edges and has_edges:
        from interp.graph import faithfulness

        sizes = {f"top{k}_edges": prune(g, top_k_edges=k) for k in c.sweep_edges}
        sw = faithfulness(job.model, sizes, job.subset(task, c.faithfulness_prompts), config=fconfig)
        sw = dataclasses.replace(sw, name=f"{task}_size_sweep")
        job.save(task, sw)
        job.sweeps[task] = sw
        if c.faithfulness_target is not None:
            top_k = _smallest_faithful(sw.table, c.sweep_edges, c.faithfulness_target)
    circuit = prune(g, top_k_edges=top_k) if has_edges else prune(g, top_k_nodes=top_k, kinds=["head", "mlp"])
    circuit.nx.graph["name"] = f"{task}_circuit"
    fb = random_baseline(job.model, circuit, job.subset(task, c.faithfulness_prompts),
                         n_samples=c.random_samples, seed=job.cfg.seed, config=fconfig)
    fb = dataclasses.replace(fb, name=f"{task}_random_baseline")
    job.save(task, fb)
    job.faith[task] = fb
    row = fb.table.iloc[0]
    notes.append(f"{task}: graph {len(g)} nodes / {g.nx.number_of_edges()} edges; node-level circuit "
                 f"{row.n_heads} heads, {row.n_mlps} MLPs, {circuit.nx.number_of_edges()} edges, "
                 f"faithfulness {row.faithfulness:.3f}")
    return circuit


def _smallest_faithful(sweep: Any, sizes: tuple[int, ...], target: float) -> int:
    """The fewest top-k edges whose circuit reaches ``target`` faithfulness (else the largest size swept)."""
    faith = dict(zip(sweep["circuit"], sweep["faithfulness"]))
    reached = [k for k in sizes if faith.get(f"top{k}_edges", float("-inf")) >= target]
    return min(reached) if reached else max(sizes)


def _stage_figures(job: _Job) -> str:
    from interp.circuits import curve_figure
    from interp.plots import export, figure

    fdir = job.out / "figures"
    made, missing = 0, set()
    for task, circuit in job.circuits.items():
        for ext in job.cfg.graph.figures:
            job.files.append(export(circuit.figure(title=f"{task} circuit ({job.cfg.model})"),
                                    fdir / f"{task}_circuit.{ext}"))
            made += 1
    for r in [r for rs in job.results.values() for r in rs] + job.shared + job.compare:
        if r.kind == "circuits.eval":    # one number per circuit: in report.md
            continue
        try:
            fig = curve_figure(r) if r.kind == "circuits.curve" else figure(r)
        except ConfigError:  # interp.plots has no figure for this Result kind: noted; any other error fails
            missing.add(r.kind)
            continue
        for ext in job.cfg.graph.figures:
            job.files.append(export(fig, fdir / f"{r.id}.{ext}"))
            made += 1
    return f"{made} files" + (f"; no figure for: {', '.join(sorted(missing))}" if missing else "")


def _stage_compare(job: _Job) -> str:
    from interp.graph import compare, prune

    a, b = job.cfg.tasks[:2]         # PipelineConfig checks there are two
    r1 = compare(job.circuits[a], job.circuits[b])
    k = job.cfg.compare.top_k_heads
    ha = prune(job.graphs[a], top_k_nodes=k, kinds=["head"])
    hb = prune(job.graphs[b], top_k_nodes=k, kinds=["head"])
    for g in (ha, hb):
        for n in g.nodes_of("mlp") + g.nodes_of("sae") + g.nodes_of("resid"):
            g.nx.remove_node(n)
        g.nx.remove_edges_from(list(g.nx.edges))
    ha.nx.graph["name"], hb.nx.graph["name"] = f"{a}_top{k}_heads", f"{b}_top{k}_heads"
    r2 = compare(ha, hb)
    for r in (r1, r2):
        r.save(job.results_dir)
        job.compare.append(r)
    heads = r1.table.query("what == 'nodes' and cls == 'head'").iloc[0]
    top = r2.table.query("what == 'nodes' and cls == 'head'").iloc[0]
    return (f"circuit heads: Jaccard {heads.jaccard:.2f}, overlap {heads.overlap:.2f} ({heads.intersection} shared); "
            f"top-{k} heads by score: Jaccard {top.jaccard:.2f}, overlap {top.overlap:.2f}")


def run_pipeline(config: PipelineConfig, *, base: str | Path = ".", log: Callable[[str], None] = print) -> PipelineReport:
    """Run the job described by ``config``; relative paths are resolved against ``base``.

    Returns:
        :class:`PipelineReport` (``report.path`` is ``<out>/report.md``).
    """
    job = _Job(config, Path(base), log)
    _sink_files(job)                 # inputs are checked before the model loads
    job.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    evidence = tuple(n for n, on in (("patching", config.patching.enabled), ("gating", config.gating.enabled)) if on)
    from interp.distributed.config import open_engine

    with open_engine(config.engine) as job.engine:     # [engine]: cache, exact patching, gating, edge eval on Ray
        _run_stages(job, config, evidence)
    from interp.pipeline_report import write_report

    path = write_report(job, time.perf_counter() - t0)
    return PipelineReport(config, job.records, path, job.files)


def _run_stages(job: _Job, config: PipelineConfig, evidence: tuple[str, ...]) -> None:
    job.stage("load", True, lambda: _stage_load(job))
    job.stage("cache", config.cache.enabled, lambda: _stage_cache(job), needs=("load",))
    job.stage("patching", config.patching.enabled, lambda: _stage_patching(job), needs=("load",))
    job.stage("gating", config.gating.enabled, lambda: _stage_gating(job), needs=("load",))
    job.stage("sinks", config.sinks.enabled, lambda: _stage_sinks(job), needs=("load",))
    job.stage("graph", config.graph.enabled, lambda: _stage_graph(job), needs=("load", *evidence))
    job.stage("compare", config.compare.enabled, lambda: _stage_compare(job), needs=("graph",))
    job.stage("figures", config.graph.enabled, lambda: _stage_figures(job), needs=("graph",))
