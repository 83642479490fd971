"""Causal head gating (CHG, Nam et al. 2025) and contrastive CHG.

One gate per attention head, ``G = sigmoid(logit)`` in ``[0, 1]``, multiplies the
head's output ``z`` before ``W_O`` (a hook on each layer's ``z``). The model is frozen
(``requires_grad=False`` on every parameter while fitting); only the gate logits train.
The gates of all masks (seeds) live in ONE tensor ``[n_masks, n_layers, n_heads]`` and
the prompt batch is tiled over masks, so each optimizer step is one forward and one
backward pass of ``n_masks * batch`` rows.

Loss per mask: mean NLL of each prompt's target token at its last real token
``- lambda * mean(clamp(logit(G), -4, 4))``. Schedule: fit with ``lambda = 0`` from
``logit(U(0,1))``; from that fit, ``+lambda`` gives ``G+`` and ``-lambda`` gives ``G-``
(both fitted together in one tiled batch, each mask with its own lambda). Adam (lr 1.0)
on the logits, gradient norm clipped to 1 per mask (so masks stay independent). The loss,
lambda and clamp are the paper's; the learning-rate schedule and the stop rule below are ours.

Learning rate [U]: the lambda = 0 stage keeps Adam's lr 1.0. The stages that decide roles (+/- lambda,
contrastive) run ``warmup_steps = ceil(2 * logit_clamp / lr)`` (8) steps at lr 1.0, enough for a gate
to cross the whole clamp range, then multiply the lr by ``lr_decay`` (0.9) per step. Why: at a
constant lr 1.0 the +/- stage does not settle. Measured on SmolLM2/IOI (8 prompts, 1 mask, 30 Nov):
Adam's momentum (beta1 0.9) carries a head whose optimum lies inside ``(0, 1)`` past it and back in
slow swings (periods of 10-15 steps, amplitude shrinking only from ~1.5 to ~0.3 logits over 40 steps),
so the ~20 heads whose ``G-`` optimum is near 0.5 keep crossing it: 0-4 roles changed per step after
step 15 and no 10-step quiet window came in 60 steps, tail-averaged or not. Shrinking the lr shrinks
the swings with it. The decay is the slowest round factor for which the movement left after step
``max_steps - patience`` (``lr * lr_decay**(50 - 8) / (1 - lr_decay)`` = 0.11 logits, Adam's step being
at most about the lr) is inside the borderline band (``logit(0.5 + margin)`` = 0.20), so only heads
listed as borderline can still flip in the last window. Same start, same data: lr_decay 0.9 converged
(roles unchanged for 10 steps) at step 50, the last change at step 40; roles 63 facilitating / 9
interfering, against 56 / 9 for the unconverged constant-lr state at step 60. The 9 heads that differ
all differ in ``G-``; 5 of them (L4.H6, L11.H4, L19.H1, L21.H7, L24.H7) ended at ``G-``
0.02-0.28 at constant lr after slow descents (L11.H4 reached the bound at step 58) and stop at
0.52-0.67 with the decay: the bias described next.

What a decaying lr cannot do is finish a slow descent: a head in a flat valley of the task loss (on
the induction toy, the previous-token head L0.H0 behind RMSNorm: NLL 0.021-0.032 for any ``G-`` from
0.27 to 0.82, so only the regulariser's small pull moves it) is stopped where the lr ran out, and its
role can stay stable for the patience window while the optimum lies on the other side of 0.5 (found
by evaluating the stage loss along that one gate: ``tests/test_gating_schedule.py``). Such heads are
reported, not hidden: after the +/- stage one more forward/backward gives the gradient of the stage
loss at the returned gates (:func:`interp.gating.settle.stage_gradient`), and a head inside the clamp
range that is still pushed towards its threshold by at least half the regulariser's pull is listed
in ``meta.extra["unsettled"]`` as ``"L0.H0 (G-)"`` (:func:`interp.gating.settle.unsettled`).
``lr_decay=1`` restores the paper's constant lr.

Convergence [U]: a stage stops when the roles it decides have not changed for
``patience`` consecutive optimizer steps, or after ``max_steps``. The +/- lambda stage's roles
are the taxonomy below (from the mean gates over masks), contrastive CHG's the ``removed``
flags. The lambda = 0 stage decides no roles (a role needs both ``G+`` and ``G-``; with no
regulariser the gates of task-irrelevant heads wander between the bounds, so their open /
shut pattern never settles: 60 steps without 10 quiet ones on SmolLM2): it only provides
the common start of the +/- stages and stops when its task loss has not improved by
``loss_tol`` for ``patience`` steps. Heads whose mean ``G+`` or ``G-`` ends within ``margin``
of a role threshold are listed in ``meta.extra["borderline"]``. Roles are read from the gates
averaged over the last ``patience`` steps (tail averaging), and the stage returns that average
(``patience=0``: the last iterate, as in the paper). Steps run, whether each stage converged, the
number of roles that changed at each step and the last lr are in ``meta.extra["stages"]``.

Micro-batching: a step's prompts are run ``micro_batch`` rows (masks x prompts) at a time
and the gradients accumulated; the gradient is that of the full step's batch (the loss is a
mean over prompts), and peak memory grows with ``micro_batch``, not with the batch.

Contrastive CHG is in :mod:`interp.gating.contrastive`.

Taxonomy [U] (thresholds configurable): *facilitating* when mean ``G-`` >= 0.5 (kept
even when pushed shut); *interfering* when mean ``G+`` <= 0.5 (removed even when pushed
open); otherwise *irrelevant* (follows the regulariser). Continuous scores:
facilitation = ``G-``, interference = ``1 - G+``, irrelevance = ``G+ - G-``, each with
its mean and standard deviation over masks.

Example:
    >>> from interp import load_model
    >>> from interp.datasets import TaskDataset
    >>> from interp.gating import CHGConfig, causal_head_gating
    >>> model = load_model("toy:llama")
    >>> ds = TaskDataset("abc", clean=("abcabc", "xyzxyz"), answers=("a", "x"))
    >>> res = causal_head_gating(model, ds, config=CHGConfig(steps=20, n_masks=2))
    >>> res.table.columns[:4].tolist()
    ['layer', 'head', 'node', 'g_plus']
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import InitVar, dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.errors import ConfigError, DataError
from interp.gating.gates import _frozen, _gate_hooks, _last_logprobs, gated
from interp.gating.stop import StageRun, StopRule

__all__ = ["CHGConfig", "StageRun", "GateData", "CHGFit", "role_codes", "gate_data", "init_gate_logits",
           "fit_stage", "fit_chg", "chg_result", "causal_head_gating", "head_roles", "gated"]

ROLES = ("facilitating", "interfering", "irrelevant")
STAGES = ("base", "plus", "minus")


@dataclass(frozen=True, kw_only=True)
class CHGConfig:
    """Settings of causal head gating (METHODS.md section 3; defaults sized for a 2-core CPU).

    The paper runs ~500 updates per stage on several masks and a large prompt set. The
    defaults here keep what the method needs and cut what it does not:

    * ``max_steps=60`` with ``patience=10``: with Adam at lr 1.0 on logits bounded to
      ``[-4, 4]`` a gate crosses its whole range in about 8 steps (the warm-up); a stage stops
      once the roles have been unchanged for 10 steps (more than one full crossing). 60 is a cap
      that bounds the worst case (SmolLM2/IOI, 8 prompts, 1 mask: lambda = 0 stops after 17
      steps, the +/- stage with ``lr_decay=0.9`` after 50); a stage that hits it is reported as
      not converged, with its per-step role changes. The paper's 500 is a fixed budget, not a
      convergence criterion.
    * ``lr_decay=0.9`` after ``warmup_steps`` (module docstring: why, and what it was measured against).
    * ``n_masks=1``: masks are independent seeds whose mean decides the roles; METHODS.md
      makes several masks optional ("can be fit at once"). One mask halves the cost of two;
      ask for more (``--masks``) to get the spread over seeds (``*_std`` columns).
    * ``batch_size=None`` (every prompt at every step): a deterministic gradient, so the
      roles can stop changing; random prompt draws make borderline heads flip between steps.
    * ``micro_batch=16`` rows per forward/backward: bounds memory (SmolLM2 at 16 rows of
      ~20 tokens: peak RSS 1.7 GB for the whole ``interp gate`` run) without changing the gradient.
    * 8 prompts (``interp gate --n``): per-step cost is linear in prompts x masks; 8 IOI prompts
      (both name orders) keep the command within 15 minutes on the shared 2-core machine.

    Attributes:
        max_steps: cap on optimizer updates per stage.
        patience: [U] a stage stops when the roles have not changed for this many consecutive
            steps (0 = never stop early: run ``max_steps``); the lambda = 0 stage when its mean
            task loss has not improved by ``loss_tol`` for this many steps.
        margin: [U] a head whose mean gate ends within this distance of a role threshold is listed
            as borderline (``meta.extra["borderline"]``; its role is uncertain).
        loss_tol: [U] improvement of the lambda = 0 stage's mean NLL (nats) that counts as progress.
        steps: deprecated alias of ``max_steps`` (init only; kept for older callers).
        n_masks: masks (seeds) fitted at once, tiled on the batch axis.
        lam: magnitude of lambda in the ``+lambda`` / ``-lambda`` stages (> 0).
        lr: Adam learning rate on the gate logits.
        lr_decay: [U] per-step factor on the lr after the warm-up, in the stages that decide roles
            (+/- lambda, contrastive); 1 = the paper's constant lr. See :meth:`lr_at`.
        warmup: [U] steps at the full lr before the decay (``None``: ``ceil(2 * logit_clamp / lr)``).
        clip: gradient-norm clip per mask.
        logit_clamp: the regulariser averages ``clamp(logit, -c, c)``.
        batch_size: prompts per step (drawn without replacement, seeded); ``None`` = all.
        micro_batch: rows (masks x prompts) per forward/backward pass; gradients accumulate
            over the step's micro-batches (``None`` = the whole step at once). Contrastive CHG,
            whose loss is not a mean over prompts, always runs the whole step at once.
        seed: seed of the gate initialisation and the prompt draws (private generator).
        facilitating_threshold: [U] mean ``G-`` at or above which a head is facilitating.
        interfering_threshold: [U] mean ``G+`` at or below which a head is interfering.
        neg_clamp: contrastive CHG clamps ``log p_neg - log p_pos`` at this minimum [U].
        bound_logits: [U] keep the gate logits within ``[-logit_clamp, logit_clamp]`` after each
            step. Adam normalises each gradient, so in the lambda = 0 stage heads with near-zero
            task gradient drift past the clamp, where the regulariser has no gradient and can no
            longer move them in the +/- lambda stages (they would be mislabelled). Gates then lie
            in ``[0.018, 0.982]`` for the default clamp.
        progress: show a tqdm bar.
    """

    max_steps: int = 60
    patience: int = 10
    loss_tol: float = 0.01
    margin: float = 0.05
    steps: InitVar[int | None] = None
    n_masks: int = 1
    lam: float = 0.1
    lr: float = 1.0
    lr_decay: float = 0.9
    warmup: int | None = None
    clip: float = 1.0
    logit_clamp: float = 4.0
    batch_size: int | None = None
    micro_batch: int | None = 16
    seed: int = 0
    facilitating_threshold: float = 0.5
    interfering_threshold: float = 0.5
    neg_clamp: float = -5.0
    bound_logits: bool = True
    progress: bool = True

    def __post_init__(self, steps: int | None) -> None:
        if steps is not None:
            object.__setattr__(self, "max_steps", steps)
        if self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.patience < 0:
            raise ConfigError(f"patience must be >= 0 (0 = run max_steps), got {self.patience}")
        if not 0 <= self.margin < 0.5:
            raise ConfigError(f"margin must lie in [0, 0.5), got {self.margin}")
        if not self.loss_tol > 0:
            raise ConfigError(f"loss_tol must be > 0, got {self.loss_tol}")
        if self.n_masks < 1:
            raise ConfigError(f"n_masks must be >= 1, got {self.n_masks}")
        if not self.lam > 0:
            raise ConfigError(f"lam is the magnitude of lambda and must be > 0 (stages use +lam and -lam), "
                              f"got {self.lam}")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"lr_decay must lie in (0, 1] (1 = constant lr), got {self.lr_decay}")
        if self.warmup is not None and self.warmup < 0:
            raise ConfigError(f"warmup must be >= 0 or None (= ceil(2 * logit_clamp / lr)), got {self.warmup}")
        if not self.lr > 0 or not self.clip > 0 or not self.logit_clamp > 0:
            raise ConfigError(f"lr, clip and logit_clamp must be > 0, got {self.lr}, {self.clip}, {self.logit_clamp}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1 or None, got {self.batch_size}")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ConfigError(f"micro_batch must be >= 1 or None, got {self.micro_batch}")
        for name in ("facilitating_threshold", "interfering_threshold"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must lie in (0, 1), got {getattr(self, name)}")
        if not self.neg_clamp < 0:
            raise ConfigError(f"neg_clamp must be < 0, got {self.neg_clamp}")

    @property
    def warmup_steps(self) -> int:
        """Steps at the full ``lr`` before a role-deciding stage decays it: ``warmup``, or by default
        ``ceil(2 * logit_clamp / lr)`` (8: enough for a gate to cross the whole clamp range)."""
        return self.warmup if self.warmup is not None else math.ceil(2 * self.logit_clamp / self.lr)

    def lr_at(self, step: int, *, anneal: bool) -> float:
        """Adam's learning rate at optimizer step ``step`` (1-based): ``lr`` while ``step <= warmup_steps``,
        then ``lr * lr_decay ** (step - warmup_steps)`` when ``anneal`` (the stages that decide roles)."""
        if not anneal:
            return self.lr
        return self.lr * self.lr_decay ** max(0, step - self.warmup_steps)


@dataclass(frozen=True)
class GateData:
    """Prompts with one target token each, ready for gating.

    Attributes:
        tokens: ``[batch, pos]`` right-padded token ids.
        last: ``[batch]`` index of each prompt's last real token.
        targets: ``[batch]`` target token id predicted at ``last``.
        texts: the prompts (for error messages and hashes).
        name: dataset name.
    """

    tokens: torch.Tensor
    last: torch.Tensor
    targets: torch.Tensor
    texts: tuple[str, ...]
    name: str = ""

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def gate_data(model: Any, dataset: Any, *, targets: Any = None) -> GateData:
    """Tokenize a dataset of prompts with target tokens and validate the targets.

    Args:
        dataset: a :class:`~interp.datasets.TaskDataset` (targets = its ``answers``) or a
            :class:`~interp.models.TokenBatch` with ``targets`` given as token ids.
        targets: ``[batch]`` token ids (only with a TokenBatch).

    Raises:
        DataError: no targets, a target that is not one token, or an id outside the vocabulary
            (the message names the prompts).
    """
    from interp.arch import require_arch

    require_arch(model, method="head gating (next-token targets)", causal=True)
    dev = _device(model)
    if hasattr(dataset, "answers"):
        if not dataset.answers:
            raise DataError(f"dataset {dataset.name!r} has no answers: CHG needs one target token per prompt")
        if targets is not None:
            raise DataError("give targets either as the dataset's answers or as ids with a TokenBatch, not both")
        tb = dataset.tokenize(model, same_length=False)
        tokens, ids, name = tb.clean, tb.answer_ids, dataset.name
    elif hasattr(dataset, "tokens"):
        if targets is None:
            raise DataError("CHG on a TokenBatch needs targets=[batch] token ids")
        tokens, ids, name = dataset, torch.as_tensor(targets), ""
    else:
        raise DataError(f"expected a TaskDataset or a TokenBatch, got {type(dataset).__name__}")
    ids = ids.reshape(-1).long()
    if ids.shape[0] != len(tokens):
        raise DataError(f"expected one target per prompt ({len(tokens)}), got {ids.shape[0]}")
    bad = [i for i, t in enumerate(ids.tolist()) if not 0 <= t < model.cfg.d_vocab]
    if bad:
        lines = [f"  #{i}: id {int(ids[i])} for {tokens.texts[i]!r}" for i in bad[:5]]
        raise DataError(f"{len(bad)} target ids outside the vocabulary [0, {model.cfg.d_vocab}):\n" + "\n".join(lines))
    return GateData(tokens.tokens.to(dev), tokens.last.to(dev), ids.to(dev), tuple(tokens.texts), name)


def init_gate_logits(n_masks: int, n_layers: int, n_heads: int, *, seed: int) -> Float[Tensor, "mask layer head"]:
    """``logit(U(0,1))`` gate logits ``[n_masks, n_layers, n_heads]`` from a seeded generator."""
    gen = torch.Generator().manual_seed(int(seed))
    u = torch.rand(n_masks, n_layers, n_heads, generator=gen).clamp(1e-4, 1 - 1e-4)
    return torch.logit(u)


def _accumulate(logprobs: Callable[..., torch.Tensor], box: dict[str, torch.Tensor], logits: torch.Tensor,
                data: GateData, idx: torch.Tensor, lam: torch.Tensor, cfg: CHGConfig,
                loss_fn: Callable[[torch.Tensor], torch.Tensor], micro: bool) -> torch.Tensor:
    """Backward of one step's stage loss (task loss of the prompts ``idx`` - lambda * regulariser) into
    ``logits.grad``, ``cfg.micro_batch`` rows at a time when ``micro``; returns the task loss ``[K]``."""
    k, n = logits.shape[0], len(idx)
    idx = idx.to(data.tokens.device)
    per = n if not micro or cfg.micro_batch is None else max(1, cfg.micro_batch // k)
    task_k = torch.zeros(k)
    for lo in range(0, n, per):
        part = idx[lo: lo + per]
        last = data.last[part]
        tokens = data.tokens[part, : int(last.max()) + 1]      # right-padded: trailing pads unused
        box["g"] = torch.sigmoid(logits)
        logp = logprobs(tokens.repeat(k, 1), last.repeat(k), data.targets[part].repeat(k))
        part_k = loss_fn(logp.view(k, -1)) * (len(part) / n)           # [K], this part's share
        loss = part_k.sum()
        if lo == 0:
            loss = loss - (lam * logits.clamp(-cfg.logit_clamp, cfg.logit_clamp).mean((1, 2))).sum()
        loss.backward()
        task_k += part_k.detach().cpu()
    return task_k


def _optimize(model: Any, data: GateData, init: torch.Tensor, lam: torch.Tensor, cfg: CHGConfig,
              sampler: Callable[[torch.Generator], torch.Tensor],
              loss_fn: Callable[[torch.Tensor], torch.Tensor], desc: str,
              roles: Callable[[torch.Tensor], torch.Tensor] | None, *,
              micro: bool = True, on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
              anneal: bool | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor, StageRun]:
    """Adam on gate logits ``[K, L, H]`` until the roles are stable for ``cfg.patience`` steps.

    Args:
        loss_fn: ``[K, prompts]`` log-probs -> ``[K]`` task loss.
        roles: ``[K, L, H]`` gates -> a tensor of role codes, read from the gates averaged over the
            last ``cfg.patience`` steps; the stage stops when it has been equal for ``cfg.patience``
            consecutive steps. ``None``: stop when the mean task loss has not improved by
            ``cfg.loss_tol`` for ``cfg.patience`` steps.
        micro: the loss is a mean over prompts (``-logp.mean(1)``), so the step's prompts may be
            run ``cfg.micro_batch`` rows at a time with accumulated gradients (exactly the
            full-batch gradient). ``False``: the whole step in one pass.
        on_step: called after each step with (step, gates ``[K, L, H]``, task loss ``[K]``)
            (:mod:`interp.distributed.gating` records the stages of masks fitted on Ray workers).
        anneal: use the annealed lr (:meth:`CHGConfig.lr_at`); default: when the stage decides roles.

    Returns:
        logits ``[K, L, H]`` of the averaged gates, the last step's per-mask task loss ``[K]`` and the
        :class:`StageRun`.
    """
    from tqdm.auto import tqdm

    k = init.shape[0]
    logits = init.detach().clone().float().to(_device(model)).requires_grad_(True)
    lam = lam.to(logits.device).float()
    opt = torch.optim.Adam([logits], lr=cfg.lr)
    gen = torch.Generator().manual_seed(int(cfg.seed) + 1)
    task = torch.zeros(k)
    box: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        rule = StopRule(torch.sigmoid(logits), roles, cfg)
    lr = cfg.lr
    bar = tqdm(total=cfg.max_steps, desc=desc, disable=not cfg.progress, leave=False)
    with _frozen(model), _gate_hooks(model, lambda: box["g"]), _last_logprobs(model) as logprobs:
        for step in range(1, cfg.max_steps + 1):
            opt.zero_grad(set_to_none=True)
            task_k = _accumulate(logprobs, box, logits, data, sampler(gen), lam, cfg, loss_fn, micro)
            with torch.no_grad():
                norms = logits.grad.flatten(1).norm(dim=1).clamp(min=1e-12)
                logits.grad.mul_((cfg.clip / norms).clamp(max=1.0)[:, None, None])
            lr = cfg.lr_at(step, anneal=(roles is not None) if anneal is None else anneal)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
            task = task_k
            with torch.no_grad():
                if cfg.bound_logits:
                    logits.clamp_(-cfg.logit_clamp, cfg.logit_clamp)
                gates = torch.sigmoid(logits)
                if on_step is not None:
                    on_step(step, gates, task_k)
                bar.update(1)
                if rule.update(step, gates, task_k):
                    break
    bar.close()
    return rule.logits().detach(), task, rule.run(lr)


def _batch_sampler(n: int, batch_size: int | None) -> Callable[[torch.Generator], torch.Tensor]:
    if batch_size is None or batch_size == n:
        full = torch.arange(n)
        return lambda gen: full
    if batch_size > n:
        raise DataError(f"the dataset has {n} prompts, fewer than batch_size={batch_size}")
    return lambda gen: torch.randperm(n, generator=gen)[:batch_size]


def _check_stage(stage: str, lam: float) -> None:
    if stage not in STAGES:
        raise ConfigError(f"stage must be one of {STAGES}, got {stage!r}")
    ok = {"base": lam == 0, "plus": lam > 0, "minus": lam < 0}[stage]
    if not ok:
        want = {"base": "lambda = 0", "plus": "lambda > 0 (pushes gates open)",
                "minus": "lambda < 0 (pushes gates shut)"}[stage]
        raise ConfigError(f"stage {stage!r} needs {want}, got lambda = {lam}")


def _nll(logp: torch.Tensor) -> torch.Tensor:
    return -logp.mean(1)


def _open_shut(gates: torch.Tensor) -> torch.Tensor:
    """Roles of a single-lambda stage: each mask's open (``G >= 0.5``) / shut pattern ``[K, L, H]``."""
    return gates >= 0.5


