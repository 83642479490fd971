"""Visual attention sinks, image-centric heads and Visual Attention Redistribution (VAR).

Follows "See What You Are Told: Visual Attention Sink in Large Multimodal Models" (ICLR'25) and
its code, MICV-yonsei/VisAttnSink ``src/logic/logic.py`` (``DimProspector``, ``HeadFork``,
``VARProcessor.attn_redist``), with the defaults of ``shared/METHODS.md`` section 10:

* **sink tokens** (``DimProspector``): the hidden state entering layer ``l`` (``resid_pre.l``) is
  RMS-normalised *without* the norm's weight (``h / sqrt(mean(h^2) + 1e-6)``, as the code does);
  a token is a sink at ``l`` when the largest ``|value|`` over the sink dimensions exceeds
  ``tau`` (20). Sink tokens may be text (BOS) or image tokens; the image ones are the *visual sinks*.
* **sink dimensions**: VAR fixes them per language model (LLaMA-2-7B: 2533 and 1415). Our choice
  for any model: ``dims=`` when given (e.g. from :func:`interp.sinks.massive_activations`), else
  every dimension whose normalised value exceeds ``tau`` at some real token of the batch in the
  analysed layers (these are the massive dimensions; no other dimension can pass the test anyway).
  A normalised value is at most ``sqrt(d_model)``, so a model with ``d_model <= 400`` has no sinks
  at ``tau = 20``: the random toys find none.
* **image-centric heads** (``HeadFork``): per (prompt, head, query), the share of the query's
  image attention that goes to visual sinks ``<= rho`` (0.5) and its total image attention
  ``>= floor`` (0.2, the code's ``summ``). Queries are the real tokens after the image (prefill
  queries ``>= im + pa`` in the code).
* **redistribution** (``attn_redist``): at those (head, query) coordinates the attention to every
  sink token (text and visual) is multiplied by ``p`` (0.6) and the freed mass
  ``(1 - p) * sum(sink attention)`` goes to the non-sink image tokens in proportion to their
  attention. Our choice where the code would divide by zero (all image attention on sinks): the
  row is left unchanged. Layers: 2 .. L-2 (the code detects from layer 2 and skips the last layer).

Our choice: sink tokens are found once, on the unmodified forward pass (the code finds them during the
same pass, after the earlier layers' redistribution); the image-centric test runs on each pass's own pattern.

The redistribution is an engine intervention (``apply`` on ``Site("pattern", l)``), so it composes
with every other world of :func:`interp.engine.run`; at ``p = 1`` it is exactly the identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from interp.engine import Intervention, World, run
from interp.errors import ConfigError
from interp.metrics import accuracy, prob
from interp.nodes import site_node
from interp.results import Result, run_meta
from interp.sites import Site

if TYPE_CHECKING:
    from interp.types import Model
    from interp.vlm.inputs import VisionBatch

__all__ = ["VarConfig", "sink_tokens", "visual_sinks", "image_centric", "image_centric_heads", "redistribute",
           "var_interventions", "var_effect", "query_mask"]


@dataclass(frozen=True, kw_only=True)
class VarConfig:
    """VAR's thresholds (defaults from the paper's code).

    Attributes:
        tau: sink threshold on the RMS-normalised hidden state (20).
        rho: most share of a head's image attention on visual sinks for an image-centric head (0.5).
        floor: least total image attention of an image-centric head (0.2).
        p: factor on the attention to sink tokens (0.6); 1 = no change.
        layers: layers analysed and redistributed (``None``: 2 .. L-2).
        dims: sink dimensions (``None``: those exceeding ``tau`` in the batch; see the module doc).
    """

    tau: float = 20.0
    rho: float = 0.5
    floor: float = 0.2
    p: float = 0.6
    layers: tuple[int, ...] | None = None
    dims: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ConfigError(f"VarConfig.p must lie in [0, 1], got {self.p}")
        if self.tau <= 0 or not 0.0 <= self.rho <= 1.0 or not 0.0 <= self.floor <= 1.0:
            raise ConfigError(f"VarConfig: need tau > 0 and rho, floor in [0, 1]; got tau={self.tau}, "
                              f"rho={self.rho}, floor={self.floor}")

    def resolved_layers(self, n_layers: int) -> list[int]:
        layers = list(range(2, n_layers - 1)) if self.layers is None else sorted(set(int(l) for l in self.layers))
        bad = [l for l in layers if not 0 <= l < n_layers]
        if bad:
            raise ConfigError(f"VarConfig.layers {bad} out of range; the model has {n_layers} layers")
        return layers


def _rms(h: Tensor) -> Tensor:
    h = h.float()
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)


def sink_tokens(model: Model, batch: VisionBatch, config: VarConfig = VarConfig()
                ) -> tuple[dict[int, Bool[Tensor, "batch pos"]], dict[int, Float[Tensor, "batch pos"]],
                           tuple[int, ...]]:
    """Sink tokens per analysed layer: ``(masks, values, dims)`` (see the module doc).

    ``masks[l]`` is ``[batch, pos]`` True at sink tokens (text or image) entering layer ``l``;
    ``values[l]`` the largest ``|normalised h|`` over the sink dims there.
    """
    from interp.hooks import run_capture

    layers = config.resolved_layers(model.cfg.n_layers)
    if not layers:
        return {}, {}, tuple(config.dims or ())
    sites = [Site("resid_pre", l) for l in layers]
    with torch.inference_mode(), batch.feed(model):
        acts = run_capture(model, batch.tokens, sites)
    normed = {l: _rms(acts[Site("resid_pre", l)]).abs() * batch.mask[..., None].to(torch.float32) for l in layers}
    if config.dims is not None:
        dims = tuple(int(d) for d in config.dims)
        bad = [d for d in dims if not 0 <= d < model.cfg.d_model]
        if bad:
            raise ConfigError(f"VarConfig.dims {bad} out of range; d_model is {model.cfg.d_model}")
    else:
        peak = torch.stack([v.amax(dim=(0, 1)) for v in normed.values()]).amax(0)
        dims = tuple(int(d) for d in (peak > config.tau).nonzero().flatten())
    values, masks = {}, {}
    for l, v in normed.items():
        values[l] = v[..., list(dims)].amax(-1) if dims else torch.zeros(v.shape[:2])
        masks[l] = (values[l] > config.tau) & batch.mask
    return masks, values, dims


def visual_sinks(model: Model, batch: VisionBatch, config: VarConfig = VarConfig()) -> Result:
    """Result ``vlm.sinks``: one row per sink token (prompt, layer, position), text or image."""
    masks, values, dims = sink_tokens(model, batch, config)
    img = batch.image_mask
    rows = []
    for l, m in masks.items():
        for b, pos in m.nonzero().tolist():
            image_pos = batch.image_positions(b)
            rows.append({"prompt": b, "layer": l, "pos": pos,
                         "token": model.tokenizer.decode([int(batch.tokens[b, pos])]),
                         "is_image": bool(img[b, pos]), "patch": image_pos.index(pos) if pos in image_pos else -1,
                         "value": float(values[l][b, pos]), "dims": list(dims)})
    table = pd.DataFrame(rows, columns=["prompt", "layer", "pos", "token", "is_image", "patch", "value", "dims"])
    meta = run_meta(model, data=batch.tokens, config=config, dims=list(dims), images=batch.images_digest,
                    layers=list(masks))
    return Result("vlm.sinks", table, meta)


def query_mask(batch: VisionBatch) -> Bool[Tensor, "batch pos"]:
    """``[batch, pos]`` True at the real tokens after each prompt's last image token (VAR's queries)."""
    img = batch.image_mask
    pos = torch.arange(img.shape[1])[None]
    last_img = torch.where(img, pos, -1).amax(1, keepdim=True)
    return batch.mask & (pos > last_img) & (last_img >= 0)


def image_centric(pattern: Float[Tensor, "batch head q k"], image: Bool[Tensor, "batch k"],
                  sinks: Bool[Tensor, "batch k"], queries: Bool[Tensor, "batch q"], *, rho: float, floor: float
                  ) -> tuple[Bool[Tensor, "batch head q"], Float[Tensor, "batch head q"],
                             Float[Tensor, "batch head q"]]:
    """``(selected, image_attention, sink_share)`` per (prompt, head, query): VAR's ``HeadFork`` test."""
    pattern = pattern.float()
    image_attn = (pattern * image[:, None, None, :]).sum(-1)
    share = (pattern * (sinks & image)[:, None, None, :]).sum(-1) / (image_attn + 1e-6)
    selected = (share <= rho) & (image_attn >= floor) & queries[:, None, :]
    return selected, image_attn, share


