"""SAEs (interp.sae over SAE-Lens): DFA algebra, SAE-Lens format round trip, training on a planted
dictionary, evaluation oracle, dashboard escaping, bad input. Toy models only; seconds each."""

from __future__ import annotations

import os
import time

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")

from interp.errors import ConfigError, DataError, ModelNotFoundError, ShapeError, StoreError  # noqa: E402
from interp.sites import Site  # noqa: E402


def _rows(model, n=24, ctx=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    toks = torch.randint(0, 256, (n, ctx), generator=g)
    toks[:, 0] = model.tokenizer.bos_token_id
    return toks


def _random_sae(d_in, d_sae, arch="standard", seed=0, hook_name="", reshape="none"):
    """An inference SAE (SAE-Lens class) with random weights, biases included."""
    from sae_lens import SAE

    cfg = {"architecture": arch, "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": reshape,
           "metadata": {"hook_name": hook_name}}
    if arch == "topk":
        cfg["k"] = 4
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        sae = SAE.from_dict(cfg)
        with torch.no_grad():
            for p in sae.parameters():
                p.copy_(torch.randn_like(p) * 0.3)
    return sae


# ------------------------------------------------------------------------------------------- DFA

@pytest.mark.parametrize("arch", ["standard", "topk"])
def test_dfa_head_terms_sum_to_preactivation_minus_bias(toy_llama, arch):
    """sum_h (z_h - b_dec_h) . W_enc[h block, f] == hook_sae_acts_pre - b_enc (SAE-Lens's own value)."""
    from interp.hooks import run_capture
    from interp.sae.features import head_contributions

    cfg = toy_llama.cfg
    sae = _random_sae(cfg.n_heads * cfg.d_head, 48, arch)
    toks = _rows(toy_llama, n=3, ctx=10)
    with torch.inference_mode():
        z = run_capture(toy_llama, toks, [Site("z", 1)])[Site("z", 1)]              # [b, p, h, d]
        _, cache = sae.run_with_cache(z.flatten(-2))
        pre = cache["hook_sae_acts_pre"]                                            # [b, p, f]
        contrib = head_contributions(z, sae)                                        # [b, p, h, f]
    assert contrib.shape == (3, 10, cfg.n_heads, 48)
    assert (contrib.sum(-2) - (pre - sae.b_enc)).abs().max() < 1e-4
    # the per-head terms are not trivially equal: at least two heads matter
    assert (contrib.abs().mean((0, 1, 3)) > 1e-3).sum() >= 2


def test_dfa_sources_sum_to_head_terms_gqa(toy_llama):
    """Per source position (pattern x values, GQA kv sharing) sums over keys to the head term."""
    from interp.hooks import run_capture
    from interp.sae.features import head_contributions, source_contributions

    cfg = toy_llama.cfg
    assert cfg.n_key_value_heads < cfg.n_heads      # the toy really is GQA
    sae = _random_sae(cfg.n_heads * cfg.d_head, 16)
    toks = _rows(toy_llama, n=2, ctx=9)
    with torch.inference_mode():
        acts = run_capture(toy_llama, toks, [Site("z", 1), Site("v", 1), Site("pattern", 1)])
        heads = head_contributions(acts[Site("z", 1)], sae, [0, 5, 7])                    # [b, q, h, f]
        src = source_contributions(acts[Site("pattern", 1)], acts[Site("v", 1)], sae, [0, 5, 7])  # [b, h, q, k, f]
    assert (src.sum(3).permute(0, 2, 1, 3) - heads).abs().max() < 1e-4
    # causal: no contribution from future source positions
    q, k = torch.tril_indices(9, 9, offset=-1)
    assert src[:, :, k, q].abs().max() == 0


def test_dfa_result_has_head_nodes(toy_llama):
    from interp.sae.features import direct_feature_attribution

    cfg = toy_llama.cfg
    sae = _random_sae(cfg.n_heads * cfg.d_head, 16, hook_name="blocks.1.attn.hook_z", reshape="hook_z")
    res = direct_feature_attribution(toy_llama, sae, "z.1", _rows(toy_llama, n=4), features=[1, 2])
    t = res.table
    assert res.kind == "sae.dfa" and set(t.node) == {f"L1.H{h}" for h in range(cfg.n_heads)}
    assert set(t.dst) == {"L1.SAE.1", "L1.SAE.2"}
    with pytest.raises(ConfigError, match="attention z"):
        direct_feature_attribution(toy_llama, _random_sae(cfg.d_model, 8), "resid_post.1", _rows(toy_llama), features=[0])


# ------------------------------------------------------------------------------------------- io

def test_save_load_round_trip_through_sae_lens_loader(tmp_path):
    from sae_lens import SAE

    from interp.sae.io import load_sae, save_sae

    for arch in ("standard", "topk", "jumprelu"):
        sae = _random_sae(32, 64, arch, seed=3)
        if arch == "jumprelu":
            with torch.no_grad():
                sae.threshold.fill_(0.1)
        folder = save_sae(sae, tmp_path / arch)
        theirs = SAE.load_from_disk(str(folder))                  # SAE-Lens's own loader
        ours = load_sae(folder)
        x = torch.randn(20, 32)
        for loaded in (theirs, ours):
            assert type(loaded) is type(sae)
            sd, sd2 = sae.state_dict(), loaded.state_dict()
            assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
            assert torch.equal(loaded(x), sae(x))


def test_corrupt_or_truncated_weights_give_clear_errors_and_nothing_overwritten(tmp_path):
    from interp.sae.io import load_sae, save_sae

    folder = save_sae(_random_sae(16, 32), tmp_path / "s")
    weights = folder / "sae_weights.safetensors"
    good = weights.read_bytes()
    with pytest.raises(StoreError, match="exists"):
        save_sae(_random_sae(16, 32, seed=9), folder)
    assert weights.read_bytes() == good                              # refused save touched nothing
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(StoreError, match="truncated"):
        load_sae(folder)
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + good[24:])
    with pytest.raises(StoreError, match="corrupt"):
        load_sae(folder)
    weights.unlink()
    with pytest.raises(StoreError, match="missing"):
        load_sae(folder)


