"""Causal tracing: planted truths on toy models and independent one-row oracles."""

from __future__ import annotations

import pytest
import torch

from interp.datasets import TaskDataset
from interp.errors import ConfigError, DataError
from interp.hooks import capturing, hooked
from interp.models import tokenize
from interp.sites import Site
from interp.tracing import (TracingConfig, causal_trace, draw_noise, restoration_probs, site_kind_restoration,
                            subject_noise_std)

PROMPT = "The Eiffel Tower is in"
SPAN = (5, 17)  # BOS + "The " -> subject bytes "Eiffel Tower" are tokens 5..16 of the byte tokenizer


def _peaked(spec: str):
    """A toy whose unembedding is scaled up, so the next-token distribution is peaked (p_clean ~ 0.5-0.9)."""
    from interp.models import load_model

    model = load_model(spec)
    with torch.no_grad():
        for p in model.unembed.parameters():
            p.mul_(40)
    return model


@pytest.fixture(scope="module")
def peaked_llama():
    return _peaked("toy:llama,seed=7")


def _ds(n: int = 1) -> TaskDataset:
    prompts = (PROMPT, "Big Ben is in the city")[:n]
    spans = (SPAN, (1, 8))[:n]
    return TaskDataset("facts", prompts, answers=(" P", " L")[:n],
                       meta=tuple({"subject_start": a, "subject_end": b, "subject": p[a - 1:b - 1]}
                                  for p, (a, b) in zip(prompts, spans)))


def _setup(model, n_samples=3, std=0.5, seed=0):
    tb = tokenize(model, [PROMPT])
    tokens = tb.tokens[0]
    noise = draw_noise((n_samples, SPAN[1] - SPAN[0], model.cfg.d_model), std, uniform=False,
                       generator=torch.Generator().manual_seed(seed))
    sites = [Site(c, l) for c in ("resid_post", "mlp_out", "attn_out") for l in range(model.cfg.n_layers)]
    with torch.inference_mode(), capturing(model, sites) as acts:
        logits = model(tokens[None])
    answer = int(logits[0, -1].argmax())
    return tokens, noise, {s: acts[s][0] for s in sites}, answer, logits[0, -1].softmax(-1)[answer].item()


def _oracle_p(model, tokens, noise, answer, restore: dict[Site, tuple[torch.Tensor, int]] = {}):
    """One row per noise copy, noise and restorations applied by plain hooks: the independent reference."""
    ps = []
    for s in range(noise.shape[0]):
        def add(act, site, _s=s):
            out = act.clone()
            out[0, SPAN[0]:SPAN[1]] += noise[_s]
            return out

        def put(act, site):
            out = act.clone()
            value, tok = restore[site]
            out[0, tok] = value[tok]
            return out

        hooks = [(Site("embed"), add)] + [(site, put) for site in restore]
        with torch.inference_mode(), hooked(model, hooks):
            ps.append(model(tokens[None])[0, -1].softmax(-1)[answer].item())
    return sum(ps) / len(ps)


def test_restore_nothing_is_p_corrupt_and_everything_is_p_clean(peaked_llama):
    model = peaked_llama
    tokens, noise, clean, answer, p_clean = _setup(model)
    n = tokens.shape[0]
    everything_at = [tuple((Site("resid_post", l), t) for t in range(n)) for l in range(model.cfg.n_layers)]
    p = restoration_probs(model, tokens, SPAN, answer, noise, [(), *everything_at], clean)
    p_corrupt = _oracle_p(model, tokens, noise, answer)
    assert abs(p_corrupt - p_clean) > 0.05  # the noise does something
    assert p[0].item() == pytest.approx(p_corrupt, abs=1e-6)
    for l in range(model.cfg.n_layers):  # the whole hidden state of any layer restored -> exactly clean
        assert p[1 + l].item() == pytest.approx(p_clean, abs=1e-6)