def redistribute(pattern: Float[Tensor, "batch head q k"], image: Bool[Tensor, "batch k"],
                 sinks: Bool[Tensor, "batch k"], selected: Bool[Tensor, "batch head q"], p: float
                 ) -> Float[Tensor, "batch head q k"]:
    """VAR's redistribution at the ``selected`` (prompt, head, query) rows (see the module doc).

    Exactly the identity at ``p = 1`` (every factor is 1 and every added mass 0).
    """
    s = sinks[:, None, None, :]
    rest = (pattern * (image & ~sinks)[:, None, None, :])
    total = rest.sum(-1, keepdim=True)
    budget = (pattern * s).sum(-1, keepdim=True) * (1.0 - p)
    moved = torch.where(s, pattern * p, pattern) + budget * rest / torch.where(total > 0, total, 1.0)
    keep = (selected & (total[..., 0] > 0))[..., None]
    return torch.where(keep, moved.to(pattern.dtype), pattern)


def var_interventions(model: Model, batch: VisionBatch, config: VarConfig = VarConfig(),
                      sinks: dict[int, Bool[Tensor, "batch pos"]] | None = None) -> list[Intervention]:
    """VAR as engine interventions: one ``apply`` on ``Site("pattern", l)`` per layer with sink tokens.

    The heads are selected on the pattern of the pass itself (as the code does during the forward).
    Rows of a pass are prompt ``row % len(batch)`` (the engine's worlds, repeated batches).
    """
    masks = sink_tokens(model, batch, config)[0] if sinks is None else sinks
    image, queries = batch.image_mask, query_mask(batch)
    n_b = len(batch)
    out = []
    for l, m in masks.items():
        if not bool(m.any()):                # no sink token: nothing to redistribute
            continue

        def fn(region: Tensor, _m: Tensor = m) -> Tensor:
            idx = torch.arange(region.shape[0]) % n_b
            width = region.shape[-1]
            im, sk, qs = (x[idx, :width].to(region.device) for x in (image, _m, queries))
            sel = image_centric(region, im, sk, qs[:, :region.shape[-2]], rho=config.rho, floor=config.floor)[0]
            return redistribute(region, im, sk, sel, config.p)
        out.append(Intervention("apply", Site("pattern", l), fn))
    return out


