"""The planted-head toy shared by the gating tests (test_gating.py, test_gating_validation.py): a toy Llama whose
layer-1 heads A / B are set by a fixed hook to write +/- the direction of the answer "Q"."""

from __future__ import annotations

import pytest
import torch

from interp.datasets import TaskDataset
from interp.gating import CHGConfig, causal_head_gating
from interp.hooks import hooked
from interp.models import load_model
from interp.sites import Site

PROMPTS = ("the cat sat", "a dog ran", "hello world", "one two three", "blue sky", "red fox", "x y z", "quiet now")
A, B = (1, 0), (1, 2)   # planted facilitating / interfering heads

# ------------------------------------------------------------------ planted model

@pytest.fixture(scope="module")
def planted():
    """Toy llama whose unembedding is scaled x40 and whose layer-1 heads A / B are set by a fixed hook
    to write +/- the direction of the target token "Q": A is necessary for the answer, B harmful."""
    model = load_model("toy:llama,seed=3")
    with torch.no_grad():
        model.original_model.lm_head.weight.mul_(40)
    t = model.tokenizer("Q", add_special_tokens=False).input_ids[0]
    w_u, w_ln = model.W_U.detach(), model.ln_final.weight.detach()
    u = w_ln * (w_u[:, t] - w_u.mean(1))
    u = u / u.norm()

    def vec(h, sign):
        v = model.W_O.detach()[h[0], h[1]] @ u
        return sign * 6.0 * v / v.norm()

    va, vb = vec(A, 1), vec(B, -1)

    def plant(z, site):
        z = z.clone()
        z[:, :, A[1]] = va
        z[:, :, B[1]] = vb
        return z

    return model, plant, TaskDataset("plant", clean=PROMPTS, answers=("Q",) * len(PROMPTS))


@pytest.fixture(scope="module")
def planted_chg(planted):
    """CHG on the planted model, plus the model's state before the fit."""
    model, plant, ds = planted
    flags = [p.requires_grad for p in model.parameters()]
    before = model.W_O.detach().clone()
    with hooked(model, {Site("z", 1): plant}):
        res = causal_head_gating(model, ds, config=CHGConfig(max_steps=40, patience=8, n_masks=2, progress=False))
    return res, flags, before
