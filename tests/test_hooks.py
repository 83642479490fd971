"""Scoped hooks: removed on exit and on exceptions; patches checked against oracles."""

import pytest
import torch

from interp.hooks import ablated, capturing, hooked, patched, run_capture
from interp.models import tokenize
from interp.sites import Site


def _n_hooks(model):
    return sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in model.hook_dict.values())


def test_hooks_removed_after_exception(toy_llama):
    tokens = tokenize(toy_llama, ["hello"]).tokens
    with torch.inference_mode():
        base = toy_llama(tokens)
        with pytest.raises(RuntimeError, match="boom"):
            with patched(toy_llama, {Site("z", 1, 0): 0.0}), capturing(toy_llama, ["resid_post.0"]):
                raise RuntimeError("boom")
        assert _n_hooks(toy_llama) == 0
        assert torch.equal(toy_llama(tokens), base)


def test_zero_head_matches_hand_computation(toy_llama):
    """Zeroing head h of layer 1 changes attn_out by exactly -z_h @ W_O[h]."""
    tokens = tokenize(toy_llama, ["oracle check"]).tokens
    o_proj = toy_llama.blocks[1].attn.o.original_component  # HF o_proj: out = z_flat @ W^T
    d_head = toy_llama.cfg.d_head
    with torch.inference_mode():
        acts = run_capture(toy_llama, tokens, [Site("z", 1), Site("attn_out", 1)], stop_early=False)
        with ablated(toy_llama, [Site("z", 1, 2)]), capturing(toy_llama, [Site("attn_out", 1)]) as after:
            toy_llama(tokens)
        z_h = acts[Site("z", 1)][:, :, 2]                   # [batch, pos, d_head]
        w_h = o_proj.weight[:, 2 * d_head:3 * d_head]       # [d_model, d_head]
        expected = acts[Site("attn_out", 1)] - z_h @ w_h.T
    assert torch.allclose(after[Site("attn_out", 1)], expected, atol=1e-5)


def test_patch_with_own_activation_is_identity(toy_gpt2):
    tokens = tokenize(toy_gpt2, ["identity"]).tokens
    with torch.inference_mode():
        base = toy_gpt2(tokens)
        acts = run_capture(toy_gpt2, tokens, ["resid_pre.1", "z.0.3"], stop_early=False)
        with patched(toy_gpt2, {Site("resid_pre", 1): acts[Site("resid_pre", 1)], Site("z", 0, 3): acts[Site("z", 0, 3)]}):
            assert torch.allclose(toy_gpt2(tokens), base, atol=1e-6)


def test_run_capture_stops_after_deepest_site(toy_llama):
    calls = []
    tokens = tokenize(toy_llama, ["stop"]).tokens
    with torch.inference_mode(), hooked(toy_llama, {Site("resid_post", 1): lambda a, s: calls.append(s)}):
        acts = run_capture(toy_llama, tokens, ["resid_post.0"])
    assert set(acts) == {Site("resid_post", 0)} and calls == []


def test_backward_hook_gives_gradient(toy_llama):
    tokens = tokenize(toy_llama, ["grad"]).tokens
    grads = {}
    with hooked(toy_llama, {Site("resid_post", 0): lambda g, s: grads.__setitem__(s, g.clone())}, direction="bwd"):
        toy_llama(tokens)[0, -1].sum().backward()
    g = grads[Site("resid_post", 0)]
    assert g.shape == (1, tokens.shape[1], toy_llama.cfg.d_model) and g.abs().sum() > 0
    toy_llama.zero_grad(set_to_none=True)
    assert _n_hooks(toy_llama) == 0
