"""Ablations as scoped hook contexts: zero, mean and resample ablation of heads, MLPs, positions.

An :class:`Ablation` says *what* to remove (sites: one head's ``z``, a layer's
``mlp_out``, any other site), *how* (``"zero"``, ``"mean"`` over a reference
distribution, ``"resample"`` from other prompts, seeded) and optionally *where*
(positions; default every position). :func:`ablating` applies a list of them for the
duration of a block; :func:`evaluate` runs a metric under them; :func:`ablation_table`
evaluates several named ablation sets into one ``gating.ablation`` Result.

Positions index axis 1 of the site's activation after head selection (the ``pos`` /
``query_pos`` axis), as absolute token positions of the right-padded batch.

Mean ablation averages the site over every real (non-padding) token of the reference
prompts (``by_position=False``, works for prompts of any lengths), or per position
over the reference prompts that reach that position (``by_position=True``).

Example:
    >>> from interp import load_model, tokenize, Site
    >>> from interp.gating import Ablation, ablating
    >>> model = load_model("toy:llama")
    >>> batch = tokenize(model, ["Hello world", "Hi there"])
    >>> heads = Ablation(sites=(Site("z", 1, 0), Site("z", 1, 2)), method="mean", reference=batch)
    >>> with ablating(model, [heads]):
    ...     logits = model(batch.tokens)
    >>> logits.shape                             # [batch, pos, d_vocab]
    torch.Size([2, 12, 259])
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.errors import ConfigError, DataError, ShapeError
from interp.sites import Site

__all__ = ["Ablation", "ablating", "mean_values", "resample_indices", "evaluate", "ablation_table",
           "head_sites", "logit_diff", "answer_logprob", "default_metric", "Metric"]

METHODS = ("zero", "mean", "resample")

#: ``metric(logits_at_last_token [batch, d_vocab], task_batch) -> [batch]`` per-prompt values.
Metric = Callable[[torch.Tensor, Any], torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class Ablation:
    """One ablation: sites, method, positions and reference prompts.

    Attributes:
        sites: Sites (or strings such as ``"z.3.1"``, ``"mlp_out.4"``) to ablate.
        method: ``"zero"``, ``"mean"`` (over ``reference``) or ``"resample"`` (each prompt
            takes the activations of another prompt of ``reference``, drawn with ``seed``).
        positions: token positions to ablate (axis 1 after head selection); ``None`` = all.
        reference: a :class:`~interp.models.TokenBatch` of reference prompts; ``None`` = the
            evaluated batch itself (resample then draws *other* prompts of that batch).
        by_position: mean per position instead of over all real tokens.
        seed: seed of the resample draw (a private ``torch.Generator``).
        means: precomputed mean values ``{site: tensor}`` (from :func:`mean_values`) for
            ``method="mean"``: no reference forward pass (sites missing from it are computed).
    """

    sites: tuple[Site, ...]
    method: str = "zero"
    positions: tuple[int, ...] | None = None
    reference: Any = field(default=None, compare=False, repr=False)
    by_position: bool = False
    seed: int = 0
    means: Mapping[Site, torch.Tensor] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        sites = (self.sites,) if isinstance(self.sites, (Site, str)) else tuple(self.sites)
        object.__setattr__(self, "sites", tuple(s if isinstance(s, Site) else Site.parse(s) for s in sites))
        if not self.sites:
            raise ConfigError("Ablation needs at least one site")
        if self.method not in METHODS:
            raise ConfigError(f"ablation method must be one of {METHODS}, got {self.method!r}")
        if self.positions is not None:
            pos = tuple(int(p) for p in self.positions)
            if not pos or min(pos) < 0:
                raise ConfigError(f"positions must be a non-empty tuple of indices >= 0, got {self.positions!r}")
            object.__setattr__(self, "positions", pos)
        for s in self.sites:
            if s.component == "pattern" and s.head is None:
                raise ConfigError(f"site {s}: ablate attention patterns per head (e.g. 'pattern.{s.layer}.0')")
        if self.reference is not None and not hasattr(self.reference, "tokens"):
            raise ConfigError(f"reference must be a TokenBatch (interp.tokenize), got {type(self.reference).__name__}")


def head_sites(heads: Sequence[tuple[int, int]]) -> tuple[Site, ...]:
    """``[(layer, head), ...]`` -> ``z`` Sites of those heads."""
    return tuple(Site("z", int(layer), int(head)) for layer, head in heads)


def _tokens_of(batch: Any) -> Any:
    """TokenBatch of a TaskBatch (its clean prompts) or of a TokenBatch."""
    return batch.clean if hasattr(batch, "clean") else batch


def mean_values(model: Any, reference: Any, sites: Sequence[Site], *, by_position: bool = False
                ) -> dict[Site, Float[Tensor, "..."]]:
    """Mean activation of each site over the real tokens of ``reference`` prompts.

    Args:
        reference: TokenBatch.
        by_position: ``[pos, ...]`` means per position (over prompts that reach it) instead of
            one mean over all real tokens.

    Returns:
        ``{site: tensor}`` shaped like the site's region without batch (and pos) axes:
        ``[d_head]`` for a head of ``z``, ``[d_model]`` for ``mlp_out``, ``[pos, ...]`` by position.
    """
    from interp.hooks import run_capture

    sites = list(sites)
    with torch.inference_mode():
        acts = run_capture(model, reference.tokens, sites, clone=True)
    mask = reference.mask.to(next(iter(acts.values())).device)
    out: dict[Site, torch.Tensor] = {}
    for s in sites:
        a = acts[s].float()
        m = mask.reshape(mask.shape + (1,) * (a.dim() - 2)).to(a.dtype)
        if by_position:
            out[s] = ((a * m).sum(0) / m.sum(0).clamp(min=1)).to(acts[s].dtype)
        else:
            out[s] = ((a * m).sum((0, 1)) / m.sum((0, 1)).clamp(min=1)).to(acts[s].dtype)
    return out


def resample_indices(batch_size: int, n_reference: int, *, seed: int, exclude_self: bool) -> Int[Tensor, " batch"]:
    """Seeded draw of a reference prompt per batch row; ``exclude_self`` never draws row ``b`` for ``b``.

    Returns:
        ``[batch]`` int64 indices into the reference prompts.
    """
    gen = torch.Generator().manual_seed(int(seed))
    if exclude_self:
        if n_reference < 2 or batch_size > n_reference:
            raise DataError(f"resample ablation from the batch itself needs >= 2 prompts and a batch no larger "
                            f"than the reference; got batch {batch_size}, reference {n_reference}")
        shift = torch.randint(1, n_reference, (batch_size,), generator=gen)
        return (torch.arange(batch_size) + shift) % n_reference
    return torch.randint(0, n_reference, (batch_size,), generator=gen)


def _region_values(model: Any, ab: Ablation, tokens_batch: Any) -> dict[Site, Any]:
    """Per site: a scalar 0, a mean tensor, or a full [batch, pos, ...] resampled tensor."""
    if ab.method == "zero":
        return {s: 0.0 for s in ab.sites}
    reference = ab.reference if ab.reference is not None else tokens_batch
    if reference is None and not (ab.method == "mean" and ab.means and all(s in ab.means for s in ab.sites)):
        raise ConfigError(f"{ab.method} ablation without a reference needs the evaluated batch "
                          "(pass tokens= to ablating, or a reference TokenBatch)")
    if ab.method == "mean":
        given = dict(ab.means or {})
        missing = [s for s in ab.sites if s not in given]
        if missing:
            given |= mean_values(model, reference, missing, by_position=ab.by_position)
        return {s: given[s] for s in ab.sites}
    # resample
    from interp.hooks import run_capture

    with torch.inference_mode():
        acts = run_capture(model, reference.tokens, list(ab.sites), clone=True)
    if tokens_batch is None:
        raise ConfigError("resample ablation needs the evaluated batch (pass tokens= to ablating)")
    n_batch = len(tokens_batch)
    idx = resample_indices(n_batch, len(reference), seed=ab.seed, exclude_self=ab.reference is None)
    return {s: acts[s][idx.to(acts[s].device)] for s in ab.sites}


def _intervention(site: Site, value: Any, positions: tuple[int, ...] | None, per_position: bool,
                  per_row: bool) -> Any:
    """The :mod:`interp.engine` ``ablate`` intervention writing ``value`` into the site's region.

    ``value``: a scalar, a mean broadcast over batch and positions, a per-position mean
    ``[pos, ...]`` (``per_position``), or (``per_row``) resampled activations ``[batch, pos_ref, ...]``;
    with ``positions`` the per-position and per-row values are taken at those positions.
    """
    from interp.engine import Intervention

    if isinstance(value, torch.Tensor) and positions is not None and (per_position or per_row):
        axis = 1 if per_row else 0
        if max(positions) >= value.shape[axis]:
            raise ShapeError(f"{site}: position {max(positions)} out of range for {value.shape[axis]} positions")
        value = value.index_select(axis, torch.tensor(positions, device=value.device))
    return Intervention("ablate", site, value, positions=positions)


@contextlib.contextmanager
def ablating(model: Any, ablations: Sequence[Ablation], *, tokens: Any = None) -> Iterator[None]:
    """Apply ablations for the duration of the block (hooks removed also on errors).

    Mean and resample values are computed on entry (one reference forward pass per
    ablation that needs it).

    Args:
        ablations: :class:`Ablation` list; applied in order (a later one overrides an earlier
            one at the same site).
        tokens: the TokenBatch that will be run; needed only by ablations without a reference.
    """
    from interp.engine import intervening

    if isinstance(ablations, Ablation):
        ablations = [ablations]
    tokens = _tokens_of(tokens) if tokens is not None else None
    interventions = []
    for ab in ablations:
        values = _region_values(model, ab, tokens)
        per_position = ab.by_position and ab.method == "mean"
        if per_position and tokens is not None:
            width = tokens.tokens.shape[1]
            for s, v in values.items():
                if v.shape[0] < width:
                    raise ShapeError(f"{s}: per-position means cover {v.shape[0]} positions, the batch has {width}")
                values[s] = v[:width]
        for s in ab.sites:
            interventions.append(_intervention(s, values[s], ab.positions, per_position, ab.method == "resample"))
    with intervening(model, interventions):
        yield


# ---------------------------------------------------------------- metrics and evaluation

def _last_logits(model: Any, tokens: Any) -> torch.Tensor:
    from interp.metrics import at_positions

    return at_positions(model(tokens.tokens), tokens.last)


def batch_metric(name: str, *, counterfactual: bool) -> Metric:
    """The :mod:`interp.metrics` function ``name`` as ``fn(logits, batch) -> [batch]`` over a gating batch's
    answer (and counterfactual) ids: the adapter gating's ``evaluate`` takes; no metric is computed here."""
    from interp import metrics

    fn = getattr(metrics, name)

    def on_batch(logits: Float[Tensor, "batch pos d_vocab"], batch: Any) -> Float[Tensor, " batch"]:
        if batch.answer_ids is None or (counterfactual and batch.counter_ids is None):
            raise DataError(f"{name} needs answers{' and counterfactuals' if counterfactual else ''} in the dataset")
        ids = (batch.answer_ids, batch.counter_ids) if counterfactual else (batch.answer_ids,)
        return fn(logits, *ids)

    on_batch.__name__ = on_batch.__qualname__ = name
    return on_batch


