"""Tests of interp.gating: ablation oracles, CHG planted truth, validation, bad input.

Oracles: a head's contribution to attn_out is ``z_h @ W_O[l, h]`` (hand-computed), mean ablation
must equal writing the hand-computed mean with ``interp.hooks.patched``, exact head patching must
equal a per-head loop of ``patched`` runs, and CHG must recover a planted necessary head and a
planted harmful head.
"""

from __future__ import annotations

import pytest
import torch

from interp.datasets import TaskDataset
from interp.errors import ConfigError, DataError
from interp.gating import (Ablation, CHGConfig, ablating, causal_head_gating, contrastive_head_gating, evaluate,
                           fit_stage, gate_data, gated, head_roles, init_gate_logits, logit_diff, mean_values,
                           resample_indices)
from interp.hooks import hooked, patched, run_capture
from interp.models import tokenize
from interp.sites import Site

from gating_planted import PROMPTS, planted, planted_chg  # noqa: F401  (fixtures)


def _hook_count(model) -> int:
    return sum(len(p.fwd_hooks) + len(p.bwd_hooks) for p in model.hook_dict.values())


def test_chg_recovers_planted_facilitating_and_interfering_heads(planted, planted_chg):
    model, plant, ds = planted
    res, flags, before = planted_chg
    t = res.table.set_index("node")
    assert t.loc["L1.H0", "role"] == "facilitating" and t.loc["L1.H0", "g_minus"] > 0.5
    assert t.loc["L1.H2", "role"] == "interfering" and t.loc["L1.H2", "g_plus"] < 0.5
    assert set(t.index[t.role == "facilitating"]) == {"L1.H0"}
    assert set(t.index[t.role == "interfering"]) == {"L1.H2"}
    # scores are the documented functions of the gates
    assert (t.facilitation == t.g_minus).all()
    assert torch.allclose(torch.tensor(t.interference.values), 1 - torch.tensor(t.g_plus.values))
    # frozen model: weights untouched, requires_grad restored, no hooks left behind
    assert torch.equal(before, model.W_O.detach())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert _hook_count(model) == 0
    assert list(res.table.columns[:11]) == ["layer", "head", "node", "g_plus", "g_minus", "g_plus_std",
                                            "g_minus_std", "g_base", "facilitation", "interference", "irrelevance"]


def test_contrastive_chg_removes_the_head_that_writes_the_negative_answer(planted):
    model, plant, ds = planted
    pos = TaskDataset("pos", clean=PROMPTS[:4], answers=(" ",) * 4)
    neg = TaskDataset("neg", clean=PROMPTS[4:], answers=("Q",) * 4)
    with hooked(model, {Site("z", 1): plant}):
        res = contrastive_head_gating(model, pos, neg, config=CHGConfig(steps=40, n_masks=2, progress=False))
    t = res.table.set_index("node")
    assert t.loc["L1.H0", "removed"] and t.loc["L1.H0", "g"] < 0.5
    assert not t.loc["L1.H2", "removed"]
    assert max(res.meta.extra["logp_neg_gated"]) < res.meta.extra["logp_neg_ungated"] - 1.0


def test_validation_facilitating_heads_hurt_more_than_random(planted, planted_chg):
    from interp.gating.validate import ValidationConfig, validate_chg

    model, plant, ds = planted
    chg = planted_chg[0]
    with hooked(model, {Site("z", 1): plant}):
        val = validate_chg(model, ds, chg, config=ValidationConfig(n_random=4, method="zero", progress=False))
    v = val.table.set_index("what")
    assert v.loc["facilitating", "metric_value"] < v.loc["facilitating", "baseline_mean"] - 1.0
    assert v.loc["facilitating", "frac_random_lower"] == 0.0
    assert v.loc["interfering", "metric_value"] > v.loc["clean", "metric_value"]  # removing B helps
    assert "spearman_facilitation" not in v.index      # no corrupted prompts: no patching


# ------------------------------------------------------------------ gates and ablation oracles

