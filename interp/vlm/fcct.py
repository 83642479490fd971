"""Cross-modal causal tracing (FCCT) and intermediate representation injection (IRI).

Follows "Causal Tracing of Object Representations in Large Vision-Language Models" (AAAI'26,
arXiv 2511.05923) as summarised in ``shared/METHODS.md`` section 10 (no code of the authors was
available here):

* **corruption**: Gaussian noise on the whole image, added to the image tokens' embeddings (the
  merged input of the language model, ``resid_pre.0`` at the image positions). Our choice for the
  noise scale, after ROME's causal tracing: ``noise`` (3) times the standard deviation of the
  clean image-token embeddings of the batch, drawn from a seeded generator, the same draw for
  every world.
* **restoration**: one component, ``attn_out``, ``mlp_out`` or ``resid`` (the hidden state leaving
  the layer, ``resid_post``), at one layer, for one token group (``image``, ``text``, ``last``,
  and with an object box ``object`` / ``early`` / ``late`` visual tokens,
  :func:`interp.vlm.groups.token_group`; or any ``[batch, pos]`` masks), takes the clean run's value.
* **recovery rate** ``RR = (P_patched - P_corrupt) / (P_clean - P_corrupt)`` with ``P`` the answer's
  probability (:func:`interp.metrics.prob`, ``"Yes"`` in the paper). Our choice: the means of ``P``
  over the batch's prompts enter the ratio (a ratio of means, stable where one prompt's corruption
  barely moves it).

Every cell of the layer x component x group grid is one engine world entering at its layer
(:func:`interp.engine.run`: the noised base rows run once, each world starts from their residual).

**IRI** (the paper's mitigation): the top ``k1`` (3) source layers by RR of one component at the
last token and the top ``k2`` (10) target layers; at each target layer ``l`` the last token's
output ``a(l)`` becomes ``a(l) + lambda * sum_{k in sources, k < l} RR_k a(k)``, rescaled to
``||a(l)||`` (``lambda`` 0.26 for ``attn_out``, 0.16 for ``mlp_out``: LLaVA-1.5's values). It runs
on the clean inputs as an ``apply`` intervention; ``a(k)`` is the unmodified output of the same pass.
Our choice: targets are ranked by the same RR as the sources.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from interp.engine import Intervention, World, run
from interp.errors import ConfigError, DataError
from interp.metrics import accuracy, normalized, prob
from interp.nodes import site_node
from interp.results import Result, run_meta
from interp.sites import Site

if TYPE_CHECKING:
    from interp.types import Model
    from interp.vlm.inputs import VisionBatch

__all__ = ["FcctConfig", "COMPONENTS", "answer_ids", "image_noise", "fcct", "iri", "LAMBDA", "patch_groups",
           "object_ratio"]

#: FCCT component -> the site restored.
COMPONENTS = {"attn_out": "attn_out", "mlp_out": "mlp_out", "resid": "resid_post"}
#: IRI's lambda per component (LLaVA-1.5).
LAMBDA = {"attn_out": 0.26, "mlp_out": 0.16}


@dataclass(frozen=True, kw_only=True)
class FcctConfig:
    """Configuration of :func:`fcct`.

    Attributes:
        noise: noise standard deviation in units of the clean image-token embeddings' std (3, ROME's).
        seed: seed of the noise.
        components: restored components (keys of :data:`COMPONENTS`).
        layers: layers restored (``None``: all).
        max_rows: most rows in one forward pass.
    """

    noise: float = 3.0
    seed: int = 0
    components: tuple[str, ...] = ("attn_out", "mlp_out", "resid")
    layers: tuple[int, ...] | None = None
    max_rows: int = 256

    def __post_init__(self) -> None:
        from interp.errors import nearest

        for c in self.components:
            if c not in COMPONENTS:
                raise ConfigError(f"FcctConfig.components: unknown {c!r}.{nearest(c, COMPONENTS)} "
                                  f"Known: {', '.join(COMPONENTS)}")
        if self.noise <= 0:
            raise ConfigError(f"FcctConfig.noise must be > 0, got {self.noise}")


def answer_ids(model: Model, answers: Sequence[Any], n: int) -> Int[Tensor, " batch"]:
    """``[n]`` token ids of the answers (single-token strings or ids), one per prompt."""
    from interp.datasets._align import single_token_id

    if isinstance(answers, (str, int)):
        answers = [answers] * n
    answers = list(answers)
    if len(answers) != n:
        raise DataError(f"answers: {len(answers)} for {n} prompts; give one per prompt")
    ids = []
    for i, a in enumerate(answers):
        if isinstance(a, str):
            t = single_token_id(model, a)
            if t is None:
                raise DataError(f"answer {i} {a!r} is not a single token of the model's tokenizer")
            ids.append(t)
        else:
            t = int(a)
            if not 0 <= t < model.cfg.d_vocab:
                raise DataError(f"answer {i}: token id {t} out of range (d_vocab {model.cfg.d_vocab})")
            ids.append(t)
    return torch.tensor(ids)


def image_noise(model: Model, batch: VisionBatch, scale: float = 3.0, seed: int = 0) -> Intervention:
    """FCCT's corruption: ``add`` Gaussian noise at the image tokens of ``resid_pre.0`` (std: ``scale`` x theirs)."""
    from interp.hooks import run_capture

    img = batch.image_mask
    if not bool(img.any()):
        raise DataError("FCCT needs images: the batch has no image tokens")
    at = Site("resid_pre", 0)
    with torch.inference_mode(), batch.feed(model):
        emb = run_capture(model, batch.tokens, [at])[at]
    std = float(emb[img].float().std())
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(*batch.tokens.shape, model.cfg.d_model, generator=g) * (scale * std)
    return Intervention("add", at, noise * img[..., None].float())


