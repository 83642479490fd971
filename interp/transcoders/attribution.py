"""Attribution graphs for one prompt through per-layer transcoders (METHODS.md section 12; circuit-tracer).

The **local replacement model** of a prompt: the real model with, at every layer, the
attention patterns (``pattern``) and the attention norm's scale (``ln1_scale``) and the final
norm's scale (``ln_final_scale``) replaced by their values in the real forward pass (constants:
no gradient flows through them), and each MLP output replaced by its transcoder's output
plus an **error** term (real ``mlp_out`` minus transcoder output, a constant per layer and
position). Feature activations, errors and token embeddings enter as leaf tensors, so the
model is linear from them to every feature's encoder pre-activation and to the logits.

Nodes (in circuit-tracer's order, ``circuit_tracer/graph.py``): active transcoder features
``(layer, pos, feature)``, error nodes (layer-major, then position), token embeddings (one
per position), top output logits (fewest whose probability reaches 0.95, at most 10:
``compute_salient_logits`` in ``circuit_tracer/attribution.py``). A logit target is the
*demeaned* logit ``h_final[-1] . (W_U[:, t] - mean_t' W_U[:, t'])``; a feature target is its
pre-activation ``mlp_in . W_enc[:, f]``. ``adjacency[target, source]`` is the direct effect
``source value x d target / d source`` (for errors and embeddings: summed over d_model),
computed with one backward pass per batch of targets (the batch holds one target per row).

Influence, pruning and scores follow circuit-tracer's definitions (``circuit_tracer/graph.py``:
``normalize_matrix``, ``compute_influence``, ``compute_node_influence``,
``compute_edge_influence``, ``find_threshold``, ``prune_graph``, ``compute_graph_scores``).

Example:
    >>> from interp.transcoders.attribution import MAX_PROMPT_TOKENS
    >>> MAX_PROMPT_TOKENS
    64
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp.errors import ConfigError

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["MAX_PROMPT_TOKENS", "AttributionConfig", "Attribution", "attribute", "Recording", "record_prompt",
           "frozen_targets", "normalize_matrix", "compute_influence", "node_influence", "edge_influence",
           "find_threshold", "keep_fraction", "PruneResult", "prune", "graph_scores"]

#: Longest prompt attributed. Every active feature is one backward-pass target and the dense
#: adjacency matrix is (features + errors + tokens + logits)^2: on SmolLM2 (30 layers, L0 ~16)
#: 64 tokens already give ~30k features, ~4 GB of float32 adjacency and ~1k batched backward passes.
MAX_PROMPT_TOKENS = 64


@dataclass(frozen=True, kw_only=True)
class AttributionConfig:
    """Knobs of :func:`attribute` (defaults: circuit-tracer's)."""

    max_n_logits: int = 10
    desired_logit_prob: float = 0.95
    batch_size: int = 32
    max_feature_nodes: int = 7500
    max_tokens: int = MAX_PROMPT_TOKENS
    node_threshold: float = 0.8
    edge_threshold: float = 0.98

    def __post_init__(self) -> None:
        for name in ("node_threshold", "edge_threshold", "desired_logit_prob"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ConfigError(f"AttributionConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("max_n_logits", "batch_size", "max_feature_nodes", "max_tokens"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"AttributionConfig.{name} must be > 0, got {getattr(self, name)}")


@dataclass
class Recording:
    """The real forward pass of one prompt: what the replacement model freezes, and its node values."""

    tokens: Int[Tensor, " pos"]
    embed: Float[Tensor, "pos d_model"]
    pattern: dict[int, Tensor]
    ln1_scale: dict[int, Tensor]
    ln_final_scale: Tensor
    feature_idx: dict[int, Tensor]            # layer -> [n_l, 2] (pos, feature)
    feature_val: dict[int, Tensor]            # layer -> [n_l]
    error: dict[int, Tensor]                  # layer -> [pos, d_model]
    logits: Float[Tensor, "pos d_vocab"]


def _check_prompt(model: Model, tokens: Tensor, transcoders: Mapping[int, Any], cfg: AttributionConfig) -> None:
    from interp.arch import require_arch

    require_arch(model, method="attribution graph", post_norms=False, parallel_attn_mlp=False)
    n_layers = int(model.cfg.n_layers)
    missing = [x for x in range(n_layers) if x not in transcoders]
    if missing:
        raise ConfigError(f"attribution graph: no transcoder for layer(s) {', '.join(map(str, missing))}; "
                          "the replacement model replaces every MLP")
    if tokens.ndim != 1 or tokens.numel() < 1:
        raise ConfigError(f"attribution graph: expected one prompt of >= 1 token, got shape {tuple(tokens.shape)}")
    if tokens.numel() > cfg.max_tokens:
        raise ConfigError(f"prompt has {tokens.numel()} tokens; attribution graphs are limited to {cfg.max_tokens} "
                          "tokens: every active feature is one backward-pass target and the dense adjacency matrix "
                          "grows as the square of (features + errors + tokens), i.e. with positions^2")


def record_prompt(model: Model, tokens: Int[Tensor, " pos"], transcoders: Mapping[int, Any]) -> Recording:
    """Run the real model on ``tokens`` once; keep patterns, norm scales, features, errors, embeddings.

    Sink positions (:func:`interp.transcoders.train.sink_positions`: position 0, massive-activation
    tokens) have no active feature: their whole MLP output is in the error node.
    """
    from interp.hooks import hooked
    from interp.sites import Site
    from interp.transcoders.train import encode_tokens

    n_layers = int(model.cfg.n_layers)
    kept: dict[Site, Tensor] = {}

    def keep(act: Tensor, site: Site) -> None:
        kept[site] = act.detach().clone()

    sites = [Site("embed"), Site("ln_final_scale")] + [Site(c, x) for x in range(n_layers)
                                                       for c in ("pattern", "ln1_scale", "mlp_in", "mlp_out")]
    with torch.no_grad(), hooked(model, [(s, keep) for s in sites]):
        logits = model(tokens[None])
    idx, val, err = {}, {}, {}
    with torch.no_grad():
        for x in range(n_layers):
            tc = transcoders[x]
            acts = encode_tokens(tc, kept[Site("mlp_in", x)][0])                    # [pos, d_sae]
            nz = acts.nonzero()
            idx[x], val[x] = nz, acts[nz[:, 0], nz[:, 1]]
            err[x] = kept[Site("mlp_out", x)][0] - tc.decode(acts).to(kept[Site("mlp_out", x)].dtype)
    return Recording(tokens=tokens, embed=kept[Site("embed")][0],
                     pattern={x: kept[Site("pattern", x)] for x in range(n_layers)},
                     ln1_scale={x: kept[Site("ln1_scale", x)] for x in range(n_layers)},
                     ln_final_scale=kept[Site("ln_final_scale")], feature_idx=idx, feature_val=val, error=err,
                     logits=logits[0].detach())


def frozen_targets(model: Model, rec: Recording, transcoders: Mapping[int, Any], *,
                   feature_vals: Mapping[int, Float[Tensor, "rows n"]], errors: Mapping[int, Float[Tensor, "rows pos d_model"]],
                   embed: Float[Tensor, "rows pos d_model"], stop_after: int | None = None
                   ) -> tuple[dict[int, Float[Tensor, "rows pos d_model"]], Float[Tensor, "rows pos d_model"] | None]:
    """Forward pass of the frozen local replacement model with the given node values (one set per row).

    Args:
        stop_after: stop once ``mlp_in`` of this layer is computed (feature targets up to that layer
            need nothing later); the final hidden state is then not returned (None).

    Returns:
        ``({layer: mlp_in [rows, pos, d_model]}, final normalised hidden [rows, pos, d_model])``,
        differentiable with respect to ``feature_vals``, ``errors`` and ``embed``.
    """
    from interp.hooks import StopForward, hooked
    from interp.sites import Site

    rows = embed.shape[0]
    n_layers = int(model.cfg.n_layers)
    seen: dict[int, Tensor] = {}
    out: dict[str, Tensor] = {}

    def const(value: Tensor) -> Any:
        return lambda act, site: value.expand(rows, *value.shape[1:]).to(act.dtype)

    def mlp_in(x: int) -> Any:
        def fn(act: Tensor, site: Site) -> None:
            seen[x] = act
            if stop_after == x:
                raise StopForward(f"mlp_in.{x}")
        return fn

    def mlp_out(x: int) -> Any:
        tc = transcoders[x]
        pos, feat = rec.feature_idx[x][:, 0], rec.feature_idx[x][:, 1]

        def fn(act: Tensor, site: Site) -> Tensor:
            contrib = feature_vals[x][:, :, None] * tc.W_dec[feat][None].to(act.dtype)       # [rows, n, d]
            base = torch.zeros_like(act).index_add(1, pos.to(act.device), contrib)
            return base + tc.b_dec.to(act.dtype) + errors[x]
        return fn

    def final(act: Tensor, site: Site) -> None:
        out["h"] = act
        raise StopForward("ln_final")

    hooks: list[tuple[Site, Any]] = [(Site("embed"), lambda act, site: embed)]
    for x in range(n_layers):
        hooks += [(Site("ln1_scale", x), const(rec.ln1_scale[x])), (Site("pattern", x), const(rec.pattern[x])),
                  (Site("mlp_in", x), mlp_in(x)), (Site("mlp_out", x), mlp_out(x))]
    hooks += [(Site("ln_final_scale"), const(rec.ln_final_scale)), (Site("ln_final"), final)]
    with hooked(model, hooks), warnings.catch_warnings():
        # the bridge notes that an edited hook_scale makes it rebuild the norm from the hooked values: intended
        warnings.filterwarnings("ignore", message="A forward hook edited hook_scale")
        try:
            model(rec.tokens[None].expand(rows, -1))
        except StopForward:
            pass
    return seen, out.get("h")


def _salient_logits(model: Model, logits: Tensor, cfg: AttributionConfig) -> tuple[Tensor, Tensor, Tensor]:
    """circuit-tracer's ``compute_salient_logits``: ids, probabilities, demeaned unembedding columns [k, d_model]."""
    probs = torch.softmax(logits.float(), dim=-1)
    top_p, top_idx = torch.topk(probs, min(cfg.max_n_logits, probs.numel()))
    cutoff = int(torch.searchsorted(torch.cumsum(top_p, 0), torch.tensor(cfg.desired_logit_prob))) + 1
    top_p, top_idx = top_p[:cutoff], top_idx[:cutoff]
    w_u = model.W_U.detach()                                   # [d_model, d_vocab]
    vecs = (w_u[:, top_idx] - w_u.mean(dim=-1, keepdim=True)).T
    return top_idx, top_p, vecs


@dataclass
class Attribution:
    """An attribution graph: nodes (circuit-tracer order), dense adjacency ``[target, source]``, provenance."""

    tokens: list[int]
    token_strs: list[str]
    features: Int[Tensor, "n_features 3"]          # (layer, pos, feature)
    activations: Float[Tensor, " n_features"]
    logit_tokens: Int[Tensor, " n_logits"]
    logit_probs: Float[Tensor, " n_logits"]
    adjacency: Float[Tensor, "n_nodes n_nodes"]
    n_layers: int
    model: str = ""
    model_revision: str = ""
    prompt: str = ""
    config: AttributionConfig = field(default_factory=AttributionConfig)
    logit_strs: list[str] = field(default_factory=list)

    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    @property
    def n_features(self) -> int:
        return int(self.features.shape[0])

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def token_start(self) -> int:
        return self.n_features + self.n_layers * self.n_pos

    @property
    def logit_start(self) -> int:
        return self.token_start + self.n_pos

    def node_ids(self) -> list[str]:
        """Our node ids in adjacency order: ``L7.TC.1234@3``, ``L7.MLP@3`` (error), ``EMBED@3``, ``LOGITS.791@11``."""
        from interp.nodes import node_id

        ids = [node_id("tc", layer=int(l_), feature=int(f), pos=int(p)) for l_, p, f in self.features.tolist()]
        ids += [node_id("mlp", layer=x, pos=p) for x in range(self.n_layers) for p in range(self.n_pos)]
        ids += [node_id("embed", pos=p) for p in range(self.n_pos)]
        ids += [node_id("logits", feature=int(t), pos=self.n_pos - 1) for t in self.logit_tokens.tolist()]
        return ids

    def logit_weights(self) -> Float[Tensor, " n_nodes"]:
        w = torch.zeros(self.adjacency.shape[0])
        w[self.logit_start:] = self.logit_probs.float()
        return w

    def node_influence(self) -> Float[Tensor, " n_nodes"]:
        return node_influence(self.adjacency, self.logit_weights())

    def prune(self, node_threshold: float | None = None, edge_threshold: float | None = None) -> "PruneResult":
        return prune(self, self.config.node_threshold if node_threshold is None else node_threshold,
                     self.config.edge_threshold if edge_threshold is None else edge_threshold)

    def scores(self) -> dict[str, float]:
        """``{"replacement", "completeness"}`` (circuit-tracer's ``compute_graph_scores``)."""
        return graph_scores(self)

    def to_graph(self, *, pruned: bool = True, name: str = "") -> Any:
        """Our :class:`~interp.graph.CircuitGraph`: kept nodes (score = influence) and edges (weight = direct effect)."""
        from interp.graph import CircuitGraph

        ids = self.node_ids()
        n = len(ids)
        if pruned:
            res = self.prune()
            node_mask, edge_mask = res.node_mask, res.edge_mask
        else:
            node_mask = torch.ones(n, dtype=torch.bool)
            edge_mask = self.adjacency != 0
        infl = self.node_influence()
        g = CircuitGraph(model=self.model, model_revision=self.model_revision, name=name or self.prompt)
        for i in node_mask.nonzero().flatten().tolist():
            g.add_node(ids[i], score=float(infl[i]) if i < self.logit_start else float(
                self.logit_probs[i - self.logit_start]), source="influence" if i < self.logit_start else "prob")
            if i < self.n_features:
                g.add_node(ids[i], score=float(self.activations[i]), source="activation")
        dst, src = (edge_mask & node_mask[:, None] & node_mask[None, :]).nonzero(as_tuple=True)
        for t, s in zip(dst.tolist(), src.tolist()):
            g.add_edge(ids[s], ids[t], weight=float(self.adjacency[t, s]), method="attribution")
        return g


def attribute(model: Model, prompt: str | Int[Tensor, " pos"], transcoders: Mapping[int, Any],
              cfg: AttributionConfig = AttributionConfig()) -> Attribution:
    """The attribution graph of ``prompt`` (a string, tokenised with the model's BOS policy, or token ids).

    Raises:
        ConfigError: a prompt longer than ``cfg.max_tokens`` (the limit and why), missing transcoder
            layers, more active features than ``cfg.max_feature_nodes``, or an unsupported architecture.
    """
    from interp.models import model_info, tokenize

    if isinstance(prompt, str):
        tb = tokenize(model, [prompt])
        tokens = tb.tokens[0, : int(tb.lengths[0])]
        text = prompt
    else:
        tokens, text = torch.as_tensor(prompt).long(), ""
    _check_prompt(model, tokens, transcoders, cfg)
    n_layers, n_pos = int(model.cfg.n_layers), int(tokens.numel())
    rec = record_prompt(model, tokens, transcoders)
    feats = torch.cat([torch.cat([torch.full((len(rec.feature_idx[x]), 1), x), rec.feature_idx[x]], 1)
                       for x in range(n_layers)])                                   # (layer, pos, feature)
    acts = torch.cat([rec.feature_val[x] for x in range(n_layers)])
    n_f = feats.shape[0]
    if n_f > cfg.max_feature_nodes:
        raise ConfigError(f"prompt has {n_f} active transcoder features, more than max_feature_nodes="
                          f"{cfg.max_feature_nodes}; shorten the prompt or raise the limit")
    logit_idx, logit_p, logit_vecs = _salient_logits(model, rec.logits[-1], cfg)
    n_logit = len(logit_idx)
    n_nodes = n_f + n_layers * n_pos + n_pos + n_logit
    adj = torch.zeros(n_nodes, n_nodes)
    offsets = torch.tensor([0] + [len(rec.feature_val[x]) for x in range(n_layers)]).cumsum(0)
    # targets: features (rows 0..n_f-1) then logits (last rows)
    targets = [("f", i) for i in range(n_f)] + [("l", j) for j in range(n_logit)]
    for start in range(0, len(targets), cfg.batch_size):
        batch = targets[start:start + cfg.batch_size]
        rows = len(batch)
        vals = {x: rec.feature_val[x][None].expand(rows, -1).clone().requires_grad_(True) for x in range(n_layers)}
        errs = {x: rec.error[x][None].expand(rows, -1, -1).clone().requires_grad_(True) for x in range(n_layers)}
        emb = rec.embed[None].expand(rows, -1, -1).clone().requires_grad_(True)
        with torch.enable_grad():
            deepest = None if any(k == "l" for k, _ in batch) else max(int(feats[i, 0]) for _, i in batch)
            seen, h = frozen_targets(model, rec, transcoders, feature_vals=vals, errors=errs, embed=emb,
                                     stop_after=deepest)
            total = emb.new_zeros(())
            for r, (kind, i) in enumerate(batch):
                if kind == "l":
                    total = total + h[r, -1] @ logit_vecs[i].to(h.dtype)
                else:
                    x, p, f = feats[i].tolist()
                    total = total + seen[x][r, p] @ transcoders[x].W_enc[:, f].to(seen[x].dtype)
            leaves = [vals[x] for x in range(n_layers)] + [errs[x] for x in range(n_layers)] + [emb]
            grads = torch.autograd.grad(total, leaves, allow_unused=True)
        g_vals, g_errs, g_emb = grads[:n_layers], grads[n_layers:2 * n_layers], grads[-1]
        row_block = torch.zeros(rows, n_nodes)
        for x in range(n_layers):
            if g_vals[x] is not None:
                row_block[:, offsets[x]:offsets[x + 1]] = (g_vals[x] * vals[x].detach()).float()
            if g_errs[x] is not None:
                e0 = n_f + x * n_pos
                row_block[:, e0:e0 + n_pos] = (g_errs[x] * errs[x].detach()).sum(-1).float()
        if g_emb is not None:
            t0 = n_f + n_layers * n_pos
            row_block[:, t0:t0 + n_pos] = (g_emb * emb.detach()).sum(-1).float()
        for r, (kind, i) in enumerate(batch):
            adj[i if kind == "f" else n_nodes - n_logit + i] = row_block[r]
    info = model_info(model)
    tok = getattr(model, "tokenizer", None)
    strs = [tok.decode([t]) if tok is not None else str(t) for t in tokens.tolist()]
    logit_strs = [tok.decode([t]) if tok is not None else str(t) for t in logit_idx.tolist()]
    return Attribution(logit_strs=logit_strs, tokens=tokens.tolist(), token_strs=strs, features=feats, activations=acts.float(),
                       logit_tokens=logit_idx, logit_probs=logit_p, adjacency=adj, n_layers=n_layers,
                       model=info.spec, model_revision=info.identity, prompt=text, config=cfg)


# --------------------------------------------------------------------------- influence, pruning, scores
def normalize_matrix(matrix: Float[Tensor, "n n"]) -> Float[Tensor, "n n"]:
    """``|A|`` with each row (target) divided by its sum: the fraction of a target's input from each source."""
    a = matrix.abs()
    return a / a.sum(dim=1, keepdim=True).clamp(min=1e-10)


def compute_influence(a: Float[Tensor, "n n"], weights: Float[Tensor, " n"], max_iter: int = 1000) -> Float[Tensor, " n"]:
    """``w A + w A^2 + ...`` (= ``w ((I - A)^-1 - I)``), summed until the terms vanish (A is acyclic)."""
    cur = weights @ a
    total = cur.clone()
    for _ in range(max_iter):
        if not bool(cur.any()):
            return total
        cur = cur @ a
        total += cur
    raise ConfigError(f"influence did not converge in {max_iter} iterations (the adjacency has a cycle?)")


def node_influence(adjacency: Float[Tensor, "n n"], weights: Float[Tensor, " n"]) -> Float[Tensor, " n"]:
    """circuit-tracer's ``compute_node_influence``: influence on the logits (weighted by probability) of each node."""
    return compute_influence(normalize_matrix(adjacency), weights)


def edge_influence(adjacency: Float[Tensor, "n n"], weights: Float[Tensor, " n"]) -> Float[Tensor, "n n"]:
    """circuit-tracer's ``compute_edge_influence``: normalised edge x (influence + logit weight) of its target."""
    a = normalize_matrix(adjacency)
    infl = compute_influence(a, weights) + weights
    return a * infl[:, None]


def find_threshold(scores: Float[Tensor, " n"], threshold: float) -> Float[Tensor, ""]:
    """The score above which the largest scores reach ``threshold`` of the total (circuit-tracer)."""
    s = torch.sort(scores, descending=True).values
    cum = torch.cumsum(s, 0) / torch.sum(s)
    i = min(int(torch.searchsorted(cum, torch.tensor(threshold, dtype=cum.dtype))), len(cum) - 1)
    return s[i]


def keep_fraction(scores: Float[Tensor, "*n"], threshold: float) -> Bool[Tensor, "*n"]:
    """Scores ``>= find_threshold(scores, threshold)``: the fewest largest ones reaching that fraction of the total."""
    return scores >= find_threshold(scores.flatten(), threshold)


class PruneResult(NamedTuple):
    node_mask: Tensor
    edge_mask: Tensor
    cumulative_scores: Tensor


def prune(graph: Attribution, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
    """circuit-tracer's ``prune_graph``: nodes to ``node_threshold`` of influence, edges to ``edge_threshold``,
    then features/errors without outgoing edges and features without incoming ones are dropped, repeatedly."""
    n_tok, n_log, n_f = graph.n_pos, len(graph.logit_tokens), graph.n_features
    w = graph.logit_weights()
    infl = node_influence(graph.adjacency, w)
    node_mask = keep_fraction(infl, node_threshold)
    node_mask[-n_log - n_tok:] = True
    pruned = graph.adjacency.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    edge_mask = keep_fraction(edge_influence(pruned, w), edge_threshold)
    old = node_mask.clone()
    node_mask[: -n_log - n_tok] &= edge_mask[:, : -n_log - n_tok].any(0)
    node_mask[:n_f] &= edge_mask[:n_f].any(1)
    while not torch.equal(node_mask, old):
        old[:] = node_mask
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[: -n_log - n_tok] &= edge_mask[:, : -n_log - n_tok].any(0)
        node_mask[:n_f] &= edge_mask[:n_f].any(1)
    s, order = torch.sort(infl, descending=True)
    cum = torch.zeros_like(infl)
    cum[order] = torch.cumsum(s, 0) / torch.sum(s)
    return PruneResult(node_mask, edge_mask, cum)


def graph_scores(graph: Attribution) -> dict[str, float]:
    """circuit-tracer's ``compute_graph_scores``: replacement = token influence / (token + error influence);
    completeness = influence-weighted mean over nodes of the fraction of input not from error nodes."""
    w = graph.logit_weights()
    a = normalize_matrix(graph.adjacency)
    infl = compute_influence(a, w)
    e0, e1 = graph.error_start, graph.token_start
    tok, err = float(infl[e1:graph.logit_start].sum()), float(infl[e0:e1].sum())
    non_err = 1 - a[:, e0:e1].sum(dim=-1)
    out = infl + w
    return {"replacement": tok / (tok + err) if tok + err > 0 else 0.0,
            "completeness": float((non_err * out).sum() / out.sum())}
