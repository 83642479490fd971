"""Distributed exact activation patching: the sweep's layers spread over Ray workers.

:func:`activation_patching_ray` cuts the layers of a :class:`~interp.patching.PatchConfig` into
interleaved groups (layer ``i`` goes to task ``i mod T``, which balances the cost: a patch at
layer ``l`` computes ``n_layers - l`` layers), runs :func:`interp.patching.activation_patching`
on each group in a worker (every pass goes through the one engine, :func:`interp.engine.run`),
and merges the tables in the order of a local run. Each task recomputes the clean/corrupted
baseline pass (one pass of ``2B`` rows per length bucket), which is the per-task overhead; the
values equal a local run's within float rounding (passes of other row counts; the tests check
1e-6).
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from interp.distributed.ray_engine import RayEngine
from interp.errors import ConfigError

if TYPE_CHECKING:
    from interp.patching import PatchConfig
    from interp.results import Result
    from interp.types import Model

__all__ = ["activation_patching_ray", "layer_groups"]


def layer_groups(layers: list[int], tasks: int) -> list[tuple[int, ...]]:
    """Interleaved groups: ``layer_groups([0, 1, 2, 3, 4], 2) == [(0, 2, 4), (1, 3)]``.

    Example:
        >>> layer_groups([0, 1, 2, 3, 4], 2)
        [(0, 2, 4), (1, 3)]
    """
    t = max(1, min(tasks, len(layers)))
    return [tuple(layers[i::t]) for i in range(t)]


def activation_patching_ray(model: Model, data: Any, config: PatchConfig, *, engine: RayEngine,
                            tasks: int | None = None) -> Result:
    """:func:`interp.patching.activation_patching` with its layers spread over ``engine``'s workers.

    Args:
        model: the driver's model (workers load the same one; its identity is checked).
        data: a TaskDataset (sent to every task).
        config: the sweep; its ``layers`` (all when ``None``) are cut into ``tasks`` groups.
        engine: an entered :class:`RayEngine`.
        tasks: number of tasks (default: two per worker, at most one per layer).

    Returns:
        Result ``patching.nodes`` with the rows, order and columns of a local run; ``meta.extra``
        sums the pass counts over tasks and adds ``engine`` (workers, tasks, seconds).
    """
    import pandas as pd

    from interp.results import Result

    t0 = time.perf_counter()
    n_layers = model.cfg.n_layers
    layers = list(range(n_layers)) if config.layers is None else sorted(set(config.layers))
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad:
        raise ConfigError(f"layers {bad} out of range; the model has {n_layers} layers")
    n_workers = len(engine.workers(model))
    groups = layer_groups(layers, tasks or 2 * n_workers)
    cfgs = [dataclasses.replace(config, layers=g, progress=False) for g in groups]
    parts: list[Result] = engine.map(model, "patch", [(data, c) for c in cfgs])

    table = pd.concat([p.table for p in parts], ignore_index=True)
    metric_rank = {m: i for i, m in enumerate(config.metrics)}
    # a local run lists rows metric by metric, then patch by patch: layer, position, head
    table = (table.assign(_m=table["metric"].map(metric_rank))
             .sort_values(["_m", "layer", "pos", "head"], kind="mergesort")
             .drop(columns="_m").reset_index(drop=True))
    extra = dict(parts[0].meta.extra)
    for k in ("n_patches", "forward_passes", "rows"):
        extra[k] = sum(int(p.meta.extra[k]) for p in parts)
    extra["seconds"] = round(time.perf_counter() - t0, 3)
    extra["engine"] = {"kind": "ray", "workers": n_workers, "tasks": len(groups),
                       "task_seconds": [p.meta.extra["seconds"] for p in parts]}
    meta = dataclasses.replace(parts[0].meta, config=_as_json(config), extra=extra)
    return Result(parts[0].kind, table, meta, name=parts[0].name)


def _as_json(config: Any) -> dict[str, Any]:
    import json

    return json.loads(json.dumps(dataclasses.asdict(config), default=str))
