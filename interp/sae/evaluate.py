"""Evaluate an SAE on held-out tokens: sparsity, reconstruction, and the model's loss with the
SAE spliced in (METHODS.md section 6).

Metrics (Result ``sae.eval``, one row per metric):

* ``l0`` — mean number of active latents per token.
* ``explained_variance`` — 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over all tokens.
* ``mse`` — mean squared error per element; ``rel_l2_error`` — sum ||x - x_hat||^2 / sum ||x||^2.
* ``ce_clean``, ``ce_with_sae``, ``ce_zero_ablation`` — next-token cross-entropy (nats) with the
  site untouched, replaced by the SAE's reconstruction, or zeroed;
  ``ce_loss_recovered = (ce_zero_ablation - ce_with_sae) / (ce_zero_ablation - ce_clean)``.
* ``kl_with_sae``, ``kl_zero_ablation`` — mean KL(clean || intervened) of the next-token distributions.
* ``dead_features`` / ``dead_fraction`` — latents that never fire on the held-out tokens;
  ``dense_features`` — latents firing on more than ``dense_threshold`` of tokens.

Positions ``< start_pos`` (BOS, or SmolLM2's massive-activation first token) are neither
reconstructed nor ablated, and CE/KL are measured at the positions whose prediction the
intervention can change (``pos >= start_pos`` with a real next token).

Example:
    >>> import torch
    >>> from sae_lens import SAE
    >>> from interp.sae.evaluate import evaluate_sae
    >>> d = model.cfg.d_model           # an SAE that reconstructs exactly: W_enc = [I, -I], W_dec = [I; -I]
    >>> sae = SAE.from_dict({"architecture": "standard", "d_in": d, "d_sae": 2 * d, "dtype": "float32",
    ...                      "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
    ...                      "metadata": {"hook_name": ""}})
    >>> with torch.no_grad():
    ...     _ = sae.W_enc.copy_(torch.cat([torch.eye(d), -torch.eye(d)], 1))
    ...     _ = sae.W_dec.copy_(torch.cat([torch.eye(d), -torch.eye(d)], 0))
    ...     _ = sae.b_enc.zero_(), sae.b_dec.zero_()
    >>> tokens = torch.randint(0, 256, (4, 12), generator=torch.Generator().manual_seed(0))
    >>> tokens[:, 0] = model.tokenizer.bos_token_id
    >>> res = evaluate_sae(model, sae, "resid_post.0", tokens)
    >>> v = res.table.set_index("metric").value
    >>> round(v["explained_variance"], 4), round(v["ce_loss_recovered"], 4), round(v["kl_with_sae"], 4)
    (1.0, 1.0, 0.0)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.errors import ConfigError
from interp.sites import Site

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["SAEEvalConfig", "evaluate_sae", "sae_codec"]


@dataclass(frozen=True, kw_only=True)
class SAEEvalConfig:
    """Evaluation settings.

    Attributes:
        batch_size: rows per forward pass.
        start_pos: positions before this are left alone (see module docstring).
        dense_threshold: a latent firing on more than this fraction of tokens is dense.
        max_rows: evaluate on at most this many rows (``None``: all).
    """

    batch_size: int = 8
    start_pos: int = 1
    dense_threshold: float = 0.1
    max_rows: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size <= 0 or self.start_pos < 0:
            raise ConfigError(f"need batch_size > 0 and start_pos >= 0, got {self.batch_size}, {self.start_pos}")
        if not 0 < self.dense_threshold <= 1:
            raise ConfigError(f"dense_threshold must be in (0, 1], got {self.dense_threshold}")
        if self.max_rows is not None and self.max_rows <= 0:
            raise ConfigError(f"max_rows must be > 0, got {self.max_rows}")


def sae_codec(sae: Any, site: Site) -> tuple[Callable[[Float[Tensor, "batch pos ..."]], Float[Tensor, "batch pos d_sae"]],
                                              Callable[[Float[Tensor, "batch pos d_sae"], Float[Tensor, "batch pos ..."]],
                                                       Float[Tensor, "batch pos ..."]]]:
    """``(encode, decode)`` mapping a site's hook activation to latents and back to the hook's shape.

    ``encode(act) -> [..., d_sae]``; ``decode(latents, like=act) -> act-shaped reconstruction``.
    Handles z SAEs with and without SAE-Lens's ``hook_z`` reshaping.
    """
    reshaping = bool(getattr(sae, "hook_z_reshaping_mode", False))

    def encode(act: torch.Tensor) -> torch.Tensor:
        x = act.to(sae.W_enc.dtype)
        if site.component == "z" and site.head is None and not reshaping:
            x = x.flatten(-2)
        return sae.encode(x)

    def decode(latents: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        out = sae.decode(latents)
        return out.reshape(like.shape).to(like.dtype)

    return encode, decode


def _ce_kl(logits: torch.Tensor, clean_logp: torch.Tensor, tokens: torch.Tensor,
           mask: torch.Tensor) -> tuple[float, float]:
    """Summed next-token cross-entropy and KL to the clean run over the masked predictions."""
    from interp import metrics

    ce = -metrics.token_logprobs(logits, tokens)
    kl = metrics.kl(logits[:, :-1], clean_logp)
    return float(ce[mask].sum()), float(kl[mask].sum())


def evaluate_sae(model: Model, sae: Any, site: Site | str, tokens: Int[Tensor, "batch pos"], cfg: SAEEvalConfig = SAEEvalConfig(),
                 *, lengths: Int[Tensor, " batch"] | None = None, name: str = "") -> Any:
    """Held-out metrics of ``sae`` at ``site``: Result ``sae.eval`` (columns metric, value).

    Args:
        tokens: ``[rows, pos]`` held-out token rows; ``lengths`` ``[rows]`` real tokens (right padding).

    Raises:
        ShapeError: the SAE's width does not match the site (e.g. a z SAE on resid_post).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from interp.hooks import capturing, patched
    from interp.metrics import log_probs
    from interp.results import Result, run_meta
    from interp.sae.data import check_sae_site

    site = check_sae_site(model, site, int(sae.cfg.d_in))
    if cfg.max_rows is not None:
        tokens = tokens[: cfg.max_rows]
        lengths = lengths[: cfg.max_rows] if lengths is not None else None
    if tokens.shape[1] <= cfg.start_pos + 1:
        raise ConfigError(f"rows of {tokens.shape[1]} tokens leave nothing to evaluate after start_pos={cfg.start_pos}")
    encode, decode = sae_codec(sae, site)
    device = next(model.parameters()).device
    d_sae = int(sae.cfg.d_sae)
    fired = torch.zeros(d_sae, dtype=torch.long)
    sums = dict(n=0, l0=0.0, sq_err=0.0, sq=0.0, n_pred=0, ce_clean=0.0, ce_sae=0.0, ce_zero=0.0, kl_sae=0.0,
                kl_zero=0.0)
    x_sum: torch.Tensor | None = None
    with torch.inference_mode():
        for i in tqdm(range(0, tokens.shape[0], cfg.batch_size), desc="evaluate SAE", leave=False):
            toks = tokens[i:i + cfg.batch_size].to(device)
            b, p = toks.shape
            lens = lengths[i:i + cfg.batch_size].to(device) if lengths is not None else torch.full((b,), p, device=device)
            pos = torch.arange(p, device=device)[None, :]
            tok_mask = (pos >= cfg.start_pos) & (pos < lens[:, None])                    # [b, p]
            pred_mask = ((pos >= cfg.start_pos) & (pos + 1 < lens[:, None]))[:, :-1]     # predicting pos+1
            with capturing(model, [site]) as acts:
                clean_logits = model(toks)
            act = acts[site]
            latents = encode(act)
            recon = decode(latents, act)
            recon = torch.where(_expand(tok_mask, act), recon, act)     # untouched outside the mask
            zeroed = torch.where(_expand(tok_mask, act), torch.zeros_like(act), act)
            x = act.flatten(2) if act.ndim == 4 else act
            xr = recon.flatten(2) if recon.ndim == 4 else recon
            xs, xrs, lat = x[tok_mask].float(), xr[tok_mask].float(), latents[tok_mask]
            active = lat != 0
            fired += active.sum(0).cpu()
            sums["n"] += xs.shape[0]
            sums["l0"] += float(active.sum())
            sums["sq_err"] += float((xs - xrs).pow(2).sum())
            sums["sq"] += float(xs.pow(2).sum())
            x_sum = xs.sum(0) if x_sum is None else x_sum + xs.sum(0)
            with patched(model, {site: recon}):
                sae_logits = model(toks)
            with patched(model, {site: zeroed}):
                zero_logits = model(toks)
            clean_logp = log_probs(clean_logits[:, :-1])
            ce_clean, _ = _ce_kl(clean_logits, clean_logp, toks, pred_mask)
            ce_sae, kl_sae = _ce_kl(sae_logits, clean_logp, toks, pred_mask)
            ce_zero, kl_zero = _ce_kl(zero_logits, clean_logp, toks, pred_mask)
            n_pred = int(pred_mask.sum())
            sums["n_pred"] += n_pred
            for k, v in (("ce_clean", ce_clean), ("ce_sae", ce_sae), ("ce_zero", ce_zero), ("kl_sae", kl_sae),
                         ("kl_zero", kl_zero)):
                sums[k] += v
    n, n_pred = max(sums["n"], 1), max(sums["n_pred"], 1)
    total_var = sums["sq"] - (float(x_sum.pow(2).sum()) / n if x_sum is not None else 0.0)
    ce_clean, ce_sae, ce_zero = sums["ce_clean"] / n_pred, sums["ce_sae"] / n_pred, sums["ce_zero"] / n_pred
    freq = fired.float() / n
    metrics = {
        "l0": sums["l0"] / n,
        "explained_variance": 1 - sums["sq_err"] / max(total_var, 1e-30),
        "mse": sums["sq_err"] / (n * int(sae.cfg.d_in)),
        "rel_l2_error": sums["sq_err"] / max(sums["sq"], 1e-30),
        "ce_clean": ce_clean, "ce_with_sae": ce_sae, "ce_zero_ablation": ce_zero,
        "ce_loss_recovered": (ce_zero - ce_sae) / (ce_zero - ce_clean) if ce_zero != ce_clean else float("nan"),
        "kl_with_sae": sums["kl_sae"] / n_pred, "kl_zero_ablation": sums["kl_zero"] / n_pred,
        "dead_features": int((fired == 0).sum()), "dead_fraction": float((fired == 0).float().mean()),
        "dense_features": int((freq > cfg.dense_threshold).sum()),
        "n_tokens": sums["n"], "n_predictions": sums["n_pred"], "d_sae": d_sae, "d_in": int(sae.cfg.d_in),
    }
    table = pd.DataFrame({"metric": list(metrics), "value": [float(v) for v in metrics.values()]})
    table.insert(0, "layer", site.layer)
    table.insert(0, "site", str(site))
    meta = run_meta(model, dataset="held-out", data=tokens, config=cfg, site=str(site),
                    architecture=sae.cfg.architecture(), sae=dict(d_in=int(sae.cfg.d_in), d_sae=d_sae))
    return Result("sae.eval", table, meta, name=name or str(site))


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.reshape(mask.shape + (1,) * (like.ndim - 2))