def _groups(model: Model, batch: VisionBatch, groups: Any, box: Any) -> dict[str, Tensor]:
    from interp.vlm.groups import token_group

    if isinstance(groups, Mapping):
        out = {}
        for k, v in groups.items():
            if tuple(v.shape) != tuple(batch.tokens.shape) or v.dtype != torch.bool:
                raise DataError(f"group {k!r}: expected a [batch, pos] bool mask of shape "
                                f"{tuple(batch.tokens.shape)}, got {v.dtype} {tuple(v.shape)}")
            out[str(k)] = v
        return out
    if groups is None:
        groups = ("image", "text", "last") + (("object", "early", "late") if box is not None else ())
    return {g: token_group(model, batch, g, box=box) for g in groups}


def fcct(model: Model, batch: VisionBatch, answers: Sequence[Any], *, groups: Any = None, box: Any = None,
         config: FcctConfig = FcctConfig(), name: str = "") -> Result:
    """FCCT's recovery grid over layers x components x token groups (see the module doc).

    Args:
        model: a vision-language model.
        batch: prompts with images (:func:`interp.tokenize` with ``images=``).
        answers: per prompt the answer whose probability is traced (``"Yes"``), a string or id.
        groups: token group names (:data:`interp.vlm.groups.GROUPS`) or ``{name: [batch, pos] mask}``.
        box: the object's box for ``object`` / ``early`` / ``late`` (see :func:`~interp.vlm.groups.token_group`).
        name: the Result's name (to tell several ``vlm.fcct`` Results apart).

    Returns:
        Result ``vlm.fcct``: one row per (layer, component, group) with ``p_patched``, ``recovery``.
    """
    ids = answer_ids(model, answers, len(batch))
    masks = _groups(model, batch, groups, box)
    n_layers = model.cfg.n_layers
    layers = list(range(n_layers)) if config.layers is None else sorted(set(int(l) for l in config.layers))
    if any(not 0 <= l < n_layers for l in layers):
        raise ConfigError(f"FcctConfig.layers {layers} out of range; the model has {n_layers} layers")
    noise = image_noise(model, batch, config.noise, config.seed)
    sites = [Site(COMPONENTS[c], l) for c in config.components for l in layers]
    cells = [(c, l, g) for c in config.components for l in layers for g in masks]
    with torch.inference_mode(), batch.feed(model):
        clean_run = run(model, batch.tokens, [World()], positions=batch.last, record=sites)
        clean_acts = clean_run.recorded[0]
        worlds = [World((Intervention("restore", Site(COMPONENTS[c], l), clean_acts[Site(COMPONENTS[c], l)],
                                      positions=masks[g]),), enter=l) for c, l, g in cells]
        out = run(model, batch.tokens, worlds, positions=batch.last, base=[noise], with_base=True,
                  max_rows=config.max_rows)
    p_clean = float(prob(clean_run.worlds[0].float(), ids).mean())
    p_corr = float(prob(out.base.float(), ids).mean())
    if abs(p_clean - p_corr) < 1e-9:
        raise DataError(f"the image noise does not change the answer's probability ({p_clean:.3g}); "
                        "the recovery rate is undefined (raise FcctConfig.noise or check the image reaches the answer)")
    rows = []
    for (c, l, g), logits in zip(cells, out.worlds):
        p = float(prob(logits.float(), ids).mean())
        site = Site(COMPONENTS[c], l)
        rows.append({"layer": l, "component": c, "site": site.component, "group": g,
                     "node": site_node(site, missing=""), "n_positions": float(masks[g].sum(1).float().mean()),
                     "p_clean": p_clean, "p_corrupt": p_corr, "p_patched": p,
                     "recovery": float(normalized(p, clean=p_clean, corrupted=p_corr))})
    meta = run_meta(model, data=batch.tokens, config=config, images=batch.images_digest, p_clean=p_clean,
                    p_corrupt=p_corr, groups=list(masks), box=None if box is None else list(box))
    return Result("vlm.fcct", pd.DataFrame(rows), meta, name=name)


