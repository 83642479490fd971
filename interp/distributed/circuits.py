"""Distributed edge-level circuit evaluation: chunks of circuits on Ray workers.

:func:`evaluate_circuits_ray` is :func:`interp.circuits.evaluate_circuits` with a ``runner``: the
driver builds the :class:`~interp.circuits.Evaluator` (one clean+corrupted baseline pass: the
baselines and the table), validates every circuit and builds its mask; the masks are cut into
contiguous chunks, one task each. A worker keeps one Evaluator per evaluation (its own baseline
pass, once, kept between the tasks of that evaluation) and returns
:meth:`~interp.circuits.Evaluator.run_masks` of its chunk. Values equal a local run's within
float rounding (the tests check 1e-6); ``forward_passes``/``rows`` in the meta count the workers'
passes too (each worker's baseline included).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from interp.distributed.ray_engine import RayEngine

if TYPE_CHECKING:
    from interp.circuits.evaluate import EdgeEvalConfig, Evaluator
    from interp.types import Model

__all__ = ["evaluate_circuits_ray", "RayMaskRunner"]


class RayMaskRunner:
    """The ``runner`` of :func:`interp.circuits.evaluate_circuits`: ``run_masks`` in chunks on ``engine``."""

    def __init__(self, engine: RayEngine, model: Model, data: Any, *, tasks: int | None = None) -> None:
        self.engine, self.model, self.data, self.tasks = engine, model, data, tasks
        self.stats: dict[str, Any] = {}

    def __call__(self, ev: Evaluator, masks: list[Any]) -> Any:
        import torch

        t0 = time.perf_counter()
        n_workers = len(self.engine.workers(self.model))
        if not masks:
            return torch.empty(0, dtype=torch.float64)
        n_tasks = max(1, min(len(masks), self.tasks or 2 * n_workers))
        size = math.ceil(len(masks) / n_tasks)
        key = uuid.uuid4().hex          # the workers' Evaluator for this evaluation
        args = [(key, self.data, ev.config, masks[lo:lo + size]) for lo in range(0, len(masks), size)]
        answers = self.engine.map(self.model, "circuit_masks", args)
        for a in answers:
            ev.counter.forward += a["forward"]
            ev.counter.rows += a["rows"]
        self.stats = {"kind": "ray", "workers": n_workers, "tasks": len(args),
                      "seconds": round(time.perf_counter() - t0, 3)}
        return torch.cat([a["values"] for a in answers])


def evaluate_circuits_ray(model: Model, data: Any, circuits: Mapping[str, Iterable[Any]] | Iterable[Any],
                          config: EdgeEvalConfig | None = None, *, engine: RayEngine,
                          tasks: int | None = None) -> Any:
    """:func:`interp.circuits.evaluate_circuits` with the circuits' passes on ``engine``'s workers.

    Args:
        tasks: number of chunks of circuits (default: two per worker, at most one per circuit).

    Returns:
        Result ``circuits.eval`` as a local run; ``meta.extra["engine"]`` has workers, tasks and seconds.
    """
    from interp.circuits.evaluate import EdgeEvalConfig, evaluate_circuits

    runner = RayMaskRunner(engine, model, data, tasks=tasks)
    res = evaluate_circuits(model, data, circuits, config or EdgeEvalConfig(), runner=runner)
    res.meta.extra["engine"] = runner.stats
    return res
