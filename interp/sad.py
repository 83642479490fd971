"""Sparse attention decomposition (Franco & Crovella, "Sparse Attention Decomposition Applied to Circuit Tracing").

For one head, the attention score between a query token ``i`` and a key token ``j`` is a
bilinear form of the two tokens' normalised residuals. With ``x~ = [P x / s(x), 1]`` (``P``
centres for LayerNorm, is the identity for RMSNorm; ``s`` is the norm's scale; the 1 carries
the biases) and the norm's weight and bias folded into the projections,
``W~_Q = [diag(w) W_Q ; beta W_Q + b_Q]`` (and ``W~_K`` alike)::

    score(i, j) = x~_i  Omega_ij  x~_j^T,      Omega_ij = scaling * W~_Q  E_i E_j^T  W~_K^T

where ``E_p`` is the rotary rotation of position ``p`` (the identity for absolute positions:
``Omega`` is then one matrix per head, as in the paper on GPT-2; with RoPE it depends on the
pair, and is computed per pair from a QR factorisation of ``W~_Q`` and ``W~_K`` at d_head^3
cost; partial rotary, as GPT-NeoX, rotates the first dims only). ``Omega_ij`` has rank <= d_head, so its SVD truncated to d_head is exact::

    score(i, j) = sum_k sigma_k (x~_i . u_k)(x~_j . v_k)        (d_head terms)

The *kept terms* of a pair are the fewest terms, taken largest first in the direction of the
score's sign, whose sum reaches ``fraction`` of the score (the paper's ``f``; 1.0 by default).

**Signals.** The residual stream is a sum of components (embedding, every earlier head's output
``z W_O``, every earlier MLP's output, and a remainder of output biases), so the key side
``x~_j`` is the sum of each component's ``[P c_j / s_j, 0]`` plus ``[.., 1]``. The *signal* of
an upstream component ``c`` into the receiver through its key (``dst_input = "k"``) is its exact
share of the kept terms::

    signal_k(c) = sum_{kept k} sigma_k (x~_i . u_k) ([P c_j / s_j, 0] . v_k)

and through its query (``"q"``) the same with the roles of ``i`` and ``j`` swapped. Over all
components (plus the bias pseudo-component) the signals sum to the kept-terms score exactly, on
either side. This differs from the authors' code, which weighs each kept singular vector by
``sign(x~_i . u_k) sqrt(sigma_k)`` (dropping ``|x~_i . u_k|``) and appends the 1 to every sender:
here a signal is in the units of the attention score, and the parts add up.

A pair is a *firing* of the receiver when its attention weight is at least ``attn_threshold``
(0.5, as the paper), its score is positive and the key is not position 0 (the paper leaves
source token 0, the attention sink, out). :func:`trace` starts from a head at given query
positions, computes the signals of every firing, keeps the ``top_k`` upstream heads by mean
signal and traces them in turn at the positions they were read from (the query position for
``q``, the key position for ``k``), up to ``depth`` receivers deep. The result is a
``sad.signals`` Result; :mod:`interp.graph` turns its rows into edges ``method="sad"``.

Architectures: queries and keys must be linear in the normalised residual (no query/key norms,
no attention soft-cap), positions absolute or rotary (HF ``rotate_half`` convention), and a
head's contribution to the residual stream its ``z W_O`` (no post-attention norm); the others
are refused naming the fact (:func:`interp.arch.require_arch`).

Example:
    >>> from interp.models import load_model
    >>> model = load_model("toy:llama")
    >>> tokens = model.to_tokens("hello world, hello")[0]
    >>> d = decompose(model, tokens, layer=1, head=0, pairs=[(5, 2)])
    >>> bool(abs(d.terms.sum() - d.score[0]) < 1e-4)
    True
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from interp.errors import ConfigError, DataError

__all__ = ["SADConfig", "Decomposition", "decompose", "signals", "trace", "head_factors", "kept_terms"]

_DT = torch.float64


@dataclass(frozen=True, kw_only=True)
class SADConfig:
    """Settings of :func:`trace`.

    Attributes:
        fraction: kept terms reach this fraction of each score (the paper's ``f``), in (0, 1].
        attn_threshold: a (query, key) pair fires when its attention weight is at least this.
        skip_first_key: leave key position 0 (the sink) out, as the paper does.
        top_k: upstream heads traced further from each receiver (largest mean signal).
        depth: receivers deep to trace (1: only the head of interest).
    """

    fraction: float = 1.0
    attn_threshold: float = 0.5
    skip_first_key: bool = True
    top_k: int = 3
    depth: int = 2

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"SADConfig.fraction must be in (0, 1], got {self.fraction}")
        if not 0 <= self.attn_threshold <= 1:
            raise ConfigError(f"SADConfig.attn_threshold must be in [0, 1], got {self.attn_threshold}")
        if self.top_k < 0 or self.depth < 1:
            raise ConfigError(f"SADConfig: need top_k >= 0 and depth >= 1, got top_k={self.top_k}, depth={self.depth}")


# ----------------------------------------------------------------------------- architecture
def _check_arch(model: Any) -> Any:
    from interp.arch import require_arch

    method = "sparse attention decomposition"
    facts = require_arch(model, method=method, qk_norm=False, post_attn_norm=False)
    if facts.positional not in ("absolute", "rope"):
        raise ConfigError(f"{method}: positional={facts.positional!r} is not supported: the attention score is then "
                          f"not x~_i Omega x~_j (family {facts.family})")
    if facts.attn_softcap is not None:
        raise ConfigError(f"{method}: attn_softcap={facts.attn_softcap} is not supported: a soft-capped score "
                          f"(tanh) is not a sum of singular-vector terms (family {facts.family})")
    return facts


@dataclass(frozen=True)
class _Norm:
    weight: torch.Tensor      # [d_model]
    bias: torch.Tensor        # [d_model]
    eps: float
    center: bool


def _norm(model: Any, layer: int) -> _Norm:
    """The norm before attention: weight, bias, eps; centring from the architecture facts (LayerNorm centres)."""
    from interp.arch import arch_facts

    ln = getattr(model.blocks[layer], "ln1", None)
    mod = getattr(ln, "_original_component", ln)
    weight = getattr(mod, "weight", None)
    if weight is None:
        raise ConfigError(f"sparse attention decomposition: blocks.{layer}.ln1 has no weight; expected a "
                          f"LayerNorm/RMSNorm before attention, got {type(mod).__name__}")
    w = weight.detach().to(_DT)
    if "gemma" in type(mod).__name__.lower():      # Gemma's RMSNorm scales by (1 + weight)
        w = 1.0 + w
    b = getattr(mod, "bias", None)
    eps = getattr(mod, "variance_epsilon", getattr(mod, "eps", 1e-5))
    center = arch_facts(model).norm == "layernorm"
    return _Norm(w, torch.zeros_like(w) if b is None else b.detach().to(_DT), float(eps), center)


@dataclass(frozen=True)
class HeadFactors:
    """A head's bias-augmented query/key maps, factored ``W~_Q = Qa Ra``, ``W~_K = Qb Rb``.

    Attributes:
        qa, qb: ``[d_model + 1, r]`` orthonormal columns.
        ra, rb: ``[r, d_head]``.
        scaling: the attention scale (``1/sqrt(d_head)`` unless the model says otherwise).
    """

    layer: int
    head: int
    qa: torch.Tensor
    ra: torch.Tensor
    qb: torch.Tensor
    rb: torch.Tensor
    scaling: float


def _scaling(model: Any, layer: int) -> float:
    attn = model.blocks[layer].attn
    orig = getattr(attn, "_original_component", None)
    s = getattr(orig, "scaling", None)
    if s is not None:
        return float(s)
    return 1.0 / float(getattr(model.cfg, "attn_scale", model.cfg.d_head ** 0.5))


def head_factors(model: Any, layer: int, head: int) -> HeadFactors:
    """The factored ``W~_Q``, ``W~_K`` of one head (norm weight/bias folded in, bias row appended)."""
    attn = model.blocks[layer].attn
    n_heads = int(model.cfg.n_heads)
    if not 0 <= layer < model.cfg.n_layers or not 0 <= head < n_heads:
        raise ConfigError(f"head L{layer}.H{head}: the model has {model.cfg.n_layers} layers x {n_heads} heads")
    w_k = attn.W_K.detach().to(_DT)
    kv = head // (n_heads // w_k.shape[0])
    norm = _norm(model, layer)

    def aug(w: torch.Tensor, b: Any) -> torch.Tensor:       # [d_model + 1, d_head]
        bias = torch.zeros(w.shape[1], dtype=_DT, device=w.device) if b is None else b.detach().to(_DT)
        return torch.cat([norm.weight[:, None] * w, (norm.bias @ w + bias)[None]], 0)

    b_q, b_k = getattr(attn, "b_Q", None), getattr(attn, "b_K", None)
    wq = aug(attn.W_Q.detach().to(_DT)[head], None if b_q is None else b_q[head])
    wk = aug(w_k[kv], None if b_k is None else b_k[kv])
    qa, ra = torch.linalg.qr(wq)
    qb, rb = torch.linalg.qr(wk)
    return HeadFactors(layer, head, qa, ra, qb, rb, _scaling(model, layer))


def _rotations(model: Any, positions: int, d_head: int, device: Any) -> torch.Tensor | None:
    """``[pos, d_head, d_head]`` rotary matrices ``E_p`` (``q_rot = q @ E_p``), or None for absolute positions."""
    from interp.arch import arch_facts

    if arch_facts(model).positional != "rope":
        return None
    hf = getattr(model, "original_model", None)
    rot = next((m for n, m in (hf.named_modules() if hf is not None else []) if n.endswith("rotary_emb")), None)
    if rot is None:
        raise ConfigError("sparse attention decomposition: positional='rope' but the model has no rotary_emb module "
                          "to read the rotation from")
    eye = torch.eye(d_head, dtype=torch.float32, device=device)
    pos_ids = torch.arange(positions, device=device)[None]
    cos, sin = rot(eye[None], pos_ids)                                  # [1, pos, rot_dim]
    r = int(cos.shape[-1])                                             # rotary dims (partial rotary: r < d_head)
    if r > d_head or r % 2:
        raise ConfigError(f"sparse attention decomposition: rotary dim {r} does not fit d_head {d_head}")
    cos, sin = cos[0].to(_DT), sin[0].to(_DT)
    half = r // 2
    er = torch.eye(r, dtype=_DT, device=device)
    rot_half = torch.cat([-er[:, half:], er[:, :half]], 1)               # rotate_half of each basis row
    out = torch.eye(d_head, dtype=_DT, device=device).repeat(positions, 1, 1)
    out[:, :r, :r] = er[None] * cos[:, None, :] + rot_half[None] * sin[:, None, :]
    return out


# ----------------------------------------------------------------------------- activations
@dataclass
class _Prompt:
    """One prompt's residual components (``[pos, d_model]`` each, float64) and patterns."""

    tokens: torch.Tensor
    resid: dict[int, torch.Tensor]
    comps: dict[int, dict[str, torch.Tensor]]       # layer -> {node: component}, components entering that layer
    pattern: dict[int, torch.Tensor]                # layer -> [head, q, k]
    rot: torch.Tensor | None


def _capture(model: Any, tokens: torch.Tensor, max_layer: int, facts: Any) -> list[_Prompt]:
    """Residual components of each row of ``tokens [batch, pos]`` (one forward pass)."""
    from interp.hooks import run_capture
    from interp.nodes import node_id
    from interp.sites import Site

    sites = [Site("embed")] + ([Site("pos_embed")] if facts.positional == "absolute" else [])
    for l in range(max_layer + 1):
        sites += [Site("resid_pre", l), Site("pattern", l)]
    for l in range(max_layer):
        sites += [Site("z", l), Site("mlp_out", l)]
    dev = next(model.parameters()).device
    with torch.inference_mode():
        store = run_capture(model, tokens.to(dev), sites)
    rot = _rotations(model, tokens.shape[1], int(model.cfg.d_head), dev)
    w_o = {l: model.blocks[l].attn.W_O.detach().to(_DT) for l in range(max_layer)}     # [head, d_head, d_model]
    out = []
    for b in range(tokens.shape[0]):
        emb = store[Site("embed")][b].to(_DT)
        if facts.positional == "absolute":
            emb = emb + store[Site("pos_embed")][b].to(_DT)
        comps: dict[int, dict[str, torch.Tensor]] = {0: {"EMBED": emb}}
        run: dict[str, torch.Tensor] = {"EMBED": emb}
        for l in range(max_layer):
            z = store[Site("z", l)][b].to(_DT)                                   # [pos, head, d_head]
            per_head = torch.einsum("phd,hdm->hpm", z, w_o[l])
            for h in range(z.shape[1]):
                run[node_id("head", l, head=h)] = per_head[h]
            run[node_id("mlp", l)] = store[Site("mlp_out", l)][b].to(_DT)
            comps[l + 1] = dict(run)
        resid = {l: store[Site("resid_pre", l)][b].to(_DT) for l in range(max_layer + 1)}
        pattern = {l: store[Site("pattern", l)][b].float() for l in range(max_layer + 1)}
        out.append(_Prompt(tokens[b], resid, comps, pattern, rot))
    return out


def _capture_all(model: Any, prompts: list[torch.Tensor], max_layer: int, facts: Any) -> list[_Prompt]:
    """:func:`_capture` of every prompt, batching prompts of equal length (no padding)."""
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(prompts):
        by_len[int(t.shape[0])].append(i)
    out: list[_Prompt | None] = [None] * len(prompts)
    for idx in by_len.values():
        for i, p in zip(idx, _capture(model, torch.stack([prompts[i] for i in idx]), max_layer, facts)):
            out[i] = p
    return [p for p in out if p is not None]


def _normalise(p: _Prompt, norm: _Norm, layer: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``x~ [pos, d+1]``, scale ``s [pos]`` and each component's ``[P c / s, 0]`` (``"BIAS"``: the rest + the 1)."""
    x = p.resid[layer]
    centre = (lambda v: v - v.mean(-1, keepdim=True)) if norm.center else (lambda v: v)
    xc = centre(x)
    s = torch.sqrt((xc ** 2).mean(-1) + norm.eps)
    one = torch.ones(x.shape[0], 1, dtype=_DT, device=x.device)
    zero = torch.zeros_like(one)
    xt = torch.cat([xc / s[:, None], one], 1)
    parts = {name: torch.cat([centre(c) / s[:, None], zero], 1) for name, c in p.comps[layer].items()}
    parts["BIAS"] = xt - sum(parts.values())      # output biases, rounding, and the appended 1
    return xt, s, parts


# ----------------------------------------------------------------------------- decomposition
@dataclass(frozen=True)
class Decomposition:
    """The singular-vector terms of a head's scores on some (query, key) pairs of one prompt.

    Attributes:
        pairs: ``[n, 2]`` (query pos, key pos).
        sigma, sim_q, sim_k: ``[n, d_head]`` singular values and ``x~_i . u_k``, ``x~_j . v_k``.
        terms: ``[n, d_head]`` ``sigma * sim_q * sim_k``; ``terms.sum(-1) == score``.
        score: ``[n]`` the full score.
        kept: ``[n, d_head]`` bool, the fewest terms reaching ``fraction`` of the score.
        u, v: ``[n, r, d_head]`` singular vectors in the ``Qa`` / ``Qb`` coordinates.
    """

    pairs: torch.Tensor
    sigma: torch.Tensor
    sim_q: torch.Tensor
    sim_k: torch.Tensor
    terms: torch.Tensor
    score: torch.Tensor
    kept: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    fraction: float


def kept_terms(terms: Float[Tensor, "n k"], fraction: float) -> Bool[Tensor, "n k"]:
    """``[n, k]`` bool: per row, the fewest terms (largest first, in the score's sign) whose sum reaches
    ``fraction`` of the row's sum. A zero score keeps no term."""
    score = terms.sum(-1, keepdim=True)
    sign = torch.where(score >= 0, 1.0, -1.0).to(terms.dtype)
    signed = terms * sign
    order = signed.argsort(-1, descending=True)
    cum = signed.gather(-1, order).cumsum(-1)
    target = fraction * (score * sign) * (1 - 1e-12)
    reached = cum >= target
    n_keep = torch.where(reached.any(-1), reached.float().argmax(-1) + 1, torch.full_like(score[:, 0], terms.shape[-1],
                                                                                           dtype=torch.long))
    n_keep = torch.where(score[:, 0] == 0, torch.zeros_like(n_keep), n_keep)
    ranks = torch.arange(terms.shape[-1], device=terms.device)[None]
    keep_sorted = ranks < n_keep[:, None]
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def _decompose(f: HeadFactors, xt: torch.Tensor, rot: torch.Tensor | None, pairs: torch.Tensor,
               fraction: float) -> Decomposition:
    qi, kj = pairs[:, 0], pairs[:, 1]
    c = f.ra[None] if rot is None else f.ra[None] @ (rot[qi] @ rot[kj].transpose(-1, -2))
    c = f.scaling * (c @ f.rb.T[None]).expand(len(pairs), -1, -1)               # [n, r, r]
    u, sigma, vh = torch.linalg.svd(c)
    v = vh.transpose(-1, -2)
    sim_q = torch.einsum("nr,nrk->nk", xt[qi] @ f.qa, u)
    sim_k = torch.einsum("nr,nrk->nk", xt[kj] @ f.qb, v)
    terms = sigma * sim_q * sim_k
    return Decomposition(pairs, sigma, sim_q, sim_k, terms, terms.sum(-1), kept_terms(terms, fraction), u, v,
                         fraction)


def _prompt_tokens(model: Any, tokens: Any) -> torch.Tensor:
    t = torch.as_tensor(tokens)
    if t.ndim == 2 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 1:
        raise DataError(f"sparse attention decomposition: expected one prompt's tokens [pos], got shape {tuple(t.shape)}")
    return t


def decompose(model: Any, tokens: Any, *, layer: int, head: int, pairs: Sequence[tuple[int, int]],
              fraction: float = 1.0) -> Decomposition:
    """Decompose head ``L{layer}.H{head}``'s scores at ``pairs`` (query pos, key pos) of one prompt ``tokens [pos]``."""
    facts = _check_arch(model)
    t = _prompt_tokens(model, tokens)
    (p,) = _capture(model, t[None], layer, facts)
    xt, _, _ = _normalise(p, _norm(model, layer), layer)
    pr = _pairs(pairs, t.shape[0], xt.device)
    return _decompose(head_factors(model, layer, head), xt, p.rot, pr, fraction)


def _pairs(pairs: Any, n_pos: int, device: Any) -> torch.Tensor:
    pr = torch.as_tensor(list(pairs), dtype=torch.long, device=device).reshape(-1, 2)
    bad = ((pr < 0) | (pr >= n_pos)).any(-1) | (pr[:, 1] > pr[:, 0])
    if bad.any():
        raise DataError(f"sparse attention decomposition: pair {pr[bad][0].tolist()} is not (query, key) with "
                        f"0 <= key <= query < {n_pos}")
    return pr


def _signals(f: HeadFactors, d: Decomposition, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{"q": [n, comp], "k": [n, comp]}``: each component's share of the kept terms (names in ``parts`` order)."""
    names = list(parts)
    stack = torch.stack([parts[n] for n in names])                              # [comp, pos, d+1]
    qi, kj = d.pairs[:, 0], d.pairs[:, 1]
    w = d.kept.to(d.terms.dtype) * d.sigma          # [n, k]
    gq = torch.einsum("cnr,nrk->nck", stack[:, qi] @ f.qa, d.u)                 # component . u_k at the query
    gk = torch.einsum("cnr,nrk->nck", stack[:, kj] @ f.qb, d.v)                 # component . v_k at the key
    return {"q": (gq * (w * d.sim_k)[:, None]).sum(-1), "k": (gk * (w * d.sim_q)[:, None]).sum(-1)}


def signals(model: Any, tokens: Any, *, layer: int, head: int, pairs: Sequence[tuple[int, int]],
            fraction: float = 1.0) -> pd.DataFrame:
    """Every upstream component's signal into ``L{layer}.H{head}`` at ``pairs`` of one prompt.

    Returns:
        one row per (pair, component, side): ``query, key, src, dst_input, signal, kept_score, score,
        n_terms``. ``src`` includes ``"BIAS"`` (output biases and the appended 1), so per (pair, side)
        the signals sum to ``kept_score``.
    """
    facts = _check_arch(model)
    t = _prompt_tokens(model, tokens)
    (p,) = _capture(model, t[None], layer, facts)
    xt, _, parts = _normalise(p, _norm(model, layer), layer)
    f = head_factors(model, layer, head)
    d = _decompose(f, xt, p.rot, _pairs(pairs, t.shape[0], xt.device), fraction)
    sig = _signals(f, d, parts)
    kept = (d.terms * d.kept).sum(-1)
    rows = []
    for n, (qi, kj) in enumerate(d.pairs.tolist()):
        for side in ("q", "k"):
            for c, name in enumerate(parts):
                rows.append({"query": qi, "key": kj, "src": name, "dst_input": side, "signal": float(sig[side][n, c]),
                             "kept_score": float(kept[n]), "score": float(d.score[n]), "n_terms": int(d.kept[n].sum())})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- tracing
def trace(model: Any, prompts: Sequence[Any], head: str, *, query_positions: Sequence[Iterable[int]] | None = None,
          config: SADConfig = SADConfig(), dataset: str = "") -> Any:
    """Trace signals backwards from ``head`` (``"L5.H1"``) over ``prompts`` (token tensors ``[pos]``).

    Args:
        query_positions: per prompt, the query positions of ``head`` to start from (default: all).
        config: :class:`SADConfig`.

    Returns:
        a ``sad.signals`` Result: one row per (src, dst, dst_input) with the mean signal over ``dst``'s
        firings (score units), ``share`` of ``dst``'s mean kept score, firings and prompts counted.
    """
    from interp.nodes import parse_node_id
    from interp.results import Result, run_meta

    facts = _check_arch(model)
    parsed = parse_node_id(head)
    if parsed["kind"] != "head":
        raise ConfigError(f"sad trace: expected a head node like 'L5.H1', got {head!r}")
    L = int(parsed["layer"])
    if not 0 <= L < model.cfg.n_layers or not 0 <= int(parsed["head"]) < model.cfg.n_heads:
        raise ConfigError(f"sad trace: head {head} is outside the model ({model.cfg.n_layers} layers x "
                          f"{model.cfg.n_heads} heads)")
    toks = [_prompt_tokens(model, t) for t in prompts]
    if query_positions is not None and len(query_positions) != len(toks):
        raise DataError(f"sad trace: query_positions has {len(query_positions)} entries for {len(toks)} prompts")
    caps = _capture_all(model, toks, L, facts)
    frontier: dict[str, dict[int, set[int]]] = {head: {
        b: set(range(t.shape[0])) if query_positions is None else {int(q) % t.shape[0] for q in query_positions[b]}
        for b, t in enumerate(toks)}}
    done: set[str] = set()
    rows: list[dict[str, Any]] = []
    for depth in range(config.depth):
        nxt: dict[str, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
        for dst, where in frontier.items():
            if dst in done:
                continue
            done.add(dst)
            edges, senders = _trace_one(model, caps, dst, where, config, depth)
            rows += edges
            for src, pos in senders.items():
                for b, ps in pos.items():
                    nxt[src][b] |= ps
        frontier = {k: dict(v) for k, v in nxt.items() if parse_node_id(k)["kind"] == "head"}
        if not frontier:
            break
    cols = ["method", "src", "dst", "dst_input", "signal", "share", "n_firings", "n_prompts", "dst_score",
            "dst_kept_score", "dst_terms", "depth", "fraction"]
    table = pd.DataFrame(rows, columns=cols)
    return Result("sad.signals", table, run_meta(model, dataset=dataset, config=config, head=head,
                                                 n_prompts=len(toks)), name=head.replace(".", "_"))


def _trace_one(model: Any, caps: list[_Prompt], dst: str, where: dict[int, set[int]], config: SADConfig,
               depth: int) -> tuple[list[dict[str, Any]], dict[str, dict[int, set[int]]]]:
    from interp.nodes import parse_node_id

    pid = parse_node_id(dst)
    layer, hd = int(pid["layer"]), int(pid["head"])
    f = head_factors(model, layer, hd)
    norm = _norm(model, layer)
    total: dict[tuple[str, str], float] = defaultdict(float)
    from_pos: dict[tuple[str, str], dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    n_fire, prompts_fired, score_sum, kept_sum, terms_sum = 0, 0, 0.0, 0.0, 0.0
    for b, qs in where.items():
        p = caps[b]
        pat = p.pattern[layer][hd]
        pairs = [(q, k) for q in sorted(qs) for k in range(q + 1)
                 if pat[q, k] >= config.attn_threshold and not (config.skip_first_key and k == 0)]
        if not pairs:
            continue
        xt, _, parts = _normalise(p, norm, layer)
        d = _decompose(f, xt, p.rot, torch.tensor(pairs, device=xt.device), config.fraction)
        ok = d.score > 0
        if not ok.any():
            continue
        d = Decomposition(*(x[ok] for x in (d.pairs, d.sigma, d.sim_q, d.sim_k, d.terms, d.score, d.kept, d.u, d.v)),
                          d.fraction)
        names = [n for n in parts if n != "BIAS"]
        sig = _signals(f, d, {n: parts[n] for n in names})
        n_fire += len(d.pairs)
        prompts_fired += 1
        score_sum += float(d.score.sum())
        kept_sum += float((d.terms * d.kept).sum())
        terms_sum += float(d.kept.sum())
        for side, pos_col in (("q", 0), ("k", 1)):
            s = sig[side]
            for c, name in enumerate(names):
                total[(name, side)] += float(s[:, c].sum())
                if parse_node_id(name)["kind"] == "head":
                    from_pos[(name, side)][b] |= set(d.pairs[:, pos_col].tolist())
    if not n_fire:
        return [], {}
    mean_kept = kept_sum / n_fire
    rows = [{"method": "sad", "src": src, "dst": dst, "dst_input": side, "signal": v / n_fire,
             "share": (v / n_fire) / mean_kept if mean_kept else float("nan"), "n_firings": n_fire,
             "n_prompts": prompts_fired, "dst_score": score_sum / n_fire, "dst_kept_score": mean_kept,
             "dst_terms": terms_sum / n_fire, "depth": depth, "fraction": config.fraction}
            for (src, side), v in total.items()]
    heads = sorted(((v, k) for k, v in total.items() if parse_node_id(k[0])["kind"] == "head" and v > 0), reverse=True)
    senders: dict[str, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    for _, key in heads[: config.top_k]:
        for b, ps in from_pos[key].items():
            senders[key[0]][b] |= ps
    return rows, senders
