"""Token groups of a vision-language batch: which positions are image, text, last, and an object's patches.

:func:`token_group` returns a ``[batch, pos]`` boolean mask, usable wherever positions are:
engine interventions take it as ``positions`` (each world's rows), and activations
(``store`` / ``capturing``) are indexed with it (``acts[mask]`` -> ``[n, ...]``);
:func:`positions` gives one prompt's positions as a tuple.

Groups:

* ``"image"``: every image token; ``"text"``: every real non-image token (BOS and the
  processor's frame tokens such as Gemma 3's ``<start_of_image>`` included); ``"last"``: each
  prompt's last real token.
* ``"object"``: the image tokens whose patch covers any part of ``box`` (``(x0, y0, x1, y1)`` in
  pixels of the image as given, x1/y1 exclusive), mapped through the processor's resize and
  centre crop onto the vision grid (LLaVA: one token per patch; Gemma 3: one per pooled cell).
* ``"early"`` / ``"late"``: the image's tokens before its first / after its last object token in
  sequence (raster) order, FCCT's early and late visual tokens. Our choice, stated here: the
  non-object tokens between the first and last object token (other columns of the object's rows)
  belong to neither.

Example:
    >>> import numpy as np
    >>> from interp import load_model, tokenize
    >>> model = load_model("toy:llava")
    >>> batch = tokenize(model, ["<image> Where?"], images=np.zeros((32, 32, 3), dtype=np.uint8))
    >>> positions(token_group(model, batch, "object", box=(8, 8, 16, 16)))    # patch (1, 1) of the 4x4 grid
    (6,)
    >>> early = token_group(model, batch, "early", box=(8, 8, 16, 16))        # image tokens before it
    >>> len(positions(early)), positions(token_group(model, batch, "last"))
    (5, (23,))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from interp.errors import ConfigError, DataError, nearest

if TYPE_CHECKING:
    from interp.types import Model
    from interp.vlm.inputs import VisionBatch

__all__ = ["GROUPS", "token_group", "positions", "patch_grid", "object_patches"]

GROUPS = ("image", "text", "last", "object", "early", "late")


def positions(mask: Any, row: int = 0) -> tuple[int, ...]:
    """The positions of row ``row`` of a ``[batch, pos]`` group mask, as a tuple."""
    return tuple(int(p) for p in mask[row].nonzero().flatten())


def patch_grid(model: Model, batch: VisionBatch) -> tuple[int, int, int]:
    """``(rows, cols, offset)`` of the image-token grid: tokens per image = offset + rows * cols, raster order.

    ``offset`` counts tokens before the grid (LLaVA's CLS under ``vision_feature_select_strategy="full"``).
    """
    from interp.arch import arch_facts

    hf = model.original_model.config
    facts = arch_facts(model)
    kind = facts.vision
    if facts.image_grid != "fixed":
        raise ConfigError(f"object regions need one fixed grid of image tokens per image; model type {kind!r} "
                          f"has image grid {facts.image_grid!r} (interp.arch.VISION_FAMILIES)")
    n_img = sum(batch.images_per_prompt)
    if not n_img:
        raise DataError("the batch has no images")
    total = int(batch.image_mask.sum())
    if total % n_img:
        raise DataError(f"{total} image tokens for {n_img} images: not the same number per image")
    per = total // n_img
    offset = 1 if kind == "llava" and getattr(hf, "vision_feature_select_strategy", "default") == "full" else 0
    side = math.isqrt(per - offset)
    if side * side != per - offset:
        raise DataError(f"{per - offset} grid tokens per image is not a square grid")
    return side, side, offset


def _processed_box(box: Sequence[float], size: tuple[int, int], image_processor: Any,
                   out: tuple[int, int]) -> tuple[float, float, float, float]:
    """Map a box in the given image's pixels onto the processed image (resize, then centre crop)."""
    h, w = size
    x0, y0, x1, y1 = (float(v) for v in box)
    crop = getattr(image_processor, "crop_size", None) if getattr(image_processor, "do_center_crop", False) else None
    rsize = getattr(image_processor, "size", None) or {}
    rsize = rsize if isinstance(rsize, dict) else dict(rsize)
    if "shortest_edge" in rsize:
        s = int(rsize["shortest_edge"])
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = s, int(s * long / short)
        nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
    elif "height" in rsize and "width" in rsize:
        nh, nw = int(rsize["height"]), int(rsize["width"])
    else:
        nh, nw = out
    top = left = 0
    if crop:
        ch, cw = int(crop["height"]), int(crop["width"])
        top, left = (nh - ch) // 2, (nw - cw) // 2
    sx, sy = nw / w, nh / h
    return x0 * sx - left, y0 * sy - top, x1 * sx - left, y1 * sy - top


def object_patches(model: Model, batch: VisionBatch, box: Sequence[float], image: int = 0) -> tuple[int, ...]:
    """Indices (in one image's tokens, raster order) of the grid cells overlapping ``box`` on batch image ``image``."""
    if len(box) != 4 or not box[0] < box[2] or not box[1] < box[3]:
        raise DataError(f"box must be (x0, y0, x1, y1) with x0 < x1 and y0 < y1, got {tuple(box)}")
    rows, cols, offset = patch_grid(model, batch)
    h, w = batch.image_sizes[image]
    ph, pw = (int(v) for v in batch.pixel_values.shape[-2:])
    x0, y0, x1, y1 = _processed_box(box, (h, w), model.processor.image_processor, (ph, pw))
    cw, chh = pw / cols, ph / rows
    cells = [offset + r * cols + c for r in range(rows) for c in range(cols)
             if min(x1, (c + 1) * cw) > max(x0, c * cw) and min(y1, (r + 1) * chh) > max(y0, r * chh)]
    if not cells:
        raise DataError(f"box {tuple(box)} lies outside image {image} ({w}x{h} pixels)")
    return tuple(cells)


def token_group(model: Model, batch: VisionBatch, name: str, *, box: Any = None, image: int = 0) -> Any:
    """``[batch, pos]`` bool mask of a token group (see the module docstring).

    Args:
        model: the VLM the batch was tokenized for.
        batch: a :class:`~interp.vlm.inputs.VisionBatch`.
        name: one of :data:`GROUPS`.
        box: ``"object"`` / ``"early"`` / ``"late"``: ``(x0, y0, x1, y1)`` pixels, one for every prompt that
            has image ``image`` (the others get no positions), or a list with one per prompt (``None`` for a
            prompt left out).
        image: which image of each prompt the box is on (0 = the first).

    Raises:
        ConfigError: an unknown group (nearest named); a box on a model without a fixed image grid.
        DataError: a box missing or malformed, or given for a prompt without that image.
    """
    import torch

    if name not in GROUPS:
        raise ConfigError(f"unknown token group {name!r}.{nearest(name, GROUPS)} Known: {', '.join(GROUPS)}")
    img = batch.image_mask
    if name == "image":
        return img
    if name == "text":
        return batch.mask & ~img
    if name == "last":
        out = torch.zeros_like(batch.mask)
        out[torch.arange(len(batch), device=out.device), batch.last] = True
        return out
    if box is None:
        raise DataError(f"token group {name!r} needs box=(x0, y0, x1, y1)")
    shared = not (box and isinstance(box[0], (list, tuple, type(None))))
    boxes = [box] * len(batch) if shared else list(box)
    if len(boxes) != len(batch):
        raise DataError(f"box: {len(boxes)} boxes for {len(batch)} prompts")
    out = torch.zeros_like(batch.mask)
    per = None
    first = 0
    for row, (n, b) in enumerate(zip(batch.images_per_prompt, boxes)):
        if b is not None and not (shared and image >= n):   # one box for all: prompts without the image skipped
            if image >= n:
                raise DataError(f"box for prompt {row}: it has {n} image(s), no image {image}")
            if per is None:
                per = int(img.sum()) // sum(batch.images_per_prompt)
            where = img[row].nonzero().flatten()[image * per:(image + 1) * per]
            cells = torch.tensor(object_patches(model, batch, b, first + image), device=where.device)
            obj = where[cells]
            if name == "object":
                out[row, obj] = True
            elif name == "early":
                out[row, where[where < obj.min()]] = True
            else:
                out[row, where[where > obj.max()]] = True
        first += n
    return out
