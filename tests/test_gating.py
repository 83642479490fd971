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
from interp.models import load_model, tokenize
from interp.sites import Site

PROMPTS = ("the cat sat", "a dog ran", "hello world", "one two three", "blue sky", "red fox", "x y z", "quiet now")
A, B = (1, 0), (1, 2)   # planted facilitating / interfering heads


def _hook_count(model) -> int:
    return sum(len(p.fwd_hooks) + len(p.bwd_hooks) for p in model.hook_dict.values())


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


# ------------------------------------------------------------------ validation verdict and disagreements

def _fake_patching(chg, effects: dict[str, float], direction: str | None = None, metric: str = "answer_logprob"):
    """A gating.head_patching Result with the given effects (noising) on named heads, 0.01 elsewhere;
    by default in the metric CHG fits (the one the verdict uses)."""
    import pandas as pd

    from interp.results import Result, RunMeta

    t = chg.table
    eff = [effects.get(n, 0.01) for n in t.node]
    table = pd.DataFrame({"layer": t["layer"], "head": t["head"], "node": t["node"], "metric": metric,
                          "metric_value": [e + 1.0 for e in eff], "clean_value": 1.0, "corrupted_value": -1.0,
                          "effect": eff, "normalized": [(e + 2.0) / 2.0 for e in eff]})
    return Result("gating.head_patching", table, RunMeta(model="toy", extra={"direction": direction or "noising"}))


@pytest.mark.parametrize("effects, flagged", [
    ({"L1.H0": -1.5, "L1.H2": -2.0}, [("disagreement_interfering", "L1.H2")]),   # B supports, labelled interfering
    ({"L1.H0": +2.0, "L1.H2": +1.5}, [("disagreement_facilitating", "L1.H0")]),  # A opposes, labelled facilitating
    ({"L1.H0": -2.0, "L1.H2": +1.5}, []),                                          # both agree with the roles
])
def test_validation_flags_strong_heads_labelled_against_their_patching_effect(planted, planted_chg, effects, flagged):
    from interp.gating.validate import ValidationConfig, summary_lines, validate_chg

    model, plant, ds = planted
    chg = planted_chg[0]
    patch = _fake_patching(chg, effects)
    with hooked(model, {Site("z", 1): plant}):
        val = validate_chg(model, ds, chg, patching=patch,
                           config=ValidationConfig(n_random=4, method="zero", progress=False))
    rows = [(r.what, r.heads) for r in val.table.itertuples() if r.what.startswith("disagreement")]
    assert rows == flagged
    ex = val.meta.extra
    assert [d["node"] for d in ex["disagreements"]] == [h for _, h in flagged]
    text = "\n".join(summary_lines(val))
    if flagged:
        assert ex["verdict"] == "fail" and "DISAGREEMENTS" in text and flagged[0][1] in text
        assert any("disagreement" in r for r in ex["verdict_reasons"])
    else:
        assert "DISAGREEMENTS" not in text and "no disagreement" in text
        assert not any("disagreement" in r for r in ex["verdict_reasons"])


def test_verdict_uses_the_fit_metric_and_reports_the_logit_difference_beside_it(planted, planted_chg):
    """Given exact patching in both metrics, where they disagree on the sign of B (L1.H2): the verdict
    follows the metric CHG fitted (answer log-prob: B opposes the answer, as its interfering role says),
    the logit-difference disagreement is reported on a labelled secondary line and not in the verdict;
    agreement_metric="logit_diff" swaps the two."""
    from interp.gating.validate import ValidationConfig, summary_lines, validate_chg

    model, plant, ds = planted
    chg = planted_chg[0]
    assert chg.meta.extra["metric"] == "answer_logprob"
    lp = _fake_patching(chg, {"L1.H0": -1.5, "L1.H2": +2.0})                      # agrees with the roles
    ld = _fake_patching(chg, {"L1.H0": -1.5, "L1.H2": -2.0}, metric="logit_diff")  # B "supports": a disagreement
    cfg = ValidationConfig(n_random=3, method="zero", progress=False)
    with hooked(model, {Site("z", 1): plant}):
        val = validate_chg(model, ds, chg, patching=[ld, lp], config=cfg)
        cf = TaskDataset("plant", clean=ds.clean, answers=ds.answers, counterfactuals=("R",) * len(ds))
        old = validate_chg(model, cf, chg, patching=[ld, lp], config=ValidationConfig(
            n_random=3, method="zero", progress=False, agreement_metric="logit_diff", secondary_metric=None))
    ex = val.meta.extra
    assert ex["agreement_metric"] == ex["fit_metric"] == "answer_logprob"
    assert ex["disagreements"] == [] and not any("disagreement" in r for r in ex["verdict_reasons"])
    sec = ex["secondary_agreement"]
    assert sec["metric"] == "logit_diff" and [d["node"] for d in sec["disagreements"]] == ["L1.H2"]
    text = "\n".join(summary_lines(val))
    assert "DISAGREEMENTS" not in text
    line = next(x for x in text.splitlines() if x.startswith("secondary, NOT in the verdict"))
    assert "logit_diff" in line and "L1.H2" in line
    assert [d["node"] for d in old.meta.extra["disagreements"]] == ["L1.H2"]
    assert old.meta.extra["agreement_metric"] == "logit_diff" and "secondary_agreement" in old.meta.extra
    assert "NOT the metric the CHG fit optimised" in "\n".join(summary_lines(old))
    with pytest.raises(ConfigError, match="counterfactuals"):
        validate_chg(model, ds, chg, patching=ld, config=ValidationConfig(agreement_metric="logit_diff"))
    with pytest.raises(ConfigError, match="agreement_metric"):
        ValidationConfig(agreement_metric="kl")


