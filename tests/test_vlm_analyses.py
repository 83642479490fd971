"""VLM analyses on the random toy VLMs: VAR, FCCT / IRI, NOTICE, VHD / VHR mechanics (issue 17)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp import load_model, tokenize
from interp.engine import Intervention, intervening
from interp.errors import ConfigError, DataError
from interp.sites import Site
from interp.vlm import fcct as F
from interp.vlm import notice as N
from interp.vlm import sinks as S
from interp.vlm import vhd as V

TEXTS = ["<image> Is it red?", "<image> Is it blue?"]


def _img(channel: int) -> np.ndarray:
    a = np.zeros((32, 32, 3), dtype=np.uint8)
    a[8:16, 8:16, channel] = 255
    return a


@pytest.fixture(scope="module")
def llava():
    model = load_model("toy:llava")
    return model, tokenize(model, TEXTS, images=[_img(0), _img(2)])


# ----------------------------------------------------------------------------- VAR
def test_redistribute_formula_and_identity_at_p1():
    pattern = torch.tensor([[[[0.1, 0.4, 0.2, 0.3]]]])            # keys: text sink, image sink, image, image
    image = torch.tensor([[False, True, True, True]])
    sinks = torch.tensor([[True, True, False, False]])
    sel = torch.ones(1, 1, 1, dtype=torch.bool)
    out = S.redistribute(pattern, image, sinks, sel, 0.5)
    freed = 0.5 * (0.1 + 0.4)                                      # both sinks halved
    want = torch.tensor([0.05, 0.2, 0.2 + freed * 0.2 / 0.5, 0.3 + freed * 0.3 / 0.5])
    torch.testing.assert_close(out[0, 0, 0], want)
    assert abs(float(out.sum()) - 1.0) < 1e-6
    assert torch.equal(S.redistribute(pattern, image, sinks, ~sel, 0.5), pattern)   # unselected rows unchanged
    rand = torch.rand(2, 3, 5, 6).softmax(-1)
    img = torch.rand(2, 6) > 0.3
    snk = torch.rand(2, 6) > 0.5
    assert torch.equal(S.redistribute(rand, img, snk, torch.ones(2, 3, 5, dtype=torch.bool), 1.0), rand)
    allsink = S.redistribute(pattern, image, torch.tensor([[True, True, True, True]]), sel, 0.5)
    assert torch.equal(allsink, pattern)                          # no non-sink image token: left unchanged


def test_image_centric_test():
    pattern = torch.tensor([[[[0.5, 0.1, 0.4, 0.0]], [[0.9, 0.05, 0.05, 0.0]], [[0.1, 0.6, 0.3, 0.0]]]])
    image = torch.tensor([[False, True, True, False]])
    sinks = torch.tensor([[True, True, False, False]])
    sel, attn, share = S.image_centric(pattern, image, sinks, torch.ones(1, 1, dtype=torch.bool), rho=0.5, floor=0.2)
    # head 0: image 0.5, share 0.2 -> yes; head 1: image 0.1 < floor; head 2: share 0.67 > rho
    assert sel[0, :, 0].tolist() == [True, False, False]
    torch.testing.assert_close(attn[0, :, 0], torch.tensor([0.5, 0.1, 0.9]))


def test_var_on_the_random_toy(llava):
    model, batch = llava
    default = S.var_effect(model, batch, ["Y", "N"])               # d_model 64: |normalised h| <= 8 < tau = 20
    assert default.meta.extra["layers"] == [] and (default.table.max_logit_change == 0).all()
    cfg = dict(tau=3.0, layers=(0, 1))                             # a low tau finds sinks on the toy
    sinks = S.visual_sinks(model, batch, S.VarConfig(**cfg)).validate()
    assert sinks.table.is_image.any() and (sinks.table.value > 3.0).all()
    heads = S.image_centric_heads(model, batch, S.VarConfig(**cfg)).validate()
    assert len(heads.table) == 2 * model.cfg.n_heads
    at1 = S.var_effect(model, batch, ["Y", "N"], S.VarConfig(**cfg, p=1.0)).validate()
    assert at1.meta.extra["layers"] and (at1.table.max_logit_change == 0).all()     # exactly the identity
    var = S.var_effect(model, batch, ["Y", "N"], S.VarConfig(**cfg)).validate()
    # VAR moves the logits (it acts) but changes no answer on the toy: stated tolerance, the top token.
    assert (var.table.max_logit_change > 0).all() and not var.table.argmax_changed.any()


# ----------------------------------------------------------------------------- FCCT / IRI
def test_fcct_recovery_oracles(llava):
    model, batch = llava
    img, text = batch.image_mask, batch.mask & ~batch.image_mask
    groups = {"all": img | text, "none": torch.zeros_like(img), "image": img}
    r = F.fcct(model, batch, ["Y", "N"], groups=groups, config=F.FcctConfig()).validate()
    t = r.table.set_index(["layer", "component", "group"]).recovery
    assert abs(t[(0, "resid", "all")] - 1.0) < 1e-4                # restoring every token at layer 0 = clean
    assert all(t[(l, c, "none")] == 0 for l in range(2) for c in F.COMPONENTS)
    last = model.cfg.n_layers - 1                                   # the last layer at image tokens cannot reach
    assert all(abs(t[(last, c, "image")]) < 1e-6 for c in F.COMPONENTS)   # the answer position
    boxed = F.fcct(model, batch, ["Y", "N"], box=(8, 8, 16, 16), config=F.FcctConfig(components=("resid",)))
    assert set(boxed.table.group) == {"image", "text", "last", "object", "early", "late"}
    same = F.iri(model, batch, ["Y", "N"], r, lam=0.0).validate()   # lambda 0: the injection adds nothing
    assert np.allclose(same.table.p_iri, same.table.p_base, atol=1e-7)
    moved = F.iri(model, batch, ["Y", "N"], r, component="mlp_out", group="all", lam=5.0)
    assert moved.meta.extra["targets"] and (moved.table.p_iri != moved.table.p_base).all()


# ----------------------------------------------------------------------------- NOTICE
def test_notice_image_and_text_corruption(llava):
    model, batch = llava
    swapped = tokenize(model, TEXTS, images=[_img(2), _img(0)])    # the same scenes with the object changed
    heads = N.notice_patching(model, batch, swapped, ["Y", "N"], ["N", "Y"]).validate()
    assert heads.meta.extra["corruption"] == "image" and heads.table.node.nunique() == 8
    text = tokenize(model, N.symmetric_replace(TEXTS, "Is", "As"), images=[_img(0), _img(2)])
    mlp = N.notice_patching(model, batch, text, ["Y", "N"], ["N", "Y"], component="mlp_out", layers=(1,)).validate()
    assert mlp.meta.extra["corruption"] == "text"
    # oracle: the same patch as a plain hooked forward of the corrupted prompts
    with torch.inference_mode():
        with batch.feed(model):
            from interp.hooks import run_capture
            clean = run_capture(model, batch.tokens, [Site("mlp_out", 1)], stop_early=False)[Site("mlp_out", 1)]
        with text.feed(model), intervening(model, [Intervention("restore", Site("mlp_out", 1), clean)]):
            logits = model(text.tokens)[torch.arange(2), text.last]
    ids = F.answer_ids(model, ["Y", "N"], 2), F.answer_ids(model, ["N", "Y"], 2)
    ld = float((logits.gather(1, ids[0][:, None]) - logits.gather(1, ids[1][:, None])).mean())
    got = mlp.table[mlp.table.metric == "logit_diff"].value.item()
    assert abs(got - ld) < 1e-4
    with pytest.raises(DataError, match="same token lengths"):
        N.notice_patching(model, batch, tokenize(model, ["<image> Is it red??", "<image> Is it blue??"],
                                                 images=[_img(0), _img(2)]), ["Y", "N"], ["N", "Y"])
    with pytest.raises(DataError, match="identical"):
        N.notice_patching(model, batch, batch, ["Y", "N"], ["N", "Y"])


# ----------------------------------------------------------------------------- VHD / VHR
def test_vhd_zero_for_a_head_that_cannot_see_the_image(llava):
    model, batch = llava

    def on_bos(pattern):                                           # head L0.H1 attends only to BOS (position 0)
        out = torch.zeros_like(pattern)
        out[..., 0] = 1.0
        return out
    with intervening(model, [Intervention("apply", Site("pattern", 0, head=1), on_bos)]):
        r = V.vhd(model, batch).validate()
    t = r.table.set_index("node").vhd
    assert t["L0.H1"] < 1e-6 and (t.drop("L0.H1") > 1e-3).all()
    assert r.meta.extra["t_vhd"] == pytest.approx(float(np.sort(r.table.vhd)[::-1][:4].mean()))
    same = V.vhr(model, batch, ["Y", "N"], r, alpha=1.0)
    assert np.array_equal(same.table.p_vhr, same.table.p_base)
    scored = V.vhd(model, batch, answers=["Y", "N"])
    assert "ablation_effect" in scored.table and np.isfinite(scored.meta.extra["spearman"])


def test_vhr_selection():
    scores = np.array([[1.0, 2.0, 3.0, 100.0], [5.0, 5.0, 5.0, 5.0]])
    # layer 0: 100 > mean + std is dropped; median of [1, 2, 3] = 2 -> heads 2 and 3; layer 1: none above 5
    assert V.vhr_select(scores).tolist() == [[False, False, True, True], [False, False, False, False]]


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs(llava):
    model, batch = llava
    no_image = tokenize(model, ["Is it red?"])
    with pytest.raises(DataError, match="no image tokens"):
        F.fcct(model, no_image, ["Y"])
    with pytest.raises(DataError, match="no images"):
        V.vhd(model, no_image)
    with pytest.raises(DataError, match="answer 0 'Yes' is not a single token"):
        F.fcct(model, batch, ["Yes", "N"])
    with pytest.raises(DataError, match="2 for 1 prompts"):
        S.var_effect(model, tokenize(model, TEXTS[:1], images=_img(0)), ["Y", "N"])
    with pytest.raises(ConfigError, match="unknown 'atn_out'.*attn_out"):
        F.FcctConfig(components=("atn_out",))
    with pytest.raises(ConfigError, match="p must lie in"):
        S.VarConfig(p=1.5)
    with pytest.raises(DataError, match="text-only"):
        tokenize(load_model("toy:llama"), TEXTS[:1], images=_img(0))


def test_gemma3_toy_fcct_and_vhd():
    model = load_model("toy:gemma3vl")
    texts = ["<start_of_image> Is it red?", "<start_of_image> Is it blue?"]
    batch = tokenize(model, texts, images=[_img(0), _img(2)])
    groups = {"all": batch.mask, "none": torch.zeros_like(batch.mask)}
    t = F.fcct(model, batch, ["Y", "N"], groups=groups, config=F.FcctConfig(components=("resid",), layers=(0,)))
    rec = t.table.set_index("group").recovery
    assert abs(rec["all"] - 1.0) < 1e-4 and abs(rec["none"]) < 1e-4     # float rounding of the grown pass
    assert (V.vhd(model, batch).table.vhd >= 0).all()