def test_batched_restoration_equals_one_site_at_a_time_and_oracle(peaked_llama):
    model = peaked_llama
    tokens, noise, clean, answer, _ = _setup(model)
    L = model.cfg.n_layers
    rests = [site_kind_restoration(k, t, l, L, window=2) for k in ("resid", "mlp", "attn")
             for t in (SPAN[1] - 1, tokens.shape[0] - 1) for l in range(L)]
    together = restoration_probs(model, tokens, SPAN, answer, noise, rests, clean, batch_size=10_000)
    alone = restoration_probs(model, tokens, SPAN, answer, noise, rests, clean, batch_size=1)
    slow = restoration_probs(model, tokens, SPAN, answer, noise, rests, clean, batch_size=10_000, fast=False)
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(together, slow, atol=1e-6, rtol=1e-5)
    for k in (1, 6, 11):  # spot checks against the plain-hook oracle (one row per noise copy)
        restore = {site: (clean[site], tok) for site, tok in rests[k]}
        assert together[k].item() == pytest.approx(_oracle_p(model, tokens, noise, answer, restore), abs=1e-6)


def test_window_layers():
    assert [s.layer for s, _ in site_kind_restoration("mlp", 3, 5, 30, 10)] == list(range(0, 10))
    assert [s.layer for s, _ in site_kind_restoration("attn", 3, 0, 30, 10)] == list(range(0, 5))
    assert [s.layer for s, _ in site_kind_restoration("mlp", 3, 29, 30, 10)] == list(range(24, 30))
    assert site_kind_restoration("resid", 4, 7, 30, 10) == ((Site("resid_post", 7), 4),)
    assert {s.component for s, _ in site_kind_restoration("attn", 4, 7, 30, 3)} == {"attn_out"}


def test_grid_planted_truths_and_reproducible(peaked_llama):
    model = peaked_llama
    cfg = TracingConfig(n_samples=2, window=1, batch_size=64)
    grid, summary = causal_trace(model, _ds(1), cfg, progress=False)
    t, s = grid.table, summary.table.iloc[0]
    last_layer = model.cfg.n_layers - 1
    # last token, last layer: the final hidden state is clean -> p_clean exactly; TE = p_clean - p_corrupt
    cell = t[(t.site_kind == "resid") & (t.token_index == s.n_tokens - 1) & (t.layer == last_layer)]
    assert s.total_effect > 0.05
    assert cell.p_restored.item() == pytest.approx(s.p_clean, abs=1e-6)
    assert cell.indirect_effect.item() == pytest.approx(s.total_effect, abs=1e-6)
    # tokens before the subject never see the noise: restoring them changes nothing
    before = t[t.token_index < SPAN[0]]
    assert len(before) == 3 * SPAN[0] * model.cfg.n_layers and before.indirect_effect.abs().max() < 1e-7
    assert set(t[t.is_subject].token_index) == set(range(*SPAN)) and t[t.is_last_subject].token_index.unique() == [16]
    assert "".join(t[(t.site_kind == "resid") & (t.layer == 0)].sort_values("token_index").token) == "<bos>" + PROMPT
    assert grid.meta.extra["fast_logits"] is True
    resid = t[t.site_kind == "resid"].reset_index(drop=True)
    again, _ = causal_trace(model, _ds(1), TracingConfig(n_samples=2, window=1, kinds=("resid",)), progress=False)
    assert again.table.equals(resid)  # seeded noise: same draws, same numbers
    other, _ = causal_trace(model, _ds(1), TracingConfig(n_samples=2, window=1, seed=1, kinds=("resid",)),
                            progress=False)
    assert not other.table.p_restored.equals(resid.p_restored)


