"""The one place that turns logits into task metrics (METHODS.md section 2).

Pure functions on tensors, no model: every analysis (patching, path patching, tracing,
gating, steering, sinks, the graph's faithfulness, SAE evaluation) calls these.
Positions and answer ids are explicit arguments; log-probabilities are computed in
float32 whatever the logits' dtype.

* :func:`logit_diff`: ``logit[answer] - logit[counterfactual]`` per row.
* :func:`normalized`: ``(value - corrupted) / (clean - corrupted)`` (0 = corrupted behaviour, 1 = clean).
* :func:`logprob` / :func:`prob`: log-probability / probability of the answer.
* :func:`kl`: ``KL(reference || p)`` of next-token distributions (reference given as log-probs).
* :func:`next_token_nll`: per-position next-token negative log-likelihood (the LM loss);
  :func:`next_token_loss`: its mean over (masked) positions; :func:`unembedded_nll`: the same NLL from
  final normalised hidden states through the unembedding, in chunks (never ``[batch, pos, d_vocab]``).
* :func:`accuracy`: 1.0 where the argmax is the answer.

:data:`METRICS` names them; :func:`get_metric` looks a name up and suggests the nearest
names for a typo.

Example:
    >>> import torch
    >>> from interp.metrics import get_metric, logit_diff
    >>> logits = torch.tensor([[1.0, 3.0, 0.5]])
    >>> logit_diff(logits, torch.tensor([1]), torch.tensor([2])).tolist()
    [2.5]
    >>> get_metric("logit_dif")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    interp.errors.ConfigError: unknown metric 'logit_dif'. Did you mean 'logit_diff' or 'logit_diff_norm'? Known: ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp.errors import ConfigError, ShapeError, nearest

__all__ = ["log_probs", "probs", "at_positions", "logit_diff", "normalized", "logprob", "prob", "kl",
           "token_logprobs", "next_token_nll", "next_token_loss", "unembedded_nll", "accuracy", "METRICS", "get_metric",
           "check_metric_names"]


def log_probs(logits: Float[Tensor, "*batch d_vocab"]) -> Float[Tensor, "*batch d_vocab"]:
    """Float32 log-softmax over the vocabulary."""
    return torch.log_softmax(logits.float(), dim=-1)


def probs(logits: Float[Tensor, "*batch d_vocab"]) -> Float[Tensor, "*batch d_vocab"]:
    """Float32 softmax over the vocabulary."""
    return torch.softmax(logits.float(), dim=-1)


def at_positions(logits: Float[Tensor, "batch pos d_vocab"], positions: Int[Tensor, " batch"]
                 ) -> Float[Tensor, "batch d_vocab"]:
    """The logits of row ``b`` at position ``positions[b]`` (e.g. each prompt's last real token)."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, positions.to(logits.device)]


def _pick(values: Float[Tensor, "batch d_vocab"], ids: Int[Tensor, " batch"]) -> Float[Tensor, " batch"]:
    if ids.shape[0] != values.shape[0]:
        raise ShapeError(f"expected one answer id per row ({values.shape[0]}), got {tuple(ids.shape)}")
    rows = torch.arange(values.shape[0], device=values.device)
    return values[rows, ids.to(values.device)]


def logit_diff(logits: Float[Tensor, "batch d_vocab"], answer: Int[Tensor, " batch"],
               counter: Int[Tensor, " batch"]) -> Float[Tensor, " batch"]:
    """``logit[answer] - logit[counter]`` per row (in the logits' dtype)."""
    return _pick(logits, answer) - _pick(logits, counter)


def normalized(value: Float[Tensor, "*batch"] | float, *, clean: float | Float[Tensor, "*batch"],
               corrupted: float | Float[Tensor, "*batch"]) -> Float[Tensor, "*batch"] | float:
    """``(value - corrupted) / (clean - corrupted)``: 0 = corrupted behaviour, 1 = clean."""
    return (value - corrupted) / (clean - corrupted)


def logprob(logits: Float[Tensor, "batch d_vocab"], answer: Int[Tensor, " batch"]) -> Float[Tensor, " batch"]:
    """Float32 ``log p(answer)`` per row."""
    return _pick(log_probs(logits), answer)


def prob(logits: Float[Tensor, "batch d_vocab"], answer: Int[Tensor, " batch"]) -> Float[Tensor, " batch"]:
    """Float32 ``p(answer)`` per row."""
    return _pick(probs(logits), answer)


def kl(logits: Float[Tensor, "*batch d_vocab"], reference: Float[Tensor, "*batch d_vocab"]) -> Float[Tensor, "*batch"]:
    """``KL(reference || softmax(logits))`` per row, with ``reference`` given as log-probabilities."""
    logp = log_probs(logits)
    ref = reference.to(device=logp.device, dtype=logp.dtype)
    return (ref.exp() * (ref - logp)).sum(-1)


def token_logprobs(logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]
                   ) -> Float[Tensor, "batch pos_minus_1"]:
    """Float32 ``log p(tokens[:, t + 1] | tokens[:, :t + 1])`` for ``t < pos - 1``."""
    logp = log_probs(logits[:, :-1])
    return logp.gather(-1, tokens[:, 1:].to(logp.device)[..., None])[..., 0]


