"""Exact activation patching: one generic, batched sweep over sites.

Clean and corrupted prompts run side by side on one batch axis to record the source
activations and the baselines; then many patches run per forward pass, each patch a
block of ``B`` extra batch rows (one per prompt). With ``grow_batch`` (default) a
patch's rows are *appended at its layer* by a hook, so the layers before the patch
run once for all patches of a chunk instead of once per patch; chunks bound the rows
of one pass (``max_rows``). The forward pass stops at ``ln_final`` and only the last
real token is unembedded.

Sites: ``resid_pre``, ``resid_post``, ``attn_out``, ``mlp_out`` per (layer, position)
or over all positions; ``z`` (head outputs) per (layer, head) over all positions or
per position; positions may also be per-prompt named positions from the dataset's
meta (e.g. IOI's ``("io_pos", "s1_pos", "s2_pos", "end_pos")``).

Directions: *denoising* runs the corrupted prompt with one clean activation patched
in; *noising* runs the clean prompt with one corrupted activation patched in.

Example:
    >>> from interp.models import load_model
    >>> from interp.datasets import TaskDataset
    >>> model = load_model("toy:llama")                                     # doctest: +SKIP
    >>> ds = TaskDataset("demo", clean=("ab cd x",), corrupted=("ab ce x",),
    ...                  answers=("y",), counterfactuals=("z",))
    >>> r = activation_patching(model, ds, PatchConfig(component="z"))      # doctest: +SKIP
    >>> r.table.columns[:6].tolist()                                        # doctest: +SKIP
    ['method', 'direction', 'metric', 'component', 'site', 'layer']
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from interp.errors import ConfigError
from interp.nodes import node_id
from interp.results import Result, run_meta
from interp.sites import Site

from interp.patching._run import Counter, last_hidden
from interp.patching.metrics import (METRICS, Baseline, PairData, block_values, check_metrics, final_logits,
                                     prepare_pairs, row_stats)

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
        grow_batch: append each patch's rows at its own layer (skips recomputing the
            layers before it); ``False`` replicates the prompts from the start.
        progress: show a tqdm bar over forward passes.
    """

    component: str = "z"
    positions: str | tuple[str, ...] = "auto"
    direction: str = "denoising"
    metrics: tuple[str, ...] = ("logit_diff_norm", "logit_diff", "prob", "kl")
    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    max_rows: int = 1024
    grow_batch: bool = True
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


def run_baseline(model: Any, pairs: PairData, sites: list[Site], counter: Counter | None = None,
                 *, with_logp: bool = True) -> tuple[Baseline, dict[Site, torch.Tensor]]:
    """Clean and corrupted side by side in one pass: baselines and source activations.

    Returns:
        (baseline, acts) where ``acts[site]`` is ``[2B, ...]`` (clean rows first).
    """
    n_b = len(pairs)
    acts: dict[Site, torch.Tensor] = {}

    def keep(a: torch.Tensor, s: Site) -> None:
        acts[s] = a.detach().clone()

    tokens = torch.cat([pairs.clean, pairs.corrupted])
    with torch.inference_mode():
        hid = last_hidden(model, tokens, pairs.last, [(s, keep) for s in sites], grow=False, counter=counter)
        logits = final_logits(model, hid)
        st = row_stats(logits, pairs, None)
        logp_clean = torch.log_softmax(logits[:n_b].float(), -1) if with_logp else torch.empty(0)
    base = Baseline(ld_clean=st["ld"][:n_b], ld_corr=st["ld"][n_b:], p_clean=st["prob"][:n_b],
                    p_corr=st["prob"][n_b:], logp_clean=logp_clean)
    base.check(pairs)
    return base, acts


def _patches(model: Any, pairs: PairData, cfg: PatchConfig) -> list[Patch]:
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


def _assign(block: torch.Tensor, src: torch.Tensor, head: int | None, pos: Any) -> None:
    """Write ``src`` into ``block`` (both ``[B, pos, ...]``) at head/position selections, in place."""
    if pos is None:
        if head is None:
            block.copy_(src)
        else:
            block[:, :, head] = src[:, :, head]
    elif isinstance(pos, int):
        if head is None:
            block[:, pos] = src[:, pos]
        else:
            block[:, pos, head] = src[:, pos, head]
    else:  # per-prompt positions [B]
        rows = torch.arange(block.shape[0], device=block.device)
        if head is None:
            block[rows, pos] = src[rows, pos]
        else:
            block[rows, pos, head] = src[rows, pos, head]


