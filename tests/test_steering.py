"""Steering axes, steering hook, function vectors, lens and cylinder: toy/synthetic oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from interp.errors import ConfigError, DataError, ShapeError, SiteError, StoreError
from interp.sites import Site
from interp.steering import (Axis, contrast_axis, fit_axis, ica_axis, load_axis, pca_axis, probe_axis, steered)
from interp.steering.axes import rows_from_store

SITE = Site("resid_post", 1)


def planted(n=600, d=32, sep=6.0, seed=0):
    """Isotropic noise plus a class-dependent shift along a known unit direction."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g)
    u = u / u.norm()
    y = (torch.arange(n) % 2).numpy()
    x = torch.randn(n, d, generator=g) + torch.from_numpy(y).float()[:, None] * sep * u + 3.0
    return x, y, u


def cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("method", ["contrast", "pca", "probe"])
def test_axes_recover_planted_direction(method):
    # the probe needs overlapping classes (separable data leaves the logistic weights ill-determined)
    x, y, u = planted(n=8000, d=16, sep=2.0) if method == "probe" else planted(n=600)
    ax = fit_axis(method, x, y, site=SITE, name="planted", seed=0)
    assert cos(ax.vector, u) > 0.99                      # sign included: oriented to class 1
    if method == "probe":
        assert ax.stats["accuracy"] > 0.8
        assert abs(ax.stats["control_accuracy"] - 0.5) < 0.1   # permuted labels: chance


def test_contrast_axis_is_exact_difference_of_means():
    x, y, _ = planted(n=50)
    ax = contrast_axis(x[y == 1], x[y == 0], site=SITE)
    assert torch.allclose(ax.vector, x[y == 1].mean(0) - x[y == 0].mean(0), atol=1e-6)


def test_ica_recovers_planted_non_gaussian_source():
    # A bimodal (binary) source along u among Gaussian dims: ICA picks it by separation.
    x, y, u = planted(n=2000, d=8, sep=4.0)
    ax = ica_axis(x, y, site=SITE, n_components=4, seed=0)
    assert cos(ax.vector, u) > 0.95
    assert ax.stats["n_components"] == 4


def test_probe_control_task_per_type_memorisable():
    # Control labels per token type (Hewitt & Liang): when the type is visible in the
    # features, a probe reaches high control accuracy; with per-row random labels it cannot.
    g = torch.Generator().manual_seed(1)
    types = torch.randint(0, 6, (600,), generator=g)
    x = torch.nn.functional.one_hot(types, 6).float() * 5 + 0.1 * torch.randn(600, 6, generator=g)
    y = (types % 2).numpy()
    ax = probe_axis(x, y, site=SITE, control_groups=types.tolist())
    assert ax.stats["accuracy"] > 0.95 and ax.stats["control_accuracy"] > 0.95
    ax2 = probe_axis(x, y, site=SITE)
    assert ax2.stats["control_accuracy"] < 0.7


def test_axis_save_load_round_trip(tmp_path):
    x, y, _ = planted(n=100)
    ax = probe_axis(x, y, site=Site("resid_post", 3), name="demo", model="toy:llama")
    ax.save(tmp_path / "axis")
    back = load_axis(tmp_path / "axis")
    assert torch.equal(back.vector, ax.vector)
    assert (back.site, back.method, back.name, back.data_hash, back.model) == (ax.site, "probe", "demo",
                                                                               ax.data_hash, "toy:llama")
    assert back.stats == ax.stats and back.node == "L3.RESID"
    assert not list((tmp_path / "axis").glob("*.pkl"))
    with pytest.raises(StoreError):
        load_axis(tmp_path / "nothing")


def test_bad_inputs_clear_errors():
    x, y, _ = planted(n=20)
    with pytest.raises(DataError, match="class 0 is empty"):
        fit_axis("contrast", x, np.ones(20), site=SITE)
    with pytest.raises(DataError, match="empty"):
        contrast_axis(x, x[:0], site=SITE)
    with pytest.raises(DataError, match="labels"):
        probe_axis(x, y[:5], site=SITE)
    with pytest.raises(ConfigError, match="Did you mean"):
        fit_axis("prob", x, y, site=SITE)
    from interp.datasets.contrast import ContrastSet

    with pytest.raises(DataError, match="class 1 is empty"):
        ContrastSet("x", ("a", "b"), (0, 0))


