"""Tests of head-gating validation (interp.gating.validate): the verdict, the flagged disagreements between CHG's
roles and exact head patching, and their place in the pipeline's report, on the planted-head toy
(tests/gating_planted.py) and the bundled model."""

from __future__ import annotations

import pytest

from gating_planted import planted, planted_chg  # noqa: F401  (fixtures)
from interp.datasets import TaskDataset
from interp.errors import ConfigError
from interp.gating import CHGConfig, causal_head_gating
from interp.hooks import hooked
from interp.sites import Site


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
