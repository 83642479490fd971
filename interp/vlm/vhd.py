"""Vision-aware head divergence (VHD), T-VHD and vision-aware head reinforcement (VHR).

Follows "Cross-Modal ... Vision-aware Head Divergence" / VHR (ACL'25, jinghan1he/VHR) as
summarised in ``shared/METHODS.md`` section 10 (the authors' code was not available here):

* **VHD** of head ``(l, i)``: the distance between the head's output with the image and without
  it. Our choices: the output is the head's ``z`` (before ``W_O``, the vector VHR scales) at the
  last prompt token; "without the image" is the same prompt with its image placeholder removed
  (its own token positions; :func:`text_only`), or any text batch the caller gives; the distance is
  the L2 norm, averaged over prompts.
* **T-VHD**: the mean of the top ``k`` VHD values (our default ``k``: the number of heads of one layer).
* **VHR** selection: per layer, drop the heads whose VHD exceeds the layer's mean + std, take the
  median of the rest and select the heads above it; reinforcement multiplies the selected heads'
  ``z`` by ``alpha`` (2, reported by a third party) at every position, an engine ``scale``.

:func:`head_ablation` gives each head's exact ablation effect on the answer (zeroed ``z``, engine
worlds), the check that VHD ranks highest the heads whose ablation hurts image questions most.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from interp.engine import Intervention, World, run
from interp.errors import ConfigError, DataError
from interp.metrics import accuracy, prob
from interp.nodes import site_node
from interp.results import Result, run_meta
from interp.sites import Site

if TYPE_CHECKING:
    from interp.types import Model
    from interp.vlm.inputs import VisionBatch

__all__ = ["text_only", "vhd", "vhr_select", "vhr", "head_ablation", "spearman"]


def text_only(model: Model, batch: VisionBatch) -> Any:
    """The batch's prompts with their image placeholders removed, tokenized without images."""
    from interp.models import tokenize
    from interp.vlm.inputs import _placeholder

    mark = _placeholder(model.processor)
    texts = [" ".join(t.replace(mark, " ").split()) for t in batch.texts]
    if any(not t for t in texts):
        raise DataError("a prompt is only an image placeholder; VHD needs text to compare with and without the image")
    return tokenize(model, texts)


def _last_z(model: Model, batch: Any) -> Tensor:
    """``[batch, layer, head, d_head]`` z at each prompt's last token."""
    from interp.hooks import run_capture

    sites = [Site("z", l) for l in range(model.cfg.n_layers)]
    feed = batch.feed(model) if getattr(batch, "pixel_values", None) is not None else torch.inference_mode()
    with torch.inference_mode(), feed:
        acts = run_capture(model, batch.tokens, sites)
    rows = torch.arange(len(batch))
    return torch.stack([acts[s][rows, batch.last].float() for s in sites], 1)


def vhr_select(scores: np.ndarray) -> np.ndarray:
    """``[layer, head]`` bool: VHR's heads (above the layer median after dropping outliers > mean + std)."""
    out = np.zeros_like(scores, dtype=bool)
    for l, row in enumerate(scores):
        kept = row[row <= row.mean() + row.std()]
        out[l] = row > np.median(kept)
    return out


