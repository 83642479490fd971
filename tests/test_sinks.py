"""Attention sinks on toy models: hand oracles, planted truth, bad input, Bigram-Backcopy."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from interp.errors import DataError
from interp.hooks import capturing
from interp.models import load_model, tokenize
from interp.sinks import (AnalysisConfig, MassiveConfig, SinkConfig, act_calibrate, act_calibrated, analyze,
                          massive_activations, massive_set, secondary_sinks, sink_scores)
from interp.sites import Site

PROMPTS = ["Hello there, how are you today?", "abc", "The cat sat on the mat. The dog sat too."]
BB_FOLDER = Path(__file__).resolve().parents[1] / "data" / "toy" / "bigram_backcopy"


def _alpha_oracle(model, prompts, max_len=64):
    """alpha of position 0 per prompt/layer/head from single-prompt runs and explicit loops."""
    out = []
    for p in prompts:
        tokens = tokenize(model, [p]).tokens[:, :max_len]
        with capturing(model, [Site("pattern", layer) for layer in range(model.cfg.n_layers)]) as acts, \
                torch.inference_mode():
            model(tokens)
        t = tokens.shape[1]
        per_layer = []
        for layer in range(model.cfg.n_layers):
            a = acts[Site("pattern", layer)][0]                         # [head, q, k]
            per_layer.append([sum(float(a[h, q, 0]) for q in range(t)) / t for h in range(a.shape[0])])
        out.append(per_layer)
    return np.array(out)                                                # [prompt, layer, head]


@pytest.mark.parametrize("fixture", ["toy_llama", "toy_gpt2"])
def test_alpha_first_matches_loop_oracle_on_padded_batch(fixture, request):
    model = request.getfixturevalue(fixture)
    heads, layers, rate = sink_scores(model, PROMPTS, SinkConfig(eps=0.2, batch_size=3))
    oracle = _alpha_oracle(model, PROMPTS)
    got = heads.table.sort_values(["layer", "head"]).alpha_first.to_numpy().reshape(oracle.shape[1:])
    np.testing.assert_allclose(got, oracle.mean(0), atol=1e-5)
    per_prompt_rate = (oracle > 0.2).mean(2)                            # [prompt, layer]
    np.testing.assert_allclose(layers.table.sink_rate.to_numpy(), per_prompt_rate.mean(0), atol=1e-9)
    assert rate.table.sink_rate.iloc[0] == pytest.approx((oracle > 0.2).mean())
    assert list(heads.table.node[:2]) == ["L0.H0", "L0.H1"]


def test_alpha_nonfirst_top_position_from_pattern(toy_llama):
    # top_pos must be a key seen by >= min_queries queries and have the largest mean alpha there.
    heads, _, _ = sink_scores(toy_llama, ["abcdefghijklmnop"], SinkConfig(min_queries=4))
    tokens = tokenize(toy_llama, ["abcdefghijklmnop"]).tokens
    with capturing(toy_llama, [Site("pattern", 1)]) as acts, torch.inference_mode():
        toy_llama(tokens)
    a = acts[Site("pattern", 1)][0]
    t = a.shape[-1]
    alpha = torch.stack([a[:, k:, k].sum(-1) / (t - k) for k in range(t)], -1)   # [head, key]
    for h in range(a.shape[0]):
        want = int(alpha[h, 1:t - 3].argmax()) + 1
        row = heads.table[(heads.table.layer == 1) & (heads.table["head"] == h)].iloc[0]
        assert row.top_pos == want
        assert row.top_alpha == pytest.approx(float(alpha[h, want]), abs=1e-5)


def _planted_folder(tmp_path: Path, arch: str, token: int, dim: int, value: float) -> Path:
    """A tiny local model folder whose embedding of byte ``token`` is huge in one dimension."""
    from transformers import AutoModelForCausalLM

    from interp.toy import ToyConfig, build_toy_folder

    src = build_toy_folder(ToyConfig(arch=arch, n_layers=3, seed=3), tmp_path / "src")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight[token, dim] = value
    folder = tmp_path / f"planted-{arch}"
    model.save_pretrained(folder)
    for f in src.iterdir():
        if "token" in f.name or f.name == "special_tokens_map.json":
            (folder / f.name).write_bytes(f.read_bytes())
    return folder


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_planted_massive_activation_found_in_every_layer(tmp_path, arch):
    token, dim = ord("q"), 37
    model = load_model(str(_planted_folder(tmp_path, arch, token, dim, 5000.0)))
    prompts = ["the quick brown fox", "a plain line without it", "equal"]
    layers, dims = massive_activations(model, prompts, MassiveConfig(top_k=2))
    t = layers.table
    for prompt, text in enumerate(prompts):
        top = t[(t.prompt == prompt) & (t["rank"] == 0)].sort_values("layer")
        assert len(top) == model.cfg.n_layers
        if "q" in text:
            want_pos = text.index("q") + 1                               # + BOS
            assert (top.pos == want_pos).all() and (top.dim == dim).all() and (top.token == "q").all()
            assert top.is_massive.all()
        else:
            assert not top.is_massive.any()
    row = dims.table.iloc[0]
    assert row.dim == dim and row.n_layers == model.cfg.n_layers and row.fraction == pytest.approx(2 / 3)


def test_one_token_prompts_give_empty_valid_results(toy_llama):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = analyze(toy_llama, ["", ""], AnalysisConfig(run_interventions=False))
    assert any("fewer than 2 tokens" in str(w.message) for w in caught)
    kinds = {r.kind: r for r in results}
    assert set(kinds) >= {"sinks.heads", "sinks.layers", "sinks.model", "massive.layers", "massive.dims",
                          "sinks.secondary", "sinks.drain", "sinks.peak", "sinks.dormancy"}
    for r in results:
        assert r.table.empty and len(r.table.columns) > 0


def test_long_prompt_clear_error_or_truncated(toy_llama):
    long = "x" * 400                                                    # toy context: 256
    with pytest.raises(DataError, match="prompt 1 has 401 tokens"):
        massive_activations(toy_llama, ["ok", long], MassiveConfig(max_len=None))
    with pytest.raises(DataError, match="context"):
        sink_scores(toy_llama, ["ok"], SinkConfig(max_len=1000))
    heads, _, _ = sink_scores(toy_llama, ["ok", long])                 # cut to 64 tokens: fine
    assert heads.meta.extra["prompts_kept"] == 2


def test_model_without_sink_state_gives_empty_secondary(toy_llama):
    sec = secondary_sinks(toy_llama, PROMPTS)
    assert sec.table.empty and "lifetime" in sec.table.columns
    heads, layers, rate = sink_scores(toy_llama, PROMPTS, SinkConfig(eps=0.95))
    assert not heads.table.is_sink.any() and rate.table.sink_rate.iloc[0] == 0.0
    assert np.isfinite(layers.table.sink_rate_std).all()


def test_act_calibrate_hand_oracle():
    a = torch.tensor([[1.0, 0.0, 0.0],
                      [0.5, 0.5, 0.0],
                      [0.2, 0.6, 0.2]])
    # alpha: k0 = 1.7/3, k1 = 1.1/2 (> 0.1: sink), k2 = 0.2 (> 0.1: sink)
    out = act_calibrate(a, beta=0.4, threshold=0.1)
    want = torch.tensor([[1.0, 0.0, 0.0],
                         [0.5 + 0.3, 0.2, 0.0],                         # freed 0.3 all to key 0
                         [0.2 + 0.48, 0.24, 0.08]])                     # freed 0.6*0.6 + 0.6*0.2 = 0.48
    assert torch.allclose(out, want, atol=1e-6)
    assert torch.allclose(out.sum(-1), torch.ones(3))
    assert torch.equal(act_calibrate(a, beta=0.4, threshold=0.99), a)  # no sinks: unchanged


def test_act_calibrated_changes_only_chosen_heads(toy_llama):
    tokens = tokenize(toy_llama, ["abcdefgh"]).tokens
    sites = [Site("pattern", 0), Site("pattern", 1)]
    with capturing(toy_llama, sites) as before, torch.inference_mode():
        toy_llama(tokens)
    with act_calibrated(toy_llama, [(1, 2)], beta=0.0, threshold=0.05), capturing(toy_llama, sites) as after, \
            torch.inference_mode():
        toy_llama(tokens)
    assert torch.equal(before[sites[0]], after[sites[0]])
    b1, a1 = before[sites[1]][0], after[sites[1]][0]
    assert torch.equal(b1[[0, 1, 3]], a1[[0, 1, 3]])
    assert torch.allclose(a1[2], act_calibrate(b1[2], 0.0, 0.05))
    assert not torch.allclose(a1[2], b1[2])


def test_massive_set_replaces_only_large_entries(toy_llama):
    tokens = tokenize(toy_llama, ["abc"]).tokens
    site = Site("resid_post", 0)
    with capturing(toy_llama, [site]) as plain, torch.inference_mode():
        toy_llama(tokens)
    x = plain[site][0]
    thr = float(x[:, 5].abs().median())
    with massive_set(toy_llama, 0, [5], 7.0, min_value=thr), capturing(toy_llama, [site]) as got, \
            torch.inference_mode():
        toy_llama(tokens)
    y = got[site][0]
    big = x[:, 5].abs() > thr
    assert torch.equal(y[big, 5], torch.full_like(y[big, 5], 7.0)) and torch.equal(y[~big, 5], x[~big, 5])
    assert torch.equal(torch.cat([y[:, :5], y[:, 6:]], 1), torch.cat([x[:, :5], x[:, 6:]], 1))


def test_bigram_backcopy_generator_obeys_backcopy_rule():
    from interp.sinks.toy import BOS_ID, BigramBackcopy

    task = BigramBackcopy(seq_len=40)
    tokens = task.sample(64, seed=5)
    assert (tokens[:, 0] == BOS_ID).all()
    trig = task.trigger_mask(tokens)
    assert 0.05 < trig.float().mean() < 0.3
    rows, cols = torch.nonzero(trig[:, 2:-1], as_tuple=True)
    cols = cols + 2
    assert torch.equal(tokens[rows, cols + 1], tokens[rows, cols - 1])
    assert torch.equal(task.sample(4, seed=1), task.sample(4, seed=1))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_bigram_backcopy_trainer_runs_deterministically(tmp_path, arch):
    from interp.sinks.toy import BigramBackcopy, TrainConfig, train_bigram_backcopy

    cfg = TrainConfig(data=BigramBackcopy(seq_len=16), arch=arch, n_layers=1, no_attention=(), d_model=16, d_mlp=32,
                      steps=3, batch_size=4, warmup_steps=2)
    losses = []
    train_bigram_backcopy(cfg, tmp_path / "a", log=lambda s, l: losses.append(l))
    again = []
    train_bigram_backcopy(cfg, tmp_path / "b", log=lambda s, l: again.append(l))
    assert losses == again and len(losses) == 2
    model = load_model(str(tmp_path / "a"))
    assert model.cfg.n_layers == 1 and model.cfg.d_model == 16


def test_bigram_backcopy_train_config_rejects_bad_settings():
    from interp.errors import ConfigError
    from interp.sinks.toy import TrainConfig

    with pytest.raises(ConfigError, match="arch must be one of .*'gpt2'.*got 'gtp2'"):
        TrainConfig(arch="gtp2")
    with pytest.raises(ConfigError, match="activation must be one of .*got 'rleu'.*relu"):
        TrainConfig(activation="rleu")
    with pytest.raises(ConfigError, match="at least one layer with attention"):
        TrainConfig(n_layers=1)                              # the default no_attention=(0,) removes the only one
    with pytest.raises(ConfigError, match=r"no_attention must name distinct layers in \[0, 2\)"):
        TrainConfig(no_attention=(2,))
    with pytest.raises(ConfigError, match="distinct"):
        TrainConfig(n_layers=3, no_attention=(0, 0))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_bigram_backcopy_removed_attention_and_biases_stay_zero(tmp_path, arch):
    from interp.sinks.toy import BigramBackcopy, TrainConfig, train_bigram_backcopy

    cfg = TrainConfig(data=BigramBackcopy(seq_len=12), arch=arch, d_model=16, d_mlp=32, steps=5, batch_size=4,
                      warmup_steps=1)
    model = load_model(str(train_bigram_backcopy(cfg, tmp_path / "m")))
    # layer 0 has no attention: zero weights give a uniform pattern and a zero output, after training too
    _, cache = model.run_with_cache("abcabc", names_filter=lambda n: n in ("blocks.0.attn.hook_pattern",
                                                                           "blocks.0.hook_attn_out",
                                                                           "blocks.1.hook_attn_out"))
    pattern = cache["blocks.0.attn.hook_pattern"][0, 0]
    n = pattern.shape[-1]
    assert torch.allclose(pattern, torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None], atol=1e-6)
    assert cache["blocks.0.hook_attn_out"].abs().max() == 0
    assert cache["blocks.1.hook_attn_out"].abs().max() > 0   # ... while layer 1's attention trained
    if arch == "gpt2":                                        # no linear biases: zero and frozen
        assert model.blocks[1].mlp.b_in.abs().max() == 0 and model.blocks[1].attn.b_Q.abs().max() == 0


def _bb_tables(model):
    from interp.sinks.toy import BigramBackcopy

    texts = BigramBackcopy().texts(16, seed=777)
    kinds = {r.kind: r for r in analyze(model, texts, AnalysisConfig(run_interventions=False))}
    return kinds["sinks.heads"].table, kinds["sinks.drain"].table, kinds["sinks.peak"].table


def _bb_untrained():
    """The default Bigram-Backcopy architecture (:class:`TrainConfig`), freshly initialised with seed 0."""
    from interp.sinks.toy import TrainConfig, _build

    return _build(TrainConfig())


def _bb_untrained_tables(tmp_path):
    """``_bb_tables`` of :func:`_bb_untrained`, loaded through the same local-folder path as the checkpoint."""
    folder = tmp_path / "untrained"
    _bb_untrained().save_pretrained(folder)
    for f in BB_FOLDER.iterdir():
        if f.name.startswith("tokenizer"):
            (folder / f.name).write_bytes(f.read_bytes())
    return _bb_tables(load_model(str(folder)))


needs_bb = pytest.mark.skipif(not BB_FOLDER.exists(), reason="trained Bigram-Backcopy checkpoint not committed")


@needs_bb
def test_bigram_backcopy_training_creates_attention_sink(tmp_path):
    # Committed checkpoint: the sink head puts ~0.73 of its attention on BOS; untrained ~0.09.
    trained = load_model(str(BB_FOLDER))
    heads, _, _ = _bb_tables(trained)
    last = trained.cfg.n_layers - 1
    # attention sink: a head of the last layer parks most of its attention on BOS ...
    assert heads[heads.layer == last].sink_mass.max() > 0.5
    # ... which the same architecture does not do before training
    before, _, _ = _bb_untrained_tables(tmp_path)
    assert before.sink_mass.max() < 0.3


def _drain_of(drain: pd.DataFrame, layer: int, head: int) -> float:
    return float(drain[(drain.layer == layer) & (drain["head"] == head)].ratio.iloc[0])


@needs_bb
def test_bigram_backcopy_value_drain(tmp_path):
    # Committed checkpoint: BOS's value norm / the others' is ~0.20 in the sink head; untrained ~1.03.
    heads, drain, _ = _bb_tables(load_model(str(BB_FOLDER)))
    sink = heads.loc[heads.sink_mass.idxmax()]
    trained = _drain_of(drain, sink.layer, sink["head"])
    assert trained < 0.5                                   # BOS's value vector is drained in the sink head
    _, before_drain, _ = _bb_untrained_tables(tmp_path)
    untrained = _drain_of(before_drain, sink.layer, sink["head"])
    assert untrained > 0.7 and untrained > 4 * trained     # ... and training is what drains it


@needs_bb
def test_bigram_backcopy_residual_peak(tmp_path):
    # Committed checkpoint: where the layer-1 sink head reads the residual stream (layer 0's resid_post),
    # BOS's norm is ~7.5x the others' median; untrained ~0.92. After layer 1 it is ~0.85 (see interp.sinks.toy).
    heads, _, peak = _bb_tables(load_model(str(BB_FOLDER)))
    sink_layer = int(heads.loc[heads.sink_mass.idxmax()].layer)
    assert sink_layer >= 1                                  # the sink head reads a residual some layer wrote
    assert peak[peak.layer == sink_layer - 1].ratio.iloc[0] > 2.0   # BOS's residual norm peaks there ...
    _, _, before = _bb_untrained_tables(tmp_path)
    assert before[before.layer == sink_layer - 1].ratio.iloc[0] < 1.2  # ... which training made


@pytest.mark.slow
def test_bigram_backcopy_trainer_produces_all_three(tmp_path):
    # The trainer itself, not only the committed checkpoint: the default configuration with 32 sequences per
    # step (~20 s) gave sink 0.77, drain 0.16 and a layer-0 peak of 6.3 for seed 0 (1.2 for seed 1, see
    # interp.sinks.toy), so the seed is fixed.
    from interp.sinks.toy import TrainConfig, train_bigram_backcopy

    folder = train_bigram_backcopy(TrainConfig(batch_size=32, seed=0), tmp_path / "bb")
    heads, drain, peak = _bb_tables(load_model(str(folder)))
    sink = heads.loc[heads.sink_mass.idxmax()]
    assert sink.layer == 1 and sink.sink_mass > 0.5                       # attention sink
    assert _drain_of(drain, sink.layer, sink["head"]) < 0.5                 # value-state drain
    assert peak[peak.layer == 0].ratio.iloc[0] > 2.0                       # residual-state peak where it reads


@pytest.mark.slow
def test_cli_sinks_writes_results_figures_and_summary(tmp_path):
    import subprocess
    import sys

    from interp.results import load_results

    prose, code = tmp_path / "prose.txt", tmp_path / "code.txt"
    prose.write_text("The cat sat on the mat.\nA bird sang in the tall tree.\n")
    code.write_text("x = [i * i for i in range(10)]\ndef f(a): return a + 1\n")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "interp.cli", "sinks", "toy:llama", "--prompts", str(prose),
                          "--prompts", str(code), "--out", str(out), "--no-interventions", "--formats", "html",
                          "--quiet"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Sink_1^0.3 rate" in run.stdout
    results = load_results(out)
    assert {"sinks.heads", "sinks.layers", "massive.layers", "massive.dims", "sinks.secondary", "sinks.dormancy",
            "sinks.drain", "sinks.peak"} <= set(results)
    assert set(results["sinks.dormancy"].table.domain) == {"prose", "code"}
    assert (out / "figures" / "sinks.heads.html").exists() and (out / "summary.md").read_text().startswith("# ")
    bad = subprocess.run([sys.executable, "-m", "interp.cli", "sinks", "toy:llama", "--prompts",
                          str(tmp_path / "missing.txt"), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "error:" in bad.stderr


def test_interventions_losses_match_direct_patching(toy_llama):
    from interp.hooks import patched
    from interp.sinks import InterventionConfig, interventions, next_token_loss, text_windows

    calib = ["the quick brown fox jumps over the lazy dog " * 3]
    held = ["a stitch in time saves nine, or so they say " * 3]
    heads = pd.DataFrame({"layer": [1, 1], "head": [0, 2], "top_alpha": [0.5, 0.4]})
    dims = pd.DataFrame({"dim": [5], "n_layers": [1], "first_layer": [0], "last_layer": [0], "fraction": [1.0]})
    cfg = InterventionConfig(window=16, massive_min_value=0.0, max_heads=1, n_candidates=2)
    table = interventions(toy_llama, calib, held, heads, dims, cfg).table.set_index("intervention")
    tokens = text_windows(toy_llama, held, 16)[: cfg.max_windows]
    assert table.loss_before.iloc[0] == pytest.approx(next_token_loss(toy_llama, tokens))

    def zero_dim5(act, site):
        out = act.clone()
        out[..., 5] = 0.0
        return out

    with patched(toy_llama, {Site("resid_post", 0): zero_dim5}):
        want = next_token_loss(toy_llama, tokens)
    assert table.loc["massive_zero", "loss_after"] == pytest.approx(want)
    assert table.loc["massive_zero", "delta"] == pytest.approx(want - table.loss_before.iloc[0])
    assert "massive_mean" in table.index