def test_pretrained_release_fails_fast_offline(monkeypatch):
    from interp.sae.io import load_pretrained

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="not reachable"):
        load_pretrained("gpt2-small-res-jb", "blocks.0.hook_resid_pre")
    assert time.perf_counter() - t0 < 5
    with pytest.raises(ModelNotFoundError, match="Did you mean"):
        load_pretrained("gpt2-small-res-jbb", "blocks.0.hook_resid_pre")


# ------------------------------------------------------------------------------------------- training

def test_training_recovers_planted_sparse_dictionary():
    """Data x = sum of 3 of 48 unit atoms; a top-k SAE trained by SAE-Lens must find the atoms."""
    from interp.sae.data import ActivationBatches
    from interp.sae.train import SAETrainConfig, train_sae

    g = torch.Generator().manual_seed(0)
    d, n_atoms, n = 24, 48, 30_000
    atoms = torch.randn(n_atoms, d, generator=g)
    atoms /= atoms.norm(dim=-1, keepdim=True)
    idx = torch.stack([torch.randperm(n_atoms, generator=g)[:3] for _ in range(n)])
    coef = torch.zeros(n, n_atoms).scatter_(1, idx, 1 + torch.rand(n, 3, generator=g))
    x = coef @ atoms
    cfg = SAETrainConfig(architecture="topk", k=3, d_sae=96, batch_size=256, training_tokens=256 * 500, lr=3e-3,
                         log_every=100, normalize_activations="none")
    out = train_sae(ActivationBatches.from_tensor(x, batch_size=256, seed=1), cfg, site="resid_post.0")
    W = out.sae.W_dec.detach()
    W = W / W.norm(dim=-1, keepdim=True)
    best_cos = (atoms @ W.T).max(dim=1).values                      # each planted atom's best latent
    x_test = x[:2000]
    ev = 1 - (out.sae(x_test) - x_test).pow(2).sum() / (x_test - x_test.mean(0)).pow(2).sum()
    hist = out.history.table
    assert (best_cos > 0.9).float().mean() >= 0.8, best_cos.sort().values[:10]
    assert ev > 0.8
    assert hist.mse_loss.iloc[-1] < 0.3 * hist.mse_loss.iloc[0]
    fig = out.history.figure()                                   # interp.plots.sae training curve
    assert [tr.name for tr in fig.data] == ["mse_loss", "l0", "explained_variance"]


