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

:func:`image_swap_patching` is a second, complementary harm (it does not replace the plain ablation, whose
Spearman with VHD stays what issue 17 asks for): each head's ``z`` at every position is ``restore``-d from a
run of the *same* prompt tokens with another prompt's image (a fixed seeded derangement of the batch's images,
:func:`derangement`), and the harm is the drop of the same metric as :func:`head_ablation` (the batch mean of the
answer's probability). Why, decided before it was measured on the trained VLM: VHD is by definition a measure
of how much a head's output depends on the image; swapping the image under one head removes exactly that
dependence (what the head computes from the text is kept, token for token), whereas zeroing the head also
removes whatever it computes from the text, so plain ablation ranks text-processing heads (the trained VLM's
L0.H3, VHD ~ 0) as harmful too. A head whose ``z`` does not depend on the image has image-swap harm 0, and a
batch whose prompts all carry the same image has image-swap harm 0 for every head. ``vhd(..., answers=...)``
reports both Spearmans (``spearman``, ``spearman_image_swap``) and their p-values side by side.
Measured afterwards (``python -m interp.vlm.vhd data/toy/vlm``, 24 held-out "yes" questions, 12 heads): Spearman
with VHD 0.336 (p = 0.29) for image-swap harm, 0.308 (p = 0.33) for zero ablation; L0.H3's image-swap harm is
0.004 against 0.61 zeroed, not 0: VHD reads the last token only, and L0.H3's z at the image and question tokens
does depend on the image (the swap acts at every position).
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

__all__ = ["text_only", "vhd", "vhr_select", "vhr", "head_ablation", "image_swap_patching", "derangement", "spearman",
           "spearman_p", "planted_batch"]


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
        answers: Sequence[Any] | None = None, image_swap: bool = True, swap_seed: int = 0) -> Result:
    """Result ``vlm.vhd``: each head's VHD, its rank, VHR's selection (and, with ``answers``, its ablation effects).

    ``meta.extra`` holds ``t_vhd`` (mean of the top ``k``) and, with ``answers``, ``spearman`` between VHD and
    the plain (zero) ablation harm (``-ablation_effect``) with its p-value ``spearman_p``; with ``image_swap``
    (default; needs >= 2 prompts with one image each) also ``spearman_image_swap`` between VHD and the image-swap
    harm (``-image_swap_effect``, :func:`image_swap_patching` with derangement seed ``swap_seed``), its p-value
    ``spearman_image_swap_p`` and the derangement ``image_swap_perm`` (prompt b took prompt perm[b]'s image).
    p-values: scipy's ``spearmanr`` (two-sided, t approximation).
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
        extra["spearman"], extra["spearman_p"] = spearman_p(table.vhd.to_numpy(), -table.ablation_effect.to_numpy())
        if image_swap:
            swap, perm = image_swap_patching(model, batch, answers, seed=swap_seed)
            table["image_swap_effect"] = swap.reshape(-1)
            extra["spearman_image_swap"], extra["spearman_image_swap_p"] = spearman_p(
                table.vhd.to_numpy(), -table.image_swap_effect.to_numpy())
            extra["image_swap_perm"], extra["image_swap_seed"] = [int(i) for i in perm], int(swap_seed)
    meta = run_meta(model, data=batch.tokens, images=batch.images_digest, **extra)
    return Result("vlm.vhd", table, meta)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def spearman_p(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """:func:`spearman` and its two-sided p-value (scipy ``spearmanr``, t approximation); NaNs when constant."""
    from scipy.stats import spearmanr

    rho = spearman(a, b)
    if rho != rho:
        return rho, float("nan")
    return rho, float(spearmanr(a, b).pvalue)


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


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A seeded permutation of ``range(n)`` with no fixed point (Sattolo's algorithm: one random ``n``-cycle)."""
    if n < 2:
        raise DataError(f"image swap needs at least 2 prompts to exchange images, got {n}")
    rng = np.random.default_rng(seed)
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))                # j < i: Sattolo, every result is a single cycle
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def _swapped(batch: VisionBatch, perm: np.ndarray) -> VisionBatch:
    """The batch with prompt ``b``'s image replaced by prompt ``perm[b]``'s (tokens unchanged)."""
    from dataclasses import replace

    if batch.pixel_values is None or any(n != 1 for n in batch.images_per_prompt):
        raise DataError(f"image swap needs exactly one image per prompt, got {list(batch.images_per_prompt)}")
    counts = batch.image_mask.sum(1)
    if bool((counts != counts[0]).any()):
        raise DataError(f"image swap needs the same number of image tokens in every prompt, got {counts.tolist()}")
    idx = torch.as_tensor(perm, dtype=torch.long)
    sizes = tuple(batch.image_sizes[int(i)] for i in perm) if batch.image_sizes else batch.image_sizes
    return replace(batch, pixel_values=batch.pixel_values[idx], image_sizes=sizes)