def test_validation_patches_with_the_fit_metric(toy_llama):
    """Without precomputed patching, the verdict's Spearman is that of exact head patching on the answer's
    log-prob (oracle: head_patching with that metric), the secondary one that of the logit difference
    (oracle: patching_for); the two differ on this toy, so swapping the metrics fails the test."""
    from scipy.stats import spearmanr

    from interp.gating import answer_logprob
    from interp.gating.validate import ValidationConfig, head_patching, patching_for, validate_chg

    m = toy_llama
    ds = TaskDataset("t", clean=("abcabc", "xyzxyz", "hello hello", "foo foo"),
                     corrupted=("abcxyz", "xyzabc", "hello world", "foo bar"),
                     answers=("a", "x", "h", "f"), counterfactuals=("x", "a", "w", "b"))
    chg = causal_head_gating(m, ds, config=CHGConfig(max_steps=4, patience=2, progress=False))
    vcfg = ValidationConfig(n_random=2, method="zero", progress=False)
    val = validate_chg(m, ds, chg, config=vcfg)

    def rho(patch):
        p = patch.table.set_index("node").loc[chg.table.node]
        return spearmanr(chg.table.facilitation - chg.table.interference, -p["effect"].to_numpy())[0]

    want = rho(head_patching(m, ds, metric=answer_logprob, metric_name="answer_logprob", progress=False))
    other = rho(patching_for(m, ds, vcfg, metric="logit_diff"))
    assert abs(want - other) > 1e-3                      # the test can tell the metrics apart
    got = val.table.set_index("what").loc["spearman_signed", "metric_value"]
    assert got == pytest.approx(want, abs=1e-6)
    assert val.meta.extra["secondary_agreement"]["spearman_signed"] == pytest.approx(other, abs=1e-6)


def test_disagreement_sign_follows_the_patching_direction(planted_chg):
    """Denoising: a positive effect supports the answer, so B (interfering) with +2 is flagged."""
    from interp.gating.validate import disagreements

    chg = planted_chg[0]
    assert disagreements(chg, _fake_patching(chg, {"L1.H2": -2.0}, "denoising")) == []
    found = disagreements(chg, _fake_patching(chg, {"L1.H2": +2.0}, "denoising"))
    assert [(d["node"], d["role"], d["rank"]) for d in found] == [("L1.H2", "interfering", 1)]


