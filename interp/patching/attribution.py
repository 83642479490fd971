"""Attribution patching: AtP for all nodes, EAP and EAP-IG for edges (METHODS.md section 2).

**AtP** (Nanda; Kramar et al. 2024): ``M(patched) - M(base) ~ (a_src - a_base) . dM/da |base``
for every node at once. Clean and corrupted prompts run side by side in ONE forward
pass with gradients; one backward pass of ``M(clean rows) + M(corrupted rows)`` gives
the gradients at both runs (rows are independent), so both directions cost one
forward + one backward. Nodes: heads (via ``z``), MLPs (``mlp_out``), attention
layers (``attn_out``) and the residual stream (``resid_pre``), over all positions or per
position. Node values estimate the *patched metric* in the units of
:func:`~interp.patching.activation_patching` (baseline + estimated change), so the two
Results compare row by row.

**EAP** (Syed et al.): ``score(u -> v) = (out_u,src - out_u,base) . dM/d(input_v) |base``
for senders u (EMBED, head outputs ``z_u W_O[u]``, MLP outputs) and receivers v (the
q/k/v inputs of every later head, every later MLP input, the logits). Per-head q/k/v
inputs come from TransformerLens' split-qkv mode (``set_use_split_qkv_input``, switched
on only inside the call); the MLP input is the residual entering the MLP's norm, hooked
so that only the MLP path carries its gradient. With grouped-query attention, k and v
inputs exist per KV head: their edge score is reported on every query head of the
group (column ``kv_head``). **EAP-IG** (Hanna et al. 2024) averages the gradients over
``ig_steps`` points ``alpha = k/m, k = 1..m`` on the straight line from the corrupted
to the clean input embeddings [U: right Riemann sum, as in the authors' code as we
read it]. **EAP-IG-activations** (``ig_mode="activations"``, edges only) instead interpolates
each sender group's output (the embedding, a layer's heads, an MLP) with the rest of the
run on the corrupted prompts (:func:`activation_ig_gradients`).
Edge values are estimated *changes* of the metric (normalised metrics divide
by ``LD_clean - LD_corr``). The sum of a node's out-edge scores equals its node score
(the residual stream is a sum), which the tests check.

Known weakness (AtP*): attention saturation and cancellation give false negatives;
validate the top nodes with exact patching.

Example:
    >>> from interp.datasets import TaskDataset
    >>> ds = TaskDataset("toy", ("cat on", "a dog to", "Al in a"), ("cow on", "a dog at", "Ed in a"),
    ...                  ("x", "y", "z"), ("q", "w", "e"))   # clean, corrupted, answers, wrong answers
    >>> r = attribution_patching(model, ds, AttributionConfig(components=("z",)))
    >>> r.table.query("component == 'head'").nlargest(3, "value")[["node", "value"]].round(2)
        node  value
    0  L0.H0   1.44
    7  L1.H3   0.43
    6  L1.H2   0.29
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from interp.errors import ConfigError
from interp.nodes import site_node
from interp.results import Result, run_meta
from interp.schemas import add_effect
from interp.sites import Site

from interp.patching._run import Counter, last_hidden
from interp.patching.exact import COMPONENT_KIND, DIRECTIONS, run_baseline
from interp.patching.metrics import PairData, check_metrics, final_logits, prepare_pairs, row_stats

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["AttributionConfig", "attribution_patching", "edge_attribution_patching", "agreement"]

_ATTR_METRICS = ("logit_diff_norm", "logit_diff", "prob")


@dataclass(frozen=True, kw_only=True)
class AttributionConfig:
    """Configuration of :func:`attribution_patching` and :func:`edge_attribution_patching`.

    Attributes:
        components: node sites for AtP: ``z`` (heads), ``mlp_out``, ``attn_out``, ``resid_pre``.
        positions: ``"all"`` (sum over positions) or ``"each"`` (one score per position).
        direction: ``"denoising"`` (gradient at the corrupted run) or ``"noising"`` (at the clean run).
        metric: ``logit_diff_norm``, ``logit_diff`` or ``prob`` (KL has zero gradient at clean).
        ig_steps: 0 = plain AtP / EAP; m > 0 = integrated gradients over m interpolation
            steps of the input embeddings (EAP-IG; 5 is typical).
        ig_mode: ``"inputs"`` (interpolate the input embeddings; EAP-IG-inputs) or ``"activations"``
            (edges only: interpolate each sender group's output, EAP-IG-activations; see
            :func:`activation_ig_gradients`).
        batch_size: prompts per pass (bounds memory; passes are counted in ``meta.extra``).
    """

    components: tuple[str, ...] = ("z", "mlp_out", "attn_out", "resid_pre")
    positions: str = "all"
    direction: str = "denoising"
    metric: str = "logit_diff_norm"
    ig_steps: int = 0
    batch_size: int = 32
    ig_mode: str = "inputs"

    def __post_init__(self) -> None:
        for c in self.components:
            if c not in COMPONENT_KIND or c == "resid_post":
                raise ConfigError(f"AtP component must be one of z, mlp_out, attn_out, resid_pre; got {c!r}")
        if self.positions not in ("all", "each"):
            raise ConfigError(f"positions must be 'all' or 'each', got {self.positions!r}")
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        check_metrics((self.metric,), _ATTR_METRICS)
        if self.ig_steps < 0 or self.batch_size < 1:
            raise ConfigError(f"ig_steps must be >= 0 and batch_size >= 1, got {self.ig_steps}, {self.batch_size}")
        if self.ig_mode not in ("inputs", "activations"):
            raise ConfigError(f"ig_mode must be 'inputs' or 'activations', got {self.ig_mode!r}")

    @property
    def method(self) -> str:
        if not self.ig_steps:
            return "atp"
        return "eap-ig" if self.ig_mode == "inputs" else "eap-ig-activations"


@contextlib.contextmanager
def split_qkv(model: Model) -> Iterator[None]:
    """Per-head q/k/v input hooks (TransformerLens split-qkv mode) inside the block only."""
    before = bool(getattr(model.cfg, "use_split_qkv_input", False))
    model.set_use_split_qkv_input(True)
    try:
        yield
    finally:
        model.set_use_split_qkv_input(before)


def _metric_rows(logits: torch.Tensor, pairs: PairData, metric: str) -> torch.Tensor:
    st = row_stats(logits, pairs, None)
    return st["ld"] if metric.startswith("logit_diff") else st["prob"]


def _grad_pass(model: Model, pairs: PairData, idx: torch.Tensor, embeds: torch.Tensor | None, sites: list[Site],
               metric: str, counter: Counter, rows_tokens: torch.Tensor,
               at: Site = Site("embed")) -> dict[Site, torch.Tensor]:
    """One forward + backward; returns the metric gradient (summed over rows' prompt means) at ``sites``.

    ``rows_tokens`` are the input rows (``k * b`` rows for ``b`` prompts); when ``embeds``
    is given it replaces the output of the hook at ``at`` (default the embedding: interpolated inputs).
    """
    sub = PairData(pairs.clean[idx], pairs.corrupted[idx], pairs.last[idx], pairs.answer_ids[idx],
                   pairs.counter_ids[idx], pairs.texts, pairs.corrupted_texts, pairs.dataset)
    acts: dict[Site, torch.Tensor] = {}

    def keep(a: torch.Tensor, s: Site) -> torch.Tensor:
        b = a * 1.0  # a fresh node that downstream uses, so autograd can differentiate w.r.t. it
        acts[s] = b
        return b

    hooks: list[tuple[Site, Any]] = []
    if embeds is not None:
        leaf = embeds.detach().clone().requires_grad_(True)  # so layer-0 inputs are in the graph too
        hooks.append((at, lambda a, s: leaf))
    hooks += [(s, keep) for s in sites]
    with torch.enable_grad():
        hid = last_hidden(model, rows_tokens, sub.last, hooks, grow=False, counter=counter)
        vals = _metric_rows(final_logits(model, hid), sub, metric)
        total = vals.sum() / len(pairs)  # mean over all prompts, summed over blocks
        grads = torch.autograd.grad(total, [acts[s] for s in sites], allow_unused=True)
    counter.backward += 1
    return {s: (g if g is not None else torch.zeros_like(acts[s])).detach() for s, g in zip(sites, grads)}


def _chunks(n: int, size: int) -> list[torch.Tensor]:
    return [torch.arange(i, min(n, i + size)) for i in range(0, n, size)]


def _gradients(model: Model, pairs: PairData, cfg: AttributionConfig, sites: list[Site],
               acts: dict[Site, torch.Tensor], counter: Counter) -> dict[str, dict[Site, torch.Tensor]]:
    """Gradients at ``sites``: ``{"clean": .., "corr": ..}`` (AtP) or ``{"ig": ..}`` (IG average)."""
    n_b = len(pairs)
    out: dict[str, dict[Site, torch.Tensor]] = {}
    dev = pairs.clean.device
    for idx in _chunks(n_b, cfg.batch_size):
        idx = idx.to(dev)
        b = len(idx)
        if cfg.ig_steps == 0:
            tokens = torch.cat([pairs.clean[idx], pairs.corrupted[idx]])
            g = _grad_pass(model, pairs, idx, None, sites, cfg.metric, counter, tokens)
            parts = {"clean": {s: v[:b] for s, v in g.items()}, "corr": {s: v[b:] for s, v in g.items()}}
        else:
            m = cfg.ig_steps
            e_clean, e_corr = acts[Site("embed")][:n_b][idx], acts[Site("embed")][n_b:][idx]
            alpha = (torch.arange(1, m + 1, device=dev, dtype=e_clean.dtype) / m).repeat_interleave(b)
            emb = e_corr.repeat(m, 1, 1) + alpha[:, None, None] * (e_clean - e_corr).repeat(m, 1, 1)
            g = _grad_pass(model, pairs, idx, emb, sites, cfg.metric, counter, pairs.clean[idx].repeat(m, 1))
            parts = {"ig": {s: v.reshape(m, b, *v.shape[1:]).sum(0) / m for s, v in g.items()}}
        for key, grads in parts.items():
            dst = out.setdefault(key, {})
            for s, v in grads.items():
                dst[s] = torch.cat([dst[s], v]) if s in dst else v
    return out


def activation_ig_gradients(model: Model, pairs: PairData, cfg: AttributionConfig, sites: list[Site],
                            acts: dict[Site, Float[Tensor, "rows pos ..."]], counter: Counter,
                            group: Site) -> dict[Site, Float[Tensor, "rows pos ..."]]:
    """EAP-IG-activations: metric gradients at ``sites`` averaged over ``cfg.ig_steps`` runs of the corrupted
    prompts in which the sender group ``group`` (``embed``, all heads of a layer via ``z``, or ``mlp_out``) outputs
    ``a_corr + alpha (a_clean - a_corr)``, ``alpha = k/m, k = 1..m`` (right Riemann sum, as in the authors'
    ``get_scores_ig_activations``); the m steps of a prompt chunk run as one batch.

    Hanna et al.'s code runs the *clean* prompts with one layer's output interpolated and adds every layer's
    runs into every edge; here the base run is the corrupted one (denoising, as every method of this module)
    and a sender's edges take the gradients of its own group's runs only, so that (integrated-gradients
    completeness) a group's summed out-edge scores tend, as m grows, to the exact effect of patching the
    group's clean output into the corrupted run. ``group = embed`` is the inputs variant's run exactly.
    """
    n_b, m = len(pairs), cfg.ig_steps
    dev = pairs.clean.device
    out: dict[Site, torch.Tensor] = {}
    for idx in _chunks(n_b, cfg.batch_size):
        idx = idx.to(dev)
        b = len(idx)
        a_clean, a_corr = acts[group][:n_b][idx], acts[group][n_b:][idx]
        alpha = (torch.arange(1, m + 1, device=dev, dtype=a_clean.dtype) / m).repeat_interleave(b)
        alpha = alpha.reshape(-1, *([1] * (a_clean.dim() - 1)))
        interp = a_corr.repeat(m, *([1] * (a_clean.dim() - 1))) + alpha * (a_clean - a_corr).repeat(
            m, *([1] * (a_clean.dim() - 1)))
        g = _grad_pass(model, pairs, idx, interp, sites, cfg.metric, counter, pairs.corrupted[idx].repeat(m, 1),
                       at=group)
        for s, v in g.items():
            v = v.reshape(m, b, *v.shape[1:]).sum(0) / m
            out[s] = torch.cat([out[s], v]) if s in out else v
    return out


def _grad_for(grads: dict[str, dict[Site, torch.Tensor]], cfg: AttributionConfig) -> dict[Site, torch.Tensor]:
    if cfg.ig_steps:
        return grads["ig"]
    return grads["corr"] if cfg.direction == "denoising" else grads["clean"]


def _delta(acts: dict[Site, torch.Tensor], site: Site, n_b: int, direction: str) -> torch.Tensor:
    a_clean, a_corr = acts[site][:n_b], acts[site][n_b:]
    return a_clean - a_corr if direction == "denoising" else a_corr - a_clean


def _scale(base: Any, cfg: AttributionConfig) -> float:
    """Divisor turning an estimated change of the raw metric into the change of ``cfg.metric``."""
    return base.mean_clean - base.mean_corr if cfg.metric == "logit_diff_norm" else 1.0


def attribution_patching(model: Model, data: Any, config: AttributionConfig = AttributionConfig(), *,
                         exact: Result | None = None) -> Result:
    """AtP (or, with ``ig_steps``, integrated-gradients) scores for every node of ``config.components``.

    Args:
        model: a model from :func:`interp.load_model`.
        data: a TaskDataset of clean/corrupted pairs (equal lengths, single-token answers).
        config: :class:`AttributionConfig`.
        exact: an exact :func:`activation_patching` Result of the same direction and metric;
            Spearman/Pearson agreement is then stored in ``meta.extra["agreement"]``.

    Returns:
        Result ``patching.nodes`` (method ``atp`` or ``eap-ig``), columns as
        :func:`activation_patching`; ``meta.extra`` counts forward and backward passes.
    """
    if config.ig_steps and config.ig_mode != "inputs":
        raise ConfigError("attribution_patching: ig_mode='activations' is for edges (edge_attribution_patching); "
                          "node IG interpolates the inputs")
    t0 = time.perf_counter()
    pairs = prepare_pairs(model, data)
    n_b, n_layers = len(pairs), model.cfg.n_layers
    counter = Counter()
    sites = [Site(c, l) for c in config.components for l in range(n_layers)]
    if config.ig_steps:  # one no-grad pass for activations, then m interpolated forward+backward passes
        base, acts = run_baseline(model, pairs, sites + [Site("embed")], counter, with_logp=False)
        grads = _gradients(model, pairs, config, sites, acts, counter)
    else:  # one forward (clean and corrupted side by side) + one backward
        base, acts = _atp_single_pass(model, pairs, config, sites, counter)
        grads = acts.pop("__grads__")
    g = _grad_for(grads, config)
    div = _scale(base, config)
    rows = []
    tokens0 = pairs.clean[0].tolist()
    for s in sites:
        delta = _delta(acts, s, n_b, config.direction)
        prod = (delta * g[s]).sum(-1)  # [B, P] or [B, P, H]
        per_pos = prod.sum(0)  # [P] or [P, H]
        kind = COMPONENT_KIND[s.component]
        heads = range(model.cfg.n_heads) if s.component == "z" else [None]
        for h in heads:
            col = per_pos[:, h] if h is not None else per_pos
            items = [(-1, "all", float(col.sum()))] if config.positions == "all" else \
                [(p, model.tokenizer.decode([tokens0[p]]), float(col[p])) for p in range(col.shape[0])]
            for p, lab, v in items:
                rows.append({"method": config.method, "direction": config.direction, "metric": config.metric,
                             "component": kind, "site": s.component, "layer": s.layer,
                             "head": -1 if h is None else h, "pos": p, "pos_label": lab,
                             "node": site_node(Site(s.component, s.layer, head=h), missing=""), "value": v / div})
    table = add_effect(pd.DataFrame(rows), base.reference(config.direction), estimated=True)
    extra: dict[str, Any] = {"ld_clean": base.mean_clean, "ld_corr": base.mean_corr, "n_prompts": n_b,
                             "forward_passes": counter.forward, "backward_passes": counter.backward,
                             "seconds": round(time.perf_counter() - t0, 3)}
    if exact is not None:
        extra["agreement"] = agreement(table, exact)
    meta = run_meta(model, dataset=pairs.dataset.name, data=list(zip(pairs.texts, pairs.corrupted_texts)),
                    config=config, **extra)
    return Result("patching.nodes", table, meta, name=f"{config.method}-{config.direction}")


def _atp_single_pass(model: Model, pairs: PairData, cfg: AttributionConfig, sites: list[Site],
                     counter: Counter) -> tuple[Any, dict]:
    """AtP: clean and corrupted side by side, one forward with gradients and one backward (per prompt chunk)."""
    from interp.patching.metrics import Baseline

    n_b = len(pairs)
    acts_c: dict[Site, list[torch.Tensor]] = {s: [] for s in sites}
    acts_k: dict[Site, list[torch.Tensor]] = {s: [] for s in sites}
    grads: dict[str, dict[Site, list[torch.Tensor]]] = {"clean": {s: [] for s in sites}, "corr": {s: [] for s in sites}}
    lds: list[torch.Tensor] = []
    probs: list[torch.Tensor] = []
    for idx in _chunks(n_b, cfg.batch_size):
        idx = idx.to(pairs.clean.device)
        b = len(idx)
        sub = PairData(pairs.clean[idx], pairs.corrupted[idx], pairs.last[idx], pairs.answer_ids[idx],
                       pairs.counter_ids[idx], tuple(pairs.texts[i] for i in idx.tolist()),
                       tuple(pairs.corrupted_texts[i] for i in idx.tolist()), pairs.dataset)
        acts: dict[Site, torch.Tensor] = {}

        def keep(a: torch.Tensor, s: Site) -> torch.Tensor:
            out = a * 1.0
            acts[s] = out
            return out

        with torch.enable_grad():
            hid = last_hidden(model, torch.cat([sub.clean, sub.corrupted]), sub.last, [(s, keep) for s in sites],
                              grow=False, counter=counter)
            st = row_stats(final_logits(model, hid), sub, None)
            vals = st["ld"] if cfg.metric.startswith("logit_diff") else st["prob"]
            g = torch.autograd.grad(vals.sum() / n_b, [acts[s] for s in sites], allow_unused=True)
        counter.backward += 1
        lds.append(st["ld"].detach())
        probs.append(st["prob"].detach())
        for s, gs in zip(sites, g):
            gs = torch.zeros_like(acts[s]) if gs is None else gs.detach()
            a = acts[s].detach()
            acts_c[s].append(a[:b])
            acts_k[s].append(a[b:])
            grads["clean"][s].append(gs[:b])
            grads["corr"][s].append(gs[b:])
    ld = [(x[: len(x) // 2], x[len(x) // 2:]) for x in lds]
    pr = [(x[: len(x) // 2], x[len(x) // 2:]) for x in probs]
    base = Baseline(ld_clean=torch.cat([a for a, _ in ld]), ld_corr=torch.cat([b for _, b in ld]),
                    p_clean=torch.cat([a for a, _ in pr]), p_corr=torch.cat([b for _, b in pr]),
                    logp_clean=torch.empty(0))
    base.check(pairs)
    out: dict[Any, Any] = {s: torch.cat([torch.cat(acts_c[s]), torch.cat(acts_k[s])]) for s in sites}
    out["__grads__"] = {k: {s: torch.cat(v[s]) for s in sites} for k, v in grads.items()}
    return base, out


def agreement(table: pd.DataFrame | Result, exact: pd.DataFrame | Result) -> dict[str, Any]:
    """Spearman and Pearson correlation of estimated node effects with exact patching's, per component.

    Edge tables (``src``/``dst`` columns) are first summed over each sender's out-edges.
    Rows are matched on (component, layer, head, pos); ``exact`` is filtered to the
    table's metric and direction.

    Returns:
        ``{component: {"spearman", "pearson", "n"}}`` (only components present in both).
    """
    t = table.table if isinstance(table, Result) else table
    e = exact.table if isinstance(exact, Result) else exact
    if "src" in t.columns:
        t = node_sums(t)
    metric, direction = t["metric"].iloc[0], t["direction"].iloc[0]
    e = e[(e["metric"] == metric) & (e["direction"] == direction)]
    keys = ["component", "layer", "head", "pos"]
    j = t.merge(e[keys + ["effect"]], on=keys, suffixes=("", "_exact"))
    out: dict[str, Any] = {}
    for comp, grp in j.groupby("component"):
        if len(grp) < 3:
            continue
        out[str(comp)] = {"spearman": float(grp["effect"].corr(grp["effect_exact"], method="spearman")),
                          "pearson": float(grp["effect"].corr(grp["effect_exact"], method="pearson")),
                          "n": int(len(grp))}
    return out


def node_sums(edges: pd.DataFrame) -> pd.DataFrame:
    """Sum edge scores over each sender's out-edges (k/v edges of GQA groups counted once).

    Returns a node table (component, layer, head, pos=-1, node, effect, value) comparable row by
    row with :func:`attribution_patching` and exact patching (``effect`` is the summed estimate).
    """
    from interp.nodes import parse_node_id

    e = edges[(edges["dst_input"].isin(["q", "mlp", "logits"])) | (edges["first_in_group"])]
    sums = e.groupby("src", sort=False)["effect"].sum()
    ref = float(edges["reference_value"].iloc[0])
    rows = []
    for src, v in sums.items():
        info = parse_node_id(src)
        comp = {"head": "head", "mlp": "mlp", "embed": "embed"}[info["kind"]]
        rows.append({"method": edges["method"].iloc[0], "direction": edges["direction"].iloc[0],
                     "metric": edges["metric"].iloc[0], "component": comp,
                     "layer": -1 if info["layer"] is None else info["layer"],
                     "head": -1 if info["head"] is None else info["head"], "pos": -1, "node": src,
                     "reference_value": ref, "effect": float(v), "value": ref + float(v)})
    return pd.DataFrame(rows)


from interp.patching.edges import edge_attribution_patching  # noqa: E402  (re-export; edges use this module)
