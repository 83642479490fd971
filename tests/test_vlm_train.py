"""The VLM trained here (interp.vlm.train) and its synthetic scenes (interp.vlm.scenes).

* scenes: each object is drawn inside its own cell (= its image patch) and nowhere else; the sink cell stays
  empty; a minimal pair differs only inside the changed object's cell; the held-out split is disjoint from
  training;
* the saved processor (LlavaProcessor assembled offline) produces exactly the ids and pixels the trainer uses, for
  both checkpoints (``data/toy/vlm``: word-level questions; ``data/toy/vlm-onetoken``: each question one token);
* the trainer runs a few steps and writes a folder plain transformers loads;
* the committed checkpoint ``data/toy/vlm``: loaded with plain ``LlavaForConditionalGeneration.from_pretrained``,
  it reaches its recorded held-out accuracy (far above chance), carries the recorded sink, and its answers rest
  on the object's patch: replacing the image embedding of that one patch by the one from the scene without
  the object (plain torch hooks) flips the answer far more often than replacing another patch. Both checkpoints
  reach their recorded accuracy and carry the recorded sink.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from interp.errors import ConfigError
from interp.vlm import scenes as S
from interp.vlm.train import (IMAGE_TOKEN, ONE_TOKEN_QUESTIONS, SINK_DIM, SINK_LAYERS, VISION_HEADS, VOCAB,
                              HeadDropout, VLMTrainConfig, answer_logits, build_model, build_tokenizer,
                              encode_questions, evaluate, has_one_token_questions, measure_sink, text_heads,
                              train_vlm, vocab)

VLM_FOLDER = Path(__file__).resolve().parents[1] / "data" / "toy" / "vlm"
ONE_TOKEN_FOLDER = VLM_FOLDER.parent / "vlm-onetoken"
CHECKPOINTS = [pytest.param(VLM_FOLDER, id="words"), pytest.param(ONE_TOKEN_FOLDER, id="one-token")]


@pytest.fixture(scope="module")
def vlm():
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(VLM_FOLDER).eval()


def _cell_box(cell: int) -> tuple[slice, slice]:
    r, c = divmod(cell, S.GRID)
    return slice(r * S.CELL, (r + 1) * S.CELL), slice(c * S.CELL, (c + 1) * S.CELL)


def test_objects_drawn_in_their_cell_only():
    batch = S.draw_scenes(64, seed=3)
    images = batch.images()
    for i in range(len(batch)):
        scene = batch.scene(i)
        painted = images[i].any(-1)
        expected = np.zeros_like(painted)
        for o in scene.objects:
            rows, cols = _cell_box(o.cell)
            expected[rows, cols] = painted[rows, cols]
            assert painted[rows, cols].sum() >= 20                       # the object is drawn
            colours = {tuple(px) for px in images[i][rows, cols][painted[rows, cols]]}
            assert colours == {S.RGB[o.colour]}                         # in its colour
        assert (painted == expected).all()                                # nothing outside the object cells
        assert not painted[_cell_box(S.SINK_CELL)].any()


def test_minimal_pair_changes_one_cell_only():
    batch = S.draw_scenes(32, seed=4)
    for i in range(len(batch)):
        scene = batch.scene(i)
        o = scene.objects[0]
        for change in ("colour", "shape", "remove"):
            try:
                pair = S.minimal_pair(scene, o.shape, change, seed=i)
            except ConfigError:                                           # no absent shape / only object
                continue
            diff = (scene.render() != pair.render()).any(-1)
            outside = diff.copy()
            outside[_cell_box(o.cell)] = False
            assert diff.any() and not outside.any()


def test_questions_answer_the_scene():
    batch = S.draw_scenes(64, seed=5)
    for q in S.draw_questions(batch, "exists", seed=0) + S.draw_questions(batch, "colour", seed=1):
        scene = batch.scene(q.index)
        if q.kind == "exists":
            assert (q.answer == "yes") == scene.has(q.colour, q.shape)
        else:
            assert q.answer == scene.get(q.shape).colour and q.target == scene.get(q.shape)


def test_held_out_split_is_disjoint():
    train = S.draw_scenes(512, seed=0).keys()
    held = S.draw_scenes(512, seed=0, split="held_out").keys()
    mask = S.held_out_mask()
    assert not mask[train].any() and mask[held].all()


def test_bad_scene_input_is_named():
    with pytest.raises(ConfigError, match="cell"):
        S.Obj("square", "red", S.SINK_CELL)
    with pytest.raises(ConfigError, match="colour"):
        S.Obj("square", "purple", 3)
    with pytest.raises(ConfigError, match="distinct shapes"):
        S.Scene((S.Obj("square", "red", 3), S.Obj("square", "blue", 4)))


@pytest.mark.parametrize("folder", CHECKPOINTS)
def test_saved_processor_matches_the_trainer(folder):
    from transformers import LlavaProcessor

    one = folder == ONE_TOKEN_FOLDER
    proc = LlavaProcessor.from_pretrained(folder)
    batch = S.draw_scenes(4, seed=6)
    texts = [q.text for kind in S.KINDS for q in S.draw_questions(batch, kind, seed=0)]
    images = list(batch.images()) * 2
    out = proc(text=[IMAGE_TOKEN + t for t in texts], images=images, return_tensors="pt")
    assert torch.equal(out["input_ids"], encode_questions(texts, one))
    assert out["input_ids"].shape[1] == 2 + S.N_PATCHES + (0 if one else 5)
    cased = proc(text=[IMAGE_TOKEN + "What colour is the Circle?"], images=[batch.images()[0]], return_tensors="pt")
    assert torch.equal(cased["input_ids"], encode_questions(["what colour is the circle?"], one))
    assert torch.allclose(out["pixel_values"][:4], batch.pixel_values(), atol=1e-6)
    image_pos = (out["input_ids"][0] == VOCAB.index(IMAGE_TOKEN)).nonzero().flatten().tolist()
    assert image_pos == list(range(1, 1 + S.N_PATCHES))
    assert image_pos == json.loads((folder / "truth.json").read_text())["image_token_positions"]
    assert S.object_positions([o.cell for o in batch.scene(0).objects], image_pos) == \
        [1 + o.cell for o in batch.scene(0).objects]


def test_one_token_questions_are_one_known_token_each():
    tok, ids = build_tokenizer(True), {w: i for i, w in enumerate(vocab(True))}
    texts = [S.question_text("exists", s, c) for c in S.COLOURS for s in S.SHAPES] + \
        [S.question_text("colour", s) for s in S.SHAPES]
    got = [tok(t)["input_ids"] for t in texts]
    assert all(len(g) == 2 and g[0] == ids["<bos>"] for g in got)            # <bos> + one word
    assert sorted(tok.convert_ids_to_tokens([g[1] for g in got])) == sorted(ONE_TOKEN_QUESTIONS)   # none <unk>
    assert vocab(True)[:5] == VOCAB[:5]                                       # specials keep their ids


def test_train_cli_refuses_bad_settings(tmp_path, capsys):
    from interp.vlm.train import main

    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "vlm"), "--one-token-questions", "--n-heads", "5"])
    assert e.value.code == 2 and "n_heads=5" in capsys.readouterr().err
    assert not (tmp_path / "vlm").exists()


def test_trainer_runs_a_few_steps(tmp_path):
    from transformers import LlavaForConditionalGeneration

    cfg = VLMTrainConfig(steps=3, colour_only_steps=1, batch_size=8, text_attention_weight=1.0,
                         text_head_dropout=0.3, vision_dropout=0.5, heads_from_step=1, heads_ramp_steps=1)
    folder = train_vlm(cfg, tmp_path / "vlm", eval_n=8)
    model = LlavaForConditionalGeneration.from_pretrained(folder)
    source = json.loads((folder / "interp_source.json").read_text())
    assert [s for s, *_ in source["losses"]] == [0, 2]
    truth = json.loads((folder / "truth.json").read_text())
    assert truth["sink"]["patch"] == S.SINK_CELL and truth["sink"]["dims"] == [SINK_DIM]
    assert truth["heads"]["vision"] == [f"L{l}.H{h}" for l, h in VISION_HEADS]   # planted heads recorded
    assert set(truth["heads"]["image_attention"]["per_head"]) == {f"L{l}.H{h}" for l in range(3) for h in range(4)}
    assert "heads" not in json.loads((VLM_FOLDER / "truth.json").read_text())     # the checkpoint: none planted
    assert sum(p.numel() for p in model.parameters()) > 0
    assert "eager" not in (folder / "config.json").read_text()               # trained eager, saved plain
    with pytest.raises(ConfigError, match="n_heads"):
        VLMTrainConfig(n_heads=5)
    with pytest.raises(ConfigError, match="vision_heads"):
        VLMTrainConfig(vision_heads=((3, 0),))
    with pytest.raises(ConfigError, match="text_head_dropout"):
        VLMTrainConfig(text_head_dropout=1.0)


def test_head_dropout_zeroes_or_rescales_whole_text_heads():
    """Per sequence, each text head's z reaches o_proj either zeroed or scaled by 1 / (1 - p); vision heads and
    the model after the context are untouched; with but_last the last position is left alone."""
    cfg = VLMTrainConfig(steps=1, colour_only_steps=0)
    model = build_model(cfg).eval()
    ids, px = encode_questions(["is there a red square?"] * 64), S.draw_scenes(64, seed=0).pixel_values()
    seen = {}
    attn = model.model.language_model.layers[1].self_attn
    pre = attn.o_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("z", a[0].clone()), prepend=True)
    post = attn.o_proj.register_forward_hook(lambda m, a, o: seen.__setitem__("dropped", a[0].clone()))
    with torch.no_grad():
        with HeadDropout(model, text_heads(cfg), 0.5, torch.Generator().manual_seed(0)):
            answer_logits(model, ids, px)
        z, dropped = (seen[k].view(64, -1, cfg.n_heads, cfg.d_model // cfg.n_heads) for k in ("z", "dropped"))
        kept = []
        for h in range(cfg.n_heads):
            if (1, h) in VISION_HEADS:
                assert torch.equal(dropped[:, :, h], z[:, :, h])
                continue
            zero = dropped[:, :, h].abs().amax((1, 2)) == 0
            assert torch.allclose(dropped[~zero, :, h], 2 * z[~zero, :, h])
            kept.append(float((~zero).float().mean()))
        assert kept and all(0.2 < k < 0.8 for k in kept)                  # p = 0.5 over 64 sequences
        answer_logits(model, ids, px)
        assert torch.equal(seen["dropped"], seen["z"])                    # hooks removed on exit
        with HeadDropout(model, list(VISION_HEADS), 0.5, torch.Generator().manual_seed(0), but_last=True):
            answer_logits(model, ids, px)                                 # vision heads: all positions but the last
        z, dropped = (seen[k].view(64, -1, cfg.n_heads, cfg.d_model // cfg.n_heads) for k in ("z", "dropped"))
        assert torch.equal(dropped[:, -1], z[:, -1])
        zero = dropped[:, :-1, 0].abs().amax((1, 2)) == 0                 # L1.H0 is a vision head
        assert zero.any() and (~zero).any() and torch.allclose(dropped[~zero, :-1, 0], 2 * z[~zero, :-1, 0])
    pre.remove()
    post.remove()


def _sd_bound(p: float, n: int, k: float = 10.0) -> float:
    """chance + k binomial standard deviations: an accuracy above it is not luck (k = 10)."""
    return p + k * math.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module", params=CHECKPOINTS)
def checkpoint(request):
    from transformers import LlavaForConditionalGeneration

    return request.param, LlavaForConditionalGeneration.from_pretrained(request.param).eval()


def test_checkpoint_reaches_recorded_accuracy(checkpoint):
    folder, vlm = checkpoint
    assert has_one_token_questions(vlm) == (folder == ONE_TOKEN_FOLDER)
    recorded = json.loads((folder / "interp_source.json").read_text())["held_out_accuracy"]
    got = evaluate(vlm, n=recorded["exists"]["n"])
    for kind in S.KINDS:
        assert got[kind]["accuracy"] == pytest.approx(recorded[kind]["accuracy"], abs=2e-3)
        assert got[kind]["accuracy"] > _sd_bound(S.CHANCE[kind], got[kind]["n"])


def test_checkpoint_carries_the_recorded_sink(checkpoint):
    folder, vlm = checkpoint
    truth = json.loads((folder / "truth.json").read_text())["sink"]
    got = measure_sink(vlm, n=64, seed=5)                # other held-out scenes than the recorded ones
    assert truth["patch"] == S.SINK_CELL and truth["dims"] == [SINK_DIM]
    for layer in SINK_LAYERS:
        row = got["layers"][layer]
        assert row["is_sink"] and row["massive_dim"] == SINK_DIM, row
    assert set(got["sink_layers"]) == set(truth["measured_layers"]) >= set(SINK_LAYERS)


def _projector_outputs(model, ids, pixels, replace=None):
    """Run the model; capture the projector's output (the image embeddings, ``[B, 16, d]``), optionally
    replacing ``out[b, cells[b]]`` by ``donor[b, cells[b]]`` first (``replace = (donor, cells)``)."""
    seen = {}

    def hook(module, args, out):
        if replace is not None:
            donor, cells = replace
            out = out.clone()
            rows = torch.arange(out.shape[0]).view(-1, *([1] * (cells.dim() - 1)))
            out[rows, cells] = donor[rows, cells]
        seen["out"] = out
        return out

    handle = model.model.multi_modal_projector.register_forward_hook(hook)
    try:
        with torch.no_grad():
            _, logits = answer_logits(model, ids, pixels)
    finally:
        handle.remove()
    return seen["out"], logits


def _exists_yes_items(n: int, seed: int):
    """Held-out scenes with >= 2 objects and a yes-question about one of them (O), with O's cell, one other cell
    drawn uniformly, and the minimal pair without O."""
    batch = S.draw_scenes(4 * n, seed=seed, split="held_out")
    rng = np.random.default_rng(seed)
    clean, donor, texts, obj_cells, ctrl_cells = [], [], [], [], []
    for i in range(len(batch)):
        scene = batch.scene(i)
        if len(scene.objects) < 2 or len(clean) == n:
            continue
        o = scene.objects[rng.integers(len(scene.objects))]
        clean.append(scene.render())
        donor.append(S.minimal_pair(scene, o.shape, "remove").render())
        texts.append(S.question_text("exists", o.shape, o.colour))
        obj_cells.append(o.cell)
        ctrl_cells.append(int(rng.choice([c for c in range(S.N_PATCHES) if c != o.cell])))
    return (encode_questions(texts), S.pixel_values(np.stack(clean)), S.pixel_values(np.stack(donor)),
            torch.tensor(obj_cells), torch.tensor(ctrl_cells))


def test_image_embedding_of_a_patch_depends_on_its_cell_only(vlm):
    """The vision tower's attention is off (zero, frozen): a minimal pair changes the image embeddings at the
    changed object's patch and nowhere else, so 'which patches hold the object' is exact."""
    ids, px_clean, px_donor, obj_cells, _ = _exists_yes_items(32, seed=12)
    a, _ = _projector_outputs(vlm, ids, px_clean)
    b, _ = _projector_outputs(vlm, ids, px_donor)
    changed = (a - b).abs().amax(-1) > 1e-6                               # [B, 16]
    expected = torch.zeros_like(changed)
    expected[torch.arange(len(obj_cells)), obj_cells] = True
    assert torch.equal(changed, expected)