#: ``logit[answer] - logit[counterfactual]`` per prompt (``[batch]``), from :func:`interp.metrics.logit_diff`.
logit_diff = batch_metric("logit_diff", counterfactual=True)
#: ``log p(answer)`` at the last token per prompt (``[batch]``), from :func:`interp.metrics.logprob`.
answer_logprob = batch_metric("logprob", counterfactual=False)


def default_metric(batch: Any) -> tuple[str, Metric]:
    """Logit difference when the batch has counterfactuals, else answer log-prob."""
    if getattr(batch, "counter_ids", None) is not None:
        return "logit_diff", logit_diff
    return "answer_logprob", answer_logprob


def evaluate(model: Any, batch: Any, metric: Metric, ablations: Sequence[Ablation] = ()) -> float:
    """Mean of ``metric`` over the clean prompts of ``batch`` under ``ablations``.

    Args:
        batch: a :class:`~interp.datasets.TaskBatch` (its clean prompts are run).
        metric: ``fn(last_token_logits [batch, d_vocab], batch) -> [batch]``.
        ablations: applied for this run only.

    Example:
        >>> from interp.datasets import TaskDataset
        >>> ds = TaskDataset("demo", clean=("ab cd x", "ef gh y"), answers=("y", "z"),
        ...                  counterfactuals=("z", "y"))
        >>> batch = ds.tokenize(model)
        >>> round(evaluate(model, batch, logit_diff), 4)
        -0.1702
        >>> round(evaluate(model, batch, logit_diff, [Ablation(sites=("z.1.0",))]), 4)
        -0.1418
    """
    with torch.inference_mode(), ablating(model, list(ablations), tokens=batch.clean):
        return float(metric(_last_logits(model, batch.clean), batch).float().mean())