def _toy_axis(model, site=Site("resid_post", 0), seed=0):
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(seed))
    return Axis(name="t", vector=v, site=site, method="contrast")


def _capture(model, tokens, site, ctx):
    from interp.hooks import capturing

    with ctx, capturing(model, [site]) as acts:
        model(tokens)
    return acts[site]


@pytest.mark.parametrize("positions", ["all", "last", 2])
def test_steered_adds_exactly_alpha_axis(toy_llama, positions):
    import contextlib

    model = toy_llama
    ax = _toy_axis(model)
    tokens = torch.tensor([[1, 72, 105, 33, 40], [1, 50, 60, 0, 0]])
    lengths = torch.tensor([5, 3])
    # Read the steered site itself: the hook adds alpha*v before capture reads it? Capture is
    # registered after the steering hook, so it sees the steered activation.
    base = _capture(model, tokens, ax.site, contextlib.nullcontext())
    got = _capture(model, tokens, ax.site, steered(model, ax, 1.5, positions=positions, lengths=lengths))
    expect = base.clone()
    if positions == "all":
        expect += 1.5 * ax.vector
    elif positions == "last":
        expect[0, 4] += 1.5 * ax.vector
        expect[1, 2] += 1.5 * ax.vector
    else:
        expect[:, 2:] += 1.5 * ax.vector
    assert torch.allclose(got, expect, atol=1e-5)
    # downstream really changes, and hooks are removed afterwards
    with steered(model, ax, 1.5, positions=positions, lengths=lengths):
        steered_logits = model(tokens)
    assert not torch.allclose(steered_logits, model(tokens))
    assert all(not p.fwd_hooks for p in model.hook_dict.values())


def test_steered_rejects_bad_input(toy_llama):
    ax = _toy_axis(toy_llama)
    for bad in (float("nan"), float("inf"), -math.inf):
        with pytest.raises(ConfigError, match="finite"):
            with steered(toy_llama, ax, bad):
                pass
    with pytest.raises(SiteError, match="refusing"):
        with steered(toy_llama, ax, 1.0, site=Site("resid_post", 1)):
            pass
    wide = Axis(name="w", vector=torch.ones(7), site=Site("resid_post", 0), method="pca")
    with pytest.raises(ShapeError, match="d_model"):
        with steered(toy_llama, wide, 1.0):
            pass
    with pytest.raises(DataError):
        Axis(name="n", vector=torch.tensor([1.0, float("nan")]), site=SITE, method="pca")


def test_rows_from_store_takes_last_real_token():
    class Store:
        lengths = torch.tensor([2, 3])

        def __getitem__(self, site):
            return torch.arange(2 * 3 * 4).float().reshape(2, 3, 4)

    rows = rows_from_store(Store(), SITE)
    assert torch.equal(rows, torch.stack([torch.arange(4, 8).float(), torch.arange(20, 24).float()]))


def test_sweep_and_perplexity_on_toy(toy_llama):
    from interp.steering import perplexity, sweep

    ax = _toy_axis(toy_llama)
    r = sweep(toy_llama, [ax], [0.0, 2.0], ["ab", "hello"], ["x"], ["some neutral text."], negatives=["y"],
              progress=False)
    assert r.kind == "steering.sweep" and list(r.table.alpha) == [0.0, 2.0]
    assert r.table.perplexity.iloc[0] == pytest.approx(perplexity(toy_llama, ["some neutral text."]))
    assert r.table.perplexity.iloc[1] != pytest.approx(r.table.perplexity.iloc[0])


def test_generate_matches_stepwise_argmax(toy_llama):
    from interp.models import tokenize
    from interp.steering import generate

    out = generate(toy_llama, ["ab", "hello w"], max_new_tokens=3)
    tb = tokenize(toy_llama, ["hello w"])
    toks = tb.tokens
    for _ in range(3):
        nxt = toy_llama(toks)[0, -1].argmax()
        toks = torch.cat([toks, nxt.view(1, 1)], 1)
    assert out[1] == toy_llama.tokenizer.decode(toks[0, tb.tokens.shape[1]:].tolist())