def patch_groups(batch: VisionBatch, image: int = 0) -> dict[str, Bool[Tensor, "batch pos"]]:
    """One group per image token of image ``image`` of every prompt: ``{"patch:k": [batch, pos] mask}``.

    ``k`` indexes the image's tokens in raster order (the grid of :func:`interp.vlm.groups.patch_grid`);
    every prompt must hold the same number of image tokens per image.
    """
    img = batch.image_mask
    counts = [int(img[b].sum()) // max(n, 1) for b, n in enumerate(batch.images_per_prompt) if n]
    if not counts or len(set(counts)) != 1:
        raise DataError("patch groups need the same number of image tokens per image in every prompt")
    per = counts[0]
    out = {}
    for k in range(per):
        m = torch.zeros_like(img)
        for b, n in enumerate(batch.images_per_prompt):
            if n > image:
                m[b, img[b].nonzero().flatten()[image * per + k]] = True
        out[f"patch:{k}"] = m
    return out


def object_ratio(model: Model, batch: VisionBatch, answers: Sequence[Any], box: Any, *, layer: int = 0,
                 component: str = "resid", n_random: int = 8, seed: int = 0,
                 config: FcctConfig = FcctConfig()) -> dict[str, Any]:
    """FCCT's object check: recovery from restoring the object's image tokens vs other image tokens of the same count.

    Returns ``{"object": RR, "others": [RR of each random set], "ratio": RR / mean(others) (NaN when that mean is
    <= 0), "difference": RR - mean(others), "result": Result}``; the random sets are drawn (seeded) from the
    non-object image tokens of each prompt.
    """
    from interp.vlm.groups import token_group

    obj = token_group(model, batch, "object", box=box)
    rest = batch.image_mask & ~obj
    g = torch.Generator().manual_seed(seed)
    groups = {"object": obj}
    for i in range(n_random):
        m = torch.zeros_like(obj)
        for b in range(len(batch)):
            k = int(obj[b].sum())
            pool = rest[b].nonzero().flatten()
            if k > len(pool):
                raise DataError(f"prompt {b}: the object covers {k} image tokens, more than the {len(pool)} others")
            m[b, pool[torch.randperm(len(pool), generator=g)[:k]]] = True
        groups[f"random:{i}"] = m
    cfg = FcctConfig(noise=config.noise, seed=config.seed, components=(component,), layers=(layer,),
                     max_rows=config.max_rows)
    r = fcct(model, batch, answers, groups=groups, config=cfg, name="object")
    t = r.table.set_index("group").recovery
    others = [float(t[f"random:{i}"]) for i in range(n_random)]
    mean = sum(others) / len(others)
    ratio = float(t["object"]) / mean if mean > 0 else float("nan")     # a ratio to a mean <= 0 means nothing
    return {"object": float(t["object"]), "others": others, "ratio": ratio,
            "difference": float(t["object"]) - mean, "result": r}


def iri(model: Model, batch: VisionBatch, answers: Sequence[Any], tracing: Result, *, component: str = "attn_out",
        k1: int = 3, k2: int = 10, lam: float | None = None, group: str = "last") -> Result:
    """IRI: inject the top recovering layers' last-token outputs into later layers (see the module doc).

    Args:
        tracing: a ``vlm.fcct`` Result of this model (its ``group`` rows rank the layers; all groups'
            maximum when it has no such rows).
        component: ``"attn_out"`` or ``"mlp_out"``.
        lam: injection strength (default :data:`LAMBDA`).

    Returns:
        Result ``vlm.iri``: per prompt the answer's probability and correctness without and with IRI.
    """
    if component not in LAMBDA:
        raise ConfigError(f"IRI injects attn_out or mlp_out, got {component!r}")
    if tracing.kind != "vlm.fcct":
        raise DataError(f"IRI needs a vlm.fcct Result, got {tracing.kind!r}")
    t = tracing.table[tracing.table.component == component]
    if t.empty:
        raise DataError(f"the vlm.fcct Result has no {component!r} rows")
    t = t[t.group == group] if (t.group == group).any() else t
    rr = t.groupby("layer").recovery.max().sort_values(ascending=False)
    sources = {int(l): float(v) for l, v in rr.head(k1).items()}
    targets = sorted(int(l) for l in rr.head(k2).index if any(k < int(l) for k in sources))
    lam = LAMBDA[component] if lam is None else float(lam)
    ids = answer_ids(model, answers, len(batch))
    n_b, last = len(batch), batch.last
    store: dict[int, Tensor] = {}
    ivs = []
    for l in sorted(set(sources) | set(targets)):
        def fn(region: Tensor, _l: int = l) -> Tensor | None:
            rows = torch.arange(region.shape[0])
            a = region[rows, last.to(region.device)[rows % n_b]].clone()
            if _l in sources:
                store[_l] = a
            if _l not in targets:
                return None
            add = sum(sources[k] * store[k] for k in sources if k < _l)
            new = a + lam * add
            new = new * (a.norm(dim=-1, keepdim=True) / new.norm(dim=-1, keepdim=True).clamp_min(1e-12))
            out = region.clone()
            out[rows, last.to(region.device)[rows % n_b]] = new.to(region.dtype)
            return out
        ivs.append(Intervention("apply", Site(component, l), fn))
    with torch.inference_mode(), batch.feed(model):
        out = run(model, batch.tokens, [World(), World(tuple(ivs))], positions=last)
    base, inj = out.worlds[0].float(), out.worlds[1].float()
    rows = [{"prompt": b, "component": component, "p_base": float(prob(base[b:b + 1], ids[b:b + 1])[0]),
             "p_iri": float(prob(inj[b:b + 1], ids[b:b + 1])[0]),
             "correct_base": bool(accuracy(base[b:b + 1], ids[b:b + 1])[0]),
             "correct_iri": bool(accuracy(inj[b:b + 1], ids[b:b + 1])[0])} for b in range(n_b)]
    meta = run_meta(model, data=batch.tokens, images=batch.images_digest, sources=sources, targets=targets,
                    lam=lam, k1=k1, k2=k2, group=group, tracing=tracing.id)
    return Result("vlm.iri", pd.DataFrame(rows), meta)
