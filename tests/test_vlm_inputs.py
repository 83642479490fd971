"""Vision-language inputs on the toy VLMs: image-token positions, padded batches, hooks, collect, engine, groups.

Oracles: the model's own Hugging Face processor run prompt by prompt (positions, token type ids),
plain transformers' forward on the processor's output (logits), single-prompt runs (padded
batches), hand-written hooks (engine group positions), pixels of a planted square (object groups).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from interp import Site, load_model, tokenize
from interp.errors import ConfigError, DataError
from interp.vlm.groups import object_patches, positions, token_group

MARK = {"llava": "<image>", "gemma3vl": "<start_of_image>"}


@pytest.fixture(scope="module", params=["llava", "gemma3vl"])
def vlm(request):
    return request.param, load_model(f"toy:{request.param}")


def _images():
    rng = np.random.RandomState(0)
    return rng.randint(0, 256, (32, 32, 3)).astype(np.uint8), rng.randint(0, 256, (40, 56, 3)).astype(np.uint8)


def _prompts(arch):
    m = MARK[arch]
    return [f"{m} What colour is the circle?", f"Look: {m} red?", "no image here", f"{m} or {m}?"]


def _per_prompt():
    a, b = _images()
    return [[a], [b], None, [b, a]]


def test_positions_agree_with_processor(vlm):
    arch, model = vlm
    batch = tokenize(model, _prompts(arch), images=_per_prompt())
    proc, img_id = model.processor, model.original_model.config.image_token_id
    assert batch.image_token_id == img_id
    for i, (text, ims) in enumerate(zip(_prompts(arch), _per_prompt())):
        ref = proc(text=[text], images=[ims] if ims else None, return_tensors="pt")
        n = int(batch.lengths[i])
        assert batch.tokens[i, :n].tolist() == ref["input_ids"][0].tolist()
        want = tuple(int(p) for p in (ref["input_ids"][0] == img_id).nonzero().flatten())
        assert batch.image_positions(i) == want
        if ims:
            sizes = [im.shape[:2] for im in ims]
            assert len(want) == sum(proc._get_num_multimodal_tokens(image_sizes=sizes)["num_image_tokens"])
        if "token_type_ids" in ref:
            assert batch.token_type_ids[i, :n].tolist() == ref["token_type_ids"][0].tolist()
    assert batch.image_mask.sum(1).tolist()[2] == 0 and batch.images_per_prompt == (1, 1, 0, 2)


def test_padded_batch_equals_single_runs_and_transformers(vlm):
    arch, model = vlm
    a, b = _images()
    prompts, images = _prompts(arch), _per_prompt()
    batch = tokenize(model, prompts, images=images)
    with torch.inference_mode(), batch.feed(model):
        full = model(batch.tokens)
    for i, (text, im) in enumerate(zip(prompts, images)):
        single = tokenize(model, [text], images=[im])
        n = int(batch.lengths[i])
        with torch.inference_mode(), single.feed(model):
            one = model(single.tokens)
        torch.testing.assert_close(full[i, :n], one[0], atol=1e-5, rtol=0)
        if im is not None:  # plain transformers on the processor's own output
            ref = model.processor(text=[text], images=[im], return_tensors="pt")
            with torch.inference_mode():
                hf = model.original_model(**ref).logits
            torch.testing.assert_close(one[0], hf[0], atol=1e-5, rtol=0)
    # the image matters: another image changes the answer's logits
    other = tokenize(model, prompts[:1], images=[b])
    with torch.inference_mode(), other.feed(model):
        assert (model(other.tokens)[0, -1] - full[0, int(batch.lengths[0]) - 1]).abs().max() > 1e-4


def test_collect_at_image_positions(vlm, tmp_path):
    from interp import collect
    from interp.hooks import run_capture

    arch, model = vlm
    batch = tokenize(model, _prompts(arch), images=_per_prompt())
    site = Site("resid_post", 0)
    store = collect(model, batch, [site], batch_size=2, progress=False, out=tmp_path / "store")
    acts = store[site]
    for i, ims in enumerate(_per_prompt()):
        if ims is None:
            continue
        single = tokenize(model, [batch.texts[i]], images=[ims])
        with torch.inference_mode(), single.feed(model):
            want = run_capture(model, single.tokens, [site])[site][0]
        pos = list(batch.image_positions(i))
        torch.testing.assert_close(acts[i, pos], want[pos], atol=1e-5, rtol=0)
    assert acts[token_group(model, batch, "image")].shape == (int(batch.image_mask.sum()), model.cfg.d_model)
    # the same prompts with other images are another store: never resumed from this one
    a, b = _images()
    swapped = tokenize(model, _prompts(arch), images=[[b], [a], None, [b, a]])
    from interp.errors import StoreError

    with pytest.raises(StoreError, match="differs in: images"):
        collect(model, swapped, [site], batch_size=2, progress=False, out=tmp_path / "store")


def test_engine_token_group_positions(vlm):
    from interp.engine import Intervention, World, run
    from interp.hooks import hooked

    arch, model = vlm
    a, b = _images()
    batch = tokenize(model, _prompts(arch)[:2], images=[a, b])
    img = token_group(model, batch, "image")
    site = Site("resid_post", 0)

    def zero(act, s):
        act = act.clone()
        act[img] = 0.0
        return act
    with torch.inference_mode(), batch.feed(model):
        out = run(model, batch.tokens, [World((Intervention("ablate", site, positions=img),))],
                  positions=batch.last, with_base=True)
        with hooked(model, [(site, zero)]):
            want = model(batch.tokens)[torch.arange(2), batch.last]
    torch.testing.assert_close(out.worlds[0], want, atol=1e-5, rtol=0)
    assert (out.worlds[0] - out.base).abs().max() > 1e-4
    # worlds entering at a layer run under the engine's explicit batch-1 mask (Gemma 3: plus image blocks)
    same = tokenize(model, [_prompts(arch)[0]] * 2, images=[a, b])     # one image layout for both rows
    with torch.inference_mode(), same.feed(model):
        plain = model(same.tokens)[torch.arange(2), same.last]
        ent = run(model, same.tokens, [World(enter=1)], positions=same.last, with_base=True)
    torch.testing.assert_close(ent.base, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent.worlds[0], plain, atol=1e-5, rtol=0)
    if arch == "gemma3vl":  # rows whose images lie at different positions cannot share one explicit mask
        with torch.inference_mode(), batch.feed(model), pytest.raises(ConfigError, match="different positions"):
            run(model, batch.tokens, [World(enter=1)], positions=batch.last)


def test_object_group_covers_the_planted_square(vlm):
    arch, model = vlm
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    img[8:16, 16:24] = 255                                # a white square on black
    batch = tokenize(model, [f"{MARK[arch]} where?"], images=img)
    pv = batch.pixel_values[0]                             # [3, 32, 32]
    rows = math.isqrt(int(batch.image_mask.sum()))
    cell = 32 // rows
    lit = pv.amax(0).reshape(rows, cell, rows, cell).amax(dim=(1, 3)) > pv.amin()
    want = tuple(int(k) for k in lit.flatten().nonzero().flatten())   # grid cells holding white pixels
    assert object_patches(model, batch, (16, 8, 24, 16)) == want
    groups = {g: token_group(model, batch, g, box=(16, 8, 24, 16)) for g in ("object", "early", "late", "image")}
    image_pos = batch.image_positions(0)
    assert positions(groups["object"]) == tuple(image_pos[k] for k in want)
    assert positions(groups["early"]) == tuple(p for p in image_pos if p < min(positions(groups["object"])))
    assert positions(groups["late"]) == tuple(p for p in image_pos if p > max(positions(groups["object"])))
    assert not (groups["early"] & groups["object"]).any() and not (groups["late"] & groups["object"]).any()
    assert positions(token_group(model, batch, "last")) == (int(batch.lengths[0]) - 1,)
    mixed = tokenize(model, [f"{MARK[arch]} where?", "no image"], images=[img, None])
    shared = token_group(model, mixed, "object", box=(16, 8, 24, 16))       # one box: the imageless prompt skipped
    assert positions(shared, 0) == positions(groups["object"]) and positions(shared, 1) == ()
    with pytest.raises(DataError, match="box for prompt 1: it has 0 image"):
        token_group(model, mixed, "object", box=[(16, 8, 24, 16), (0, 0, 4, 4)])
    assert set(positions(token_group(model, batch, "text"))) == set(range(int(batch.lengths[0]))) - set(image_pos)


def test_box_maps_through_resize_and_crop():
    model = load_model("toy:llava")                      # CLIP: shortest edge 32, centre crop 32x32
    wide = np.zeros((32, 64, 3), dtype=np.uint8)          # 64 wide: crop keeps x 16..48
    batch = tokenize(model, ["<image>"], images=wide)
    assert object_patches(model, batch, (16, 0, 24, 8)) == (0,)       # left edge of the crop: patch (0, 0)
    assert object_patches(model, batch, (40, 24, 48, 32)) == (15,)    # right edge: patch (3, 3)
    big = np.zeros((64, 64, 3), dtype=np.uint8)           # resized by 1/2
    batch = tokenize(model, ["<image>"], images=big)
    assert object_patches(model, batch, (16, 16, 32, 32)) == (5,)
    cropped = tokenize(model, ["<image>"], images=wide)
    with pytest.raises(DataError, match="outside"):
        object_patches(model, cropped, (0, 0, 8, 8))      # cut off by the centre crop


def test_images_from_files_and_arrays_agree(tmp_path):
    from PIL import Image

    model = load_model("toy:llava")
    a, _ = _images()
    Image.fromarray(a).save(tmp_path / "a.png")
    from_file = tokenize(model, ["<image> x"], images=str(tmp_path / "a.png"))
    from_tensor = tokenize(model, ["<image> x"], images=torch.from_numpy(a).permute(2, 0, 1).float() / 255)
    from_array = tokenize(model, ["<image> x"], images=a)
    assert torch.equal(from_file.pixel_values, from_array.pixel_values)
    assert torch.equal(from_tensor.pixel_values, from_array.pixel_values)


def test_local_folder_and_arch_facts():
    from interp._fs import interp_home
    from interp.arch import arch_facts
    from interp.toy import build_toy_folder, parse_toy_spec

    folder = build_toy_folder(parse_toy_spec("toy:llava"), interp_home() / "toy")
    model = load_model(str(folder))
    assert type(model.processor).__name__ == "LlavaProcessor"
    facts = arch_facts(model)
    got = (facts.family, facts.vision, facts.image_attention, facts.image_grid)
    assert got == ("llama", "llava", "causal", "fixed")
    assert arch_facts(load_model("toy:gemma3vl")).image_attention == "bidirectional"
    assert arch_facts(load_model("toy:llama")).vision is None


def test_vlm_folder_without_processor_is_refused(tmp_path):
    import shutil

    from interp._fs import interp_home
    from interp.errors import ModelNotFoundError
    from interp.toy import build_toy_folder, parse_toy_spec

    folder = build_toy_folder(parse_toy_spec("toy:llava"), interp_home() / "toy")
    bare = tmp_path / "bare-llava"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(folder / name, bare / name)
    with pytest.raises(ModelNotFoundError, match="bare-llava is a vision-language model but its processor"):
        load_model(str(bare))


def test_bad_inputs(tmp_path):
    model = load_model("toy:llava")
    a, _ = _images()
    with pytest.raises(DataError, match="text-only"):
        tokenize(load_model("toy:llama"), ["<image> x"], images=a)
    with pytest.raises(DataError, match=r"prompt 0 has 0 image placeholder\(s\) '<image>' but 1 image"):
        tokenize(model, ["no placeholder"], images=a)
    with pytest.raises(DataError, match=r"prompt 1 has 1 image placeholder\(s\) '<image>' but 0 image"):
        tokenize(model, ["<image> a", "<image> b"], images=[a, None])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match="broken.png"):
        tokenize(model, ["<image> x"], images=str(bad))
    with pytest.raises(DataError, match="expected an array"):
        tokenize(model, ["<image> x"], images=np.zeros((4, 4, 5), dtype=np.uint8))
    with pytest.raises(ConfigError, match="unknown token group 'objct'.*object"):
        token_group(model, tokenize(model, ["<image>"], images=a), "objct")
    other = tokenize(model, ["<image> y"], images=a)
    with pytest.raises(DataError, match="does not match the fed batch"):
        with tokenize(model, ["<image> x"], images=a).feed(model):
            model(other.tokens)


def test_sizes_the_processor_cannot_take():
    model = load_model("toy:gemma3vl")
    model.processor.image_processor.do_resize = False     # a processor that keeps the given size
    with pytest.raises(DataError, match=r"made 48x40 pixel images from 48x40, but the vision tower takes 32x32"):
        tokenize(model, ["<start_of_image> x"], images=np.zeros((40, 48, 3), dtype=np.uint8))


def test_processor_outputs_interp_does_not_pass_are_refused(monkeypatch):
    model = load_model("toy:llava")
    real = model.processor

    class Tiled:  # a processor like LLaVA-NeXT's / Qwen2.5-VL's, with one more input for the model
        tokenizer, image_processor, image_token = real.tokenizer, real.image_processor, real.image_token

        def __call__(self, **kw):
            out = real(**kw)
            out["image_grid_thw"] = torch.ones(1, 3, dtype=torch.long)
            return out
    monkeypatch.setattr(model, "processor", Tiled())
    with pytest.raises(ConfigError, match="also returns image_grid_thw"):
        tokenize(model, ["<image> x"], images=_images()[0])


def test_restore_at_token_groups_fcct_mechanics(vlm):
    """Noise the image tokens' embeddings; restoring layer 1's residual at image + text tokens gives the clean run."""
    from interp.engine import Intervention, World, run
    from interp.hooks import run_capture

    arch, model = vlm
    a, b = _images()
    same = tokenize(model, [_prompts(arch)[0]] * 2, images=[a, b])
    img, text = token_group(model, same, "image"), token_group(model, same, "text")
    noise = torch.randn(same.tokens.shape[1], model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    corrupt = Intervention("add", Site("resid_pre", 0), noise * img[..., None].float())  # image tokens only
    at = Site("resid_pre", 1)
    with torch.inference_mode(), same.feed(model):
        clean_h = run_capture(model, same.tokens, [at], stop_early=False)[at]
        clean = model(same.tokens)[torch.arange(2), same.last]
        worlds = [World((Intervention("restore", at, clean_h, positions=img | text),)),
                  World((Intervention("restore", at, clean_h, positions=text),)),
                  World((Intervention("restore", at, clean_h[0], positions=img | text),))]   # one prompt for all
        out = run(model, same.tokens, worlds, positions=same.last, base=[corrupt], with_base=True)
    assert (out.base - clean).abs().max() > 1e-3                      # the noise matters
    torch.testing.assert_close(out.worlds[0], clean, atol=1e-5, rtol=0)
    assert (out.worlds[1] - clean).abs().max() > 1e-3                 # text alone does not restore the image
    torch.testing.assert_close(out.worlds[2], clean[:1].expand(2, -1), atol=1e-5, rtol=0)
