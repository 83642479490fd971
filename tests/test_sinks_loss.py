"""The chunked next-token loss of the sink interventions equals the unchunked one (logits, log-softmax)."""

from __future__ import annotations

import pytest
import torch

from interp.metrics import next_token_nll, unembedded_nll
from interp.models import load_model


@pytest.mark.parametrize("cap", [None, 3.0])
def test_unembedded_nll_equals_log_softmax_of_full_logits(cap):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 7, 16, generator=g) * 3
    w_u = torch.randn(16, 1000, generator=g)
    b_u = torch.randn(1000, generator=g)
    tokens = torch.randint(0, 1000, (3, 7), generator=g)
    logits = hidden @ w_u + b_u
    if cap:
        logits = cap * torch.tanh(logits / cap)
    want = next_token_nll(logits, tokens)
    for rows, cols in ((256, 32768), (4, 97), (1, 1000), (5, 7)):       # one chunk; ragged chunks; tiny chunks
        got = unembedded_nll(hidden, w_u, tokens, b_U=b_u, soft_cap=cap, row_chunk=rows, vocab_chunk=cols)
        assert got.shape == (3, 6)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    no_bias = unembedded_nll(hidden, w_u, tokens, soft_cap=cap, vocab_chunk=64)
    full = hidden @ w_u
    torch.testing.assert_close(no_bias, next_token_nll(cap * torch.tanh(full / cap) if cap else full, tokens),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec", ["toy:llama", "toy:gpt2", "toy:gemma2"])
def test_sink_loss_equals_the_models_own_logits(spec):
    """``sinks.next_token_loss`` (stopped at ln_final, chunked unembedding) against the full forward's logits
    (toy:gemma2 has a final soft-cap of 30; toy:gpt2 an unembedding bias, zero here)."""
    from interp.sinks import next_token_loss

    model = load_model(spec)
    tokens = torch.randint(0, model.cfg.d_vocab, (5, 12), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = float(next_token_nll(model(tokens), tokens).mean())
    assert next_token_loss(model, tokens, batch_size=2) == pytest.approx(want, abs=1e-5)