def next_token_nll(logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]
                   ) -> Float[Tensor, "batch pos_minus_1"]:
    """Per-position next-token negative log-likelihood (cross-entropy), float32."""
    return -token_logprobs(logits, tokens)


def next_token_loss(logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"],
                    mask: Bool[Tensor, "batch pos_minus_1"] | None = None) -> Float[Tensor, ""]:
    """Mean next-token cross-entropy over the predicted positions (``mask`` selects real ones)."""
    nll = next_token_nll(logits, tokens)
    return nll.mean() if mask is None else nll[mask.to(nll.device)].mean()


def unembedded_nll(hidden: Float[Tensor, "batch pos d_model"], W_U: Float[Tensor, "d_model d_vocab"],
                   tokens: Int[Tensor, "batch pos"], *, b_U: Float[Tensor, " d_vocab"] | None = None,
                   soft_cap: float | None = None, row_chunk: int = 256, vocab_chunk: int = 32768
                   ) -> Float[Tensor, "batch pos_minus_1"]:
    """:func:`next_token_nll` of ``logits = cap * tanh((hidden @ W_U + b_U) / cap)`` without the logits tensor.

    Rows (positions) go in chunks of ``row_chunk``, the vocabulary in chunks of ``vocab_chunk`` with a
    streaming (running-max) logsumexp, so at most ``[row_chunk, vocab_chunk]`` logits exist at once; the
    answer's logit is one dot product per row. Float32 throughout.
    """
    d = hidden.shape[-1]
    h = hidden[:, :-1].reshape(-1, d).float()
    target = tokens[:, 1:].reshape(-1).to(h.device)
    w = W_U.to(h.device)
    b = None if b_U is None else b_U.to(h.device).float()
    cap = soft_cap if soft_cap and soft_cap > 0 else None

    def capped(x: Tensor) -> Tensor:
        return cap * torch.tanh(x / cap) if cap else x

    out = torch.empty(h.shape[0], device=h.device, dtype=torch.float32)
    for r0 in range(0, h.shape[0], row_chunk):
        hc, tc = h[r0:r0 + row_chunk], target[r0:r0 + row_chunk]
        m = torch.full((hc.shape[0],), -torch.inf, device=h.device)
        s = torch.zeros(hc.shape[0], device=h.device)
        for v0 in range(0, w.shape[1], vocab_chunk):
            z = hc @ w[:, v0:v0 + vocab_chunk].float()
            if b is not None:
                z = z + b[v0:v0 + vocab_chunk]
            z = capped(z)
            new = torch.maximum(m, z.max(-1).values)
            s = s * torch.exp(m - new) + torch.exp(z - new[:, None]).sum(-1)
            m = new
        ans = (hc * w[:, tc].float().T).sum(-1) + (b[tc] if b is not None else 0.0)
        out[r0:r0 + row_chunk] = m + torch.log(s) - capped(ans)
    return out.reshape(tokens.shape[0], tokens.shape[1] - 1)


def accuracy(logits: Float[Tensor, "batch d_vocab"], answer: Int[Tensor, " batch"]) -> Float[Tensor, " batch"]:
    """1.0 where the argmax token is the answer, else 0.0."""
    return (logits.argmax(-1) == answer.to(logits.device)).float()


def _logit_diff_norm(logits: Float[Tensor, "batch d_vocab"], answer: Int[Tensor, " batch"],
                     counter: Int[Tensor, " batch"], *, clean: float, corrupted: float) -> Float[Tensor, " batch"]:
    """:func:`normalized` logit difference of each row, given the clean and corrupted mean LDs."""
    return normalized(logit_diff(logits, answer, counter), clean=clean, corrupted=corrupted)


#: Metric name -> function. Signatures: ``logit_diff(logits, answer, counter)``,
#: ``logit_diff_norm(logits, answer, counter, clean=, corrupted=)``, ``logprob`` / ``prob`` /
#: ``accuracy(logits, answer)``, ``kl(logits, reference_logprobs)``, ``loss(logits, tokens, mask)``.
METRICS: dict[str, Callable[..., Tensor]] = {
    "logit_diff": logit_diff,
    "logit_diff_norm": _logit_diff_norm,
    "logprob": logprob,
    "prob": prob,
    "kl": kl,
    "loss": next_token_loss,
    "accuracy": accuracy,
}


def check_metric_names(names: Iterable[str], allowed: Iterable[str] | None = None) -> None:
    """Raise :class:`ConfigError` for an empty list or a name outside ``allowed`` (default :data:`METRICS`)."""
    allowed = tuple(METRICS if allowed is None else allowed)
    names = tuple(names)
    if not names:
        raise ConfigError(f"no metrics given; choose from {allowed}")
    for m in names:
        if m not in allowed:
            raise ConfigError(f"unknown metric {m!r}.{nearest(m, allowed)} Known: {', '.join(allowed)}")


def get_metric(name: str) -> Callable[..., Float[Tensor, "..."]]:
    """The metric function called ``name``; unknown names raise :class:`ConfigError` naming the nearest."""
    check_metric_names((name,))
    return METRICS[name]
