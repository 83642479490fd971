"""Exact activation patching: one generic, batched sweep over sites.

Clean and corrupted prompts run side by side on one batch axis to record the source
activations, the receiver's residual stream at every patched layer and the baselines;
then many patches run per forward pass, each patch a block of ``B`` batch rows (one per
prompt). With ``grow_batch`` (default) a patch's rows *enter the pass at its layer* as
copies of the receiver's recorded ``resid_pre`` there, so no layer before a patch is
ever recomputed for it; chunks bound the rows of one pass (``max_rows``; a few hundred
rows keep the activations cache-sized, which measured faster than bigger passes). Prompts
run in groups of equal real length, each cut to that length, so no pass computes right
padding (``bucket_lengths``). The forward pass stops at ``ln_final``, only the last real
token is unembedded, and the last MLP runs at that token only.

Sites: ``resid_pre``, ``resid_post``, ``attn_out``, ``mlp_out`` per (layer, position)
or over all positions; ``z`` (head outputs) per (layer, head) over all positions or
per position; positions may also be per-prompt named positions from the dataset's
meta (e.g. IOI's ``("io_pos", "s1_pos", "s2_pos", "end_pos")``).

Directions: *denoising* runs the corrupted prompt with one clean activation patched
in; *noising* runs the clean prompt with one corrupted activation patched in.

Example:
    >>> from interp.models import load_model
    >>> from interp.datasets import TaskDataset
    >>> model = load_model("toy:llama")
    >>> ds = TaskDataset("demo", clean=("ab cd x",), corrupted=("ab ce x",),
    ...                  answers=("y",), counterfactuals=("z",))
    >>> r = activation_patching(model, ds, PatchConfig(component="z"))
    >>> r.table.columns[:6].tolist()
    ['method', 'direction', 'metric', 'component', 'site', 'layer']
    >>> r.table.metric.unique().tolist(), r.table.node.nunique()   # one row per metric and head (2 layers x 4)
    (['logit_diff_norm', 'logit_diff', 'prob', 'kl'], 8)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.engine import Intervention, World, run
from interp.errors import ConfigError
from interp.metrics import log_probs
from interp.nodes import site_node
from interp.results import Result, run_meta
from interp.schemas import add_effect
from interp.sites import Site

from interp.patching._run import Counter, last_hidden
from interp.patching.metrics import (METRICS, Baseline, PairData, block_values, check_metrics, final_logits,
                                     hidden_stats, prepare_pairs, row_stats)

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["PatchConfig", "activation_patching", "Patch", "run_baseline", "COMPONENT_KIND"]

#: Patchable components -> the ``component`` column value of the Result.
COMPONENT_KIND = {"z": "head", "attn_out": "attn", "mlp_out": "mlp", "resid_pre": "resid", "resid_post": "resid"}
DIRECTIONS = ("denoising", "noising")


@dataclass(frozen=True, kw_only=True)
class PatchConfig:
    """Configuration of :func:`activation_patching`.

    Attributes:
        component: ``"z"`` (head outputs), ``"attn_out"``, ``"mlp_out"``, ``"resid_pre"``, ``"resid_post"``.
        positions: ``"all"`` (patch every position at once), ``"each"`` (one patch per
            absolute position), a tuple of dataset meta keys (one patch per named,
            per-prompt position, e.g. ``("s2_pos", "end_pos")``), or ``"auto"``
            (``"all"`` for ``z``, ``"each"`` otherwise).
        direction: ``"denoising"`` (clean into corrupted) or ``"noising"`` (corrupted into clean).
        metrics: any of ``logit_diff_norm``, ``logit_diff``, ``prob``, ``kl``.
        layers: layers to sweep (``None`` = all).
        heads: heads to sweep for ``z`` (``None`` = all).
        max_rows: most batch rows in one forward pass (bounds memory).
        grow_batch: each patch's rows enter the pass at its own layer from the recorded
            receiver residual (skips the layers before it); ``False`` replicates the
            prompts from the tokens up.
        bucket_lengths: run prompts of each real length as their own group, cut to that
            length (no pass computes right padding; patches of absolute positions past a
            group's length are the unpatched run and cost nothing).
        progress: show a tqdm bar over forward passes.
    """

    component: str = "z"
    positions: str | tuple[str, ...] = "auto"
    direction: str = "denoising"
    metrics: tuple[str, ...] = ("logit_diff_norm", "logit_diff", "prob", "kl")
    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    max_rows: int = 256
    grow_batch: bool = True
    bucket_lengths: bool = True
    progress: bool = False

    def __post_init__(self) -> None:
        from interp.errors import nearest

        if self.component not in COMPONENT_KIND:
            raise ConfigError(f"cannot patch component {self.component!r}.{nearest(self.component, COMPONENT_KIND)} "
                              f"Patchable: {', '.join(COMPONENT_KIND)}")
        if isinstance(self.positions, str) and self.positions not in ("auto", "all", "each"):
            raise ConfigError(f"positions must be 'auto', 'all', 'each' or a tuple of meta keys, got {self.positions!r}")
        if not isinstance(self.positions, str) and not self.positions:
            raise ConfigError("positions: empty tuple of meta keys")
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        check_metrics(tuple(self.metrics))
        if self.max_rows < 1:
            raise ConfigError(f"max_rows must be >= 1, got {self.max_rows}")

    @property
    def resolved_positions(self) -> str | tuple[str, ...]:
        if self.positions == "auto":
            return "all" if self.component == "z" else "each"
        return self.positions


@dataclass(frozen=True)
class Patch:
    """One patch: site layer, head (None = all heads / not per head), position.

    ``pos`` is None (all positions), an absolute position, or a meta key naming a
    per-prompt position.
    """

    layer: int
    head: int | None
    pos: int | str | None


def run_baseline(model: Model, pairs: PairData, sites: list[Site], counter: Counter | None = None,
                 *, with_logp: bool = True, buckets: list[tuple[Int[Tensor, " rows"], int]] | None = None,
                 ) -> tuple[Baseline, dict[Site, Float[Tensor, "batch ..."]]]:
    """Clean and corrupted side by side in one pass: baselines and source activations.

    With ``buckets`` (from :meth:`PairData.length_buckets`) each group of prompts runs
    cut to its length, one pass per group, so the baselines carry exactly the numerics
    of the patched runs of those groups; activations past a prompt's length are zero.

    Returns:
        (baseline, acts) where ``acts[site]`` is ``[2B, ...]`` (clean rows first).
    """
    n_b = len(pairs)
    groups = buckets or [(torch.arange(n_b), int(pairs.clean.shape[1]))]
    acts: dict[Site, torch.Tensor] = {}
    stats: dict[str, torch.Tensor] = {}
    logp_clean = torch.empty(0)
    kl_corr = torch.full((n_b,), float("nan"))
    for idx, n_pos in groups:
        sub, k = pairs.subset(idx, n_pos), len(idx)

        def keep(a: torch.Tensor, s: Site) -> None:
            if s not in acts:
                acts[s] = a.new_zeros((2 * n_b, pairs.clean.shape[1], *a.shape[2:]))
            acts[s][idx, :n_pos] = a[:k]
            acts[s][idx + n_b, :n_pos] = a[k:]

        tokens = torch.cat([sub.clean, sub.corrupted])
        with torch.inference_mode():
            hid = last_hidden(model, tokens, sub.last, [(s, keep) for s in sites], grow=False, counter=counter)
            logits = final_logits(model, hid)
            for name, v in row_stats(logits, sub, None).items():
                stats.setdefault(name, v.new_empty(2 * n_b))[torch.cat([idx, idx + n_b])] = v
            if with_logp:
                lp = log_probs(logits[:k])
                if not logp_clean.numel():
                    logp_clean = lp.new_empty(n_b, lp.shape[1])
                logp_clean[idx] = lp
                lq = torch.log_softmax(logits[k:].float(), -1)
                kl_corr[idx] = (lp.exp() * (lp - lq)).sum(-1).to(kl_corr.device, kl_corr.dtype)
    base = Baseline(ld_clean=stats["ld"][:n_b], ld_corr=stats["ld"][n_b:], p_clean=stats["prob"][:n_b],
                    p_corr=stats["prob"][n_b:], logp_clean=logp_clean,
                    kl_corr=float(kl_corr.mean()))
    base.check(pairs)
    return base, acts


def _patches(model: Model, pairs: PairData, cfg: PatchConfig) -> list[Patch]:
    n_layers = model.cfg.n_layers
    layers = list(range(n_layers)) if cfg.layers is None else sorted(set(cfg.layers))
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad:
        raise ConfigError(f"layers {bad} out of range; the model has {n_layers} layers")
    pos_mode = cfg.resolved_positions
    if pos_mode == "all":
        positions: list[int | str | None] = [None]
    elif pos_mode == "each":
        positions = list(range(int(pairs.clean.shape[1])))
    else:
        for key in pos_mode:
            pairs.named_positions(key)  # validate early
        positions = list(pos_mode)
    heads: list[int | None] = (list(range(model.cfg.n_heads)) if cfg.heads is None else sorted(set(cfg.heads))) \
        if cfg.component == "z" else [None]
    if any(h is not None and not 0 <= h < model.cfg.n_heads for h in heads):
        raise ConfigError(f"heads {cfg.heads} out of range; layers have {model.cfg.n_heads} heads")
    return [Patch(l, h, p) for l in layers for p in positions for h in heads]


def _world(p: Patch, component: str, source: dict[int, torch.Tensor], named: dict[str, torch.Tensor],
           entry: dict[int, torch.Tensor] | None) -> World:
    """Patch ``p`` as an engine world: its site takes the source run's activation there.

    With ``entry`` (the receiver's ``resid_pre`` at each layer, ``[B, pos, d_model]``) the
    world's rows enter the pass at the patch's layer, so no layer before it is computed
    for it; without, they run from the tokens.
    """
    pos = named[p.pos] if isinstance(p.pos, str) else p.pos
    patch = Intervention("restore", Site(component, p.layer, p.head), source[p.layer], positions=pos)
    if entry is None:
        return World((patch,))
    return World((patch,), enter=p.layer, entry=entry[p.layer])


def _sweep_bucket(model: Model, sub: PairData, receiver: torch.Tensor, patches: list[Patch], config: PatchConfig,
                  source: dict[int, torch.Tensor], entry: dict[int, torch.Tensor] | None,
                  named: dict[str, torch.Tensor], logp_clean: torch.Tensor | None,
                  counter: Counter, bar: Any) -> dict[str, torch.Tensor]:
    """Per-row stats ``{name: [n_patches, b]}`` of every patch on one group of prompts.

    ``receiver``, ``source`` and ``entry`` are cut to the group's length; a patch of an
    absolute position past it changes nothing, so it takes the stats of one unpatched pass.
    """
    n_b, length = len(sub), int(receiver.shape[1])
    live = [k for k, p in enumerate(patches) if not (isinstance(p.pos, int) and p.pos >= length)]
    per_chunk = max(1, config.max_rows // n_b)
    out: dict[str, torch.Tensor] = {}
    if len(live) < len(patches):
        hid = last_hidden(model, receiver, sub.last, [], grow=False, counter=counter)
        stats = hidden_stats(model, hid, sub, logp_clean, tuple(config.metrics))
        out = {k: v.expand(len(patches), n_b).clone() for k, v in stats.items()}
        if bar is not None:
            bar.update(len(patches) - len(live))
    for i in range(0, len(live), per_chunk):
        chunk = live[i:i + per_chunk]
        worlds = [_world(patches[k], config.component, source, named, entry) for k in chunk]
        hid = run(model, receiver, worlds, positions=sub.last, readout="hidden", counter=counter).worlds
        for name, v in hidden_stats(model, hid.reshape(-1, hid.shape[-1]), sub, logp_clean,
                                    tuple(config.metrics)).items():
            if name not in out:
                out[name] = v.new_empty(len(patches), n_b)
            out[name][chunk] = v.reshape(len(chunk), n_b)
        if bar is not None:
            bar.update(len(chunk))
    return out


def activation_patching(model: Model, data: Any, config: PatchConfig = PatchConfig()) -> Result:
    """Exact activation patching of every (layer[, head][, position]) of one component.

    Args:
        model: a model from :func:`interp.load_model`.
        data: a :class:`~interp.datasets.TaskDataset` with corrupted prompts of equal token
            lengths, single-token answers and counterfactuals.
        config: :class:`PatchConfig`.

    Returns:
        Result ``patching.nodes``: one row per (patch, metric) with columns ``method``
        (``"exact"``), ``direction``, ``metric``, ``component`` (head|attn|mlp|resid),
        ``site``, ``layer``, ``head`` (-1 = none), ``pos`` (-1 = all positions),
        ``pos_label``, ``node`` (interp node id; ``""`` for ``attn_out``), ``value``.
        ``meta.extra`` holds baselines, pass counts and timing.

    Raises:
        DataError: mismatched lengths, multi-token answers, identical clean and corrupted
            metrics (naming the prompts).
    """
    t0 = time.perf_counter()
    pairs = prepare_pairs(model, data)
    n_b = len(pairs)
    patches = _patches(model, pairs, config)
    layers = sorted({p.layer for p in patches})
    counter = Counter()
    buckets = pairs.length_buckets() if config.bucket_lengths else None
    entry_sites = [Site("resid_pre", l) for l in layers] if config.grow_batch else []
    sites = list(dict.fromkeys([*(Site(config.component, l) for l in layers), *entry_sites]))
    base, acts = run_baseline(model, pairs, sites, counter, with_logp="kl" in config.metrics, buckets=buckets)
    denoise = config.direction == "denoising"
    source = {l: (acts[Site(config.component, l)][:n_b] if denoise else acts[Site(config.component, l)][n_b:])
              for l in layers}
    receiver = pairs.corrupted if denoise else pairs.clean
    rec = slice(n_b, 2 * n_b) if denoise else slice(0, n_b)
    entry = {l: acts[s][rec] for l in layers for s in [Site("resid_pre", l)]} if config.grow_batch else None
    named = {k: pairs.named_positions(k) for k in {p.pos for p in patches if isinstance(p.pos, str)}}
    logp_clean = base.logp_clean if "kl" in config.metrics else None
    buckets = buckets or [(torch.arange(n_b), int(pairs.clean.shape[1]))]
    # per-row stats of every patch, [n_patches, B], filled bucket by bucket
    stats_all: dict[str, torch.Tensor] = {}
    bar = None
    if config.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(patches) * len(buckets), desc=f"patching {config.component}", unit="patch")
    with torch.inference_mode():
        for idx, length in buckets:
            sub = pairs.subset(idx, length)
            sub_source = {l: v[idx, :length] for l, v in source.items()}
            sub_named = {k: v[idx] for k, v in named.items()}
            sub_entry = None if entry is None else {l: v[idx, :length] for l, v in entry.items()}
            stats = _sweep_bucket(model, sub, receiver[idx, :length], patches, config, sub_source, sub_entry,
                                  sub_named, None if logp_clean is None else logp_clean[idx], counter, bar)
            for k, v in stats.items():
                stats_all.setdefault(k, torch.empty(len(patches), n_b, dtype=v.dtype))[:, idx] = v
    if bar is not None:
        bar.close()
    flat = {k: v.reshape(-1) for k, v in stats_all.items()}
    values = block_values(flat, n_b, base, tuple(config.metrics))
    tokens0 = pairs.clean[0].tolist()

    def label(p: Patch) -> str:
        if p.pos is None:
            return "all"
        if isinstance(p.pos, str):
            return p.pos
        return model.tokenizer.decode([tokens0[p.pos]]) if p.pos < len(tokens0) else str(p.pos)

    kind = COMPONENT_KIND[config.component]
    rows = []
    for m in config.metrics:
        vals = values[m].tolist()
        for p, v in zip(patches, vals):
            rows.append({"method": "exact", "direction": config.direction, "metric": m, "component": kind,
                         "site": config.component, "layer": p.layer, "head": -1 if p.head is None else p.head,
                         "pos": -1 if p.pos is None else (config.resolved_positions.index(p.pos)
                                                         if isinstance(p.pos, str) else p.pos),
                         "pos_label": label(p), "node": site_node(Site(config.component, p.layer, head=p.head), missing=""), "value": float(v)})
    extra = {"ld_clean": base.mean_clean, "ld_corr": base.mean_corr, "prob_clean": float(base.p_clean.mean()),
             "prob_corr": float(base.p_corr.mean()), "n_prompts": n_b, "n_patches": len(patches),
             "forward_passes": counter.forward, "rows": counter.rows, "seconds": round(time.perf_counter() - t0, 3),
             "frac_ld_positive": float((base.ld_clean > 0).float().mean())}
    meta = run_meta(model, dataset=pairs.dataset.name, data=list(zip(pairs.texts, pairs.corrupted_texts)),
                    config=config, **extra)
    table = add_effect(pd.DataFrame(rows), base.reference(config.direction))
    return Result("patching.nodes", table, meta, name=f"exact-{config.component}-{config.direction}")