def role_codes(g_plus: Float[Tensor, "layer head"], g_minus: Float[Tensor, "layer head"], *, facilitating_threshold: float = 0.5,
               interfering_threshold: float = 0.5) -> Int[Tensor, "layer head"]:
    """:func:`head_roles` as codes (same shape as the gates): 0 facilitating, 1 interfering, 2 irrelevant."""
    fac, intf = g_minus >= facilitating_threshold, g_plus <= interfering_threshold
    fac_wins = g_minus >= 1 - g_plus
    codes = torch.full(g_plus.shape, 2, dtype=torch.long)
    codes[intf.cpu()] = 1
    codes[(fac & (~intf | fac_wins)).cpu()] = 0
    return codes


def fit_stage(model: Any, data: GateData, init: Float[Tensor, "mask layer head"], lam: float, *, stage: str,
              config: CHGConfig = CHGConfig()) -> Float[Tensor, "mask layer head"]:
    """Fit one stage of CHG from ``init`` logits ``[n_masks, n_layers, n_heads]``.

    A ``plus`` / ``minus`` stage stops when every mask's open / shut pattern (``G >= 0.5``, which
    decides the role with that sign) is unchanged for ``config.patience`` steps; ``base`` when its
    task loss stops improving (see :class:`CHGConfig`).

    Raises:
        ConfigError: lambda of the wrong sign for the stage (``base``: 0, ``plus``: > 0,
            ``minus``: < 0).
        DataError: fewer prompts than ``config.batch_size``.
    """
    _check_stage(stage, lam)
    sampler = _batch_sampler(len(data), config.batch_size)
    out, _, _ = _optimize(model, data, init, torch.full((init.shape[0],), float(lam)), config, sampler, _nll,
                          f"CHG {stage}", None if stage == "base" else _open_shut)
    return out