def test_gate_scales_head_contribution_to_attn_out(toy_llama):
    m = toy_llama
    tokens = tokenize(m, ["hello world", "abc"]).tokens
    acts = run_capture(m, tokens, [Site("z", 1), Site("attn_out", 1)], clone=True, stop_early=False)
    z_h = acts[Site("z", 1)][:, :, 3]
    contrib = z_h @ m.W_O.detach()[1, 3]                       # hand-computed oracle [batch, pos, d_model]
    g = torch.ones(m.cfg.n_layers, m.cfg.n_heads)
    g[1, 3] = 0.25
    with gated(m, g):
        out = run_capture(m, tokens, [Site("attn_out", 1)], stop_early=False)[Site("attn_out", 1)]
    torch.testing.assert_close(out, acts[Site("attn_out", 1)] - 0.75 * contrib, atol=1e-5, rtol=1e-5)
    with ablating(m, [Ablation(sites=("z.1.3",))]):             # zero ablation removes all of it
        out0 = run_capture(m, tokens, [Site("attn_out", 1)], stop_early=False)[Site("attn_out", 1)]
    torch.testing.assert_close(out0, acts[Site("attn_out", 1)] - contrib, atol=1e-5, rtol=1e-5)


def test_tiled_masks_equal_separate_runs(toy_llama):
    m = toy_llama
    tokens = tokenize(m, ["hello world", "abc"]).tokens
    g = torch.rand(3, m.cfg.n_layers, m.cfg.n_heads, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with gated(m, g):
            tiled = m(tokens.repeat(3, 1))
        for k in range(3):
            with gated(m, g[k]):
                single = m(tokens)
            torch.testing.assert_close(tiled[2 * k: 2 * k + 2], single, atol=1e-5, rtol=1e-5)


def test_mean_ablation_equals_writing_the_mean(toy_llama):
    m = toy_llama
    ref = tokenize(m, ["the quick brown fox", "hi", "jumps over"])
    run = tokenize(m, ["hello world", "abc"])
    site = Site("z", 0, 2)
    z = run_capture(m, ref.tokens, [site], clone=True)[site]          # [batch, pos, d_head]
    real = [z[i, : int(ref.lengths[i])] for i in range(len(ref))]
    mean = torch.cat(real).mean(0)                                      # hand-computed over real tokens
    torch.testing.assert_close(mean_values(m, ref, [site])[site], mean, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        with ablating(m, [Ablation(sites=(site,), method="mean", reference=ref)]):
            got = m(run.tokens)
            z_abl = run_capture(m, run.tokens, [site])[site]
        with patched(m, {site: mean}):
            want = m(run.tokens)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(z_abl, mean.expand_as(z_abl))


def test_positions_and_mlp_ablation(toy_llama):
    m = toy_llama
    run = tokenize(m, ["hello world", "abcdefghijk"])
    sites = [Site("z", 1, 0), Site("resid_mid", 1), Site("resid_post", 1), Site("mlp_out", 1)]
    clean = run_capture(m, run.tokens, sites, clone=True, stop_early=False)
    with ablating(m, [Ablation(sites=("z.1.0",), positions=(2, 4))]):
        z = run_capture(m, run.tokens, [Site("z", 1, 0)], stop_early=False)[Site("z", 1, 0)]
    assert (z[:, [2, 4]] == 0).all()
    keep = [p for p in range(z.shape[1]) if p not in (2, 4)]
    torch.testing.assert_close(z[:, keep], clean[Site("z", 1, 0)][:, keep])
    with ablating(m, [Ablation(sites=("mlp_out.1",))]):
        acts = run_capture(m, run.tokens, [Site("resid_mid", 1), Site("resid_post", 1)], stop_early=False)
    torch.testing.assert_close(acts[Site("resid_post", 1)], acts[Site("resid_mid", 1)])


def test_resample_ablation_takes_other_prompts_seeded(toy_llama):
    m = toy_llama
    run = tokenize(m, ["hello world", "abcdefghijk", "zzzzzzzzzzzzz", "qq"])
    site = Site("z", 1, 1)
    clean = run_capture(m, run.tokens, [site], clone=True, stop_early=False)[site]
    idx = resample_indices(4, 4, seed=5, exclude_self=True)
    assert (idx != torch.arange(4)).all()
    assert torch.equal(idx, resample_indices(4, 4, seed=5, exclude_self=True))
    with ablating(m, [Ablation(sites=(site,), method="resample", seed=5)], tokens=run):
        z = run_capture(m, run.tokens, [site], stop_early=False)[site]
    torch.testing.assert_close(z, clean[idx])


def test_hooks_removed_after_exceptions(toy_llama):
    m = toy_llama
    tokens = tokenize(m, ["hello world"]).tokens
    with torch.no_grad():
        clean = m(tokens)
    n0 = _hook_count(m)
    with pytest.raises(RuntimeError):
        with ablating(m, [Ablation(sites=("z.0.0", "mlp_out.1"))]):
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        with gated(m, torch.zeros(m.cfg.n_layers, m.cfg.n_heads)):
            raise RuntimeError("boom")
    assert _hook_count(m) == n0
    with torch.no_grad():
        torch.testing.assert_close(m(tokens), clean)


def test_evaluate_logit_diff_matches_manual(toy_llama):
    m = toy_llama
    ds = TaskDataset("t", clean=("abcabc", "xyzxyz"), answers=("a", "x"), counterfactuals=("b", "y"))
    batch = ds.tokenize(m, same_length=False)
    with torch.no_grad():
        logits = m(batch.clean.tokens)
    want = [float(logits[i, batch.clean.last[i], batch.answer_ids[i]] - logits[i, batch.clean.last[i],
                                                                           batch.counter_ids[i]]) for i in range(2)]
    assert evaluate(m, batch, logit_diff) == pytest.approx(sum(want) / 2, abs=1e-5)


def test_head_patching_equals_per_head_patched_runs(toy_llama):
    from interp.gating.validate import head_patching

    m = toy_llama
    ds = TaskDataset("t", clean=("abcabc", "xyzxyz"), corrupted=("abcxyz", "xyzabc"), answers=("a", "x"),
                     counterfactuals=("x", "a"))
    res = head_patching(m, ds, progress=False).table.set_index(["layer", "head"])
    batch = ds.tokenize(m)
    corr = run_capture(m, batch.corrupted.tokens, [Site("z", 1)], clone=True, stop_early=False)[Site("z", 1)]
    for head in range(m.cfg.n_heads):
        with torch.no_grad(), patched(m, {Site("z", 1, head): corr[:, :, head]}):
            lg = m(batch.clean.tokens)[torch.arange(2), batch.clean.last]
        want = float(logit_diff(lg, batch).mean())
        assert res.loc[(1, head), "metric_value"] == pytest.approx(want, abs=1e-4)


# ------------------------------------------------------------------ bad input

def test_bad_input_errors(toy_llama):
    m = toy_llama
    with pytest.raises(DataError, match="no answers"):
        gate_data(m, TaskDataset("noans", clean=("abc", "def")))
    batch = tokenize(m, ["abc", "def"])
    with pytest.raises(DataError, match="outside the vocabulary"):
        gate_data(m, batch, targets=[1, m.cfg.d_vocab + 5])
    with pytest.raises(DataError, match="not single tokens"):
        gate_data(m, TaskDataset("multi", clean=("abc",), answers=("xyz",)))
    data = gate_data(m, batch, targets=[97, 98])
    init = init_gate_logits(1, m.cfg.n_layers, m.cfg.n_heads, seed=0)
    for stage, lam in (("plus", -0.1), ("minus", 0.1), ("base", 0.1)):
        with pytest.raises(ConfigError, match=f"stage '{stage}' needs"):
            fit_stage(m, data, init, lam, stage=stage, config=CHGConfig(steps=1, progress=False))
    with pytest.raises(DataError, match="fewer than batch_size=8"):
        causal_head_gating(m, TaskDataset("small", clean=("abc", "def"), answers=("a", "d")),
                           config=CHGConfig(steps=1, batch_size=8, progress=False))
    with pytest.raises(ConfigError, match="lam"):
        CHGConfig(lam=-0.1)
    with pytest.raises(ConfigError):
        Ablation(sites=("z.0.0",), method="median")
    with pytest.raises(ConfigError):
        gated(m, torch.ones(3, 3)).__enter__()


def test_roles_thresholds():
    gp, gm = torch.tensor([0.9, 0.2, 0.9, 0.6]), torch.tensor([0.8, 0.1, 0.1, 0.4])
    assert head_roles(gp, gm) == ["facilitating", "interfering", "irrelevant", "irrelevant"]
    assert head_roles(gp, gm, facilitating_threshold=0.3, interfering_threshold=0.7)[3] == "facilitating"


def test_chg_figures():
    import pandas as pd

    from interp.plots import figure
    from interp.results import Result, RunMeta

    table = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "g_plus": [0.9, 0.2, 1.0, 0.95],
                          "g_minus": [0.8, 0.1, 0.05, 0.0], "role": ["facilitating", "interfering", "irrelevant",
                                                                      "irrelevant"]})
    res = Result("gating.chg", table, RunMeta(model="toy"))
    assert figure(res, which="g_plus").data[0].z[0][1] == pytest.approx(0.2)
    assert list(figure(res, which="role").data[0].z[0]) == [1.0, -1.0]