def ablation_table(model: Any, batch: Any, ablation_sets: Mapping[str, Sequence[Ablation]], *,
                   metric: Metric | None = None, metric_name: str = "", dataset: str = "") -> Any:
    """Evaluate named ablation sets into a ``gating.ablation`` Result.

    Columns: ``name, method, n_sites, sites, metric, metric_value, clean_value, delta``.
    """
    import pandas as pd

    from interp.results import Result, run_meta

    from interp.arch import require_arch

    require_arch(model, method="ablation table (last-token metrics)", causal=True)
    if metric is None:
        metric_name, metric = default_metric(batch)
    clean = evaluate(model, batch, metric)
    rows = []
    for name, abls in ablation_sets.items():
        v = evaluate(model, batch, metric, abls)
        sites = [str(s) for ab in abls for s in ab.sites]
        rows.append({"name": name, "method": ",".join(sorted({ab.method for ab in abls})), "n_sites": len(sites),
                     "sites": " ".join(sites), "metric": metric_name or getattr(metric, "__name__", "metric"),
                     "metric_value": v, "clean_value": clean, "delta": v - clean})
    meta = run_meta(model, dataset=dataset or batch.dataset.name, data=list(batch.dataset.clean))
    return Result("gating.ablation", pd.DataFrame(rows), meta)
