"""Image-swap head patching (``interp.vlm.vhd.image_swap_patching``) on the random toy VLM: exact zeros by construction.

Each head's ``z`` (every position) is restored from the same prompts run with a derangement of the batch's images;
a head whose ``z`` cannot depend on the image, and a batch whose prompts all carry the same image, give harm 0.
The numbers on the trained VLM are in ``tests/test_vlm_planted.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp import load_model, tokenize
from interp.engine import Intervention, intervening
from interp.errors import DataError
from interp.sites import Site
from interp.vlm import vhd as V

TEXTS = ["<image> Is it red?", "<image> Is it blue?", "<image> Is it green?"]
ANSWERS = ["Y", "N", "Y"]


def _img(channel: int) -> np.ndarray:
    a = np.zeros((32, 32, 3), dtype=np.uint8)
    a[8:16, 8:16, channel] = 255
    return a


@pytest.fixture(scope="module")
def model():
    return load_model("toy:llava")


def test_derangement_is_a_seeded_permutation_without_fixed_points():
    for n in (2, 3, 24):
        for seed in range(5):
            p = V.derangement(n, seed)
            assert sorted(p.tolist()) == list(range(n)) and (p != np.arange(n)).all()
            assert np.array_equal(p, V.derangement(n, seed))
    assert V.derangement(2, 0).tolist() == [1, 0]
    with pytest.raises(DataError, match="at least 2 prompts"):
        V.derangement(1)


def test_same_image_everywhere_gives_zero_harm_for_every_head(model):
    batch = tokenize(model, TEXTS, images=[_img(0)] * 3)        # the swapped run is the run itself
    effect, perm = V.image_swap_patching(model, batch, ANSWERS)
    assert effect.shape == (model.cfg.n_layers, model.cfg.n_heads) and (perm != np.arange(3)).all()
    assert (effect == 0).all()


def test_a_head_blind_to_the_image_has_zero_image_swap_harm(model):
    batch = tokenize(model, TEXTS, images=[_img(0), _img(2), _img(1)])

    def on_bos(pattern):                                           # L0.H1 attends only to BOS at every position:
        out = torch.zeros_like(pattern)                            # its z is the same whatever the image
        out[..., 0] = 1.0
        return out
    with intervening(model, [Intervention("apply", Site("pattern", 0, head=1), on_bos)]):
        effect, _ = V.image_swap_patching(model, batch, ANSWERS)
        scored = V.vhd(model, batch, answers=ANSWERS).validate()
    assert effect[0, 1] == 0 and np.count_nonzero(effect) == effect.size - 1   # every other head sees the swap
    t = scored.table.set_index("node")
    assert t.loc["L0.H1", "image_swap_effect"] == 0 and t.loc["L0.H1", "ablation_effect"] != 0
    x = scored.meta.extra
    assert x["image_swap_perm"] == V.derangement(3, 0).tolist()
    assert -1 <= x["spearman_image_swap"] <= 1 and 0 <= x["spearman_image_swap_p"] <= 1
    assert -1 <= x["spearman"] <= 1 and 0 <= x["spearman_p"] <= 1


def test_image_swap_bad_inputs(model):
    one = tokenize(model, TEXTS[:1], images=_img(0))
    with pytest.raises(DataError, match="at least 2 prompts"):
        V.vhd(model, one, answers=["Y"])
    assert "image_swap_effect" not in V.vhd(model, one, answers=["Y"], image_swap=False).table
