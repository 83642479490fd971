"""Validation of CHG: ablate labelled heads vs random heads; agreement with exact head patching.

* facilitating heads ablated together must hurt the task more than the same number of
  random heads (drawn from the other heads, ``n_random`` seeded draws: mean and std);
* interfering heads ablated together should not hurt (ideally help);
* Spearman correlation between CHG scores and exact head patching (noising: each head's
  ``z``, at every position, taken from the corrupted prompt in the clean run);
* disagreements, never silent: a head among the strongest by exact patching (``|effect|`` at
  or above the ``strong_quantile`` of all heads) whose effect says it *supports* the answer
  (noising: negative effect, the metric drops when it is corrupted) but is labelled
  *interfering*, or one that *opposes* the answer but is labelled *facilitating*;
* a verdict (``meta.extra["verdict"]``: ``"pass"`` or ``"fail"``, with the failed checks in
  ``meta.extra["verdict_reasons"]``): facilitating heads hurt more than random sets, ablating
  interfering heads does not hurt, CHG scores and patching agree in sign (Spearman > 0,
  p < 0.05), and no disagreement. :func:`summary_lines` renders it for the CLI and report.md.

Which metric the agreement uses (since 30 Nov 2026): the one the CHG fit optimised, the answer's
log-probability (``gating.chg`` ``meta.extra["metric"]``, :data:`interp.gating.chg.FIT_METRIC`;
``ValidationConfig(agreement_metric="fit")``). Why: a role is a claim about CHG's objective (opening
a facilitating head raises the answer's log-prob, an interfering head lowers it). Exact patching
with another metric tests a different claim: a head that raises the answer's logit *and* the
counterfactual's logit more lowers the logit difference while it raises the log-prob, so a
logit-difference check would count it as a role error although the role is right for the
objective it describes. Patching with the logit difference (answer minus counterfactual) is
still computed when the dataset has counterfactuals and reported beside it
(``meta.extra["secondary_agreement"]``: its metric, Spearman and p, its disagreements; a
labelled secondary line of :func:`summary_lines` and report.md), but it is not part of the
verdict. ``ValidationConfig(agreement_metric="logit_diff")`` restores the earlier check (the
verdict on the logit difference, the log-prob agreement reported beside it). The ablation rows
(facilitating / interfering vs random heads) are unchanged: they use the task metric of
:func:`interp.gating.ablation.default_metric` (the logit difference when the dataset has
counterfactuals).

:func:`patching_for` uses :func:`interp.patching.activation_patching` for the logit difference
when the dataset has counterfactuals; otherwise (and for the answer's log-prob, which that
module does not offer) :func:`head_patching` here, which runs any metric on the same engine
(:mod:`interp.engine`, one pass per layer with a world per head). Both: noising, every position.

Example:
    >>> from interp.datasets import TaskDataset
    >>> from interp.gating import CHGConfig, causal_head_gating, validate_chg
    >>> ds = TaskDataset("abc", clean=("abcabc", "xyzxyz"), answers=("a", "x"))
    >>> chg = causal_head_gating(model, ds, config=CHGConfig(steps=20, n_masks=2))
    >>> val = validate_chg(model, ds, chg)
    >>> val.table[["what", "n_heads", "metric"]].values.tolist()
    [['clean', 0, 'answer_logprob'], ['facilitating', 0, 'answer_logprob'], ['interfering', 0, 'answer_logprob']]
    >>> val.meta.extra["verdict"]                 # the random toy model has no heads for this task
    'fail'
    >>> for reason in val.meta.extra["verdict_reasons"]:
    ...     print(reason)
    no head labelled facilitating
    no exact patching (the dataset has no corrupted prompts): agreement not checked
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from interp.errors import ConfigError, DataError
from interp.gating.ablation import Ablation, answer_logprob, default_metric, evaluate, head_sites, logit_diff
from interp.nodes import node_id
from interp.sites import Site

__all__ = ["ValidationConfig", "validate_chg", "head_patching", "patching_for", "random_head_draws",
           "disagreements", "summary_lines", "agreement_lines", "agreement_metric", "AGREEMENT_METRICS"]

#: Metrics exact head patching can use for the agreement, by name (``gating.head_patching``'s ``metric``).
AGREEMENT_METRICS = {"answer_logprob": answer_logprob, "logit_diff": logit_diff}


@dataclass(frozen=True, kw_only=True)
class ValidationConfig:
    """Settings of :func:`validate_chg`.

    Attributes:
        n_random: random head sets drawn per comparison.
        seed: seed of the draws (private generator).
        method: ablation method (``"mean"``, ``"zero"``, ``"resample"``).
        reference: prompts defining mean / resample values: ``"corrupted"`` (when the dataset
            has them, else clean) or ``"clean"``.
        patching: also compute exact head patching and the Spearman agreement.
        patch_prompts: prompts used by head patching (first ``patch_prompts``; ``None`` = all).
        strong_quantile: [U] a head is *strong* by exact patching when its ``|effect|`` is at or
            above this quantile of all heads' ``|effect|`` (0.9: the top decile). A strong head
            labelled against the sign of its effect is a disagreement.
        max_frac_random_lower: [U] the facilitating heads pass when at most this share of the
            random head sets hurt as much (metric at or below theirs).
        agreement_metric: metric of the exact patching the verdict's agreement uses: ``"fit"`` (the
            metric the CHG fit optimised, its Result's ``meta.extra["metric"]``: ``answer_logprob``),
            ``"answer_logprob"`` or ``"logit_diff"`` (the check before 30 Nov 2026).
        secondary_metric: also patch with this metric and report its agreement beside the verdict
            (not in it); ``None``, or the agreement metric itself, = no second comparison. Skipped
            for ``logit_diff`` when the dataset has no counterfactuals.
        progress: tqdm bars.
    """

    n_random: int = 10
    seed: int = 0
    method: str = "mean"
    reference: str = "corrupted"
    patching: bool = True
    patch_prompts: int | None = None
    strong_quantile: float = 0.9
    max_frac_random_lower: float = 0.1
    agreement_metric: str = "fit"
    secondary_metric: str | None = "logit_diff"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.n_random < 2:
            raise ConfigError(f"n_random must be >= 2 (a spread needs two draws), got {self.n_random}")
        if self.method not in ("mean", "zero", "resample"):
            raise ConfigError(f"method must be 'mean', 'zero' or 'resample', got {self.method!r}")
        if self.reference not in ("corrupted", "clean"):
            raise ConfigError(f"reference must be 'corrupted' or 'clean', got {self.reference!r}")
        if self.patch_prompts is not None and self.patch_prompts < 1:
            raise ConfigError(f"patch_prompts must be >= 1 or None, got {self.patch_prompts}")
        if self.agreement_metric != "fit" and self.agreement_metric not in AGREEMENT_METRICS:
            raise ConfigError(f"agreement_metric must be 'fit' or one of {sorted(AGREEMENT_METRICS)}, "
                              f"got {self.agreement_metric!r}")
        if self.secondary_metric is not None and self.secondary_metric not in AGREEMENT_METRICS:
            raise ConfigError(f"secondary_metric must be None or one of {sorted(AGREEMENT_METRICS)}, "
                              f"got {self.secondary_metric!r}")
        for name in ("strong_quantile", "max_frac_random_lower"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must lie in [0, 1), got {getattr(self, name)}")


def random_head_draws(pool: list[tuple[int, int]], k: int, n: int, *, seed: int) -> list[list[tuple[int, int]]]:
    """``n`` seeded draws of ``k`` distinct heads from ``pool``."""
    if k > len(pool):
        raise DataError(f"cannot draw {k} heads from a pool of {len(pool)}")
    gen = torch.Generator().manual_seed(int(seed))
    return [[pool[i] for i in torch.randperm(len(pool), generator=gen)[:k].tolist()] for _ in range(n)]


def _tiled_head_patch(model: Any, batch: Any, metric: Any, progress: bool) -> torch.Tensor:
    """Exact noising of every head: ``[n_layers, n_heads]`` mean metric with that head's z from corrupted.

    One :mod:`interp.engine` world per head (rows enter at the head's layer), one pass per layer.
    """
    from tqdm.auto import tqdm

    from interp.engine import Intervention, World, run
    from interp.hooks import run_capture

    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    out = torch.zeros(n_layers, n_heads)
    with torch.inference_mode():
        corr = run_capture(model, batch.corrupted.tokens, [Site("z", layer) for layer in range(n_layers)],
                           clone=True, stop_early=False)
        for layer in tqdm(range(n_layers), desc="head patching", disable=not progress, leave=False):
            worlds = [World((Intervention("restore", Site("z", layer, h), corr[Site("z", layer)]),), enter=layer)
                      for h in range(n_heads)]
            logits = run(model, batch.clean.tokens, worlds, positions=batch.clean.last).worlds
            out[layer] = torch.stack([metric(lg, batch).float().mean() for lg in logits]).cpu()
    return out


def head_patching(model: Any, dataset: Any, *, metric: Any = None, metric_name: str = "",
                  n_prompts: int | None = None, progress: bool = True) -> Any:
    """Exact head patching (noising: corrupted ``z`` of one head, all positions, into the clean run).

    Returns:
        ``gating.head_patching`` Result: ``layer, head, node, metric_value, clean_value,
        corrupted_value, effect`` (patched - clean), ``normalized`` ((patched - corr) / (clean - corr)).

    Raises:
        DataError: a dataset without corrupted prompts or answers.
    """
    import pandas as pd

    from interp.nodes import node_id
    from interp.results import Result, run_meta

    if not dataset.corrupted or not dataset.answers:
        raise DataError(f"head patching needs corrupted prompts and answers; dataset {dataset.name!r} lacks them")
    if n_prompts is not None and n_prompts < len(dataset):
        dataset = dataset.subset(slice(0, n_prompts))
    batch = dataset.tokenize(model, same_length=True)
    if metric is None:
        metric_name, metric = default_metric(batch)
    clean = evaluate(model, batch, metric)
    corrupted_batch = type(batch)(batch.corrupted, batch.clean, batch.answer_ids, batch.counter_ids, batch.dataset)
    corrupted = evaluate(model, corrupted_batch, metric)
    grid = _tiled_head_patch(model, batch, metric, progress)
    denom = clean - corrupted
    rows = []
    for layer in range(grid.shape[0]):
        for head in range(grid.shape[1]):
            v = float(grid[layer, head])
            rows.append({"layer": layer, "head": head, "node": node_id("head", layer=layer, head=head),
                         "metric": metric_name, "metric_value": v, "clean_value": clean, "corrupted_value": corrupted,
                         "effect": v - clean, "normalized": (v - corrupted) / denom if denom else float("nan")})
    meta = run_meta(model, dataset=dataset.name, data=list(dataset.clean), implementation="interp.gating.validate")
    return Result("gating.head_patching", pd.DataFrame(rows), meta, name=dataset.name)


def agreement_metric(chg: Any, cfg: ValidationConfig) -> str:
    """The metric of the exact patching :func:`validate_chg`'s verdict uses: ``cfg.agreement_metric``, or for
    ``"fit"`` the CHG Result's ``meta.extra["metric"]`` (``answer_logprob`` for Results saved before it
    was recorded: every CHG fit optimises it)."""
    if cfg.agreement_metric != "fit":
        return cfg.agreement_metric
    from interp.gating.chg import FIT_METRIC

    name = str(chg.meta.extra.get("metric", FIT_METRIC))
    if name not in AGREEMENT_METRICS:
        raise ConfigError(f"CHG Result {chg.name!r}: fit metric {name!r} has no exact patching here "
                          f"(expected one of {sorted(AGREEMENT_METRICS)})")
    return name


def patching_for(model: Any, dataset: Any, cfg: ValidationConfig, *, metric: str = "logit_diff") -> Any:
    """Exact head patching (noising, all positions, ``metric``) as a ``gating.head_patching`` Result.

    ``metric="logit_diff"``: :func:`interp.patching.activation_patching` when that module is installed
    and the dataset has counterfactuals (the project's batched engine; it agrees with :func:`head_patching`
    to ~1e-8 on the toy model), else the minimal :func:`head_patching` here (without counterfactuals its
    metric is the answer's log-prob, and its ``metric`` column says so). ``metric="answer_logprob"``:
    :func:`head_patching` with that metric. ``meta.extra["implementation"]`` says which.
    """
    import pandas as pd

    from interp.results import Result, run_meta

    if metric not in AGREEMENT_METRICS:
        raise ConfigError(f"patching metric must be one of {sorted(AGREEMENT_METRICS)}, got {metric!r}")
    if cfg.patch_prompts is not None and cfg.patch_prompts < len(dataset):
        dataset = dataset.subset(slice(0, cfg.patch_prompts))
    if metric != "logit_diff":
        return head_patching(model, dataset, metric=AGREEMENT_METRICS[metric], metric_name=metric,
                             progress=cfg.progress)
    try:
        from interp.patching import PatchConfig, activation_patching
    except ImportError:
        return head_patching(model, dataset, progress=cfg.progress)
    if not dataset.counterfactuals:
        return head_patching(model, dataset, progress=cfg.progress)
    res = activation_patching(model, dataset, PatchConfig(component="z", positions="all", direction="noising",
                                                          metrics=("logit_diff",), progress=cfg.progress))
    t, ex = res.table, res.meta.extra
    clean, corr = float(ex["ld_clean"]), float(ex["ld_corr"])
    table = pd.DataFrame({"layer": t["layer"], "head": t["head"], "node": t["node"], "metric": "logit_diff",
                          "metric_value": t["value"], "clean_value": clean, "corrupted_value": corr,
                          "effect": t["value"] - clean,
                          "normalized": (t["value"] - corr) / (clean - corr) if clean != corr else float("nan")})
    meta = run_meta(model, dataset=dataset.name, data=list(dataset.clean),
                    implementation="interp.patching.activation_patching", patching_seconds=ex.get("seconds"))
    return Result("gating.head_patching", table.reset_index(drop=True), meta, name=dataset.name)


def _metric_of(patching: Any) -> str:
    """The metric a patching Result measured (its ``metric`` column; one value)."""
    t = patching.table
    names = sorted(set(map(str, t["metric"]))) if "metric" in t.columns else []
    if len(names) != 1:
        raise ConfigError(f"patching Result {patching.kind} {patching.name!r}: expected one metric in its 'metric' "
                          f"column, got {names or 'no such column'}")
    return names[0]


def _support_sign(patching: Any) -> float:
    """+1 when a positive ``effect`` means the head supports the answer (denoising), -1 for noising."""
    t = patching.table
    direction = (str(t["direction"].iloc[0]) if "direction" in t.columns and len(t)
                 else patching.meta.extra.get("direction", "noising"))
    return 1.0 if direction == "denoising" else -1.0


def disagreements(chg: Any, patching: Any, *, strong_quantile: float = 0.9) -> list[dict[str, Any]]:
    """Heads strong by exact patching whose CHG role contradicts the sign of their effect.

    Args:
        chg: ``gating.chg`` Result (``layer, head, node, role``).
        patching: exact head patching (``layer, head, effect``; noising unless its ``direction``
            column or ``meta.extra["direction"]`` says denoising).
        strong_quantile: a head is strong when ``|effect|`` >= this quantile of all heads' ``|effect|``.

    Returns:
        one dict per disagreement, strongest first: ``node, role, effect, support`` (effect signed so
        that > 0 supports the answer), ``rank`` (1 = largest ``|effect|``) and ``why`` (one line).
    """
    import numpy as np

    p = patching.table.set_index(["layer", "head"])
    sign = _support_sign(patching)
    t = chg.table
    effect = np.array([float(p.loc[(int(r.layer), int(r.head)), "effect"]) for r in t.itertuples()])
    mag = np.abs(effect)
    if not len(mag) or not mag.max() > 0:
        return []
    cut = float(np.quantile(mag, strong_quantile))
    order = {i: k + 1 for k, i in enumerate(np.argsort(-mag, kind="stable"))}
    out = []
    for i, r in enumerate(t.itertuples()):
        if mag[i] < cut or mag[i] == 0:
            continue
        support = sign * effect[i]
        bad = (r.role == "interfering" and support > 0) or (r.role == "facilitating" and support < 0)
        if bad:
            does = "supports" if support > 0 else "opposes"
            out.append({"node": r.node, "role": r.role, "effect": float(effect[i]), "support": float(support),
                        "rank": order[i],
                        "why": f"{r.node} labelled {r.role} but exact patching says it {does} the answer "
                               f"({'denoising' if sign > 0 else 'noising'} {_metric_of(patching)} effect "
                               f"{effect[i]:+.3f}, |effect| rank {order[i]} of {len(t)}, "
                               f"top {1 - strong_quantile:.0%} cut {cut:.3f})"})
    return sorted(out, key=lambda d: d["rank"])


def _verdict(rows: list[dict[str, Any]], found: list[dict[str, Any]], cfg: "ValidationConfig",
             patched: str, no_patch: str) -> tuple[str, list[str]]:
    """``patched``: the agreement metric when exact patching was compared, else ""; ``no_patch``: why not."""
    by = {r["what"]: r for r in rows}
    reasons = []
    fac, intf, clean = by["facilitating"], by["interfering"], by["clean"]["metric_value"]
    if fac["n_heads"] == 0:
        reasons.append("no head labelled facilitating")
    elif not fac["frac_random_lower"] <= cfg.max_frac_random_lower:
        reasons.append(f"facilitating heads ablated ({fac['metric_value']:+.3f}) hurt less than "
                       f"{1 - fac['frac_random_lower']:.0%} of random sets of {fac['n_heads']} heads "
                       f"(need at least {1 - cfg.max_frac_random_lower:.0%})")
    if intf["n_heads"] and not intf["metric_value"] >= clean:
        reasons.append(f"ablating the {intf['n_heads']} interfering heads hurts "
                       f"({intf['metric_value']:+.3f} < clean {clean:+.3f})")
    if patched:
        sp = by["spearman_signed"]
        if not (sp["metric_value"] > 0 and sp["p_value"] < 0.05):
            reasons.append(f"CHG scores do not agree with exact patching on {patched} (Spearman "
                           f"{sp['metric_value']:+.3f}, p={sp['p_value']:.2g})")
    else:
        reasons.append(no_patch)
    if found:
        reasons.append(f"{len(found)} disagreement(s) with exact patching on {patched}: "
                       + ", ".join(d["node"] for d in found))
    return ("pass" if not reasons else "fail"), reasons


def _agreement(chg: Any, patching: Any, strong_quantile: float) -> dict[str, Any]:
    """Spearman of CHG's facilitation and signed score against each head's support for the answer under
    ``patching`` (clean - patched for noising), with p-values, and :func:`disagreements`."""
    import numpy as np
    from scipy.stats import spearmanr

    t = chg.table
    p = patching.table.set_index(["layer", "head"])
    drop = np.array([_support_sign(patching) * float(p.loc[(int(r.layer), int(r.head)), "effect"])
                     for r in t.itertuples()])
    fac = t["facilitation"].to_numpy()
    out: dict[str, Any] = {"metric": _metric_of(patching), "patching_kind": patching.kind,
                           "implementation": patching.meta.extra.get("implementation", patching.kind)}
    for what, score in (("spearman_facilitation", fac), ("spearman_signed", fac - t["interference"].to_numpy())):
        rho, pv = spearmanr(score, drop)
        out[what], out[f"p_{what}"] = float(rho), float(pv)
    out["disagreements"] = disagreements(chg, patching, strong_quantile=strong_quantile)
    return out


def agreement_lines(validation: Any) -> list[str]:
    """Which exact patching the verdict's agreement used, and the secondary comparison (not in the verdict),
    one line each: the lines :func:`summary_lines` and report.md show besides the verdict."""
    ex = validation.meta.extra
    lines = []
    if ex.get("agreement_metric"):
        m, fit = ex["agreement_metric"], ex.get("fit_metric")
        lines.append(f"agreement in the verdict: exact head patching (noising, all positions) on {m}, "
                     + ("the metric the CHG fit optimised" if m == fit
                        else f"NOT the metric the CHG fit optimised ({fit})"))
    sec = ex.get("secondary_agreement")
    if sec:
        found = sec.get("disagreements", [])
        lines.append(f"secondary, NOT in the verdict: exact patching on {sec['metric']}: Spearman(signed) "
                     f"{sec['spearman_signed']:+.3f} (p={sec['p_spearman_signed']:.2g}), {len(found)} disagreement(s)"
                     + (": " + ", ".join(f"{d['node']} ({d['role']}, effect {d['effect']:+.3f}, rank {d['rank']})"
                                         for d in found) if found else ""))
    return lines


def summary_lines(validation: Any) -> list[str]:
    """Human-readable verdict of a ``gating.validation`` Result: the verdict, its reasons, then every
    disagreement on its own line, then :func:`agreement_lines` (used by ``interp gate`` and the
    pipeline's report.md)."""
    ex = validation.meta.extra
    verdict = ex.get("verdict", "unknown")
    lines = [f"validation verdict: {verdict.upper()}"]
    lines += [f"  - {r}" for r in ex.get("verdict_reasons", [])]
    found = ex.get("disagreements", [])
    if found:
        lines.append(f"DISAGREEMENTS between CHG roles and exact patching ({len(found)}):")
        lines += [f"  ! {d['why']}" for d in found]
    elif ex.get("patching_kind"):
        lines.append("no disagreement between CHG roles and exact patching "
                     f"(heads in the top {1 - ex.get('strong_quantile', 0.9):.0%} by |effect|)")
    return lines + agreement_lines(validation)


def validate_chg(model: Any, dataset: Any, chg: Any, *, config: ValidationConfig = ValidationConfig(),
                 patching: Any = None) -> Any:
    """Check CHG labels by ablation and against exact head patching -> ``gating.validation`` Result.

    Args:
        dataset: the TaskDataset CHG was fitted on (clean prompts, answers; counterfactuals give a
            logit-difference metric for the ablation rows, else answer log-prob; corrupted prompts give
            the mean reference and enable head patching).
        chg: the ``gating.chg`` Result.
        patching: precomputed head patching: one Result or a sequence of them (columns ``layer, head,
            effect`` and one ``metric``). The one measured with :func:`agreement_metric` decides the
            verdict; another one is the secondary comparison. Whichever is missing is computed with
            :func:`patching_for` when ``config.patching`` and the dataset has corrupted prompts.

    Rows (``what``): ``clean``; ``facilitating`` and ``interfering`` (metric with those heads ablated;
    ``baseline_mean``/``baseline_std`` over random sets of the same size from the other heads,
    ``frac_random_lower``: share of random sets with a metric at or below it); ``spearman_facilitation``
    (facilitation vs the head's support for the answer under patching with the agreement metric:
    clean - patched for noising) and ``spearman_signed`` (facilitation - interference vs that
    support), with ``p_value``; one row ``disagreement_interfering`` / ``disagreement_facilitating``
    per head in :func:`disagreements` (``heads``: the node, ``metric_value``: its patching effect).

    ``meta.extra``: ``verdict`` (``"pass"`` / ``"fail"``), ``verdict_reasons``, ``disagreements``
    (the dicts of :func:`disagreements`), ``strong_quantile``, ``agreement_metric``, ``fit_metric``; with patching
    ``patching_kind``, ``patching_implementation``; with a second patching metric
    ``secondary_agreement``: ``metric, spearman_signed, p_spearman_signed, spearman_facilitation,
    p_spearman_facilitation, disagreements, patching_kind, implementation`` (not in the verdict).

    Raises:
        ConfigError: ``chg`` is not a ``gating.chg`` Result; a given patching Result without one metric;
            ``agreement_metric="logit_diff"`` on a dataset without counterfactuals.
    """
    import numpy as np
    import pandas as pd

    from interp.results import Result, run_meta

    if chg.kind != "gating.chg":
        raise ConfigError(f"expected a gating.chg Result, got {chg.kind!r}")
    want = agreement_metric(chg, config)
    if want == "logit_diff" and not dataset.counterfactuals:
        raise ConfigError(f"agreement_metric 'logit_diff' needs counterfactuals; dataset {dataset.name!r} has none")
    given = [] if patching is None else [patching] if hasattr(patching, "table") else list(patching)
    primary = next((p for p in given if _metric_of(p) == want), None)
    secondary = next((p for p in given if _metric_of(p) != want), None)
    can_patch = config.patching and bool(dataset.corrupted)
    if primary is None and can_patch:
        primary = patching_for(model, dataset, config, metric=want)
    other = config.secondary_metric
    if (secondary is None and can_patch and other is not None and other != want
            and (other != "logit_diff" or dataset.counterfactuals)):
        secondary = patching_for(model, dataset, config, metric=other)

    batch = dataset.tokenize(model, same_length=bool(dataset.corrupted))
    metric_name, metric = default_metric(batch)
    use_corr = config.reference == "corrupted" and batch.corrupted is not None
    reference = batch.corrupted if use_corr else None
    clean = evaluate(model, batch, metric)
    t = chg.table
    heads_all = [(int(r.layer), int(r.head)) for r in t.itertuples()]
    rows: list[dict[str, Any]] = [{"what": "clean", "n_heads": 0, "metric": metric_name, "metric_value": clean,
                                   "baseline_mean": float("nan"), "baseline_std": float("nan"),
                                   "frac_random_lower": float("nan"), "p_value": float("nan"), "heads": ""}]

    means = None
    if config.method == "mean":  # one reference pass for every head
        from interp.gating.ablation import mean_values

        means = mean_values(model, reference if reference is not None else batch.clean, head_sites(heads_all))

    def run(heads: list[tuple[int, int]]) -> float:
        ab = Ablation(sites=head_sites(heads), method=config.method, reference=reference, seed=config.seed,
                      means=means)
        return evaluate(model, batch, metric, [ab])

    for i, role in enumerate(("facilitating", "interfering")):
        chosen = [(int(r.layer), int(r.head)) for r in t.itertuples() if r.role == role]
        row = {"what": role, "n_heads": len(chosen), "metric": metric_name, "p_value": float("nan"),
               "heads": " ".join(node_id("head", layer=a, head=b) for a, b in chosen)}
        if not chosen:
            rows.append(row | {"metric_value": clean, "baseline_mean": float("nan"), "baseline_std": float("nan"),
                               "frac_random_lower": float("nan")})
            continue
        pool = [h for h in heads_all if h not in chosen]
        if len(pool) < len(chosen):
            pool = heads_all
        value = run(chosen)
        base = np.array([run(d) for d in random_head_draws(pool, len(chosen), config.n_random,
                                                           seed=config.seed + i)])
        rows.append(row | {"metric_value": value, "baseline_mean": float(base.mean()),
                           "baseline_std": float(base.std(ddof=1)), "frac_random_lower": float((base <= value).mean())})

    from interp.gating.chg import FIT_METRIC

    extra: dict[str, Any] = {"agreement_metric": want, "fit_metric": str(chg.meta.extra.get("metric", FIT_METRIC))}
    found: list[dict[str, Any]] = []
    if primary is not None:
        agree = _agreement(chg, primary, config.strong_quantile)
        for what in ("spearman_facilitation", "spearman_signed"):
            rows.append({"what": what, "n_heads": len(heads_all), "metric": "spearman", "metric_value": agree[what],
                         "baseline_mean": float("nan"), "baseline_std": float("nan"),
                         "frac_random_lower": float("nan"), "p_value": agree[f"p_{what}"], "heads": ""})
        extra["patching_kind"] = primary.kind
        extra["patching_implementation"] = agree["implementation"]
        found = agree["disagreements"]
        for d in found:
            rows.append({"what": f"disagreement_{d['role']}", "n_heads": 1, "metric": want,
                         "metric_value": d["effect"], "baseline_mean": float("nan"), "baseline_std": float("nan"),
                         "frac_random_lower": float("nan"), "p_value": float("nan"), "heads": d["node"]})
    if secondary is not None:
        extra["secondary_agreement"] = _agreement(chg, secondary, config.strong_quantile)
    no_patch = ("no exact patching (the dataset has no corrupted prompts): agreement not checked"
                if not dataset.corrupted else f"no exact patching on {want} (patching disabled): agreement not checked")
    verdict, reasons = _verdict(rows, found, config, want if primary is not None else "", no_patch)
    meta = run_meta(model, dataset=dataset.name, data=list(dataset.clean), seed=config.seed, config=config,
                    ablation=config.method, reference="corrupted" if use_corr else "clean", verdict=verdict,
                    verdict_reasons=reasons, disagreements=found, strong_quantile=config.strong_quantile, **extra)
    return Result("gating.validation", pd.DataFrame(rows), meta, name=dataset.name)