def test_pipeline_gating_stage_validates_and_reports_the_verdict(tmp_path, monkeypatch):
    """The main job's gating stage validates by default against the patching stage's exact head patching,
    and report.md carries the verdict and the disagreements (or says there are none)."""
    from interp.datasets import registry
    from interp.pipeline import (CacheStage, GatingStage, GraphStage, PatchingStage, PipelineConfig, SinksStage,
                                 run_pipeline)
    from interp.results import load_results

    clean = ("When Mary and John went, John gave it to", "Then Anna and Bobo sat, Bobo gave it to",
             "When Lisa and Mark ran, Mark gave it to", "Then Rosa and Tim sat, Tim gave it to")
    corr = ("When Kate and Paul went, Luke gave it to", "Then Ruth and Carl sat, Dave gave it to",
            "When Nina and Otto ran, Ivan gave it to", "Then Vera and Ned sat, Kim gave it to")

    def toy(model, n=4, seed=0):
        return TaskDataset("toy", clean[:n], corr[:n], answers=tuple(c[5] for c in clean[:n]),
                           counterfactuals=tuple(c.split(", ")[1][0] for c in clean[:n]))

    monkeypatch.setitem(registry.TASKS, "toy", registry.Task("toy", toy))
    cfg = PipelineConfig(name="gatejob", model="toy:llama", tasks=("toy",), out=str(tmp_path / "out"),
                         cache=CacheStage(enabled=False), sinks=SinksStage(enabled=False),
                         graph=GraphStage(enabled=False),
                         patching=PatchingStage(prompts=4, exact_prompts=4, atp=False, eap=False),
                         gating=GatingStage(steps=3, prompts=4, batch_size=4))
    report = run_pipeline(cfg, log=lambda m: None)
    status = {r.name: r.status for r in report.stages}
    assert status["gating"] == "ok", report.stages
    val = next(r for r in load_results(tmp_path / "out" / "results").values() if r.kind == "gating.validation")
    ex = val.meta.extra
    # the verdict: exact patching on the answer's log-prob (CHG's metric); the patching stage's exact Result
    # (logit difference) is reused for the secondary comparison
    assert ex["agreement_metric"] == "answer_logprob" and ex["patching_kind"] == "gating.head_patching"
    assert ex["secondary_agreement"]["patching_kind"] == "patching.nodes"
    assert "spearman_signed" in set(val.table.what)
    text = report.path.read_text()
    assert "## Head gating (CHG)" in text and f"Validation verdict: {ex['verdict'].upper()}" in text
    if ex["disagreements"]:
        assert "Disagreements between CHG roles and exact patching" in text
        assert all(d["node"] in text for d in ex["disagreements"])
    else:
        assert "no disagreement between CHG roles and exact patching" in text
    assert "- secondary, NOT in the verdict: exact patching on " in text


def test_report_md_lists_every_disagreement(planted, planted_chg):
    """report.md's gating section states the verdict and names each disagreeing head (never silent)."""
    from types import SimpleNamespace

    from interp.gating.validate import ValidationConfig, validate_chg
    from interp.pipeline_report import _gating_section

    model, plant, ds = planted
    chg = planted_chg[0]
    with hooked(model, {Site("z", 1): plant}):
        val = validate_chg(model, ds, chg, patching=_fake_patching(chg, {"L1.H0": -1.5, "L1.H2": -2.0}),
                           config=ValidationConfig(n_random=3, method="zero", progress=False))
    text = "\n".join(_gating_section(SimpleNamespace(results={"plant": [chg, val]})))
    assert "**Validation verdict: FAIL**" in text
    assert "Disagreements between CHG roles and exact patching (1)" in text
    assert "L1.H2 labelled interfering but exact patching says it supports the answer" in text
    assert "Stages: base: " in text
    text = "\n".join(_gating_section(SimpleNamespace(results={"plant": [chg]})))
    assert "**Not validated**" in text


@pytest.mark.bundled
@pytest.mark.slow
def test_chg_and_validation_smoke_on_smollm2(smollm2):
    """Tiny settings on SmolLM2/IOI: the stages report their steps, the validation a verdict, and its
    disagreements are those of the exact patching it was given (the full-size run is a measurement:
    BENCHMARKS.md)."""
    from interp.datasets.registry import build_task
    from interp.gating.validate import ValidationConfig, agreement_metric, disagreements, patching_for, validate_chg

    ds = build_task("ioi", model=smollm2, n=2, seed=0)
    chg = causal_head_gating(smollm2, ds, config=CHGConfig(max_steps=3, patience=2, progress=False))
    assert len(chg.table) == smollm2.cfg.n_layers * smollm2.cfg.n_heads
    assert all(1 <= s["steps"] <= 3 for s in chg.meta.extra["stages"].values())
    vcfg = ValidationConfig(n_random=2, progress=False)
    patch = patching_for(smollm2, ds, vcfg, metric=agreement_metric(chg, vcfg))
    val = validate_chg(smollm2, ds, chg, config=vcfg, patching=patch)
    ex = val.meta.extra
    assert ex["verdict"] in ("pass", "fail")
    assert [d["node"] for d in ex["disagreements"]] == [d["node"] for d in disagreements(chg, patch)]
    assert (ex["verdict"] == "fail") >= bool(ex["disagreements"])       # a disagreement always fails the verdict
