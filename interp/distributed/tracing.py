"""Distributed causal tracing: chunks of each fact's restoration rows on Ray workers.

:func:`causal_trace_ray` is :func:`interp.tracing.causal_trace` with a ``runner``: the driver
(this process) does everything but the restoration passes, exactly as a local run (the noise std,
the seeded noise of every fact drawn in the same order, pass 1 with the clean and corrupted
worlds, the answer, the tables). Each fact's restorations are cut, in the order
:func:`~interp.tracing.restoration_probs` runs them (by first restored layer), into chunks of
whole passes (a multiple of ``batch_size // n_samples`` restorations), so every task runs the same
passes of the one engine as the local run; a task sends the fact's tokens, noise and only the
clean activations its restorations use. Values equal a local run's within float rounding (the
tests check 1e-6). A killed worker's task is retried (the task is a pure function of its inputs).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from interp.distributed.ray_engine import RayEngine

if TYPE_CHECKING:
    from interp.tracing import TracingConfig
    from interp.types import Model

__all__ = ["causal_trace_ray", "RayTraceRunner"]


class RayTraceRunner:
    """The ``runner`` of :func:`interp.tracing.causal_trace` that spreads restoration chunks over ``engine``."""

    def __init__(self, engine: RayEngine, model: Model, *, tasks: int | None = None, progress: bool = True) -> None:
        self.engine, self.model, self.tasks, self.progress = engine, model, tasks, progress
        self.stats: dict[str, Any] = {}

    def __call__(self, jobs: Any) -> Any:
        import torch

        from interp.tracing import _first_layer

        todo = list(jobs)            # pass 1 of every fact, on the driver
        n_workers = len(self.engine.workers(self.model))
        total = sum(len(j["restorations"]) for j in todo)
        target = max(1, self.tasks or 4 * n_workers)
        args, where = [], []
        for f, job in enumerate(todo):
            rests = job["restorations"]
            grow = job["fast"] and all(s.layer is not None for r in rests for s, _ in r)
            order = sorted(range(len(rests)), key=lambda k: _first_layer(rests[k])) if grow else list(range(len(rests)))
            per_pass = max(1, job["batch_size"] // job["noise"].shape[0])
            size = per_pass * max(1, math.ceil(total / target / per_pass))
            for lo in range(0, len(order), size):
                idx = order[lo:lo + size]
                sub = [rests[k] for k in idx]
                used = {s for r in sub for s, _ in r}
                args.append(({**job, "restorations": sub, "clean": {s: v for s, v in job["clean"].items()
                                                                      if s in used}},))
                where.append((f, idx))
        bar = None
        if self.progress and args:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="row", desc="causal trace (ray)", leave=False)
        t0 = time.perf_counter()
        try:
            answers = self.engine.map(self.model, "trace_rows", args,
                                      progress=None if bar is None else lambda i: bar.update(len(where[i - 1][1])))
        finally:
            if bar is not None:
                bar.close()
        self.stats = {"kind": "ray", "workers": n_workers, "tasks": len(args),
                      "seconds": round(time.perf_counter() - t0, 3)}
        outs = [torch.zeros(len(j["restorations"])) for j in todo]
        for (f, idx), p in zip(where, answers):
            outs[f][idx] = p
        yield from outs


def causal_trace_ray(model: Model, ds: Any, config: TracingConfig | None = None, *, engine: RayEngine,
                     tasks: int | None = None, progress: bool = True) -> tuple[Any, Any]:
    """:func:`interp.tracing.causal_trace` with the restoration rows on ``engine``'s workers.

    Args:
        tasks: number of tasks to aim for (default: four per worker); chunks are whole passes.

    Returns:
        ``(grid, summary)`` as a local run; ``meta.extra["engine"]`` has workers, tasks and seconds.
    """
    from interp.tracing import causal_trace

    runner = RayTraceRunner(engine, model, tasks=tasks, progress=progress)
    grid, summary = causal_trace(model, ds, config, progress=False, runner=runner)
    grid.meta.extra["engine"] = runner.stats     # one meta object, shared by both Results
    return grid, summary
