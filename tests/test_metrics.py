"""interp.metrics against hand-computed values on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from interp import metrics as M
from interp.errors import ConfigError

LOGITS = torch.tensor([[1.0, 3.0, 0.0], [2.0, 0.0, 2.0]])
ANS = torch.tensor([1, 0])
CF = torch.tensor([2, 1])


def _lse(row):
    return math.log(sum(math.exp(x) for x in row))


def test_logit_diff_and_normalized():
    assert M.logit_diff(LOGITS, ANS, CF).tolist() == [3.0, 2.0]
    assert M.normalized(torch.tensor([2.0, 5.0]), clean=5.0, corrupted=1.0).tolist() == [0.25, 1.0]
    got = M.get_metric("logit_diff_norm")(LOGITS, ANS, CF, clean=4.0, corrupted=2.0)
    assert got.tolist() == [0.5, 0.0]


def test_logprob_prob_accuracy():
    want = [3.0 - _lse([1, 3, 0]), 2.0 - _lse([2, 0, 2])]
    torch.testing.assert_close(M.logprob(LOGITS, ANS), torch.tensor(want))
    torch.testing.assert_close(M.prob(LOGITS, ANS), torch.tensor(want).exp())
    # row 1: tie between ids 0 and 2, argmax takes the first
    assert M.accuracy(LOGITS, ANS).tolist() == [1.0, 1.0]
    assert M.accuracy(LOGITS, CF).tolist() == [0.0, 0.0]
    assert M.logprob(LOGITS.half(), ANS).dtype == torch.float32


def test_kl_hand_computed_and_zero_on_itself():
    p = torch.tensor([[0.5, 0.25, 0.25]])
    q_logits = torch.tensor([[0.0, 0.0, 0.0]])                 # uniform
    want = sum(pi * math.log(pi / (1 / 3)) for pi in (0.5, 0.25, 0.25))
    assert M.kl(q_logits, p.log()).item() == pytest.approx(want, abs=1e-6)
    assert M.kl(LOGITS, M.log_probs(LOGITS)).abs().max() < 1e-6


def test_next_token_loss_hand_computed():
    logits = torch.tensor([[[0.0, 1.0], [2.0, 0.0], [5.0, 5.0]]])   # [1, 3, 2]
    tokens = torch.tensor([[0, 1, 0]])
    nll = [-(1.0 - _lse([0, 1])), -(2.0 - _lse([2, 0]))]             # predicting token 1 then token 0
    torch.testing.assert_close(M.next_token_nll(logits, tokens), torch.tensor([nll]))
    assert M.next_token_loss(logits, tokens).item() == pytest.approx(sum(nll) / 2, abs=1e-6)
    mask = torch.tensor([[True, False]])
    assert M.next_token_loss(logits, tokens, mask).item() == pytest.approx(nll[0], abs=1e-6)


def test_at_positions():
    logits = torch.arange(2 * 3 * 2, dtype=torch.float).view(2, 3, 2)
    assert M.at_positions(logits, torch.tensor([2, 0])).tolist() == [[4.0, 5.0], [6.0, 7.0]]


def test_unknown_metric_names_nearest():
    with pytest.raises(ConfigError, match="Did you mean 'logit_diff'"):
        M.get_metric("logit_dif")
    with pytest.raises(ConfigError, match="no metrics"):
        M.check_metric_names(())
    assert set(M.METRICS) >= {"logit_diff", "logit_diff_norm", "logprob", "prob", "kl", "loss", "accuracy"}