@dataclass(frozen=True)
class CHGFit:
    """Gate logits of the three stages, ``[n_masks, n_layers, n_heads]`` each, plus the task loss.

    Attributes:
        base, plus, minus: logits after the lambda = 0, +lambda and -lambda stages.
        nll_base, nll_plus, nll_minus: last-step mean NLL per mask ``[n_masks]``.
        seconds: wall time of the fit.
        stages: ``{"base": StageRun, "plus_minus": StageRun}`` (the +/- stages are fitted together).
        unsettled: ``[2, n_layers, n_heads]`` bool, heads whose ``G+`` (row 0) / ``G-`` (row 1) role is
            not settled in any mask (:func:`interp.gating.settle.unsettled`).
    """

    base: torch.Tensor
    plus: torch.Tensor
    minus: torch.Tensor
    nll_base: torch.Tensor
    nll_plus: torch.Tensor
    nll_minus: torch.Tensor
    seconds: float
    stages: dict[str, StageRun]
    unsettled: torch.Tensor | None = None


def fit_chg(model: Any, data: GateData, *, config: CHGConfig = CHGConfig()) -> CHGFit:
    """The three-stage CHG fit on prompts with targets (all masks in one tiled batch).

    The lambda = 0 stage stops when its task loss stops improving, the +/- lambda
    stage (both fitted together) when the taxonomy of the mean gates is stable, each for
    ``config.patience`` steps (or at ``config.max_steps``).
    """
    t0 = time.perf_counter()
    sampler = _batch_sampler(len(data), config.batch_size)
    m, cfg = config.n_masks, model.cfg
    init = init_gate_logits(m, cfg.n_layers, cfg.n_heads, seed=config.seed)
    _check_stage("base", 0.0)
    base, nll_base, run_base = _optimize(model, data, init, torch.zeros(m), config, sampler, _nll, "CHG lambda=0",
                                         None)
    _check_stage("plus", config.lam)
    _check_stage("minus", -config.lam)
    lam = torch.cat([torch.full((m,), config.lam), torch.full((m,), -config.lam)])

    def taxonomy(g: torch.Tensor) -> torch.Tensor:
        return role_codes(g[:m].mean(0), g[m:].mean(0), facilitating_threshold=config.facilitating_threshold,
                          interfering_threshold=config.interfering_threshold)

    both, nll_both, run_pm = _optimize(model, data, torch.cat([base, base]), lam, config, sampler, _nll,
                                       "CHG lambda=+/-", taxonomy)
    from interp.gating.settle import stage_gradient, unsettled

    grad = stage_gradient(model, data, both, lam, config)
    thr = torch.cat([torch.full((m,), config.interfering_threshold), torch.full((m,), config.facilitating_threshold)])
    flags = unsettled(both.cpu(), grad, lam, thr, logit_clamp=config.logit_clamp)
    return CHGFit(base.cpu(), both[:m].cpu(), both[m:].cpu(), nll_base, nll_both[:m], nll_both[m:],
                  time.perf_counter() - t0, {"base": run_base, "plus_minus": run_pm},
                  torch.stack([flags[:m].any(0), flags[m:].any(0)]))