def image_centric_heads(model: Model, batch: VisionBatch, config: VarConfig = VarConfig()) -> Result:
    """Result ``vlm.heads``: per (layer, head), image attention, visual-sink share and how often it is image-centric.

    Means are over the (prompt, query) coordinates of VAR's queries; ``frac_centric`` is the fraction of
    those coordinates where the head passes the test, ``centric_last`` the fraction of prompts where it
    passes at the last token.
    """
    from interp.hooks import run_capture

    masks, _, dims = sink_tokens(model, batch, config)
    queries = query_mask(batch)
    sites = [Site("pattern", l) for l in masks]
    if sites:
        with torch.inference_mode(), batch.feed(model):
            pats = run_capture(model, batch.tokens, sites)
    rows = []
    n_q = queries.sum().clamp_min(1)
    last = torch.zeros_like(queries)
    last[torch.arange(len(batch)), batch.last] = True
    for l, m in masks.items():
        sel, attn, share = image_centric(pats[Site("pattern", l)], batch.image_mask, m, queries, rho=config.rho,
                                         floor=config.floor)
        q = queries[:, None, :].float()
        for h in range(sel.shape[1]):
            rows.append({"layer": l, "head": h, "node": site_node(Site("z", l, head=h)),
                         "image_attention": float((attn[:, h] * q[:, 0]).sum() / n_q),
                         "sink_share": float((share[:, h] * q[:, 0]).sum() / n_q),
                         "frac_centric": float(sel[:, h].float().sum() / n_q),
                         "centric_last": float((sel[:, h] & last).any(-1).float().mean()),
                         "n_visual_sinks": int((m & batch.image_mask).sum())})
    meta = run_meta(model, data=batch.tokens, config=config, dims=list(dims), images=batch.images_digest)
    cols = ["layer", "head", "node", "image_attention", "sink_share", "frac_centric", "centric_last",
            "n_visual_sinks"]
    return Result("vlm.heads", pd.DataFrame(rows, columns=cols), meta)


def var_effect(model: Model, batch: VisionBatch, answers: Sequence[Any], config: VarConfig = VarConfig()) -> Result:
    """Result ``vlm.var``: each prompt's answer probability and correctness without and with VAR.

    Args:
        answers: per prompt, the answer (a single-token string or a token id).
    """
    from interp.vlm.fcct import answer_ids

    ids = answer_ids(model, answers, len(batch))
    masks = sink_tokens(model, batch, config)[0]
    ivs = var_interventions(model, batch, config, masks)
    with torch.inference_mode(), batch.feed(model):
        out = run(model, batch.tokens, [World(), World(tuple(ivs))], positions=batch.last)
    base, var = out.worlds[0].float(), out.worlds[1].float()
    rows = []
    for b in range(len(batch)):
        one = ids[b:b + 1]
        rows.append({"prompt": b, "answer": model.tokenizer.decode([int(ids[b])]),
                     "p_base": float(prob(base[b:b + 1], one)[0]), "p_var": float(prob(var[b:b + 1], one)[0]),
                     "correct_base": bool(accuracy(base[b:b + 1], one)[0]),
                     "correct_var": bool(accuracy(var[b:b + 1], one)[0]),
                     "argmax_changed": bool(base[b].argmax() != var[b].argmax()),
                     "max_logit_change": float((var[b] - base[b]).abs().max())})
    meta = run_meta(model, data=batch.tokens, config=config, images=batch.images_digest,
                    layers=[iv.site.layer for iv in ivs],
                    n_sinks={int(l): int(m.sum()) for l, m in masks.items()})
    return Result("vlm.var", pd.DataFrame(rows), meta)
