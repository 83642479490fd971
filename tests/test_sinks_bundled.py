"""Sink scores and massive activations on SmolLM2 vs an independent plain-transformers computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.sinks import MassiveConfig, SinkConfig, massive_activations, sink_scores

PROMPTS = ["The Eiffel Tower is located in the city of Paris, the capital of France.",
           "def add(a, b):\n    return a + b",
           "Apples, bananas, cherries and grapes."]


@pytest.mark.bundled
def test_sinks_and_massive_match_plain_transformers(smollm2, smollm2_hf):
    heads = sink_scores(smollm2, PROMPTS, SinkConfig(max_len=64))[0].table
    massive_layers, massive_dims = massive_activations(smollm2, PROMPTS, MassiveConfig(max_len=64))
    massive = massive_layers.table
    tok = smollm2.tokenizer
    n_layers, n_heads = smollm2.cfg.n_layers, smollm2.cfg.n_heads
    alpha = np.zeros((len(PROMPTS), n_layers, n_heads))
    for i, p in enumerate(PROMPTS):
        ids = torch.tensor([tok(p, add_special_tokens=False).input_ids[:64]])
        with torch.inference_mode():
            out = smollm2_hf(ids, output_attentions=True, output_hidden_states=True)
        t = ids.shape[1]
        for layer in range(n_layers):
            a = out.attentions[layer][0].double()                         # [head, q, k]
            alpha[i, layer] = (a[:, :, 0].sum(-1) / t).numpy()            # alpha of key 0 (t queries see it)
            # hidden_states[layer + 1] is block `layer`'s output, except the last (after the final norm)
            if layer == n_layers - 1:
                continue
            h = out.hidden_states[layer + 1][0].double()
            flat = h.abs().flatten()
            idx = int(flat.argmax())
            row = massive[(massive.prompt == i) & (massive.layer == layer) & (massive["rank"] == 0)].iloc[0]
            assert (row.pos, row.dim) == divmod(idx, h.shape[1])
            assert row.value == pytest.approx(float(h.flatten()[idx]), rel=1e-4)
            assert row["median"] == pytest.approx(float(np.median(flat.numpy())), rel=1e-4)
    got = heads.sort_values(["layer", "head"]).alpha_first.to_numpy().reshape(n_layers, n_heads)
    np.testing.assert_allclose(got, alpha.mean(0), atol=1e-4)
    assert heads.is_sink.mean() == pytest.approx((alpha.mean(0) > 0.3).mean())
    # The published facts about SmolLM2 (METHODS.md section 5): dim 507 is massive on position 0 from layer 11.
    dims = massive_dims.table
    assert dims.iloc[0].dim == 507 and dims.iloc[0].first_layer == 11