def head_roles(g_plus: Float[Tensor, "layer head"], g_minus: Float[Tensor, "layer head"], *, facilitating_threshold: float = 0.5,
               interfering_threshold: float = 0.5) -> list[str]:
    """Taxonomy [U] of each head from mean gates (flattened order).

    facilitating: ``G- >= facilitating_threshold``; interfering: ``G+ <= interfering_threshold``;
    when both hold the larger score (``G-`` vs ``1 - G+``) decides; otherwise irrelevant.
    """
    codes = role_codes(g_plus.reshape(-1), g_minus.reshape(-1), facilitating_threshold=facilitating_threshold,
                       interfering_threshold=interfering_threshold)
    return [ROLES[c] for c in codes.tolist()]


def _std(x: torch.Tensor) -> torch.Tensor:
    return x.std(0, correction=1) if x.shape[0] > 1 else torch.zeros_like(x[0])


def _borderline(g_plus: torch.Tensor, g_minus: torch.Tensor, cfg: CHGConfig) -> torch.Tensor:
    """Heads whose mean ``G+`` or ``G-`` lies within ``cfg.margin`` of its role threshold (bool, same shape)."""
    return (((g_minus - cfg.facilitating_threshold).abs() < cfg.margin)
            | ((g_plus - cfg.interfering_threshold).abs() < cfg.margin))