def test_function_vector_oracle_on_toy(toy_llama):
    from interp.hooks import capturing
    from interp.models import tokenize
    from interp.steering.fv import function_vector, head_outputs, mean_head_outputs

    prompts = ["ab: AB\ncd:", "xy: XY\nzz: ZZ\nq:"]
    mz = mean_head_outputs(toy_llama, prompts)
    tb = tokenize(toy_llama, prompts)
    with capturing(toy_llama, [Site("z", 1)]) as acts:
        toy_llama(tb.tokens)
    z_last = acts[Site("z", 1)][torch.arange(2), tb.last]
    assert torch.allclose(mz[1], z_last.mean(0), atol=1e-6)
    aie = torch.zeros(2, 4)
    aie[1, 2], aie[0, 3] = 1.0, 0.5
    ax, heads = function_vector(toy_llama, mz, aie, top_k=2, layer=0)
    assert heads == ((1, 2), (0, 3))
    w1, w0 = toy_llama.blocks[1].attn.W_O.detach(), toy_llama.blocks[0].attn.W_O.detach()
    assert torch.allclose(ax.vector, mz[1, 2] @ w1[2] + mz[0, 3] @ w0[3], atol=1e-5)
    assert torch.allclose(head_outputs(toy_llama, mz)[1, 2], mz[1, 2] @ w1[2], atol=1e-6)


def test_indirect_effect_zero_for_identity_patch(toy_llama):
    # Patching a head with the mean over the *same* single prompt changes nothing: AIE = 0.
    from interp.steering.fv import indirect_effects, mean_head_outputs

    prompts = ["ab: AB\ncd:"]
    mz = mean_head_outputs(toy_llama, prompts)
    aie = indirect_effects(toy_llama, prompts, ["C"], mz, layers=[0, 1], progress=False)
    assert aie.abs().max() < 1e-6


@pytest.mark.parametrize("name", ["toy_llama", "toy_gpt2"])
def test_indirect_effects_kv_cache_matches_full_forward(name, request):
    # Patching the last token's z leaves earlier positions alone, so the cached path
    # (prefix once, last token per patch) must give the full-forward AIE.
    from interp.steering.fv import indirect_effects, mean_head_outputs

    model = request.getfixturevalue(name)
    mz = mean_head_outputs(model, ["ab: AB\ncd: CD\nef:", "xy: XY\nzz: ZZ\nq:"])
    prompts, answers = ["gh: CD\nij: AB\nkl:", "mn: ZZ\nop: XY\nq:", "ab:"], ["K", "Q", "A"]
    full = indirect_effects(model, prompts, answers, mz, layers=[1], kv_cache=False, progress=False)
    fast = indirect_effects(model, prompts, answers, mz, layers=[1], kv_cache=True, progress=False)
    assert torch.isnan(fast[0]).all() and torch.isnan(full[0]).all()
    assert full[1].abs().max() > 1e-5                      # the patch does something
    assert torch.allclose(fast[1], full[1], atol=1e-5)
    assert indirect_effects(model, prompts, answers, mz, layers=[1], progress=False).isfinite()[1].all()


def test_icl_split_is_disjoint_and_seeded():
    from interp.datasets.icl import load_icl

    task = load_icl("antonyms")
    fit, held = task.split(40, seed=1)
    assert len(fit) == 40 and len(held) == len(task) - 40
    assert not {x for x, _ in fit.pairs} & {x for x, _ in held.pairs}
    assert sorted(fit.pairs + held.pairs) == sorted(task.pairs)
    assert task.split(40, seed=1)[0].pairs == fit.pairs and task.split(40, seed=2)[0].pairs != fit.pairs
    assert all(q in {x for x, _ in held.pairs} for q in held.zero_shot(5).queries)
    with pytest.raises(ConfigError):
        task.split(len(task) - 1)


