"""Configuration of the pipeline (``interp run``): one frozen dataclass per stage, read from TOML.

:func:`load_config` reads a TOML file into a :class:`PipelineConfig`; unknown keys get the nearest
valid names, and every value is checked in ``__post_init__``. :mod:`interp.pipeline` runs it.

Example:
    >>> cfg = load_config("analyses/ioi_circuit.toml")
    >>> cfg.model, cfg.tasks
    ('smollm2', ('ioi',))
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interp.datasets.registry import check_task
from interp.distributed.config import EngineConfig
from interp.errors import ConfigError, nearest

__all__ = ["CacheStage", "PatchingStage", "GatingStage", "SinksStage", "GraphStage", "CompareStage",
           "PipelineConfig", "load_config"]


@dataclass(frozen=True, kw_only=True)
class CacheStage:
    """Collect activations of the task prompts into an on-disk store (``out/cache/<task>``)."""

    enabled: bool = True
    prompts: int = 8
    sites: str = "resid_post,pattern"

    def __post_init__(self) -> None:
        _positive(self, "prompts")


@dataclass(frozen=True, kw_only=True)
class PatchingStage:
    """Attribution patching (nodes), EAP/EAP-IG (edges) and optional exact head patching."""

    enabled: bool = True
    prompts: int = 16
    atp: bool = True
    eap: bool = True
    ig_steps: int = 0
    exact: bool = True
    exact_prompts: int = 8
    metric: str = "logit_diff_norm"
    direction: str = "denoising"
    batch_size: int = 16

    def __post_init__(self) -> None:
        _positive(self, "prompts", "exact_prompts", "batch_size")
        if self.ig_steps < 0:
            raise ConfigError(f"patching.ig_steps must be >= 0, got {self.ig_steps}")
        if self.direction not in ("denoising", "noising"):
            raise ConfigError(f"patching.direction must be 'denoising' or 'noising', got {self.direction!r}")


@dataclass(frozen=True, kw_only=True)
class GatingStage:
    """Causal head gating (roles of heads), validated by default.

    ``steps`` caps each stage (``CHGConfig.max_steps``); a stage stops earlier once its roles have
    been unchanged for ``patience`` steps (``CHGConfig.patience``; 0 = always run ``steps``).
    ``batch_size`` = prompts per step (0 = all of them: a deterministic gradient, so the roles can
    stop changing); ``micro_batch`` bounds the rows of one forward/backward pass. ``validate``:
    ablation of the facilitating / interfering heads vs random heads and agreement with exact head
    patching (the patching stage's exact ``z`` Result when there is one, else noising patching on
    the gating prompts); the verdict and every disagreement go to report.md.
    """

    enabled: bool = True
    prompts: int = 8
    steps: int = 60
    patience: int = 10
    n_masks: int = 1
    batch_size: int = 0
    micro_batch: int = 16
    validate: bool = True

    def __post_init__(self) -> None:
        _positive(self, "prompts", "steps", "n_masks", "micro_batch")
        if self.patience < 0 or self.batch_size < 0:
            raise ConfigError(f"gating.patience and gating.batch_size must be >= 0 (0: never stop early / every "
                              f"prompt), got {self.patience}, {self.batch_size}")


@dataclass(frozen=True, kw_only=True)
class SinksStage:
    """Attention sinks, massive activations and dormant heads on prompt files (one per domain)."""

    enabled: bool = True
    domains: tuple[str, ...] = ("prose", "code")
    prompt_dir: str = "data/prompts"
    prompts: int = 8
    max_len: int = 64
    interventions: bool = False

    def __post_init__(self) -> None:
        _positive(self, "prompts", "max_len")
        if not self.domains:
            raise ConfigError("sinks.domains is empty")


@dataclass(frozen=True, kw_only=True)
class GraphStage:
    """Circuit graph: evidence from every Result; the circuit chosen and evaluated at edge level.

    ``evaluation = "edges"`` (default, :mod:`interp.circuits`): circuits are sets of EAP edges
    ``(src, dst, dst_input)`` selected by ``selection`` (``top_n`` or EAP-IG's ``greedy``) and
    evaluated with every edge outside them patched (``edge_ablation``: the paired corrupted
    prompt's sender output, or its positional mean). The faithfulness curve runs over
    ``curve_sizes`` (empty: 0, then ``curve_points`` sizes spaced geometrically up to every scored
    edge) with ``random_samples`` random circuits and the complement at each size; the circuit is
    the smallest evaluated size reaching ``faithfulness_target`` (``refine`` extra sizes are tried
    inside the bracket found); when none does, the most faithful one, flagged in report.md.
    ``faithfulness_prompts`` clean/corrupted pairs; ``max_rows`` batch rows per pass.

    ``evaluation = "nodes"`` (the earlier, node-level evaluation): the circuit keeps the nodes of
    the ``top_k_edges`` strongest edges, or, when ``sweep_edges`` is given, the smallest of those
    sizes reaching ``faithfulness_target``; heads outside it are ablated (``ablation``: mean or paired;
    MLPs too with ``ablate_mlps``).
    """

    enabled: bool = True
    evaluation: str = "edges"
    keep_edges: int = 2000
    faithfulness_prompts: int = 16
    random_samples: int = 3
    faithfulness_target: float | None = 0.8
    # edge level
    selection: str = "top_n"
    curve_sizes: tuple[int, ...] = ()
    curve_points: int = 12
    refine: int = 8
    edge_ablation: str = "patching"
    max_rows: int = 64
    # node level
    top_k_edges: int = 100
    sweep_edges: tuple[int, ...] = ()
    ablation: str = "mean"
    ablate_mlps: bool = False
    formats: tuple[str, ...] = ("json", "graphml", "gexf")
    figures: tuple[str, ...] = ("pdf", "svg")

    def __post_init__(self) -> None:
        _positive(self, "keep_edges", "top_k_edges", "faithfulness_prompts", "max_rows")
        if self.evaluation not in ("edges", "nodes"):
            raise ConfigError(f"graph.evaluation must be 'edges' or 'nodes', got {self.evaluation!r}")
        if self.selection not in ("top_n", "greedy"):
            raise ConfigError(f"graph.selection must be 'top_n' or 'greedy', got {self.selection!r}")
        if self.edge_ablation not in ("patching", "mean"):
            raise ConfigError(f"graph.edge_ablation must be 'patching' or 'mean', got {self.edge_ablation!r}")
        if any(n < 0 for n in self.curve_sizes) or self.curve_points < 2 or self.refine < 0 or self.random_samples < 0:
            raise ConfigError(f"graph: curve_sizes must be >= 0, curve_points >= 2, refine and random_samples >= 0; "
                              f"got {self.curve_sizes}, {self.curve_points}, {self.refine}, {self.random_samples}")
        if self.ablation not in ("mean", "paired"):
            raise ConfigError(f"graph.ablation must be 'mean' or 'paired', got {self.ablation!r}")
        bad = [f for f in self.formats if f not in ("json", "graphml", "gexf")]
        bad += [f for f in self.figures if f not in ("pdf", "svg", "png", "html")]
        if bad:
            raise ConfigError(f"graph: unknown format(s) {bad}; formats json/graphml/gexf, figures pdf/svg/png/html")


@dataclass(frozen=True, kw_only=True)
class CompareStage:
    """Compare the circuits of the first two tasks (node/edge Jaccard and overlap, per class)."""

    enabled: bool = True
    top_k_heads: int = 30

    def __post_init__(self) -> None:
        _positive(self, "top_k_heads")


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """The whole job: model, tasks, output folder and one config per stage."""

    name: str = "ioi_circuit"
    model: str = "smollm2"
    tasks: tuple[str, ...] = ("ioi",)
    out: str = "out/ioi_circuit"
    seed: int = 0
    device: str = ""            # "" = CUDA when present, else CPU; cpu, cuda, cuda:N, mps (interp.devices)
    dtype: str = "float32"      # model dtype: float32, bfloat16, float16, float64
    device_map: str = ""        # instead of device: auto, balanced, ... (CUDA) or JSON module -> device
    cache: CacheStage = field(default_factory=CacheStage)
    patching: PatchingStage = field(default_factory=PatchingStage)
    gating: GatingStage = field(default_factory=GatingStage)
    sinks: SinksStage = field(default_factory=SinksStage)
    graph: GraphStage = field(default_factory=GraphStage)
    compare: CompareStage = field(default_factory=lambda: CompareStage(enabled=False))
    engine: EngineConfig = field(default_factory=EngineConfig)   # [engine] kind = "ray", workers, address

    def __post_init__(self) -> None:
        from interp.devices import resolve_dtype

        resolve_dtype(self.dtype, arg="dtype")      # the device is checked where the job starts (it may differ here)
        if not self.tasks:
            raise ConfigError("tasks is empty; e.g. tasks = [\"ioi\"]")
        for t in self.tasks:            # the one task registry: unknown names get the nearest
            if not _is_path(t):         # a task file is checked by :meth:`task_path` against the job's base
                check_task(t, "tasks")
        if self.compare.enabled and len(self.tasks) < 2:
            raise ConfigError(f"[compare] needs two tasks, got tasks = {list(self.tasks)}; add a task or set "
                              "compare.enabled = false")

    def task_path(self, task: str, base: str | Path = ".") -> str:
        """``task`` as :func:`~interp.datasets.registry.build_task` takes it: a registered name as is, a task
        file resolved against ``base`` (the folder relative paths of the job are resolved against) and checked.

        Raises:
            ConfigError: an unknown task name.
            DataError: a task file that is missing or malformed (named with ``base`` applied).
        """
        if not _is_path(task) or Path(task).is_absolute():
            return check_task(task, "tasks")
        return check_task(str(Path(base) / task), "tasks")

    @property
    def max_prompts(self) -> int:
        """Prompts built per task: the most any enabled stage uses."""
        p = self.patching
        used = [(p.enabled, p.prompts), (p.enabled and p.exact, p.exact_prompts), (self.gating.enabled,
                self.gating.prompts), (self.cache.enabled, self.cache.prompts),
                (self.graph.enabled, self.graph.faithfulness_prompts)]
        return max([n for on, n in used if on], default=1)


def _is_path(task: Any) -> bool:
    """A task given as a file (a ``.jsonl``/``.json`` name or a path with a folder), not a registered name."""
    return isinstance(task, str) and (Path(task).suffix in (".jsonl", ".json") or "/" in task or "\\" in task)


def _positive(cfg: Any, *names: str) -> None:
    for n in names:
        if getattr(cfg, n) < 1:
            raise ConfigError(f"{type(cfg).__name__}.{n} must be >= 1, got {getattr(cfg, n)}")


_SECTIONS = {"cache": CacheStage, "patching": PatchingStage, "gating": GatingStage, "sinks": SinksStage,
             "graph": GraphStage, "compare": CompareStage, "engine": EngineConfig}


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    kw = {}
    for k, v in data.items():
        if k == "threads" and cls is PipelineConfig:
            raise ConfigError(f"{where}: 'threads' is not a config key (the library never sets thread counts); "
                              "run `interp --threads N run CONFIG` instead")
        if k not in names:
            raise ConfigError(f"{where}: unknown key {k!r}.{nearest(k, names)} Known: {', '.join(names)}")
        kw[k] = tuple(v) if isinstance(v, list) else v
    return cls(**kw)


def load_config(path: str | Path) -> PipelineConfig:
    """Read a pipeline TOML file (top-level keys plus ``[cache]``, ``[patching]`` ... tables).

    Raises:
        ConfigError: unknown keys (nearest suggested), bad values, unreadable TOML.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"no config file {path}")
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; expected a TOML config file")
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason})") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from e
    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    sections = {k: _build(_SECTIONS[k], v, f"{path} [{k}]") for k, v in data.items() if isinstance(v, dict)
                and k in _SECTIONS}
    unknown = [k for k, v in data.items() if isinstance(v, dict) and k not in _SECTIONS]
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}.{nearest(unknown[0], _SECTIONS)}")
    if "compare" in sections and "enabled" not in data["compare"]:
        sections["compare"] = dataclasses.replace(sections["compare"], enabled=True)
    return _build(PipelineConfig, {**top, **sections}, str(path))
