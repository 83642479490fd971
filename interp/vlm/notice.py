"""NOTICE: noise-free corruption of VLM inputs and head / module patching with normalised logit difference.

Follows "Towards Interpreting Visual Information Processing in Vision-Language Models" / NOTICE
(NAACL'25, wrudman/NOTICE) as summarised in ``shared/METHODS.md`` section 10:

* **image corruption**: a semantic minimal pair, the same scene with one object changed; the
  caller gives both images (two :class:`~interp.vlm.inputs.VisionBatch` of the same prompts).
* **text corruption**: symmetric token replacement (:func:`symmetric_replace`: one word swapped
  for another of the same token length, the same image).
* **effect**: ``(LD_patched - LD_corrupt) / (LD_clean - LD_corrupt)`` with
  ``LD = logit[answer] - logit[counterfactual]`` (the prompt asks "... X or Y?").

Patching is denoising: the corrupted run with one head's output (``z``) or one module's output
(``attn_out``, ``mlp_out``) at every position taken from the clean run. Each patch is an engine
world entering at its layer; the two runs feed their own images.

Why not :func:`interp.patching.activation_patching`: it takes a ``TaskDataset`` and runs the clean
and corrupted prompts side by side in one pass, and an image corruption has the same tokens with
other images, which one image-feeding scope cannot tell apart; the engine worlds here are the same
``restore`` worlds that function builds, and the Result is the same ``patching.nodes`` kind
(``method = "notice"``), so the circuit graph and its builders read it unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from interp.engine import Intervention, World, run
from interp.errors import ConfigError, DataError
from interp.metrics import logit_diff, normalized
from interp.nodes import site_node
from interp.results import Result, run_meta
from interp.schemas import add_effect
from interp.sites import Site

if TYPE_CHECKING:
    from interp.types import Model
    from interp.vlm.inputs import VisionBatch

__all__ = ["symmetric_replace", "notice_patching", "COMPONENT_KIND"]

COMPONENT_KIND = {"z": "head", "attn_out": "attn", "mlp_out": "mlp"}


def symmetric_replace(texts: Sequence[str], old: str, new: str) -> list[str]:
    """Each text with the word ``old`` replaced by ``new`` (whole words; every text must contain it)."""
    pat = re.compile(rf"\b{re.escape(old)}\b")
    out = []
    for i, t in enumerate(texts):
        if not pat.search(t):
            raise DataError(f"text {i} does not contain the word {old!r}: {t[:60]!r}")
        out.append(pat.sub(new, t))
    return out


def _check_pair(clean: VisionBatch, corrupted: VisionBatch) -> str:
    if tuple(clean.tokens.shape) != tuple(corrupted.tokens.shape) or not torch.equal(clean.lengths, corrupted.lengths):
        raise DataError(f"clean and corrupted prompts must have the same token lengths; got "
                        f"{clean.lengths.tolist()} and {corrupted.lengths.tolist()} (symmetric replacement "
                        "needs words of the same token length)")
    if not torch.equal(clean.image_mask, corrupted.image_mask):
        raise DataError("clean and corrupted prompts have their image tokens at different positions")
    same_tokens = torch.equal(clean.tokens, corrupted.tokens)
    same_images = clean.images_digest == corrupted.images_digest
    if same_tokens and same_images:
        raise DataError("clean and corrupted inputs are identical (same tokens and images)")
    return "image" if same_tokens else "text" if same_images else "image+text"


def notice_patching(model: Model, clean: VisionBatch, corrupted: VisionBatch, answers: Sequence[Any],
                    counterfactuals: Sequence[Any], *, component: str = "z", layers: Sequence[int] | None = None,
                    heads: Sequence[int] | None = None, max_rows: int = 256) -> Result:
    """Denoising patch of every head (``z``) or module output of the given layers (see the module doc).

    Args:
        clean, corrupted: the same prompts with the original and the changed image (image corruption),
            or the original and the symmetrically replaced text with the same image (text corruption).
        answers, counterfactuals: per prompt the clean answer and the corrupted one (strings or ids).
        component: ``"z"`` (heads), ``"attn_out"`` or ``"mlp_out"``.

    Returns:
        Result ``patching.nodes`` with ``method = "notice"``, metrics ``logit_diff_norm`` and ``logit_diff``.

    Raises:
        DataError: prompts of different token lengths or image layouts, identical inputs, corruption
            that leaves the logit difference unchanged.
    """
    from interp.vlm.fcct import answer_ids

    if component not in COMPONENT_KIND:
        raise ConfigError(f"NOTICE patches z, attn_out or mlp_out, got {component!r}")
    corruption = _check_pair(clean, corrupted)
    n_b, n_layers = len(clean), model.cfg.n_layers
    ans, cf = answer_ids(model, answers, n_b), answer_ids(model, counterfactuals, n_b)
    layers = list(range(n_layers)) if layers is None else sorted(set(int(l) for l in layers))
    if any(not 0 <= l < n_layers for l in layers):
        raise ConfigError(f"layers {layers} out of range; the model has {n_layers} layers")
    hs = [None] if component != "z" else (list(range(model.cfg.n_heads)) if heads is None else sorted(set(heads)))
    if any(h is not None and not 0 <= h < model.cfg.n_heads for h in hs):
        raise ConfigError(f"heads {list(heads or [])} out of range; layers have {model.cfg.n_heads} heads")
    sites = [Site(component, l) for l in layers]
    with torch.inference_mode():
        with clean.feed(model):
            c = run(model, clean.tokens, [World()], positions=clean.last, record=sites)
        patches = [(l, h) for l in layers for h in hs]
        worlds = [World((Intervention("restore", Site(component, l, head=h), c.recorded[0][Site(component, l)]),),
                        enter=l) for l, h in patches]
        with corrupted.feed(model):
            out = run(model, corrupted.tokens, worlds, positions=corrupted.last, with_base=True, max_rows=max_rows)
    ld_clean = float(logit_diff(c.worlds[0].float(), ans, cf).mean())
    ld_corr = float(logit_diff(out.base.float(), ans, cf).mean())
    if abs(ld_clean - ld_corr) < 1e-9:
        raise DataError(f"the {corruption} corruption leaves the logit difference unchanged ({ld_clean:.3g}); "
                        "the normalised effect is undefined")
    rows = []
    for (l, h), logits in zip(patches, out.worlds):
        ld = float(logit_diff(logits.float(), ans, cf).mean())
        site = Site(component, l, head=h)
        common = {"method": "notice", "direction": "denoising", "component": COMPONENT_KIND[component],
                  "site": component, "layer": l, "head": -1 if h is None else h, "pos": -1, "pos_label": "all",
                  "node": site_node(site, missing="")}
        rows.append({**common, "metric": "logit_diff_norm",
                     "value": float(normalized(ld, clean=ld_clean, corrupted=ld_corr))})
        rows.append({**common, "metric": "logit_diff", "value": ld})
    table = add_effect(pd.DataFrame(rows), {"logit_diff_norm": 0.0, "logit_diff": ld_corr})
    meta = run_meta(model, data=[clean.tokens.tolist(), corrupted.tokens.tolist()], corruption=corruption,
                    ld_clean=ld_clean,
                    ld_corr=ld_corr, images=clean.images_digest, corrupted_images=corrupted.images_digest,
                    n_prompts=n_b)
    return Result("patching.nodes", table, meta)