@pytest.mark.bundled
def test_gates_on_smollm2_gqa(smollm2):
    """All-ones gates leave SmolLM2's logits unchanged; a zero gate equals zero ablation (GQA model)."""
    m = smollm2
    tokens = tokenize(m, ["When Mary and John went to the store, John gave a drink to"]).tokens
    g = torch.ones(m.cfg.n_layers, m.cfg.n_heads)
    with torch.no_grad():
        clean = m(tokens)
        with gated(m, g):
            torch.testing.assert_close(m(tokens), clean)
        g[20, 4] = 0.0
        with gated(m, g):
            a = m(tokens)
        with ablating(m, [Ablation(sites=("z.20.4",))]):
            b = m(tokens)
    torch.testing.assert_close(a, b)
    assert (a - clean).abs().max() > 0


def test_cli_gate_on_jsonl_task(tmp_path):
    from typer.testing import CliRunner

    from interp.cli import _register_all, app
    from interp.results import load_results

    ds = TaskDataset("toyds", clean=("abcabc", "xyzxyz", "hello hello", "foo foo"),
                     corrupted=("abcxyz", "xyzabc", "hello world", "foo bar"), answers=("a", "x", "h", "f"),
                     counterfactuals=("x", "a", "w", "b"))
    ds.to_jsonl(tmp_path / "toyds.jsonl")
    _register_all()
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    r = CliRunner().invoke(app, ["gate", "toy:llama", "--task", str(tmp_path / "toyds.jsonl"), "--out", str(out),
                                 "--steps", "2", "--masks", "2", "--n-random", "2", "--figures", "html"])
    assert r.exit_code == 0, r.output
    assert torch.get_num_threads() == threads           # gate's one-thread default is undone on exit
    res = load_results(out)
    kinds = sorted(x.kind for x in res.values())
    assert kinds == ["gating.chg", "gating.head_patching", "gating.validation"]
    chg = next(x for x in res.values() if x.kind == "gating.chg")
    assert len(chg.table) == 8 and chg.meta.config["n_masks"] == 2
    assert (out / "chg_toyds_role.html").exists()
    assert "stage base: " in r.output and "stage plus_minus: " in r.output and "peak RSS" in r.output
    assert "validation verdict: " in r.output
    val = next(x for x in res.values() if x.kind == "gating.validation")
    assert val.meta.extra["verdict"] in ("pass", "fail") and chg.meta.extra["stages"]["base"]["steps"] <= 2
    report = (out / "report.md").read_text()
    for name, st in chg.meta.extra["stages"].items():
        assert f"- stage `{name}`: {st['steps']} steps, " + ("**converged**" if st["converged"] else "**NOT converged**") in report
    assert f"**Validation verdict: {val.meta.extra['verdict'].upper()}**" in report
    assert all(d["node"] in report for d in val.meta.extra["disagreements"])
    patch = next(x for x in res.values() if x.kind == "gating.head_patching")
    assert set(patch.table.metric) == {chg.meta.extra["metric"]} == {"answer_logprob"}   # like with like
    assert val.meta.extra["secondary_agreement"]["metric"] == "logit_diff"
    assert "secondary, NOT in the verdict: exact patching on logit_diff" in report
    assert "secondary, NOT in the verdict" in r.output