def vhd(model: Model, batch: VisionBatch, *, text_batch: Any = None, k: int | None = None,
        answers: Sequence[Any] | None = None) -> Result:
    """Result ``vlm.vhd``: each head's VHD, its rank, VHR's selection (and, with ``answers``, its ablation effect).

    ``meta.extra`` holds ``t_vhd`` (mean of the top ``k``) and, with ``answers``, ``spearman`` between VHD and
    the ablation harm (``-ablation_effect``).
    """
    if batch.pixel_values is None or not bool(batch.image_mask.any()):
        raise DataError("VHD compares runs with and without the image: the batch has no images")
    text = text_only(model, batch) if text_batch is None else text_batch
    if len(text) != len(batch):
        raise DataError(f"text_batch has {len(text)} prompts for {len(batch)} prompts with images")
    diff = (_last_z(model, batch) - _last_z(model, text)).norm(dim=-1).mean(0).numpy()   # [layer, head]
    k = model.cfg.n_heads if k is None else int(k)
    if not 1 <= k <= diff.size:
        raise ConfigError(f"k must lie in 1..{diff.size} (heads), got {k}")
    t_vhd = float(np.sort(diff.ravel())[::-1][:k].mean())
    selected = vhr_select(diff)
    order = (-diff.ravel()).argsort(kind="stable")
    rank = np.empty(diff.size, dtype=int)
    rank[order] = np.arange(1, diff.size + 1)
    rows = [{"layer": l, "head": h, "node": site_node(Site("z", l, head=h)), "vhd": float(diff[l, h]),
             "rank": int(rank[l * diff.shape[1] + h]), "selected": bool(selected[l, h])}
            for l in range(diff.shape[0]) for h in range(diff.shape[1])]
    table = pd.DataFrame(rows)
    extra: dict[str, Any] = {"t_vhd": t_vhd, "k": k}
    if answers is not None:
        abl = head_ablation(model, batch, answers)
        table["ablation_effect"] = abl.reshape(-1)
        extra["spearman"] = spearman(table.vhd.to_numpy(), -table.ablation_effect.to_numpy())
    meta = run_meta(model, data=batch.tokens, images=batch.images_digest, **extra)
    return Result("vlm.vhd", table, meta)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def head_ablation(model: Model, batch: VisionBatch, answers: Sequence[Any], *, max_rows: int = 256) -> np.ndarray:
    """``[layer, head]`` mean change of the answer's probability when the head's ``z`` is zeroed (exact)."""
    from interp.vlm.fcct import answer_ids

    ids = answer_ids(model, answers, len(batch))
    heads = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    worlds = [World((Intervention("ablate", Site("z", l, head=h)),), enter=l) for l, h in heads]
    with torch.inference_mode(), batch.feed(model):
        out = run(model, batch.tokens, worlds, positions=batch.last, with_base=True, max_rows=max_rows)
    base = float(prob(out.base.float(), ids).mean())
    eff = np.array([float(prob(w.float(), ids).mean()) - base for w in out.worlds])
    return eff.reshape(model.cfg.n_layers, model.cfg.n_heads)


def vhr(model: Model, batch: VisionBatch, answers: Sequence[Any], scores: Result, *, alpha: float = 2.0) -> Result:
    """Result ``vlm.vhr``: per prompt the answer without and with VHR (the ``selected`` heads' z times ``alpha``)."""
    from interp.vlm.fcct import answer_ids

    if scores.kind != "vlm.vhd":
        raise DataError(f"VHR needs a vlm.vhd Result, got {scores.kind!r}")
    ids = answer_ids(model, answers, len(batch))
    sel = scores.table[scores.table.selected]
    ivs = tuple(Intervention("scale", Site("z", int(r.layer), head=int(r.head)), float(alpha))
                for r in sel.itertuples())
    with torch.inference_mode(), batch.feed(model):
        out = run(model, batch.tokens, [World(), World(ivs)], positions=batch.last)
    base, rein = out.worlds[0].float(), out.worlds[1].float()
    rows = [{"prompt": b, "p_base": float(prob(base[b:b + 1], ids[b:b + 1])[0]),
             "p_vhr": float(prob(rein[b:b + 1], ids[b:b + 1])[0]),
             "correct_base": bool(accuracy(base[b:b + 1], ids[b:b + 1])[0]),
             "correct_vhr": bool(accuracy(rein[b:b + 1], ids[b:b + 1])[0])} for b in range(len(batch))]
    meta = run_meta(model, data=batch.tokens, images=batch.images_digest, alpha=alpha,
                    heads=[str(n) for n in sel.node], scores=scores.id)
    return Result("vlm.vhr", pd.DataFrame(rows), meta)
