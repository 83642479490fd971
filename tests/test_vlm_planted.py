"""Planted truths of the VLM trained here (data/toy/vlm) checked by the VLM analyses (issue 17 Checks).

Held-out scenes, "is there a <colour> <shape>?" questions whose answer is "yes" (the object exists, so its patch
is known: patch = cell). Numbers seen when written (24 scenes): visual sink exactly the planted one; FCCT object
patches recover 4.4x (layer 0) / 6.8x (layer 1) what random other patches of the same count recover; VHD vs exact
head ablation Spearman 0.31 (the issue's > 0.5 is NOT met here; see the xfail; it is met on the one-token
checkpoint, below).

Image-swap head patching (added 2026-11-30, ``interp.vlm.vhd.image_swap_patching``: each head's z at every
position taken from the same prompt run with another scene's image, derangement seed 0; same metric as the plain
ablation, mean P("yes")), measured once with no threshold chosen: Spearman(VHD, image-swap harm) = 0.336
(p = 0.29) next to Spearman(VHD, plain zero-ablation harm) = 0.308 (p = 0.33); 12 heads, 24 prompts
(``python -m interp.vlm.vhd data/toy/vlm`` prints both); other derangements (seeds 0-9, one-off) gave 0.21-0.76,
mean 0.38. Only directions written down before measuring are
asserted: L0.H3 (VHD ~ 0) is hurt less by the image swap than by zeroing (0.004 vs 0.61). The prediction that
its image-swap harm is ~0 (< 1e-5 of its ablation harm) failed (0.7%): its z at the image and question tokens
does depend on the image (only at the last token, where VHD looks, it does not); a strict xfail records it.

One-token questions (2026-12-01; ``interp/vlm/train.py`` docstring): each question is one token, so no head carries
the question to the answer position. With 3 x 4 heads, predicted before training Spearman(VHD, plain ablation harm)
> 0.5 with the same protocol, measured 0.483 (p = 0.11), not met; over training seeds (``analyses/vhd_seeds.py``,
after) 0.48 / 0.92 / 0.07 / 0.52 (seed 4 did not learn), word-level 0.31 / 0.15 / -0.31 / 0.33 / -0.27: a 12-head
Spearman swings with the seed. With 3 x 8 heads (``data/toy/vlm-onetoken``), predicted before training (commit
84b7e9a) > 0.5 for seed 0 and for the median over the seeds that learn: measured 0.679 (p < 0.001) for seed 0,
median 0.504 (seeds 0-3: 0.68 / 0.53 / 0.48 / 0.39; seed 4 did not learn). The check is asserted on that checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from interp import load_model, tokenize
from interp.vlm import fcct as F
from interp.vlm import scenes as S
from interp.vlm import sinks as SK
from interp.vlm import vhd as V

FOLDER = Path(__file__).resolve().parents[1] / "data" / "toy" / "vlm"
ONE_TOKEN = FOLDER.parent / "vlm-onetoken"
N = 24

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained():
    model = load_model(str(FOLDER))
    scenes = S.draw_scenes(N, seed=11, split="held_out")
    qs = S.draw_questions(scenes, "exists", seed=3, answer="yes")
    images = scenes.images()
    batch = tokenize(model, ["<image>" + q.text for q in qs], images=[images[i] for i in range(N)])
    cells = [q.target.cell for q in qs]
    boxes = [((c % S.GRID) * S.CELL, (c // S.GRID) * S.CELL, (c % S.GRID + 1) * S.CELL, (c // S.GRID + 1) * S.CELL)
             for c in cells]
    return model, batch, cells, boxes


def test_the_visual_sink_found_is_the_planted_one(trained):
    model, batch, _, _ = trained
    truth = json.loads((FOLDER / "truth.json").read_text())["sink"]
    cfg = SK.VarConfig(tau=truth["tau"], layers=tuple(truth["planted_layers"]))   # VAR's criterion, tau for d = 64
    found = SK.visual_sinks(model, batch, cfg)
    assert found.meta.extra["dims"] == truth["dims"]                      # the sink dimension found from the data
    image = found.table[found.table.is_image]
    assert set(image.patch) == {truth["patch"]}                           # only the planted patch ...
    for layer in truth["planted_layers"]:                                 # ... in every prompt, in every layer
        assert sorted(image[image.layer == layer].prompt) == list(range(N))


def test_fcct_recovers_from_the_object_patches(trained):
    model, batch, cells, boxes = trained
    answers = ["yes"] * N
    for layer in (0, 1):
        res = F.object_ratio(model, batch, answers, boxes, layer=layer, n_random=8)
        assert res["object"] > 0 and res["ratio"] > 2.0, res              # "far more": at least twice
    grid = F.fcct(model, batch, answers, box=boxes, config=F.FcctConfig(components=("resid",), layers=(0, 1)))
    t = grid.table.set_index(["layer", "group"])
    for layer in (0, 1):                                                  # recovery per restored token peaks on
        per_token = {g: t.loc[(layer, g), "recovery"] / t.loc[(layer, g), "n_positions"]   # the object region
                     for g in ("early", "object", "late")}
        assert max(per_token, key=per_token.get) == "object", per_token


@pytest.mark.xfail(strict=True, reason="measured Spearman(VHD, exact ablation harm) = 0.31 on the trained VLM: "
                                       "L0.H3 ignores the image at the last token (VHD ~ 0) yet is the most "
                                       "harmful to ablate")
def test_vhd_ranks_the_heads_whose_ablation_hurts_most(trained):
    model, batch, _, _ = trained
    scores = V.vhd(model, batch, answers=["yes"] * N)
    assert scores.meta.extra["spearman"] > 0.5


def test_vhd_ranks_the_heads_whose_ablation_hurts_most_with_one_token_questions():
    """Issue 17's check on data/toy/vlm-onetoken (one-token questions, 3 x 8 heads, seed 0); predicted before it was
    trained (commit 84b7e9a), measured 0.679 (p < 0.001). Not a robust property of the design: seeds 1-3 give
    0.53 / 0.48 / 0.39 (module docstring)."""
    model = load_model(str(ONE_TOKEN))
    batch = V.planted_batch(model, N)
    assert batch.tokens.shape[1] == 2 + S.N_PATCHES                     # <bos>, the image, one question token
    assert model.cfg.n_layers * model.cfg.n_heads == 24
    assert V.vhd(model, batch, answers=["yes"] * N).meta.extra["spearman"] > 0.5


def test_vhd_of_a_head_blind_to_the_image(trained):
    model, batch, _, _ = trained
    t = V.vhd(model, batch).table.set_index("node").vhd
    assert t["L0.H3"] < 1e-3 * t.max() and np.isfinite(t).all()


def test_planted_batch_is_this_modules_batch(trained):
    model, batch, _, _ = trained
    again = V.planted_batch(model, N)                     # what `python -m interp.vlm.vhd` measures
    assert np.array_equal(again.tokens, batch.tokens) and again.images_digest == batch.images_digest


@pytest.fixture(scope="module")
def scored(trained):
    model, batch, _, _ = trained
    return V.vhd(model, batch, answers=["yes"] * N).validate()


def test_image_swap_spares_the_text_head_that_zeroing_breaks(scored):
    t = scored.table.set_index("node")
    swap, zero = -t.loc["L0.H3", "image_swap_effect"], -t.loc["L0.H3", "ablation_effect"]
    assert swap < zero                                    # direction written before measuring (0.004 vs 0.61 seen)
    x = scored.meta.extra
    assert np.isfinite([x["spearman"], x["spearman_image_swap"], x["spearman_p"], x["spearman_image_swap_p"]]).all()
    assert len(x["image_swap_perm"]) == N                 # reported, not asserted: 0.336 (plain 0.308), see top


@pytest.mark.xfail(strict=True, reason="predicted before measuring, measured false: L0.H3's image-swap harm is "
                                       "0.0042 = 0.7% of its zero-ablation harm 0.61; its z at the image and "
                                       "question tokens depends on the image (at the last token it does not)")
def test_image_swap_harm_of_the_text_head_is_zero(scored):
    t = scored.table.set_index("node")
    assert abs(t.loc["L0.H3", "image_swap_effect"]) < 1e-5 * abs(t.loc["L0.H3", "ablation_effect"])