def _chunk_hooks(chunk: list[Patch], component: str, source: dict[int, torch.Tensor], n_b: int,
                 named: dict[str, torch.Tensor], grow: bool) -> list[tuple[Site, Any]]:
    """Hooks of one forward pass: grow rows at each patch layer (optional), then write patches."""
    by_layer: dict[int, list[tuple[int, Patch]]] = {}
    for k, p in enumerate(chunk):
        by_layer.setdefault(p.layer, []).append((k, p))
    hooks: list[tuple[Site, Any]] = []
    for layer, items in by_layer.items():
        if grow:
            def expand(act: torch.Tensor, site: Site, n: int = len(items)) -> torch.Tensor:
                return torch.cat([act, act[:n_b].repeat(n, *([1] * (act.dim() - 1)))])
            hooks.append((Site("resid_pre", layer), expand))

        def write(act: torch.Tensor, site: Site, items: list = items, src: torch.Tensor = source[layer]) -> torch.Tensor:
            out = act.clone()
            for k, p in items:
                pos = named[p.pos] if isinstance(p.pos, str) else p.pos
                _assign(out[(k + 1) * n_b:(k + 2) * n_b], src, p.head, pos)
            return out
        hooks.append((Site(component, layer), write))
    return hooks


def activation_patching(model: Any, data: Any, config: PatchConfig = PatchConfig()) -> Result:
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
    base, acts = run_baseline(model, pairs, [Site(config.component, l) for l in layers], counter,
                              with_logp="kl" in config.metrics)
    denoise = config.direction == "denoising"
    source = {l: (acts[Site(config.component, l)][:n_b] if denoise else acts[Site(config.component, l)][n_b:])
              for l in layers}
    receiver = pairs.corrupted if denoise else pairs.clean
    named = {k: pairs.named_positions(k) for k in {p.pos for p in patches if isinstance(p.pos, str)}}
    per_chunk = max(1, config.max_rows // n_b - 1)
    chunks = [patches[i:i + per_chunk] for i in range(0, len(patches), per_chunk)]
    values: dict[str, list[torch.Tensor]] = {m: [] for m in config.metrics}
    bar = chunks
    if config.progress:
        from tqdm.auto import tqdm

        bar = tqdm(chunks, desc=f"patching {config.component}", unit="pass")
    with torch.inference_mode():
        for chunk in bar:
            tokens = receiver if config.grow_batch else receiver.repeat(len(chunk) + 1, 1)
            hooks = _chunk_hooks(chunk, config.component, source, n_b, named, config.grow_batch)
            hid = last_hidden(model, tokens, pairs.last, hooks, grow=config.grow_batch, counter=counter)
            stats = row_stats(final_logits(model, hid), pairs, base.logp_clean if "kl" in config.metrics else None)
            stats = {k: v[n_b:] for k, v in stats.items()}  # drop the unpatched block
            for m, v in block_values(stats, n_b, base, tuple(config.metrics)).items():
                values[m].append(v)
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
        vals = torch.cat(values[m]).tolist()
        for p, v in zip(patches, vals):
            rows.append({"method": "exact", "direction": config.direction, "metric": m, "component": kind,
                         "site": config.component, "layer": p.layer, "head": -1 if p.head is None else p.head,
                         "pos": -1 if p.pos is None else (config.resolved_positions.index(p.pos)
                                                         if isinstance(p.pos, str) else p.pos),
                         "pos_label": label(p), "node": _node(kind, p), "value": float(v)})
    extra = {"ld_clean": base.mean_clean, "ld_corr": base.mean_corr, "prob_clean": float(base.p_clean.mean()),
             "prob_corr": float(base.p_corr.mean()), "n_prompts": n_b, "n_patches": len(patches),
             "forward_passes": counter.forward, "rows": counter.rows, "seconds": round(time.perf_counter() - t0, 3),
             "frac_ld_positive": float((base.ld_clean > 0).float().mean())}
    meta = run_meta(model, dataset=pairs.dataset.name, data=list(zip(pairs.texts, pairs.corrupted_texts)),
                    config=config, **extra)
    return Result("patching.nodes", pd.DataFrame(rows), meta, name=f"exact-{config.component}-{config.direction}")


def _node(kind: str, p: Patch) -> str:
    if kind == "head":
        return node_id("head", layer=p.layer, head=p.head)
    if kind == "mlp":
        return node_id("mlp", layer=p.layer)
    if kind == "resid":
        return node_id("resid", layer=p.layer)
    return ""