def test_logit_lens_equals_model_logits_at_last_layer(toy_llama):
    from interp.hooks import run_capture
    from interp.steering.lens import logit_lens_logits

    tokens = torch.tensor([[1, 72, 105, 33]])
    last = Site("resid_post", toy_llama.cfg.n_layers - 1)
    h = run_capture(toy_llama, tokens, [last], stop_early=False)[last]
    assert torch.allclose(logit_lens_logits(toy_llama, h), toy_llama(tokens).float(), atol=1e-4)


def test_affine_lens_identity_at_last_layer(toy_llama):
    from interp.steering.lens import fit_affine_lens

    texts = ["the quick brown fox jumps over the lazy dog " * 3, "hello world, this is a test of things " * 3]
    lens = fit_affine_lens(toy_llama, texts, [0, 1], ridge=1e-6)
    a, b = lens.maps[1]
    assert torch.allclose(a, torch.eye(a.shape[0]), atol=1e-2) and b.abs().max() < 1e-2


def test_cylinder_recovers_axis_and_plane():
    from interp.steering.cylinder import fit_cylinder, rotated

    g = torch.Generator().manual_seed(0)
    d = 16
    e = torch.eye(d)
    neg = torch.randn(300, d, generator=g)
    spread = torch.randn(300, 1, generator=g) * 1.0
    pos = neg + 4 * e[0] + spread * e[1] + 0.01 * torch.randn(300, d, generator=g)
    cyl = fit_cylinder(pos, neg, site=SITE)
    assert cos(cyl.axis.vector, e[0]) > 0.99
    assert abs(float(cyl.normal[0] @ e[1])) > 0.99 and cyl.normal_var[0] > 0.9
    r = rotated(cyl, 90.0)
    assert abs(cos(r.vector, cyl.axis.vector)) < 1e-5 and r.norm == pytest.approx(cyl.axis.norm, rel=1e-5)
    assert cos(rotated(cyl, 60.0).vector, cyl.axis.vector) == pytest.approx(0.5, abs=1e-5)


def test_icl_prompts_shuffled_break_mapping():
    from interp.datasets.icl import load_icl

    task = load_icl("antonyms")
    assert len(task) >= 50
    clean = task.prompts(5, 4, seed=3)
    shuf = task.prompts(5, 4, seed=3, shuffled=True)
    pairs = dict(task.pairs)
    for p in shuf.prompts:
        demos = [blk[3:].split("\nA: ") for blk in p.split("\n\n")[:-1]]
        assert len(demos) == 4 and all(pairs[x] != y for x, y in demos)
    for p in clean.prompts:
        demos = [blk[3:].split("\nA: ") for blk in p.split("\n\n")[:-1]]
        assert len(demos) == 4 and all(pairs[x] == y for x, y in demos)


def test_plots_render():
    import pandas as pd

    from interp.plots import figure
    from interp.results import Result

    for kind, table in [
        ("steering.probe", pd.DataFrame({"layer": [0, 1], "accuracy": [0.6, 0.9], "control_accuracy": [0.5, 0.5]})),
        ("steering.sweep", pd.DataFrame({"layer": [1, 1], "alpha": [0.0, 1.0], "target_prob": [0.1, 0.3],
                                         "perplexity": [10.0, 12.0]})),
        ("steering.lens", pd.DataFrame({"task": ["a", "a"], "layer": [0, 1], "decode_acc": [0.0, 0.5],
                                        "steer_acc": [0.3, 0.6]})),
        ("steering.projection", pd.DataFrame({"layer": [0, 0], "label": [0, 1], "projection": [-1.0, 1.0]})),
        ("steering.fv", pd.DataFrame({"layer": [0, 1], "head": [0, 0], "aie": [0.1, 0.2]})),
        ("steering.axes", pd.DataFrame({"name": ["a"], "method": ["probe"], "layer": [1], "norm": [1.0],
                                        "accuracy": [0.9]})),
        ("steering.cylinder", pd.DataFrame({"angle_deg": [0.0, 90.0], "effect": [0.5, 0.1]})),
        ("steering.fv_sweep", pd.DataFrame({"layer": [0, 1], "accuracy": [0.2, 0.4], "baseline": [0.1, 0.1]})),
    ]:
        fig = figure(Result(kind, table))
        assert len(fig.data) >= 1