def test_patching_for_agrees_with_minimal_head_patching(toy_llama):
    """Two independent exact implementations (interp.patching's batched engine, when installed,
    and the per-layer tiled one here) give the same head-patching effects."""
    from interp.gating.validate import ValidationConfig, head_patching, patching_for

    m = toy_llama
    ds = TaskDataset("t", clean=("abcabc", "xyzxyz", "hello hello"), corrupted=("abcxyz", "xyzabc", "hello world"),
                     answers=("a", "x", "h"), counterfactuals=("x", "a", "w"))
    a = patching_for(m, ds, ValidationConfig(progress=False)).table.set_index(["layer", "head"])
    b = head_patching(m, ds, progress=False).table.set_index(["layer", "head"])
    assert len(a) == m.cfg.n_layers * m.cfg.n_heads
    for col in ("metric_value", "effect"):
        assert (a[col] - b.loc[a.index, col]).abs().max() < 1e-4


# ------------------------------------------------------------------ convergence and micro-batching

def test_chg_stops_when_roles_are_stable_with_the_long_runs_roles(planted):
    """Patience stops each stage early once the roles stop changing; the roles equal those of a run
    that never stops early (same seed, 4x the steps), and the planted heads are found."""
    model, plant, ds = planted
    long_cfg = CHGConfig(max_steps=30, patience=0, n_masks=2, progress=False)
    short_cfg = CHGConfig(max_steps=30, patience=8, n_masks=2, progress=False)
    with hooked(model, {Site("z", 1): plant}):
        long = causal_head_gating(model, ds, config=long_cfg)
        short = causal_head_gating(model, ds, config=short_cfg)
    ls, ss = long.meta.extra["stages"], short.meta.extra["stages"]
    assert {k: (v["steps"], v["converged"]) for k, v in ls.items()} == {"base": (30, False),
                                                                        "plus_minus": (30, False)}
    for name in ("base", "plus_minus"):
        run = ss[name]
        assert run["converged"] and run["steps"] < 30
        assert run["steps"] == run["last_change"] + 8          # stopped exactly one patience window after
    assert short.table.role.tolist() == long.table.role.tolist()


def test_micro_batches_give_the_full_batch_gradient(planted):
    """Accumulating gradients over micro-batches of 3 rows gives the same gates as one pass per step."""
    model, plant, ds = planted
    data = gate_data(model, ds)
    init = init_gate_logits(2, model.cfg.n_layers, model.cfg.n_heads, seed=1)
    out = []
    with hooked(model, {Site("z", 1): plant}):
        for micro in (None, 3):
            cfg = CHGConfig(max_steps=4, patience=0, n_masks=2, micro_batch=micro, progress=False)
            out.append(fit_stage(model, data, init, 0.1, stage="plus", config=cfg))
    torch.testing.assert_close(out[0], out[1], atol=1e-5, rtol=1e-5)
    assert not torch.equal(out[0], init)


def test_chg_config_steps_alias_and_patience_checks():
    assert CHGConfig(steps=7).max_steps == 7
    assert CHGConfig().max_steps == 60 and CHGConfig().patience == 10
    with pytest.raises(ConfigError, match="patience"):
        CHGConfig(patience=-1)
    with pytest.raises(ConfigError, match="micro_batch"):
        CHGConfig(micro_batch=0)
