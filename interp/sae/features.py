"""Feature analysis: top-activating examples, activation histograms, logit effects, and for
attention-output (``z``) SAEs direct feature attribution (DFA) to heads and source positions.

DFA (Kissane et al. 2024, METHODS.md section 6): the pre-activation of latent ``f`` is linear
in the concatenated head outputs ``z``::

    pre_f = (z - b_dec) . W_enc[:, f] + b_enc[f] = sum_h (z_h - b_dec_h) . W_enc[h block, f] + b_enc[f]

so head ``h`` contributes ``(z_h - b_dec_h) . W_enc[h block, f]`` (with ``b_dec`` only where the
SAE subtracts it from its input) and the head terms sum to ``pre_f - b_enc[f]`` exactly. Since
``z_h[q] = sum_k pattern[h, q, k] v_{kv(h)}[k]`` and each pattern row sums to 1, source position
``k`` contributes ``pattern[h, q, k] * (v_{kv(h)}[k] - b_dec_h) . W_enc[h block, f]`` (GQA:
query head ``h`` reads key/value head ``h // (n_heads / n_kv_heads)``). ``pre_f`` is SAE-Lens's
``hook_sae_acts_pre`` (before any top-k or threshold).

Example:
    >>> import torch
    >>> from sae_lens import SAE
    >>> from interp.models import load_model
    >>> from interp.sae.features import FeatureConfig, analyze_features, direct_feature_attribution
    >>> from interp.sites import Site
    >>> model = load_model("toy:llama")
    >>> with torch.random.fork_rng():                 # an untrained SAE on z.1 (4 heads x 16 = 64 inputs)
    ...     _ = torch.manual_seed(0)
    ...     sae = SAE.from_dict({"architecture": "standard", "d_in": 64, "d_sae": 32, "dtype": "float32",
    ...                          "device": "cpu", "reshape_activations": "hook_z",
    ...                          "metadata": {"hook_name": Site("z", 1).hook_name}})
    >>> tokens = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))   # [rows, pos]
    >>> fa = analyze_features(model, sae, "z.1", tokens, FeatureConfig(n_examples=3))
    >>> len(fa.features.table), fa.features.table.columns[:5].tolist()        # one row per latent
    (32, ['feature', 'layer', 'site', 'density', 'max_act'])
    >>> dfa = direct_feature_attribution(model, sae, "z.1", tokens, features=[3, 7])
    >>> sorted(set(dfa.table.node)), sorted(set(dfa.table.dst))      # edges head -> latent
    (['L1.H0', 'L1.H1', 'L1.H2', 'L1.H3'], ['L1.SAE.3', 'L1.SAE.7'])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.errors import ConfigError
from interp.sites import Site

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["FeatureConfig", "FeatureAnalysis", "analyze_features", "logit_effects", "decoder_directions",
           "head_contributions", "source_contributions", "direct_feature_attribution", "dfa_sources"]


@dataclass(frozen=True, kw_only=True)
class FeatureConfig:
    """Settings of :func:`analyze_features`.

    Attributes:
        n_examples: top-activating examples kept per feature.
        context: tokens of context shown left of the example token (and ``context // 2`` right).
        n_bins: histogram bins over log10(activation) of the non-zero activations.
        n_logits: top and bottom tokens of each feature's logit effect.
        features: features to analyse (``None``: all).
        batch_size, start_pos: as in :class:`~interp.sae.evaluate.SAEEvalConfig`.
    """

    n_examples: int = 10
    context: int = 12
    n_bins: int = 30
    n_logits: int = 10
    features: tuple[int, ...] | None = None
    batch_size: int = 8
    start_pos: int = 1

    def __post_init__(self) -> None:
        for name in ("n_examples", "n_bins", "n_logits", "batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"FeatureConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.context < 0 or self.start_pos < 0:
            raise ConfigError("FeatureConfig.context and start_pos must be >= 0")


@dataclass(frozen=True)
class FeatureAnalysis:
    """Results of :func:`analyze_features`.

    Attributes:
        features: ``sae.features`` (feature, layer, density, max_act, mean_act, top_tokens, top_logits,
            bottom_logits), one row per feature.
        examples: ``sae.examples`` (feature, rank, row, pos, value, token, left, right).
        histograms: ``sae.histogram`` (feature, bin_left, bin_right, count) of log10 activations.
        logits: ``sae.logits`` (feature, rank, token, effect, side).
    """

    features: Any
    examples: Any
    histograms: Any
    logits: Any

    def results(self) -> list[Any]:
        return [self.features, self.examples, self.histograms, self.logits]


def _site(site: Site | str) -> Site:
    return site if isinstance(site, Site) else Site.parse(site)


def decoder_directions(model: Model, sae: Any, site: Site | str, features: Sequence[int] | None = None) -> Float[Tensor, "feature d_model"]:
    """``[n_features, d_model]``: each latent's decoder row written into the residual stream.

    ``z`` SAEs map through each head's ``W_O`` (summed over heads); ``mlp_post`` through ``W_out``.
    """
    s = _site(site)
    W_dec = sae.W_dec.detach()
    if features is not None:
        W_dec = W_dec[list(features)]
    if s.component == "z":
        W_O = model.blocks[s.layer].attn.W_O.detach()                  # [head, d_head, d_model]
        if s.head is not None:
            return W_dec @ W_O[s.head]
        return torch.einsum("fhd,hdm->fm", W_dec.reshape(W_dec.shape[0], *W_O.shape[:2]).to(W_O.dtype), W_O)
    if s.component == "mlp_post":
        return W_dec @ model.blocks[s.layer].mlp.W_out.detach()
    return W_dec


def logit_effects(model: Model, sae: Any, site: Site | str, features: Sequence[int] | None = None, *,
                  n: int = 10) -> Any:
    """Result ``sae.logits``: top/bottom tokens of each decoder direction through ``W_U``.

    Direct path only (the final norm's scale is ignored, as usual for logit-lens effects).
    """
    import pandas as pd

    from interp.results import Result, run_meta

    s = _site(site)
    feats = list(range(int(sae.cfg.d_sae))) if features is None else list(features)
    rows = []
    tok = getattr(model, "tokenizer", None)
    with torch.inference_mode():
        for start in range(0, len(feats), 512):
            chunk = feats[start:start + 512]
            eff = decoder_directions(model, sae, s, chunk).to(model.W_U.dtype) @ model.W_U      # [f, vocab]
            top = eff.topk(n, dim=-1)
            bot = (-eff).topk(n, dim=-1)
            for i, f in enumerate(chunk):
                for side, vals, idx in (("top", top.values[i], top.indices[i]), ("bottom", -bot.values[i], bot.indices[i])):
                    for rank, (v, t) in enumerate(zip(vals.tolist(), idx.tolist())):
                        rows.append((f, s.layer, side, rank, t, _tok_str(tok, t), v))
    table = pd.DataFrame(rows, columns=["feature", "layer", "side", "rank", "token_id", "token", "effect"])
    return Result("sae.logits", table, run_meta(model, site=str(s), n=n), name=str(s))


def _tok_str(tok: Any, t: int) -> str:
    if tok is None:
        return str(t)
    return tok.decode([t])


def _feature_acts(model: Model, sae: Any, site: Site, tokens: torch.Tensor, cfg: FeatureConfig):
    """Yield (row offset, tokens batch, latents [b, p, d_sae] with masked positions zeroed)."""
    from interp.hooks import run_capture
    from interp.sae.evaluate import sae_codec

    encode, _ = sae_codec(sae, site)
    device = next(model.parameters()).device
    with torch.inference_mode():
        for i in range(0, tokens.shape[0], cfg.batch_size):
            toks = tokens[i:i + cfg.batch_size].to(device)
            act = run_capture(model, toks, [site])[site]
            lat = encode(act)
            lat[:, : cfg.start_pos] = 0
            yield i, toks, lat


def analyze_features(model: Model, sae: Any, site: Site | str, tokens: Int[Tensor, "batch pos"],
                     cfg: FeatureConfig = FeatureConfig()) -> FeatureAnalysis:
    """Density, max/mean activation, top-activating examples with context, histograms, logit effects.

    Args:
        tokens: ``[rows, pos]`` token rows (held-out).

    Raises:
        ShapeError: the SAE's width does not match ``site``.
    """
    import numpy as np
    import pandas as pd
    from tqdm.auto import tqdm

    from interp.results import Result, run_meta
    from interp.sae.data import check_sae_site

    s = check_sae_site(model, site, int(sae.cfg.d_in))
    feats = torch.arange(int(sae.cfg.d_sae)) if cfg.features is None else torch.tensor(cfg.features)
    if feats.numel() and (feats.min() < 0 or feats.max() >= sae.cfg.d_sae):
        raise ConfigError(f"features must be in 0..{sae.cfg.d_sae - 1}, got {cfg.features}")
    nf, K = feats.numel(), cfg.n_examples
    top_v = torch.full((nf, K), -float("inf"))
    top_i = torch.zeros((nf, K), dtype=torch.long)          # flat index row * pos + p
    count = torch.zeros(nf, dtype=torch.long)
    total = torch.zeros(nf, dtype=torch.float64)
    edges = np.linspace(-4, 3, cfg.n_bins + 1)              # log10 activation (clipped into the range)
    hist = torch.zeros((nf, cfg.n_bins), dtype=torch.long)
    n_tok = 0
    P = tokens.shape[1]
    for off, toks, lat in tqdm(_feature_acts(model, sae, s, tokens, cfg), total=-(-tokens.shape[0] // cfg.batch_size),
                               desc="feature stats", leave=False):
        lat = lat[..., feats.to(lat.device)].float().cpu()           # [b, p, nf]
        b = lat.shape[0]
        n_tok += b * (P - cfg.start_pos)
        flat = lat.reshape(-1, nf)                                   # [b*p, nf]
        count += (flat > 0).sum(0)
        total += flat.sum(0).double()
        logs = torch.log10(flat.clamp_min(1e-12))
        bins = torch.bucketize(logs.clamp(edges[0], edges[-1] - 1e-9), torch.tensor(edges[1:-1], dtype=logs.dtype))
        bins = torch.where(flat > 0, bins, torch.full_like(bins, -1))
        for j in range(cfg.n_bins):
            hist[:, j] += (bins == j).sum(0)
        k = min(K, flat.shape[0])
        v, idx = flat.topk(k, dim=0)                                 # [k, nf]
        cand_v = torch.cat([top_v, v.T], 1)
        cand_i = torch.cat([top_i, (idx + off * P).T], 1)
        best = cand_v.topk(K, dim=1)
        top_v, top_i = best.values, cand_i.gather(1, best.indices)
    tok = getattr(model, "tokenizer", None)
    ex_rows, feat_rows = [], []
    logits = logit_effects(model, sae, s, feats.tolist(), n=cfg.n_logits)
    lt = logits.table
    top_logit = lt[lt.side == "top"].groupby("feature")["token"].apply(lambda x: list(x)[:5])
    bot_logit = lt[lt.side == "bottom"].groupby("feature")["token"].apply(lambda x: list(x)[:5])
    for j, f in enumerate(feats.tolist()):
        toks_of = []
        for rank in range(K):
            v = float(top_v[j, rank])
            if not v > 0:
                break
            flat_i = int(top_i[j, rank])
            r, p = divmod(flat_i, P)
            row = tokens[r].tolist()
            left = row[max(0, p - cfg.context):p]
            right = row[p + 1:p + 1 + cfg.context // 2]
            t = _tok_str(tok, row[p])
            toks_of.append(t)
            ex_rows.append((f, s.layer, rank, r, p, v, t, [_tok_str(tok, x) for x in left],
                            [_tok_str(tok, x) for x in right]))
        feat_rows.append((f, s.layer, str(s), float(count[j]) / max(n_tok, 1), float(top_v[j, 0]) if count[j] else 0.0,
                          float(total[j]) / max(int(count[j]), 1), toks_of[:5], top_logit.get(f, []),
                          bot_logit.get(f, [])))
    meta = run_meta(model, dataset="held-out", data=tokens, config=cfg, site=str(s), n_tokens=n_tok)
    features = Result("sae.features", pd.DataFrame(feat_rows, columns=[
        "feature", "layer", "site", "density", "max_act", "mean_act", "top_tokens", "top_logits", "bottom_logits"]),
        meta, name=str(s))
    examples = Result("sae.examples", pd.DataFrame(ex_rows, columns=[
        "feature", "layer", "rank", "row", "pos", "value", "token", "left", "right"]), meta, name=str(s))
    hrows = [(f, s.layer, float(edges[j]), float(edges[j + 1]), int(hist[i, j]))
             for i, f in enumerate(feats.tolist()) for j in range(cfg.n_bins) if hist[i, j] > 0]
    histograms = Result("sae.histogram", pd.DataFrame(hrows, columns=["feature", "layer", "bin_left", "bin_right", "count"]),
                        meta, name=str(s))
    return FeatureAnalysis(features, examples, histograms, logits)


# ---------------------------------------------------------------- direct feature attribution (z SAEs)

def _enc_blocks(sae: Any, n_heads: int, features: Sequence[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_enc as [head, d_head, n_features], b_dec as [head, d_head] (zeros if not applied to input))."""
    norm = getattr(sae.cfg, "normalize_activations", "none")
    if norm in ("layer_norm", "constant_norm_rescale"):
        raise ConfigError(f"DFA needs an SAE whose pre-activation is linear in z; this one uses "
                          f"normalize_activations={norm!r}")
    W = sae.W_enc.detach()
    if features is not None:
        W = W[:, list(features)]
    d_in = W.shape[0]
    if d_in % n_heads:
        raise ConfigError(f"SAE d_in={d_in} is not n_heads={n_heads} blocks")
    W = W.reshape(n_heads, d_in // n_heads, W.shape[-1])
    b_dec = sae.b_dec.detach().reshape(n_heads, -1)
    if not getattr(sae.cfg, "apply_b_dec_to_input", True):
        b_dec = torch.zeros_like(b_dec)
    return W, b_dec


def head_contributions(z: Float[Tensor, "*batch head d_head"], sae: Any, features: Sequence[int] | None = None) -> Float[Tensor, "*batch head feature"]:
    """Per-head contributions to latent pre-activations: ``[..., head, d_head] -> [..., head, n_features]``.

    Sums over heads to ``hook_sae_acts_pre - b_enc`` (see the module docstring).
    """
    W, b_dec = _enc_blocks(sae, z.shape[-2], features)
    return torch.einsum("...hd,hdf->...hf", (z.to(W.dtype) - b_dec), W)


def source_contributions(pattern: Float[Tensor, "batch head query_pos key_pos"], v: Float[Tensor, "batch key_pos head d_head"], sae: Any, features: Sequence[int] | None = None,
                         ) -> Float[Tensor, "batch head query_pos key_pos feature"]:
    """Per (head, source position) contributions: ``[batch, head, query_pos, key_pos, n_features]``.

    Args:
        pattern: ``[batch, head, query_pos, key_pos]`` attention probabilities.
        v: ``[batch, key_pos, kv_head, d_head]`` values (GQA: fewer kv heads than heads).

    Summed over ``key_pos`` they equal :func:`head_contributions` of ``z = pattern @ v``.
    """
    n_heads, n_kv = pattern.shape[1], v.shape[2]
    if n_heads % n_kv:
        raise ConfigError(f"{n_heads} heads cannot share {n_kv} key/value heads")
    W, b_dec = _enc_blocks(sae, n_heads, features)
    vh = v.repeat_interleave(n_heads // n_kv, dim=2).to(W.dtype)                        # [b, k, h, d]
    per_source = torch.einsum("bkhd,hdf->bhkf", vh - b_dec, W)                          # [b, h, k, f]
    return pattern.to(W.dtype)[..., None] * per_source[:, :, None]                       # [b, h, q, k, f]


def direct_feature_attribution(model: Model, sae: Any, site: Site | str, tokens: Int[Tensor, "batch pos"], *,
                               features: Sequence[int], start_pos: int = 1, batch_size: int = 8) -> Any:
    """Result ``sae.dfa``: mean contribution of each head to each latent where the latent fires.

    Columns: feature, layer, head, node (``L{layer}.H{head}``), src (the head), dst
    (``L{layer}.SAE.{feature}``), value (mean contribution over tokens where the latent is active),
    share (value / mean pre-activation minus bias), n_active. Edges head -> feature for the circuit graph.
    """
    import pandas as pd

    from interp.hooks import run_capture
    from interp.nodes import node_id
    from interp.results import Result, run_meta
    from interp.sae.data import check_sae_site
    from interp.sae.evaluate import sae_codec

    s = check_sae_site(model, site, int(sae.cfg.d_in))
    if s.component != "z" or s.head is not None:
        raise ConfigError(f"DFA to heads needs an SAE on attention z with all heads concatenated, got site {s}")
    feats = list(features)
    encode, _ = sae_codec(sae, s)
    device = next(model.parameters()).device
    H = model.cfg.n_heads
    sums = torch.zeros(H, len(feats), dtype=torch.float64)
    n_act = torch.zeros(len(feats), dtype=torch.long)
    with torch.inference_mode():
        for i in range(0, tokens.shape[0], batch_size):
            toks = tokens[i:i + batch_size].to(device)
            z = run_capture(model, toks, [s])[s]                                   # [b, p, h, d]
            lat = encode(z)[..., feats]                                            # [b, p, f]
            lat[:, :start_pos] = 0
            contrib = head_contributions(z, sae, feats)                            # [b, p, h, f]
            active = (lat > 0)
            n_act += active.sum((0, 1)).cpu()
            sums += (contrib * active[:, :, None, :]).sum((0, 1)).double().cpu()
    mean = sums / n_act.clamp_min(1)
    total = mean.sum(0, keepdim=True)
    rows = []
    for j, f in enumerate(feats):
        for h in range(H):
            head_node = node_id("head", layer=s.layer, head=h)
            rows.append((f, s.layer, h, head_node, head_node, node_id("sae", layer=s.layer, feature=f),
                         float(mean[h, j]), float(mean[h, j] / total[0, j]) if total[0, j] != 0 else float("nan"),
                         int(n_act[j])))
    table = pd.DataFrame(rows, columns=["feature", "layer", "head", "node", "src", "dst", "value", "share", "n_active"])
    return Result("sae.dfa", table, run_meta(model, dataset="held-out", data=tokens, site=str(s), start_pos=start_pos),
                  name=str(s))


def dfa_sources(model: Model, sae: Any, site: Site | str, tokens: Int[Tensor, "batch pos"], *, feature: int, row: int,
                pos: int) -> Any:
    """Result ``sae.dfa_source``: contribution of each (head, source position) to ``feature`` at (row, pos).

    Columns: feature, layer, head, node, key_pos, token, value.
    """
    import pandas as pd

    from interp.hooks import run_capture
    from interp.nodes import node_id
    from interp.results import Result, run_meta
    from interp.sae.data import check_sae_site

    s = check_sae_site(model, site, int(sae.cfg.d_in))
    if s.component != "z" or s.head is not None:
        raise ConfigError(f"DFA to source positions needs an attention z SAE, got site {s}")
    device = next(model.parameters()).device
    toks = tokens[row:row + 1].to(device)
    if not 0 <= pos < toks.shape[1]:
        raise ConfigError(f"pos {pos} outside the row of {toks.shape[1]} tokens")
    sv, sp = Site("v", s.layer), Site("pattern", s.layer)
    with torch.inference_mode():
        acts = run_capture(model, toks, [s, sv, sp])
        src = source_contributions(acts[sp], acts[sv], sae, [feature])[0, :, pos, : pos + 1, 0]   # [h, k]
    tok = getattr(model, "tokenizer", None)
    rows = [(feature, s.layer, h, node_id("head", layer=s.layer, head=h), k, _tok_str(tok, int(toks[0, k])),
             float(src[h, k])) for h in range(src.shape[0]) for k in range(src.shape[1])]
    table = pd.DataFrame(rows, columns=["feature", "layer", "head", "node", "key_pos", "token", "value"])
    return Result("sae.dfa_source", table, run_meta(model, site=str(s), row=row, pos=pos), name=f"{s}-f{feature}")