def test_cli_axes_fit_and_steer_on_toy(tmp_path):
    from typer.testing import CliRunner

    from interp.cli import _register_all, app

    _register_all()
    runner = CliRunner()
    r = runner.invoke(app, ["axes", "fit", "toy:llama", "--concept", "language", "--method", "contrast",
                            "--layers", "0,1", "--out", str(tmp_path / "axes")])
    assert r.exit_code == 0, r.output
    ax = load_axis(tmp_path / "axes" / "axis")
    assert ax.method == "contrast" and ax.layer in (0, 1)
    assert (tmp_path / "axes" / "axes" / "L0" / "axis.safetensors").exists()
    (tmp_path / "p.txt").write_text("ab\nhello\n")
    r = runner.invoke(app, ["steer", "toy:llama", "--axis", str(tmp_path / "axes" / "axis"), "--alphas", "0,1",
                            "--prompts", str(tmp_path / "p.txt"), "--targets", "a", "--gen-tokens", "0",
                            "--out", str(tmp_path / "steer")])
    assert r.exit_code == 0, r.output
    from interp.results import load_results

    sweep_res = load_results(tmp_path / "steer")["steering.sweep-language"]
    assert list(sweep_res.table.alpha) == [0.0, 1.0]


@pytest.mark.bundled
def test_sentiment_probe_and_steering_on_smollm2(smollm2):
    """Sentiment is linearly decodable at a middle layer, and the contrast axis steers monotonically."""
    from interp.datasets.contrast import SENTIMENT_TARGETS, load_contrast, sentiment_prompts
    from interp.steering import residual_activations, steer_factory, target_prob

    cs = load_contrast("sentiment")
    acts = residual_activations(smollm2, cs.texts, [11, 14], batch_size=32)
    probe = probe_axis(acts[14], cs.labels, site=Site("resid_post", 14), seed=0)
    assert probe.stats["accuracy"] >= 0.9 and probe.stats["control_accuracy"] < 0.75
    ax = fit_axis("contrast", acts[11], cs.labels, site=Site("resid_post", 11))
    prompts = sentiment_prompts()[:4]
    probs = [target_prob(smollm2, prompts, SENTIMENT_TARGETS["positive"], steer=steer_factory(smollm2, ax, a))
             for a in (-1.0, 0.0, 1.0)]
    assert probs[0] < probs[1] < probs[2]


def test_store_rows_equal_hook_capture(toy_llama):
    from interp.cache import collect
    from interp.steering import axis_from_store, residual_activations

    texts = ["hello there", "a much longer sentence here", "ok", "bye now"]
    site = Site("resid_post", 1)
    store = collect(toy_llama, texts, [site], batch_size=2, progress=False)
    direct = residual_activations(toy_llama, texts, [1])[1]
    assert torch.allclose(rows_from_store(store, site), direct, atol=1e-5)
    ax = axis_from_store(store, site, [1, 0, 0, 1], "contrast")
    assert torch.allclose(ax.vector, direct[[0, 3]].mean(0) - direct[[1, 2]].mean(0), atol=1e-5)


def test_probe_score_matches_manual_logistic(toy_llama):
    from interp.steering import probe_score, residual_activations, sweep

    texts = ["ab", "hello", "xyz", "steer me", "qq", "the end"]
    acts = residual_activations(toy_llama, texts, [1])[1]
    probe = probe_axis(acts.repeat(3, 1) + 0.01 * torch.randn(18, acts.shape[1], generator=torch.Generator().manual_seed(0)),
                       [0, 1, 0, 1, 0, 1] * 3, site=Site("resid_post", 1), test_size=0.34)
    w, b = probe.stats["weight_norm"] * probe.unit, probe.stats["intercept"]
    assert probe_score(toy_llama, probe, texts) == pytest.approx(float(torch.sigmoid(acts @ w + b).mean()), abs=1e-5)
    r = sweep(toy_llama, [_toy_axis(toy_llama)], [0.0], texts[:2], ["x"], ["neutral text."], probe=probe,
              gen_tokens=2, progress=False)
    assert 0.0 <= r.table.probe_score.iloc[0] <= 1.0 and isinstance(r.table.example.iloc[0], str)
