"""Distributed causal head gating: the masks (seeds) of a CHG fit spread over Ray workers.

Why the split is exact: in :func:`interp.gating.fit_chg` the masks share one tiled batch, but
nothing in a step mixes them (each mask's loss term has its own gates, Adam is elementwise, the
gradient is clipped per mask, the prompt draws come from one seeded generator every mask sees
alike), and mask ``k`` starts from slab ``k`` of :func:`~interp.gating.init_gate_logits`. What
couples them is the stopping rule: the lambda = 0 stage stops on the mean task loss over masks,
the +/- stage on the taxonomy of the gates averaged over masks, and each stage returns the gates
averaged over the last ``patience`` steps before *that* stop. So a plain per-seed split (each
worker stopping on its own masks) is not the tiled run unless ``patience = 0``.

:func:`causal_head_gating_ray` reproduces the tiled run: each task runs one stage for a group of
masks (rows of the tiled batch) for all ``max_steps`` steps with the one optimiser
(:func:`interp.gating.chg._optimize`, no early stop) and returns the gates and task loss after
every step; the driver concatenates the groups in mask order and applies the stopping rule of
``_optimize`` to the whole trajectory (:func:`replay_stage`), which gives the tiled run's stop
step, averaged gates, last-step loss and :class:`~interp.gating.StageRun`; the +/- stage then
starts from those base gates as locally. Values equal the local run's within float rounding
(micro-batches of other sizes; the tests check 1e-6). The price: every task runs ``max_steps``
steps, where the tiled run may stop earlier (``meta.extra["engine"]`` reports steps run vs used).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from interp.distributed.ray_engine import RayEngine

if TYPE_CHECKING:
    from interp.gating.chg import CHGConfig
    from interp.gating.stop import StageRun
    from interp.types import Model

__all__ = ["causal_head_gating_ray", "replay_stage"]


def replay_stage(init: Float[Tensor, "mask layer head"], gates: Float[Tensor, "step mask layer head"],
                 task: Float[Tensor, "step mask"], roles: Callable[[Any], Any] | None,
                 config: CHGConfig) -> tuple[Float[Tensor, "mask layer head"], Float[Tensor, " mask"], StageRun]:
    """The stopping rule of :func:`interp.gating.chg._optimize` applied to a recorded stage.

    Args:
        init: the stage's starting logits (the window starts with their gates).
        gates: the gates after each step (all ``max_steps``), every mask of the tiled batch.
        task: the task loss per mask after each step.
        roles: as in ``_optimize`` (``None``: the lambda = 0 stage's loss plateau).

    Returns:
        What ``_optimize`` returns: the logits of the gates averaged over the window at the stop,
        that step's task loss and the :class:`~interp.gating.StageRun`.
    """
    from interp.gating.stop import StopRule

    rule = StopRule(torch.sigmoid(init.detach().clone().float()), roles, config)
    task_k = torch.zeros(init.shape[0])
    for step in range(1, gates.shape[0] + 1):
        task_k = task[step - 1]
        if rule.update(step, gates[step - 1], task_k):
            break
    return rule.logits(), task_k, rule.run(config.lr_at(rule.step, anneal=roles is not None))


def _groups(n: int, tasks: int) -> list[slice]:
    size = math.ceil(n / max(1, min(tasks, n)))
    return [slice(lo, min(n, lo + size)) for lo in range(0, n, size)]


def _stage(engine: RayEngine, model: Model, data: Any, init: Tensor, lam: Tensor, config: CHGConfig,
           tasks: int, anneal: bool) -> tuple[Tensor, Tensor]:
    parts = _groups(init.shape[0], tasks)
    answers = engine.map(model, "chg_stage", [(data, init[g].clone(), lam[g].clone(), config, anneal) for g in parts])
    return torch.cat([a["gates"] for a in answers], dim=1), torch.cat([a["task"] for a in answers], dim=1)


def causal_head_gating_ray(model: Model, dataset: Any, *, engine: RayEngine, config: CHGConfig | None = None,
                           targets: Any = None, tasks: int | None = None) -> Any:
    """:func:`interp.gating.causal_head_gating` with the masks' stages on ``engine``'s workers (see module doc).

    Args:
        tasks: groups of masks per stage (default: one per worker, at most one per mask row).

    Returns:
        Result ``gating.chg`` equal to the local tiled run's within float rounding; ``meta.extra["engine"]``
        has workers, tasks, and the steps each stage ran on the workers vs the steps the stop rule used.
    """
    from interp.gating.chg import (CHGConfig, CHGFit, _batch_sampler, _check_stage, chg_result, gate_data,
                                   init_gate_logits, role_codes)

    cfg = config or CHGConfig()
    t0 = time.perf_counter()
    data = gate_data(model, dataset, targets=targets)
    _batch_sampler(len(data), cfg.batch_size)       # dataset too small for the batch: fail before fitting
    sent = dataclasses.replace(data, tokens=data.tokens.cpu(), last=data.last.cpu(), targets=data.targets.cpu())
    n_workers = len(engine.workers(model))
    n_tasks = tasks or n_workers
    m, mc = cfg.n_masks, model.cfg
    init = init_gate_logits(m, mc.n_layers, mc.n_heads, seed=cfg.seed)
    _check_stage("base", 0.0)
    gates, task = _stage(engine, model, sent, init, torch.zeros(m), cfg, n_tasks, anneal=False)
    base, nll_base, run_base = replay_stage(init, gates, task, None, cfg)
    _check_stage("plus", cfg.lam)
    _check_stage("minus", -cfg.lam)
    lam = torch.cat([torch.full((m,), cfg.lam), torch.full((m,), -cfg.lam)])

    def taxonomy(g: Tensor) -> Tensor:
        return role_codes(g[:m].mean(0), g[m:].mean(0), facilitating_threshold=cfg.facilitating_threshold,
                          interfering_threshold=cfg.interfering_threshold)

    start = torch.cat([base, base])
    gates, task = _stage(engine, model, sent, start, lam, cfg, n_tasks, anneal=True)
    both, nll_both, run_pm = replay_stage(start, gates, task, taxonomy, cfg)
    fit = CHGFit(base.cpu(), both[:m].cpu(), both[m:].cpu(), nll_base, nll_both[:m], nll_both[m:],
                 time.perf_counter() - t0, {"base": run_base, "plus_minus": run_pm})
    res = chg_result(model, fit, data, config=cfg)
    res.meta.extra["engine"] = {"kind": "ray", "workers": n_workers, "tasks": len(_groups(m, n_tasks))
                                + len(_groups(2 * m, n_tasks)), "steps_run": cfg.max_steps,
                                "steps_used": {"base": run_base.steps, "plus_minus": run_pm.steps},
                                "seconds": round(time.perf_counter() - t0, 3)}
    return res