def test_streaming_training_and_eval_splice_z_sae(toy_llama, tmp_path):
    """SAE-Lens's ActivationsStore with the toy model in the loop; the z SAE splices into hook_z."""
    from interp.sae.evaluate import evaluate_sae
    from interp.sae.io import load_sae, save_sae
    from interp.sae.train import SAETrainConfig, train_streaming

    cfg = SAETrainConfig(architecture="batchtopk", k=8, expansion=2, batch_size=256, training_tokens=256 * 6,
                         log_every=2)
    out = train_streaming(toy_llama, _rows(toy_llama, n=32, ctx=33), cfg, site="z.1")
    assert out.sae.cfg.reshape_activations == "hook_z" and out.sae.cfg.architecture() == "jumprelu"
    assert out.history.table.tokens.iloc[-1] == 256 * 6
    sae = load_sae(save_sae(out.sae, tmp_path / "z"))
    res = evaluate_sae(toy_llama, sae, "z.1", _rows(toy_llama, n=4, seed=5))
    v = res.table.set_index("metric").value
    assert v.n_tokens == 4 * 23 and 0 < v.l0


def test_evaluate_perfect_sae_recovers_everything(toy_llama):
    """Oracle: W_enc=[I,-I], W_dec=[I;-I] reconstructs exactly: EV 1, CE recovered 1, KL 0."""
    from interp.sae.evaluate import evaluate_sae

    d = toy_llama.cfg.d_model
    sae = _random_sae(d, 2 * d)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    res = evaluate_sae(toy_llama, sae, "resid_post.0", _rows(toy_llama, n=6))
    v = res.table.set_index("metric").value
    assert abs(v.explained_variance - 1) < 1e-5 and v.mse < 1e-10
    assert abs(v.ce_with_sae - v.ce_clean) < 1e-4 and abs(v.ce_loss_recovered - 1) < 1e-3
    assert v.kl_with_sae < 1e-6 and v.kl_zero_ablation > 1e-3
    assert v.ce_zero_ablation != v.ce_clean


# ------------------------------------------------------------------------------------------- bad input

def test_width_mismatch_is_a_clear_error(toy_llama):
    from interp.sae.evaluate import evaluate_sae
    from interp.sae.data import ActivationBatches
    from interp.sae.train import SAETrainConfig, train_sae

    with pytest.raises(ShapeError, match=r"d_in=32 does not match site resid_post.1.*expected d_in=64"):
        evaluate_sae(toy_llama, _random_sae(32, 64), "resid_post.1", _rows(toy_llama))
    with pytest.raises(ShapeError, match="expected d_in=128"):
        train_sae(ActivationBatches.from_tensor(torch.randn(600, 64), batch_size=256),
                  SAETrainConfig(batch_size=256, training_tokens=512), site="mlp_post.0", model=toy_llama)


def test_corpus_smaller_than_a_batch(toy_llama, tmp_path):
    from typer.testing import CliRunner

    from interp.cli import _register_all, app
    from interp.sae.corpus import CorpusConfig, build_corpus, tokenize_corpus
    from interp.sae.data import ActivationBatches

    corpus = build_corpus(CorpusConfig(sources=("stdlib",), max_chars=3000))
    with pytest.raises(DataError, match="corpus too small"):
        tokenize_corpus(toy_llama, corpus, context_size=64, min_train_rows=1000)
    with pytest.raises(DataError, match="fewer than one batch"):
        ActivationBatches.from_tensor(torch.randn(100, 8), batch_size=256)
    _register_all()
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["sae", "train", "toy:llama", "--site", "resid_post.1", "--tokens", "100000",
                                 "--sources", "stdlib", "--max-chars", "3000", "--batch-size", "4096",
                                 "--out", str(out)])
    assert isinstance(r.exception, DataError)
    assert "corpus too small" in str(r.exception) or "fewer than one batch" in str(r.exception)
    assert not out.exists()                                  # nothing written


def test_corpus_is_deterministic_with_provenance():
    from interp.sae.corpus import CorpusConfig, build_corpus

    cfg = CorpusConfig(sources=("stdlib",), max_chars=20_000)
    a, b = build_corpus(cfg), build_corpus(cfg)
    assert a.content_hash == b.content_hash and a.n_chars >= 20_000
    prov = a.provenance["stdlib"]
    assert "PSF" in prov["licence"] and prov["files"] and prov["version"]
    train, held = a.split()
    assert train and held and not {id(d) for d in train} & {id(d) for d in held}
    with pytest.raises(DataError, match="Did you mean"):
        build_corpus(CorpusConfig(sources=("numpyy",)))


