"""The one stopping rule of a head-gating stage (used by the local fit and by the Ray replay).

A stage stops when the roles it decides, read from the gates averaged over the last ``patience``
steps (tail averaging), have not changed for ``patience`` consecutive steps; a stage that decides no
roles (the lambda = 0 stage) stops when its mean task loss has not improved by ``loss_tol`` for
``patience`` steps. :func:`interp.gating.chg._optimize` feeds it each step's gates as it fits;
:func:`interp.distributed.gating.replay_stage` feeds it the gates that Ray workers recorded, so a
distributed fit stops at the same step with the same averaged gates.

Example:
    >>> import torch
    >>> from interp.gating.chg import CHGConfig
    >>> rule = StopRule(torch.full((1, 1, 2), 0.5), None, CHGConfig(patience=2, loss_tol=0.1))
    >>> [rule.update(s, torch.full((1, 1, 2), 0.5), torch.tensor([1.0])) for s in (1, 2, 3)]
    [False, False, True]
    >>> rule.run(0.1).steps, rule.run(0.1).converged, rule.run(0.1).changes
    (3, True, (1, 0, 0))
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["StageRun", "StopRule"]


@dataclass(frozen=True)
class StageRun:
    """How one optimisation stage ended.

    Attributes:
        steps: optimizer updates run.
        converged: the roles were unchanged for ``patience`` steps before ``max_steps``.
        last_change: the step (1-based) after which the roles last changed (0 = never changed).
        changes: per step, how many role codes changed (lambda = 0: 1 when the loss improved).
        lr: Adam's learning rate at the last step (see :meth:`interp.gating.CHGConfig.lr_at`).
    """

    steps: int
    converged: bool
    last_change: int
    changes: tuple[int, ...] = ()
    lr: float = float("nan")


class StopRule:
    """Tail-averaged gates and the stop decision of one stage, fed one step at a time.

    Args:
        init_gates: the stage's starting gates ``[K, L, H]`` (the window starts with them).
        roles: gates ``[K, L, H]`` -> role codes; ``None`` = the loss-plateau rule.
        config: a :class:`interp.gating.CHGConfig` (``patience``, ``loss_tol``).
    """

    def __init__(self, init_gates: Float[Tensor, "mask layer head"],
                 roles: Callable[[Tensor], Tensor] | None, config: Any) -> None:
        self.cfg, self.roles = config, roles
        self.window: deque[Tensor] = deque(maxlen=max(1, config.patience))
        self.window.append(init_gates)
        self.state = roles(init_gates) if roles is not None else None
        self.same, self.last_change, self.step, self.best = 0, 0, 0, float("inf")
        self.changes: list[int] = []

    def update(self, step: int, gates: Float[Tensor, "mask layer head"], task: Float[Tensor, " mask"]) -> bool:
        """Record step ``step``'s gates and per-mask task loss; ``True`` when the stage should stop."""
        self.step = step
        self.window.append(gates)
        if self.roles is None:                          # loss plateau: "changed" = improved by loss_tol
            cur = float(task.mean())
            self.changes.append(int(cur < self.best - self.cfg.loss_tol))
            self.best, now = min(self.best, cur), self.state
        else:
            now = self.roles(self.averaged())
            self.changes.append(int((now != self.state).sum()))
        if self.changes[-1] == 0:
            self.same += 1
        else:
            self.state, self.same, self.last_change = now, 0, step
        return self.converged

    @property
    def converged(self) -> bool:
        return bool(self.cfg.patience) and self.same >= self.cfg.patience

    def averaged(self) -> Float[Tensor, "mask layer head"]:
        """The gates averaged over the window (the last ``patience`` steps)."""
        return torch.stack(tuple(self.window)).mean(0)

    def logits(self) -> Float[Tensor, "mask layer head"]:
        """Logits of the averaged gates (what a stage returns)."""
        return torch.logit(self.averaged().clamp(1e-6, 1 - 1e-6))

    def run(self, lr: float) -> StageRun:
        return StageRun(self.step, self.converged, self.last_change, tuple(self.changes), lr)