def test_noise_std_and_draws(toy_llama):
    model = toy_llama
    ds = _ds(2)
    ids = [tokenize(model, [p]).tokens[0, a:b] for p, (a, b) in zip(ds.clean, (SPAN, (1, 8)))]
    want = model.W_E[torch.cat(ids)].float().std().item()  # embedding rows of all subject tokens
    assert subject_noise_std(model, ds) == pytest.approx(want, rel=1e-5)
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    assert torch.equal(draw_noise((4, 3, 8), 2.0, uniform=False, generator=g(0)),
                       draw_noise((4, 3, 8), 2.0, uniform=False, generator=g(0)))
    assert not torch.equal(draw_noise((4, 3, 8), 2.0, uniform=False, generator=g(0)),
                           draw_noise((4, 3, 8), 2.0, uniform=False, generator=g(1)))
    u = draw_noise((2000,), 2.0, uniform=True, generator=g(0))
    assert u.abs().max() <= 2.0 and u.min() < -1.9 and u.max() > 1.9


def test_fast_logits_gpt2(toy_gpt2):
    # GPT-2 style (LayerNorm, absolute positions, unembedding bias): last-position logits from ln_final
    # must equal the full forward, and restoring the final hidden state gives p_clean exactly
    grid, summary = causal_trace(toy_gpt2, _ds(1), TracingConfig(n_samples=2, kinds=("resid",), tokens="key"),
                                 progress=False)
    assert grid.meta.extra["fast_logits"] is True
    t, s = grid.table, summary.table.iloc[0]
    cell = t[(t.token_index == s.n_tokens - 1) & (t.layer == toy_gpt2.cfg.n_layers - 1)]
    assert cell.p_restored.item() == pytest.approx(s.p_clean, abs=1e-7)


def test_key_tokens_and_replace(toy_llama):
    cfg = TracingConfig(n_samples=2, tokens="key", kinds=("resid",), replace=True, noise_std=1.0)
    grid, summary = causal_trace(toy_llama, _ds(1), cfg, progress=False)
    n = int(summary.table.n_tokens[0])
    assert sorted(grid.table.token_index.unique()) == [SPAN[0], SPAN[1] - 1, SPAN[1], n - 1]
    assert grid.meta.extra["nu"] == pytest.approx(3.0)


def test_bad_input():
    with pytest.raises(ConfigError, match="kinds"):
        TracingConfig(kinds=("mlp", "heads"))
    with pytest.raises(ConfigError, match="tokens"):
        TracingConfig(tokens="some")
    with pytest.raises(ConfigError, match="n_samples"):
        TracingConfig(n_samples=0)


def test_missing_subject_span(toy_llama):
    ds = TaskDataset("facts", ("abc",), answers=(" x",), meta=({},))
    with pytest.raises(DataError, match="subject_start.*'abc'"):
        causal_trace(toy_llama, ds, TracingConfig(n_samples=1), progress=False)
    ds = TaskDataset("facts", ("abc",), answers=(" x",), meta=({"subject_start": 2, "subject_end": 9},))
    with pytest.raises(DataError, match="outside"):
        causal_trace(toy_llama, ds, TracingConfig(n_samples=1), progress=False)


@pytest.mark.slow
def test_cli_trace_toy(tmp_path):
    import json

    from typer.testing import CliRunner

    from interp.cli import _register_all, app
    from interp.results import load_results

    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps({"prompt": p, "subject": s, "answer": "x", "relation": r}) + "\n"
                             for p, s, r in [("Big Ben is in", "Big Ben", "city"), ("The Louvre is in", "Louvre", "city"),
                                             ("The yen is the money of", "yen", "currency")]))
    _register_all()
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["trace", "toy:llama", "--facts", str(facts), "--out", str(out), "--n-facts", "2",
                                   "--samples", "2", "--min-prob", "0", "--tokens", "key"])
    assert res.exit_code == 0, res.output
    results = load_results(out)
    assert {r.kind for r in results.values()} == {"tracing.grid", "tracing.summary"}
    summary = next(r for r in results.values() if r.kind == "tracing.summary").table
    assert list(summary.subject) == ["Big Ben", "yen"]  # round robin over relations
    for name in ("tracing_average.pdf", "tracing_average.svg", "summary.md", "tracing_fact0.svg"):
        assert (out / name).stat().st_size > 0
    assert "last subject token" in (out / "summary.md").read_text() or "| resid |" in (out / "summary.md").read_text()