# ------------------------------------------------------------------------------------------- dashboard

def test_dashboard_escapes_tokens_and_is_self_contained(toy_llama, tmp_path):
    import pandas as pd

    from interp.results import Result, RunMeta
    from interp.sae.dashboard import write_dashboard
    from interp.sae.features import FeatureAnalysis, analyze_features

    evil = "<script>alert(1)</script>"
    meta = RunMeta(model="toy")
    fa = FeatureAnalysis(
        Result("sae.features", pd.DataFrame([(0, 1, "z.1", 0.5, 2.0, 1.0, [evil], [evil], ["&"])], columns=[
            "feature", "layer", "site", "density", "max_act", "mean_act", "top_tokens", "top_logits",
            "bottom_logits"]), meta),
        Result("sae.examples", pd.DataFrame([(0, 1, 0, 0, 3, 2.0, evil, ["a", "<b>"], ["</div>"])], columns=[
            "feature", "layer", "rank", "row", "pos", "value", "token", "left", "right"]), meta),
        Result("sae.histogram", pd.DataFrame([(0, 1, -1.0, -0.5, 3)], columns=[
            "feature", "layer", "bin_left", "bin_right", "count"]), meta),
        Result("sae.logits", pd.DataFrame([(0, 1, "top", 0, 5, evil, 1.5)], columns=[
            "feature", "layer", "side", "rank", "token_id", "token", "effect"]), meta))
    page = write_dashboard(tmp_path / "d.html", fa, title=evil).read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;" in page and "&lt;/div&gt;" in page
    assert page.count("<script") == 1                       # only our inline filter script
    assert "http://" not in page and "https://" not in page and "src=" not in page
    # and a real analysis renders too
    sae = _random_sae(toy_llama.cfg.d_model, 16, hook_name="blocks.1.hook_resid_post")
    real = analyze_features(toy_llama, sae, "resid_post.1", _rows(toy_llama, n=4))
    assert real.features.table.density.between(0, 1).all()
    assert write_dashboard(tmp_path / "r.html", real).stat().st_size > 1000


@pytest.mark.slow
def test_cli_train_eval_dashboard_on_toy(tmp_path):
    """interp sae train -> eval -> dashboard on the toy model: SAE-Lens folder, Results, HTML page."""
    from typer.testing import CliRunner

    from interp.cli import _register_all, app
    from interp.results import load_results
    from interp.sae.io import load_sae

    _register_all()
    out = tmp_path / "z1"
    common = ["--sources", "stdlib", "--context-size", "32"]
    r = CliRunner().invoke(app, ["sae", "train", "toy:llama", "--site", "z.1", "--tokens", "2048", "--cache-tokens",
                                 "1024", "--batch-size", "256", "--k", "4", "--expansion", "2", "--max-chars", "40000",
                                 "--eval-rows", "2", "--out", str(out), *common])
    assert r.exit_code == 0, r.output
    sae = load_sae(out / "sae")
    assert sae.cfg.metadata.hook_name == "blocks.1.attn.hook_z" and sae.cfg.reshape_activations == "hook_z"
    for cmd in (["eval", "toy:llama", "--sae", str(out / "sae"), "--out", str(out), "--rows", "2"],
                ["dashboard", "toy:llama", "--sae", str(out / "sae"), "--out", str(out), "--rows", "2",
                 "--dfa-features", "3"]):
        r = CliRunner().invoke(app, ["sae", *cmd, *common])
        assert r.exit_code == 0, r.output
    kinds = {res.kind for res in load_results(out).values()}
    assert {"sae.training", "sae.eval", "sae.features", "sae.examples", "sae.histogram", "sae.logits",
            "sae.dfa"} <= kinds
    assert (out / "dashboard.html").read_text().startswith("<!DOCTYPE html>")
    # a second train into the same folder refuses and leaves the SAE untouched
    before = (out / "sae" / "sae_weights.safetensors").read_bytes()
    r = CliRunner().invoke(app, ["sae", "train", "toy:llama", "--site", "z.1", "--tokens", "2048", "--batch-size",
                                 "256", "--out", str(out), *common])
    assert isinstance(r.exception, StoreError) and "--overwrite" in str(r.exception)
    assert (out / "sae" / "sae_weights.safetensors").read_bytes() == before
