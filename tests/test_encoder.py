"""The bundled encoder all-MiniLM-L6-v2 (bidirectional BERT): what works and what refuses.

Loaded once per module (a few seconds once prepared). Its MLM head is untrained (seeded),
so no test reads its logits; caching, sinks, probes and axes read activations only.
"""

from __future__ import annotations

import pytest
import torch

from interp.errors import ConfigError
from interp.sites import Site

pytestmark = pytest.mark.bundled

TEXTS = ["the cat sat on the mat", "dogs bark", "a stock market crash wiped out savings",
         "kittens purr softly while sleeping", "interest rates rose again", "bond yields fell",
         "my puppy chewed the sofa", "the central bank cut rates"]
LABELS = [1, 1, 0, 1, 0, 0, 1, 0]   # 1 = pets, 0 = finance


@pytest.fixture(scope="module")
def minilm():
    from interp.models import load_model

    return load_model("minilm")


def _alone(model, text, sites):
    from interp.hooks import run_capture
    from interp.models import tokenize

    tb = tokenize(model, [text])
    with torch.inference_mode():
        return run_capture(model, tb.tokens, sites, stop_early=False)


def test_encoder_facts_and_cls_sep_framing(minilm):
    from interp.arch import arch_facts
    from interp.models import tokenize

    facts = arch_facts(minilm)
    assert (facts.family, facts.causal, facts.positional) == ("bert", False, "absolute")
    tb = tokenize(minilm, ["hello world", "a b c"])
    tok = minilm.tokenizer
    for i in range(2):   # [CLS] text [SEP], as the model's own tokenizer frames it
        n = int(tb.lengths[i])
        assert tb.tokens[i, :n].tolist() == tok(tb.texts[i]).input_ids
        assert tb.tokens[i, 0] == tok.cls_token_id and tb.tokens[i, n - 1] == tok.sep_token_id


def test_collect_unequal_lengths_equals_each_prompt_alone(minilm):
    """Right padding is exact only with the attention mask (bidirectional attention sees the padding)."""
    from interp.cache import collect

    sites = [Site("resid_post", 5), Site("pattern", 2)]
    store = collect(minilm, TEXTS[:4], sites, batch_size=4, progress=False)
    for i, text in enumerate(TEXTS[:4]):
        solo = _alone(minilm, text, sites)
        n = int(store.lengths[i])
        got = torch.as_tensor(store[sites[0]])[i, :n]
        assert torch.allclose(got, solo[sites[0]][0], atol=1e-4), i
        pat = torch.as_tensor(store[sites[1]])[i, :, :n, :n]
        assert torch.allclose(pat, solo[sites[1]][0], atol=1e-5), i
        assert torch.allclose(pat.sum(-1), torch.ones_like(pat.sum(-1)), atol=1e-5)   # no mass on padding


def test_sinks_are_batch_independent_and_alpha_averages_all_queries(minilm):
    from interp.sinks import SinkConfig, sink_scores
    from interp.sinks.stats import alpha_from_pattern

    heads, _, _ = sink_scores(minilm, TEXTS, SinkConfig(batch_size=8))
    alone = [sink_scores(minilm, [t])[0].table.alpha_first.to_numpy() for t in TEXTS[:3]]
    # alpha of [CLS] averaged over prompts equals the per-prompt values averaged (padding changes nothing)
    batch3 = sink_scores(minilm, TEXTS[:3], SinkConfig(batch_size=3))[0].table.alpha_first.to_numpy()
    assert abs(batch3 - sum(alone) / 3).max() < 1e-5
    # bidirectional alpha_k: every real query sees every key; a uniform pattern gives alpha = 1/T everywhere
    uniform = torch.full((1, 1, 4, 4), 0.25)
    alpha, n_q = alpha_from_pattern(uniform, torch.tensor([4]), causal=False)
    assert torch.allclose(alpha, torch.full((1, 1, 4), 0.25)) and n_q.tolist() == [[4, 4, 4, 4]]
    assert len(heads.table) == 6 * 12


def test_probe_and_contrast_axes_on_encoder_activations(minilm):
    from interp.cache import collect
    from interp.steering.axes import axis_from_store, probe_axis, residual_activations, rows_from_store

    site = Site("resid_post", 5)
    acts = residual_activations(minilm, TEXTS, [5], position="mean", batch_size=3)[5]
    store = collect(minilm, TEXTS, [site], batch_size=8, progress=False)
    # the two padded paths (batches of 3 and of 8) give the same rows: neither sees the padding
    assert torch.allclose(acts, rows_from_store(store, site, position="mean"), atol=1e-4)
    contrast = axis_from_store(store, site, LABELS, "contrast", position="mean")
    proj = contrast.project(acts)
    y = torch.tensor(LABELS, dtype=torch.bool)
    # a contrast axis separates its own training classes by construction of the mean difference
    assert proj[y].mean() > proj[~y].mean()
    probe = probe_axis(acts, LABELS, site=site, seed=0)
    assert probe.method == "probe" and probe.vector.shape == (minilm.cfg.d_model,)


def test_causal_only_methods_refuse_naming_bidirectional_attention(minilm):
    from interp.datasets import TaskDataset
    from interp.patching import PatchConfig, activation_patching, attribution_patching
    from interp.patching.edges import edge_attribution_patching
    from interp import generate as interp_generate
    from interp.steering.steer import generate, next_token_probs

    ds = TaskDataset("pairs", ("the cat sat",), ("the dog sat",), (" down",), (" up",))
    calls = {"patching": lambda: activation_patching(minilm, ds, PatchConfig(component="resid_pre")),
             "patching ": lambda: attribution_patching(minilm, ds),
             "EAP edges": lambda: edge_attribution_patching(minilm, ds),
             "generation": lambda: generate(minilm, "hello"),
             "next-token probabilities": lambda: next_token_probs(minilm, ["hello"]),
             "generation ": lambda: interp_generate(minilm, ["hello"], max_new_tokens=2)}
    for method, call in calls.items():
        with pytest.raises(ConfigError, match="bidirectional attention") as e:
            call()
        assert str(e.value).startswith(method.strip()) and "family bert" in str(e.value)