def _stages_meta(stages: dict[str, StageRun]) -> dict[str, dict[str, Any]]:
    return {name: {"steps": r.steps, "converged": r.converged, "last_change": r.last_change,
                   "changes": list(r.changes), "lr_last": r.lr} for name, r in stages.items()}


#: The metric every CHG fit optimises (the task loss is its negative mean): the log-probability of each
#: prompt's target token at its last real token, :data:`interp.gating.ablation.answer_logprob`'s name.
#: Recorded in the ``gating.chg`` Result's ``meta.extra["metric"]``; :func:`interp.gating.validate_chg`
#: checks the roles against exact patching with this metric.
FIT_METRIC = "answer_logprob"


def chg_result(model: Any, fit: CHGFit, data: GateData, *, config: CHGConfig) -> Any:
    """``gating.chg`` Result: one row per head with gates, scores (mean and std over masks) and role.

    ``meta.extra["stages"]``: per stage (``base``, ``plus_minus``) the steps run, ``converged`` and
    ``last_change`` (the step after which the roles last changed).
    """
    import pandas as pd

    from interp.nodes import node_id
    from interp.results import Result, run_meta

    gp, gm, g0 = torch.sigmoid(fit.plus), torch.sigmoid(fit.minus), torch.sigmoid(fit.base)
    irr = gp - gm
    roles = head_roles(gp.mean(0), gm.mean(0), facilitating_threshold=config.facilitating_threshold,
                       interfering_threshold=config.interfering_threshold)
    n_layers, n_heads = gp.shape[1:]
    rows = []
    for layer in range(n_layers):
        for head in range(n_heads):
            i = layer * n_heads + head
            sl = (slice(None), layer, head)
            rows.append({"layer": layer, "head": head, "node": node_id("head", layer=layer, head=head),
                         "g_plus": float(gp[sl].mean()), "g_minus": float(gm[sl].mean()),
                         "g_plus_std": float(_std(gp[sl][:, None])[0]), "g_minus_std": float(_std(gm[sl][:, None])[0]),
                         "g_base": float(g0[sl].mean()),
                         "facilitation": float(gm[sl].mean()), "interference": float(1 - gp[sl].mean()),
                         "irrelevance": float(irr[sl].mean()), "irrelevance_std": float(_std(irr[sl][:, None])[0]),
                         "role": roles[i]})
    flags = fit.unsettled if fit.unsettled is not None else torch.zeros(2, n_layers, n_heads, dtype=torch.bool)
    meta = run_meta(model, dataset=data.name, data=list(data.texts), seed=config.seed, config=config,
                    metric=FIT_METRIC, fit_seconds=round(fit.seconds, 3), n_prompts=len(data),
                    stages=_stages_meta(fit.stages),
                    unsettled=[f"{node_id('head', layer=int(a), head=int(b))} ({'G+' if k == 0 else 'G-'})"
                               for k, a, b in flags.nonzero().tolist()],
                    borderline=[node_id("head", layer=int(a), head=int(b))
                                for a, b in _borderline(gp.mean(0), gm.mean(0), config).nonzero().tolist()],
                    nll_base=fit.nll_base.tolist(), nll_plus=fit.nll_plus.tolist(), nll_minus=fit.nll_minus.tolist())
    return Result("gating.chg", pd.DataFrame(rows), meta, name=data.name)


def causal_head_gating(model: Any, dataset: Any, *, config: CHGConfig = CHGConfig(), targets: Any = None) -> Any:
    """Causal head gating on prompts with target tokens -> ``gating.chg`` Result.

    Args:
        dataset: TaskDataset (targets = answers) or TokenBatch with ``targets`` ids.
        config: :class:`CHGConfig`.

    Columns: ``layer, head, node, g_plus, g_minus, g_plus_std, g_minus_std, g_base, facilitation,
    interference, irrelevance, irrelevance_std, role``; ``meta.extra["metric"]``: :data:`FIT_METRIC`.
    """
    data = gate_data(model, dataset, targets=targets)
    _batch_sampler(len(data), config.batch_size)  # dataset too small for the batch: fail before fitting
    return chg_result(model, fit_chg(model, data, config=config), data, config=config)
