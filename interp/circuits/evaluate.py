"""Edge-level circuit evaluation through the one engine (EAP-IG / auto-circuit semantics).

A circuit is a set of edges (:mod:`interp.circuits.edges`). It is evaluated on the clean
prompts with every edge *outside* it patched: each receiver input (q/k/v of a head, an MLP
input, the logits' final residual) sees, from every sender not connected to it in the circuit,
that sender's corrupted (or mean) output instead of the output the sender computes in this
run::

    input_r = resid_r - sum_{u not in C(r)} (out_u - out_u,corrupted)
            = resid_r,corrupted + sum_{u in C(r)} (out_u - out_u,corrupted)

where ``out_u`` is the sender's output *in the circuit's own run* (itself changed by the patches
upstream), as EAP-IG's ``evaluate_graph`` and auto-circuit compute it. Both lines are equal because
the residual stream is the sum of the sender outputs (plus constant biases), which is why
architectures with parallel attention/MLP or post-norms are refused. A receiver with every edge in
the circuit is left alone and one with none reads the corrupted residual, so the full model is
the clean run (faithfulness exactly 1) and, under patching, a circuit without an edge into ``LOGITS``
(the empty one among them) the corrupted run (exactly 0); neither needs a pass.

How: one pass records the clean and corrupted runs side by side (the baselines and every
corrupted sender output and receiver input); then each circuit is an engine world on the clean
prompts whose ``apply`` interventions keep the world's own sender outputs (heads ``z W_O`` per
head, ``mlp_out``) and rewrite the receivers' inputs (``q_input``/``k_input``/``v_input`` in
TransformerLens split-qkv mode, ``mlp_in``, ``final_resid``), using for each receiver group
whichever form of the sum above touches fewer senders. Several circuits run as worlds of one pass.

Metric: the logit difference (:func:`interp.metrics.logit_diff`) at each prompt's last token,
mean over prompts; ``faithfulness = (LD_circuit - LD_corrupted) / (LD_clean - LD_corrupted)``.

Example:
    >>> from interp import load_model
    >>> from interp.datasets import TaskDataset
    >>> from interp.circuits.edges import model_edges
    >>> model = load_model("toy:llama,n_layers=2")
    >>> ds = TaskDataset("demo", clean=("ab cd x", "ef gh y"), corrupted=("ab ce x", "ef gi y"),
    ...                  answers=("y", "z"), counterfactuals=("z", "y"))
    >>> r = evaluate_circuits(model, ds, {"none": [], "all": model_edges(model)})
    >>> r.table[["circuit", "n_edges"]].values.tolist()
    [['none', 0], ['all', 82]]
    >>> r.table.set_index("circuit").faithfulness.round(6).abs().to_dict()   # abs: the empty circuit gives -0.0
    {'none': 0.0, 'all': 1.0}
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from interp.errors import ConfigError
from interp.sites import Site

from interp.circuits.edges import Edge, canonical, circuit_nodes, model_edges, receivers, senders

__all__ = ["EdgeEvalConfig", "Evaluator", "evaluate_circuits"]

ABLATIONS = ("patching", "mean")


@dataclass(frozen=True, kw_only=True)
class EdgeEvalConfig:
    """Configuration of edge-level circuit evaluation.

    Attributes:
        ablation: ``"patching"`` (an edge outside the circuit carries the sender's output on the
            paired corrupted prompt) or ``"mean"`` (its mean over the corrupted prompts, per position).
        max_rows: most batch rows in one pass (each circuit is one block of ``n_prompts`` rows; each
            world keeps its sender outputs, ``n_senders x rows x pos x d_model`` numbers).
        enter: start each circuit at the first layer where it rewrites a receiver, from the clean run's
            residual there (recorded in the baseline pass): below that layer the circuit's run *is* the clean
            run. Exact up to float rounding (1e-5 in the tests); False runs every circuit from the tokens.
    """

    ablation: str = "patching"
    max_rows: int = 64
    enter: bool = True

    def __post_init__(self) -> None:
        if self.ablation not in ABLATIONS:
            raise ConfigError(f"ablation must be one of {ABLATIONS}, got {self.ablation!r}")
        if self.max_rows < 1:
            raise ConfigError(f"max_rows must be >= 1, got {self.max_rows}")


@dataclass(frozen=True)
class _Hook:
    """One receiver hook point: its site and the receiver index of each column (head axis) or the one receiver."""

    site: Site
    cols: tuple[int, ...]
    per_head: bool
    n_before: int          # senders that precede this hook (a prefix of the sender order)
    corr: str              # baseline site whose corrupted value is this hook's input


@dataclass(frozen=True, eq=False)
class Recorded:
    """A circuit's own run, kept so that circuits equal to it below layer ``e`` start there (:meth:`Evaluator.record`).

    Attributes:
        mask: the circuit (``[senders, receivers]``).
        resid: ``{layer: [batch, pos, d_model]}`` residual entering each layer in the circuit's run.
        deltas: ``[senders, batch * pos * d_model]`` each sender's output minus its corrupted (or mean) output
            in the circuit's run.
    """

    mask: Tensor
    resid: dict[int, Tensor]
    deltas: Tensor


class Evaluator:
    """Edge-level evaluation of many circuits on one dataset (the baseline pass is run once).

    Args:
        model: a model from :func:`interp.load_model` (no parallel attention/MLP, no post-norms).
        data: a TaskDataset of clean/corrupted pairs with answers and counterfactuals (or PairData).
        config: :class:`EdgeEvalConfig`.

    Attributes:
        ld_clean, ld_corrupted: mean logit differences of the clean and corrupted runs.
        edges: every edge of the model's graph (canonical form).
    """

    def __init__(self, model: Any, data: Any, config: EdgeEvalConfig = EdgeEvalConfig()) -> None:
        from interp.arch import require_arch
        from interp.patching._run import Counter
        from interp.patching.metrics import prepare_pairs

        require_arch(model, method="edge-level circuit evaluation", causal=True, parallel_attn_mlp=False, post_attn_norm=False,
                     post_mlp_norm=False)
        self.model, self.config = model, config
        self.counter = Counter()
        self.pairs = pairs = prepare_pairs(model, data)
        cfg = model.cfg
        self.n_layers, self.n_heads = int(cfg.n_layers), int(cfg.n_heads)
        self.n_kv = int(getattr(cfg, "n_key_value_heads", None) or self.n_heads)
        self.senders = senders(model)
        self.receivers = receivers(model)
        self._s_index = {s: i for i, s in enumerate(self.senders)}
        self._r_index = {r: i for i, r in enumerate(self.receivers)}
        self.valid = valid = self._graph()
        self.n_edges = int(valid.sum())
        # the layer a circuit changed at a receiver enters at (LOGITS: the last layer, recomputed)
        self._r_layer = torch.tensor([self.n_layers - 1 if d == "LOGITS" else int(d[1:].split(".")[0])
                                      for d, _ in self.receivers])
        self._hooks = self._receiver_hooks()
        has_pos = Site("pos_embed").hook_name in getattr(model, "hook_dict", {})
        sites = [Site("embed"), *([Site("pos_embed")] if has_pos else []), Site("final_resid")]
        for l in range(self.n_layers):
            sites += [Site("z", l), Site("mlp_out", l), Site("resid_pre", l), Site("resid_mid", l)]
        acts = self._baseline(sites)
        has_pos = Site("pos_embed") in acts      # the hook exists on every bridge; it fires for absolute positions
        n_b = len(pairs)
        mean = config.ablation == "mean"
        keep = self._real_positions()

        def corr(site: Site) -> Tensor:
            a = acts[site][n_b:]
            if not mean:
                return a
            w = keep.to(a.dtype).reshape(*keep.shape, *([1] * (a.dim() - 2)))
            return ((a * w).sum(0) / w.sum(0).clamp_min(1))[None]

        emb = acts[Site("embed")] + (acts[Site("pos_embed")] if has_pos else 0)
        self._d_embed = emb[:n_b] - (corr(Site("embed")) + (corr(Site("pos_embed")) if has_pos else 0))
        self._z_corr = {l: corr(Site("z", l)) for l in range(self.n_layers)}
        self._mlp_corr = {l: corr(Site("mlp_out", l)) for l in range(self.n_layers)}
        self._in_corr = {str(s): corr(s) for s in sites if s.component in ("resid_pre", "resid_mid", "final_resid")}
        self._w_o = {l: model.blocks[l].attn.W_O.detach() for l in range(self.n_layers)}
        # the clean run, for circuits entering at a layer: residuals entering each layer, and its sender outputs
        self._resid_clean = {l: acts[Site("resid_pre", l)][:n_b] for l in range(self.n_layers)}
        self._z_clean = {l: acts[Site("z", l)][:n_b] for l in range(self.n_layers)}
        self._mlp_clean = {l: acts[Site("mlp_out", l)][:n_b] for l in range(self.n_layers)}
        self._pre: Tensor | None = None

    def _baseline(self, sites: list[Site]) -> dict[Site, Tensor]:
        """Clean and corrupted rows side by side in one engine pass: baselines, and the activations at ``sites``
        (``[2 * batch, ...]``, clean first; kept by reference, nothing downstream writes to them)."""
        from interp.engine import forward_hidden
        from interp.metrics import kl, log_probs
        from interp.patching.metrics import Baseline, final_logits, row_stats

        pairs, n_b = self.pairs, len(self.pairs)
        acts: dict[Site, Tensor] = {}

        def keep(a: Tensor, site: Site) -> None:
            acts[site] = a.detach()
        with torch.inference_mode():
            hid = forward_hidden(self.model, torch.cat([pairs.clean, pairs.corrupted]), pairs.last,
                                 [(s, keep) for s in sites], grow=False, counter=self.counter)
            logits = final_logits(self.model, hid)
            st = row_stats(logits, pairs, None)
            self.logp_clean = log_probs(logits[:n_b])          # for the KL metric of run_masks
            self.kl_corrupted = float(kl(logits[n_b:], self.logp_clean).double().mean())
        base = Baseline(ld_clean=st["ld"][:n_b], ld_corr=st["ld"][n_b:], p_clean=st["prob"][:n_b],
                        p_corr=st["prob"][n_b:], logp_clean=torch.empty(0))
        base.check(pairs)
        self.base = base
        self.ld_clean, self.ld_corrupted = base.mean_clean, base.mean_corr
        return acts

    # ----------------------------------------------------------------------- structure
    @functools.cached_property
    def edges(self) -> list[Edge]:
        """Every edge of the model's graph (:func:`model_edges`; built on first use: 70k Python tuples on SmolLM2)."""
        return model_edges(self.model)

    def _graph(self) -> Tensor:
        """``[senders, receivers]`` bool: the edges of :func:`model_edges`, without building them (same rule: a sender
        of a layer before the receiver's, or a head of the MLP's own layer; EMBED feeds everything)."""
        layer = [-1] + [l for l in range(self.n_layers) for _ in range(self.n_heads + 1)]
        s_layer = torch.tensor(layer)
        s_head = torch.tensor([False] + [h < self.n_heads for _ in range(self.n_layers)
                                         for h in range(self.n_heads + 1)])
        r_layer = torch.tensor([self.n_layers if d == "LOGITS" else int(d[1:].split(".")[0]) for d, _ in self.receivers])
        r_mlp = torch.tensor([inp == "mlp" for _, inp in self.receivers])
        return (s_layer[:, None] < r_layer[None]) | (r_mlp[None] & s_head[:, None] & (s_layer[:, None] == r_layer[None]))

    def _real_positions(self) -> Tensor:
        n_pos = int(self.pairs.clean.shape[1])
        return torch.arange(n_pos, device=self.pairs.last.device)[None] <= self.pairs.last[:, None]

    def _block(self, layer: int) -> int:
        """Index of the first sender of ``layer`` (its head 0)."""
        return 1 + layer * (self.n_heads + 1)

    def _receiver_hooks(self) -> list[_Hook]:
        rep = self.n_heads // self.n_kv
        out = []
        for l in range(self.n_layers):
            b = self._block(l)
            for inp, n in (("q", self.n_heads), ("k", self.n_kv), ("v", self.n_kv)):
                step = 1 if inp == "q" else rep
                cols = tuple(self._r_index[(f"L{l}.H{h * step}", inp)] for h in range(n))
                out.append(_Hook(Site(f"{inp}_input", l), cols, True, b, str(Site("resid_pre", l))))
            out.append(_Hook(Site("mlp_in", l), (self._r_index[(f"L{l}.MLP", "mlp")],), False, b + self.n_heads,
                             str(Site("resid_mid", l))))
        out.append(_Hook(Site("final_resid"), (self._r_index[("LOGITS", "logits")],), False, len(self.senders),
                         str(Site("final_resid"))))
        return out

    def mask(self, edges: Iterable[Any], *, what: str = "circuit") -> Tensor:
        """``[senders, receivers]`` boolean matrix of a circuit (validated; see :func:`canonical`)."""
        m = torch.zeros_like(self.valid)
        for s, d, inp in canonical(self.model, edges, what=what):
            m[self._s_index[s], self._r_index[(d, inp)]] = True
        return m

    # ----------------------------------------------------------------------- evaluation
    def run_masks(self, masks: Sequence[Tensor], *, metric: str = "logit_diff", ref: Recorded | None = None) -> Tensor:
        """Mean logit difference (float64 ``[circuit]``) of each circuit given as a :meth:`mask`.

        With ``metric="kl"``: the mean ``KL(clean || circuit)`` of the next-token distributions at each
        prompt's last token (:func:`interp.metrics.kl`) instead.

        With ``config.enter``, each circuit starts at the first layer where its receivers differ from those of
        ``ref`` (a :meth:`record` ed circuit; None: the full graph, i.e. the clean run of the baseline pass),
        from ``ref``'s residual and sender outputs there.

        A circuit holding every edge is the clean run and, with ``ablation="patching"``, one with no edge into
        ``LOGITS`` the corrupted run (the logits read the corrupted final residual): their values are the
        baselines, without a pass.
        """
        if metric not in ("logit_diff", "kl"):
            raise ConfigError(f"run_masks: metric must be 'logit_diff' or 'kl', got {metric!r}")
        clean_value, corr_value = (self.ld_clean, self.ld_corrupted) if metric == "logit_diff" else \
            (0.0, self.kl_corrupted)
        from interp.engine import run
        from interp.patching.attribution import split_qkv
        from interp.patching.metrics import hidden_stats

        n_b = len(self.pairs)
        per_pass = max(1, self.config.max_rows // n_b)
        out = torch.empty(len(masks), dtype=torch.float64)
        logits = self._r_index[("LOGITS", "logits")]
        todo = []
        for i, m in enumerate(masks):
            if not bool((self.valid & ~m).any()):      # every edge kept: the clean run itself
                out[i] = clean_value
            elif not bool(m[:, logits].any()) and self.config.ablation == "patching":  # the corrupted run itself
                out[i] = corr_value
            else:
                todo.append(i)
        with torch.inference_mode(), split_qkv(self.model):
            for c0 in range(0, len(todo), per_pass):
                chunk = todo[c0:c0 + per_pass]
                worlds = [self._world(masks[i], ref) for i in chunk]
                hid = run(self.model, self.pairs.clean, worlds, positions=self.pairs.last, readout="hidden",
                          counter=self.counter).worlds
                flat = hid.reshape(-1, hid.shape[-1])
                if metric == "kl":
                    v = hidden_stats(self.model, flat, self.pairs, self.logp_clean, ("kl",))["kl"]
                else:
                    v = hidden_stats(self.model, flat, self.pairs, None, ("logit_diff",))["ld"]
                out[chunk] = v.reshape(len(worlds), n_b).double().mean(1).cpu()
        return out

    def record(self, mask: Tensor, ref: Recorded | None = None) -> Recorded:
        """Run one circuit (one pass; entering from ``ref`` as :meth:`run_masks` does) and keep its residual entering
        every layer and every sender's output, for :meth:`run_masks` ``(..., ref=)``."""
        from interp.engine import run
        from interp.patching.attribution import split_qkv

        if not bool((self.valid & ~mask).any()):          # the full graph: the clean run of the baseline pass
            return Recorded(mask.clone(), dict(self._resid_clean), self._prefix(len(self.senders)))
        world, store = self._world(mask, ref, keep_all=True, with_store=True)
        enter = world.enter or 0
        sites = [Site("resid_pre", l) for l in range(enter, self.n_layers)]
        with torch.inference_mode(), split_qkv(self.model):
            out = run(self.model, self.pairs.clean, [world], positions=self.pairs.last, readout="hidden",
                      record=sites, counter=self.counter)
        rec = out.recorded[0]
        base = self._deltas(ref, store["b"])
        resid = {l: (ref.resid[l] if ref is not None else self._resid_clean[l]) for l in range(enter)}
        resid.update({l: rec[Site("resid_pre", l)] for l in range(enter, self.n_layers)})
        deltas = torch.cat([base[:store["b"]], store["d"].to(base.dtype)]) if "d" in store else base
        return Recorded(mask.clone(), resid, deltas)

    def faithfulness(self, ld: Tensor | float) -> Tensor | float:
        """``(ld - LD_corrupted) / (LD_clean - LD_corrupted)`` (:func:`interp.metrics.normalized`)."""
        from interp.metrics import normalized

        return normalized(ld, clean=self.ld_clean, corrupted=self.ld_corrupted)

    def _world(self, mask: Tensor, ref: Recorded | None = None, *, keep_all: bool = False,
               with_store: bool = False) -> Any:
        """One circuit as an engine world: ``apply`` interventions at sender and receiver hooks.

        With ``config.enter`` the world enters at the first layer ``e`` where its receivers differ from those of
        ``ref`` (default: the full graph, whose run is the clean one; a change at the logits only enters at the
        last layer), from ``ref``'s residual there; the outputs of the senders before ``e`` are ``ref``'s
        (:meth:`_deltas`), and the world keeps its own from layer ``e`` on (all of them with ``keep_all``).
        """
        from interp.engine import Intervention, World

        plans = []
        for hk in self._hooks:
            plan = self._plan(hk, mask)
            if plan is not None:
                plans.append((hk, plan))
        enter = 0
        if self.config.enter:
            base = self.valid if ref is None else ref.mask
            diff = ((mask ^ base) & self.valid).any(0)
            enter = int(self._r_layer[diff].min()) if bool(diff.any()) else self.n_layers - 1
            # receivers below the entry layer are ref's, already in the residual the world enters with
            plans = [(hk, plan) for hk, plan in plans if hk.site.layer is None or hk.site.layer >= enter]
        store: dict[str, Any] = {"b": self._block(enter), "ref": ref}
        if not plans and not enter:      # the full graph: the clean run
            return (World(()), store) if with_store else World(())
        need = torch.full((len(self.senders),), keep_all, dtype=torch.bool)
        for _, plan in plans:
            need[plan[2]] = True            # rows None (dense): every sender
        ivs = []
        for l in range(enter, self.n_layers):
            b = self._block(l)
            if bool(need[b:b + self.n_heads].any()):
                ivs.append(Intervention("apply", Site("z", l), self._keep_heads(l, store)))
            if bool(need[b + self.n_heads]):
                ivs.append(Intervention("apply", Site("mlp_out", l), self._keep_mlp(l, store)))
        for hk, plan in plans:   # one intervention per hook point: the engine runs them in forward order
            ivs.append(Intervention("apply", hk.site, self._rewrite(hk, plan, store)))
        world = World(tuple(ivs))
        if enter:
            world = World(tuple(ivs), enter=enter, entry=self._resid_clean[enter] if ref is None else ref.resid[enter])
        return (world, store) if with_store else world

    def _deltas(self, ref: Recorded | None, b: int) -> Tensor:
        """Sender deltas of ``ref``'s run (None: the clean run's, :meth:`_prefix`), at least the first ``b`` rows."""
        return self._prefix(b) if ref is None else ref.deltas

    def _prefix(self, b: int) -> Tensor:
        """``[>= b, rows * pos * d_model]``: the clean run's sender deltas (output - corrupted output) of the first
        ``b`` senders in sender order (EMBED's alone for ``b = 1``; all of them are built once, on first need)."""
        if b <= 1:
            return self._d_embed.reshape(1, -1)
        if self._pre is None:
            n, p, d = self._d_embed.shape
            pre = self._d_embed.new_empty(len(self.senders), n * p * d)
            pre[0] = self._d_embed.reshape(-1)
            for l in range(self.n_layers):
                z, i = self._z_clean[l], self._block(l)
                pre[i:i + self.n_heads] = torch.einsum("nphk,hkd->hnpd", z - self._z_corr[l].to(z.dtype),
                                                       self._w_o[l].to(z.dtype)).reshape(self.n_heads, -1)
                pre[i + self.n_heads] = (self._mlp_clean[l] - self._mlp_corr[l]).reshape(-1)
            self._pre = pre
        return self._pre

    def _plan(self, hk: _Hook, mask: Tensor) -> tuple[str, list[int], Tensor | None, Tensor, list[int]] | None:
        """How to rewrite one receiver hook for a circuit, or None (every receiver has all its edges).

        Returns ``(form, partial columns, sender rows (None: every sender before the hook), [rows, partial]
        matrix, empty columns)``: form ``"in"``
        rebuilds the partial columns from the corrupted input plus the circuit's senders, ``"out"`` subtracts
        the senders outside the circuit from the run's own input; empty columns read the corrupted input.
        """
        cols = list(hk.cols)
        sub = mask[:hk.n_before, cols]
        out_edges = self.valid[:hk.n_before, cols] & ~sub
        full = ~out_edges.any(0)
        empty = ~sub.any(0)
        if bool(full.all()):
            return None
        partial = [j for j in range(len(cols)) if not bool(full[j]) and not bool(empty[j])]
        empties = [j for j in range(len(cols)) if bool(empty[j]) and not bool(full[j])]
        rows_in = sub[:, partial].any(1).nonzero().flatten()
        rows_out = out_edges[:, partial].any(1).nonzero().flatten()
        form, rows, full_mat = ("in", rows_in, sub) if len(rows_in) <= len(rows_out) else ("out", rows_out, out_edges)
        if 2 * len(rows) > hk.n_before:   # dense: multiply the stored prefix as it is (no gathered copy)
            return form, partial, None, full_mat[:, partial], empties
        return form, partial, rows, full_mat[rows][:, partial], empties

    def _keep_heads(self, layer: int, store: dict[str, Any]) -> Any:
        z_corr, w_o = self._z_corr[layer], self._w_o[layer]
        b = self._block(layer)

        def fn(z: Tensor) -> None:
            n, p, h, k = z.shape
            rows = self._own(store, z)[b - store["b"]:b - store["b"] + h]
            dz = (z - z_corr.to(z.dtype)).reshape(n * p, h, k).transpose(0, 1)       # [h, n * p, k]
            torch.matmul(dz, w_o.to(z.dtype), out=rows.view(h, n * p, -1))        # z W_O per head, in place
        return fn

    def _keep_mlp(self, layer: int, store: dict[str, Any]) -> Any:
        corr = self._mlp_corr[layer]
        i = self._block(layer) + self.n_heads

        def fn(x: Tensor) -> None:
            self._put(store, i, (x - corr.to(x.dtype))[None], x)
        return fn

    def _own(self, store: dict[str, Any], like: Tensor) -> Tensor:
        """The world's own sender rows (senders from its first, ``store["b"]``; a row is read only after its sender's
        hook wrote it: :meth:`_world` keeps every sender a rewrite reads)."""
        if "d" not in store:
            n, p = like.shape[0], like.shape[1]
            store["d"] = like.new_empty(len(self.senders) - store["b"], n * p * self.model.cfg.d_model)
        return store["d"]

    def _put(self, store: dict[str, Any], i: int, d: Tensor, like: Tensor) -> None:
        """Keep sender ``i``'s deltas in the world's own rows."""
        j = i - store["b"]
        self._own(store, like)[j:j + d.shape[0]] = d.reshape(d.shape[0], -1)

    def _rewrite(self, hk: _Hook, plan: tuple, store: dict[str, Any]) -> Any:
        """The hook's rewrite, in place on the world's rows (few tensor ops: each costs on a busy CPU)."""
        form, partial, rows, mat, empties = plan
        corr_in = self._in_corr[hk.corr]
        n_cols = len(hk.cols)
        all_empty = len(empties) == n_cols
        empty_idx = torch.tensor(empties, dtype=torch.long)
        part_idx = torch.tensor(partial, dtype=torch.long)
        # the senders' deltas: rows before the world's first sender b are the clean run's (shared prefix)
        b = store["b"]
        if rows is None:
            terms = [(mat[:b], slice(0, b), None), (mat[b:], None, slice(0, hk.n_before - b))]
        else:
            lo = rows < b
            terms = [(mat[lo], rows[lo], None), (mat[~lo], None, rows[~lo] - b)]
        terms = [(m, pre, own) for m, pre, own in terms if m.shape[0]]

        def summed(own_in: Tensor, x: Tensor) -> Tensor:
            """``[k, n, pos, d]`` new inputs of the partial receivers: corrupted input + the circuit's senders
            (``"in"``), or the run's own input ``own_in`` minus the senders outside the circuit (``"out"``)."""
            n, p, d = x.shape[0], x.shape[1], x.shape[-1]
            total = None
            for m, pre, own in terms:
                src = self._deltas(store["ref"], b)[pre] if own is None else store["d"][own]
                part = m.to(device=x.device, dtype=x.dtype).T @ src.to(device=x.device, dtype=x.dtype)
                total = part if total is None else total + part
            total = total.reshape(-1, n, p, d)
            return total.add_(corr_in.to(x.dtype)[None]) if form == "in" else total.neg_().add_(own_in)

        def fn(x: Tensor) -> None:
            corr = corr_in.to(x.dtype)
            if not hk.per_head:
                if partial:
                    x.copy_(summed(x, x)[0])
                else:
                    x.copy_(corr.expand_as(x))
                return
            if all_empty:
                x.copy_(corr[:, :, None].expand_as(x))
                return
            if empties:
                x[:, :, empty_idx.to(x.device)] = corr[:, :, None].expand(-1, -1, len(empties), -1).to(x.dtype)
            if partial:
                idx = part_idx.to(x.device)
                x[:, :, idx] = summed(x[:, :, idx].movedim(2, 0), x).movedim(0, 2)
        return fn


def evaluate_circuits(model: Any, data: Any, circuits: Mapping[str, Iterable[Any]] | Iterable[Any],
                      config: EdgeEvalConfig = EdgeEvalConfig(), *, runner: Any = None) -> Any:
    """Edge-level faithfulness of circuits (each a set of ``(src, dst, dst_input)`` edges).

    Args:
        model: a model from :func:`interp.load_model`.
        data: a TaskDataset of clean/corrupted pairs with single-token answers and counterfactuals.
        circuits: one edge set, or ``{name: edge set}``; the empty set and :func:`model_edges` are valid.
        config: :class:`EdgeEvalConfig`.
        runner: ``runner(evaluator, masks) -> [circuit]`` values instead of ``evaluator.run_masks(masks)``
            (:func:`interp.distributed.evaluate_circuits_ray`: chunks of circuits on Ray workers).

    Returns:
        Result ``circuits.eval``: one row per circuit (circuit, ablation, n_edges, n_nodes, ld, faithfulness,
        ld_clean, ld_corrupted).

    Raises:
        ConfigError: an architecture with parallel attention/MLP or post-norms.
        DataError: edges that are not in the model's graph (named).
    """
    from interp.results import Result, run_meta

    t0 = time.perf_counter()
    if not isinstance(circuits, Mapping):
        circuits = {"circuit": circuits}
    ev = Evaluator(model, data, config)
    named = {str(k): canonical(model, v, what=f"circuit {k!r}") for k, v in circuits.items()}
    lds = (runner or Evaluator.run_masks)(ev, [ev.mask(e) for e in named.values()])
    rows = [{"circuit": k, "ablation": config.ablation, "n_edges": len(e), "n_nodes": len(circuit_nodes(e)),
             "ld": float(ld), "faithfulness": float(ev.faithfulness(float(ld))), "ld_clean": ev.ld_clean,
             "ld_corrupted": ev.ld_corrupted} for (k, e), ld in zip(named.items(), lds)]
    meta = run_meta(model, dataset=ev.pairs.dataset.name,
                    data=list(zip(ev.pairs.texts, ev.pairs.corrupted_texts)), config=config,
                    n_prompts=len(ev.pairs), n_model_edges=ev.n_edges, forward_passes=ev.counter.forward,
                    rows=ev.counter.rows, seconds=round(time.perf_counter() - t0, 3))
    return Result("circuits.eval", pd.DataFrame(rows), meta, name="edge-faithfulness")
