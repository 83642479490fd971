"""All sink measurements in one streaming pass (what ``interp sinks`` runs).

Example:
    >>> from interp.models import load_model
    >>> from interp.sinks import analyze, AnalysisConfig
    >>> results = analyze(load_model("toy:llama"), {"prose": ["Hi there, you."]})
    >>> [r.kind for r in results]
    ['sinks.heads', 'sinks.layers', 'sinks.model', 'massive.layers', 'massive.dims', 'sinks.secondary', 'sinks.drain', 'sinks.peak', 'sinks.dormancy']

    (Too little text for the interventions: they need held-out windows of ``window`` tokens.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from interp.arch import arch_facts
from interp.errors import ConfigError, DataError
from interp.results import Result, run_meta
from interp.sinks._stream import prepare, stream
from interp.sinks.dormant import DormancyConfig, DrainReducer, OutputNormReducer, dormancy_table, drain_results
from interp.sinks.interventions import InterventionConfig, interventions
from interp.sinks.massive import MassiveConfig, MassiveReducer, massive_results
from interp.sinks.secondary import SecondaryConfig, SecondaryReducer, secondary_results
from interp.sinks.stats import SinkConfig, SinkReducer, sink_results

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["AnalysisConfig", "analyze"]


@dataclass(frozen=True, kw_only=True)
class AnalysisConfig:
    """Settings of :func:`analyze`: one config per measurement, plus the pass's own.

    Attributes:
        max_len: tokens per prompt of the shared pass (overrides the parts' ``max_len``;
            Gu et al.'s T = 64 by default).
        batch_size: prompts per forward pass.
        run_interventions: also run ACT and massive zero / mean (extra forward passes).
        holdout: fraction of each domain's prompts kept out for the intervention losses.
    """

    sinks: SinkConfig = field(default_factory=SinkConfig)
    massive: MassiveConfig = field(default_factory=MassiveConfig)
    secondary: SecondaryConfig = field(default_factory=SecondaryConfig)
    dormancy: DormancyConfig = field(default_factory=DormancyConfig)
    interventions: InterventionConfig = field(default_factory=InterventionConfig)
    max_len: int | None = 64
    batch_size: int = 8
    run_interventions: bool = True
    holdout: float = 0.5

    def __post_init__(self) -> None:
        if self.max_len is not None and self.max_len < 2:
            raise ConfigError(f"max_len must be >= 2 or None, got {self.max_len}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 < self.holdout < 1.0:
            raise ConfigError(f"holdout must be in (0, 1), got {self.holdout}")


def analyze(model: Model, domains: Mapping[str, Sequence[str]] | Sequence[str], config: AnalysisConfig = AnalysisConfig(),
            *, progress: bool = False) -> list[Result]:
    """Sink scores, massive activations, secondary sinks, drain/peak, dormancy, interventions.

    Args:
        model: a model from :func:`interp.load_model`.
        domains: ``{domain: prompts}`` or one list of prompts (one domain ``"all"``).
            Dormancy needs two or more domains to find switching heads.
        config: :class:`AnalysisConfig`.

    Returns:
        Results of kinds ``sinks.heads``, ``sinks.layers``, ``sinks.model``,
        ``massive.layers``, ``massive.dims``, ``sinks.secondary``, ``sinks.drain``,
        ``sinks.peak``, ``sinks.dormancy`` and (if asked and there is enough text)
        ``sinks.interventions``. Tables are empty but valid when no prompt has two tokens.

    Raises:
        DataError: no prompts; a prompt longer than the model's context (named).
    """
    if not isinstance(domains, Mapping):
        domains = {"all": list(domains)}
    prompts = [p for ps in domains.values() for p in ps]
    if not prompts:
        raise DataError("analyze: no prompts given")
    cfg = model.cfg
    batch, kept = prepare(model, prompts, config.max_len)
    width = max(batch.tokens.shape[1], 1)
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    sinks = SinkReducer(len(batch), cfg.n_layers, cfg.n_heads, width, config.sinks.min_queries,
                        causal=arch_facts(model).causal)
    massive = MassiveReducer(len(batch), cfg.n_layers, config.massive.top_k)
    secondary = SecondaryReducer(len(batch), cfg.n_layers, width, config.secondary.norm_factor)
    drain = DrainReducer(len(batch), cfg.n_layers, n_kv)
    outs = OutputNormReducer(model, len(batch))
    stream(model, batch, [sinks, massive, secondary, drain, outs], batch_size=config.batch_size, progress=progress,
           desc="sinks")
    meta = run_meta(model, dataset="+".join(domains), data=batch.tokens, config=config, prompts_kept=len(kept),
                    n_prompts=len(prompts))
    results = [*sink_results(sinks, config.sinks.eps, meta), *massive_results(massive, model, config.massive, meta),
               secondary_results(secondary, model, config.secondary, meta), *drain_results(drain, cfg.n_heads, meta)]
    # Dormancy per domain from the same pass: group the kept prompts by their domain.
    owner = [name for name, ps in domains.items() for _ in ps]
    means = {}
    for name in domains:
        rows = [i for i, k in enumerate(kept) if owner[k] == name]
        if rows:
            means[name] = (sinks.sink_mass[rows].mean(0), outs.out[rows].mean(0))
    results.append(Result("sinks.dormancy", dormancy_table(means, config.dormancy.switch_gap), meta))
    if config.run_interventions and len(batch):
        calib, held = [], []
        for ps in domains.values():
            cut = max(1, round(len(ps) * (1 - config.holdout)))
            calib += list(ps[:cut])
            held += list(ps[cut:]) or list(ps[:cut])
        try:
            by_kind = {r.kind: r for r in results}
            results.append(interventions(model, calib, held, by_kind["sinks.heads"].table,
                                         by_kind["massive.dims"].table, config.interventions))
        except DataError as e:
            import warnings

            warnings.warn(f"interventions skipped: {e}", stacklevel=2)
    return results
