"""Is a fitted CHG stage at rest? The gradient of the stage loss at the returned gates and the heads it
still pushes towards their role threshold (``meta.extra["unsettled"]`` of ``gating.chg``).

A decaying learning rate (:class:`interp.gating.CHGConfig` ``lr_decay``) makes the roles stop changing,
but it also stops a head that is still descending a flat valley of the task loss, possibly on the wrong
side of its threshold (module docstring of :mod:`interp.gating.chg`). These functions find such heads
with one extra forward/backward pass.

Example:
    >>> import torch
    >>> unsettled(torch.tensor([[[1.0, -4.0]]]), torch.tensor([[[0.1, 0.1]]]), torch.tensor([-0.1]),
    ...           torch.tensor([0.5]), logit_clamp=4.0).tolist()
    [[[True, False]]]
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from interp.gating.chg import CHGConfig, GateData, _accumulate, _device, _nll
from interp.gating.gates import _frozen, _gate_hooks, _last_logprobs

__all__ = ["stage_gradient", "unsettled"]


def stage_gradient(model: Any, data: GateData, logits: Float[Tensor, "mask layer head"],
                   lam: Float[Tensor, " mask"], config: CHGConfig) -> Float[Tensor, "mask layer head"]:
    """Gradient of the stage loss (mean NLL over every prompt - lambda * regulariser) at ``logits``
    (one forward/backward, not clipped): the first-order stationarity check of a fitted stage."""
    x = logits.detach().clone().float().to(_device(model)).requires_grad_(True)
    box: dict[str, torch.Tensor] = {}
    with _frozen(model), _gate_hooks(model, lambda: box["g"]), _last_logprobs(model) as logprobs:
        _accumulate(logprobs, box, x, data, torch.arange(len(data)), lam.to(x.device).float(), config, _nll, True)
    return x.grad.detach().cpu()


def unsettled(logits: Float[Tensor, "mask layer head"], grad: Float[Tensor, "mask layer head"],
              lam: Float[Tensor, " mask"], thresholds: Float[Tensor, " mask"], *,
              logit_clamp: float) -> Bool[Tensor, "mask layer head"]:
    """Heads whose role is not settled at a fitted stage (bool ``[mask, layer, head]``).

    A head is unsettled when it is inside the clamp range (a head at a bound pushed outward is a
    constrained optimum), the gradient of the stage loss pushes it towards its role threshold
    (descent would move ``logit`` towards ``logit(threshold)``), and that gradient is at least half of
    the regulariser's own pull ``|lambda| / n_heads``: at an interior optimum the task gradient
    cancels the regulariser, so an uncancelled half of it means the head is still moving, as a head
    does in a flat valley of the task loss when a decaying learning rate stops it [U].
    """
    n = logits.shape[1] * logits.shape[2]
    inside = logits.abs() < logit_clamp - 1e-3
    thr = torch.logit(thresholds.double()).float()[:, None, None]
    toward = (logits - thr) * grad > 0
    strong = grad.abs() >= lam.abs()[:, None, None] / (2 * n)
    return inside & toward & strong