def image_swap_patching(model: Model, batch: VisionBatch, answers: Sequence[Any], *, seed: int = 0,
                        max_rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``([layer, head] effect, perm)``: mean change of the answer's probability when one head's ``z`` (every position)
    is restored from the same prompts run with swapped images (prompt ``b`` gets prompt ``perm[b]``'s image,
    ``perm`` = :func:`derangement` ``(len(batch), seed)``). Same metric as :func:`head_ablation`; one engine pass.
    """
    from interp.vlm.fcct import answer_ids

    ids = answer_ids(model, answers, len(batch))
    perm = derangement(len(batch), seed)
    donor = _swapped(batch, perm)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    sites = [Site("z", l) for l in range(n_layers)]
    with torch.inference_mode():
        with donor.feed(model):
            other = run(model, donor.tokens, [World()], positions=donor.last, record=sites).recorded[0]
        worlds = [World((Intervention("restore", Site("z", l, head=h), other[Site("z", l)]),), enter=l)
                  for l in range(n_layers) for h in range(n_heads)]
        with batch.feed(model):
            out = run(model, batch.tokens, worlds, positions=batch.last, with_base=True, max_rows=max_rows)
    base = float(prob(out.base.float(), ids).mean())
    eff = np.array([float(prob(w.float(), ids).mean()) - base for w in out.worlds])
    return eff.reshape(n_layers, n_heads), perm


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


def planted_batch(model: Model, n: int = 24) -> VisionBatch:
    """The trained VLM's check batch (``tests/test_vlm_planted.py``): ``n`` held-out scenes (seed 11), one
    "is there a <colour> <shape>?" question each whose answer is "yes" (seed 3), prompt ``"<image>" + question``."""
    from interp.models import tokenize
    from interp.vlm import scenes as S

    scenes = S.draw_scenes(n, seed=11, split="held_out")
    qs = S.draw_questions(scenes, "exists", seed=3, answer="yes")
    images = scenes.images()
    return tokenize(model, ["<image>" + q.text for q in qs], images=[images[i] for i in range(n)])


def main(argv: list[str] | None = None) -> None:
    """``python -m interp.vlm.vhd [FOLDER]``: VHD, plain ablation and image-swap harm per head, both Spearmans."""
    import sys

    from interp.models import load_model

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) > 1:
        raise SystemExit("usage: python -m interp.vlm.vhd [FOLDER]  (default data/toy/vlm)")
    torch.set_num_threads(1)
    model = load_model(argv[0] if argv else "data/toy/vlm")
    batch = planted_batch(model)
    r = vhd(model, batch, answers=["yes"] * len(batch))
    x = r.meta.extra
    t = r.table.assign(ablation_harm=-r.table.ablation_effect, image_swap_harm=-r.table.image_swap_effect)
    print(t[["node", "vhd", "rank", "ablation_harm", "image_swap_harm"]].to_string(index=False, float_format="%.4f"))
    print(f"{len(t)} heads, {len(batch)} prompts (held-out 'is there' questions, answer 'yes'; metric: mean P(answer))")
    print(f"Spearman(VHD, plain zero-ablation harm) = {x['spearman']:.3f} (p = {x['spearman_p']:.3f})")
    print(f"Spearman(VHD, image-swap harm)          = {x['spearman_image_swap']:.3f} "
          f"(p = {x['spearman_image_swap_p']:.3f}; derangement seed {x['image_swap_seed']})")


if __name__ == "__main__":
    main()