def test_removing_the_object_patch_flips_the_answer(vlm):
    """'is there a <c> <s>?' about a present object O: replacing O's one patch embedding by the one from the
    minimal pair without O must turn yes into no (the answer rests on that patch)."""
    ids, px_clean, px_donor, obj_cells, _ = _exists_yes_items(128, seed=11)
    yes, no = VOCAB.index("yes"), VOCAB.index("no")
    _, logits = _projector_outputs(vlm, ids, px_clean)
    donor_emb, logits_donor = _projector_outputs(vlm, ids, px_donor)
    ok = (logits.argmax(-1) == yes) & (logits_donor.argmax(-1) == no)    # clean says yes, donor says no
    _, patched = _projector_outputs(vlm, ids, px_clean, (donor_emb, obj_cells))
    flip = float((patched.argmax(-1)[ok] == no).float().mean())
    print(f"\nminimal pair: n={int(ok.sum())} flip(object patch from the scene without it)={flip:.3f}")
    # embeddings differ only at O's patch (test above), so patching it reproduces the donor run exactly
    assert int(ok.sum()) >= 32 and flip == 1.0


def test_fcct_restoring_object_patch_recovers_more_than_other_patch(vlm):
    """FCCT in plain form: noise every image embedding (Gaussian, 3x the embeddings' std, as causal tracing
    does), then restore the clean embedding of O's patch, or of one other patch; recovery rate
    RR = (P_restored - P_noised) / (P_clean - P_noised) of P(yes), averaged over scenes where noising drops
    P(yes) by at least 0.1."""
    ids, px_clean, _, obj_cells, ctrl_cells = _exists_yes_items(128, seed=13)
    yes = VOCAB.index("yes")
    clean_emb, logits = _projector_outputs(vlm, ids, px_clean)
    g = torch.Generator().manual_seed(0)
    noised = clean_emb + 3 * clean_emb.std() * torch.randn(clean_emb.shape, generator=g)
    p_clean = logits.softmax(-1)[:, yes]
    rows, every = torch.arange(len(ids)), torch.arange(S.N_PATCHES).expand(len(ids), -1)

    def p_yes(emb):                                   # run with all 16 image embeddings replaced by emb
        _, lg = _projector_outputs(vlm, ids, px_clean, (emb, every))
        return lg.softmax(-1)[:, yes]

    def restored(cells):                              # the noised embeddings, the clean one put back at cells
        src = noised.clone()
        src[rows, cells] = clean_emb[rows, cells]
        return src

    p_noised = p_yes(noised)
    keep = (p_clean - p_noised) >= 0.1
    rr_obj = ((p_yes(restored(obj_cells)) - p_noised) / (p_clean - p_noised))[keep]
    rr_ctrl = ((p_yes(restored(ctrl_cells)) - p_noised) / (p_clean - p_noised))[keep]
    diff = rr_obj - rr_ctrl
    se = float(diff.std() / math.sqrt(len(diff)))
    print(f"\nFCCT plain: n={len(diff)} RR(object patch)={float(rr_obj.mean()):.3f} "
          f"RR(other patch)={float(rr_ctrl.mean()):.3f} paired difference {float(diff.mean()):.3f} (se {se:.3f})")
    assert len(diff) >= 32
    # the direction, with a margin of 3 standard errors of the paired difference (not a fitted threshold)
    assert float(diff.mean()) > 3 * se and float(rr_obj.mean()) > 0
