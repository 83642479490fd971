"""The Ray worker: one actor per worker process, holding one loaded model for all its tasks.

:class:`Worker` is a plain class (Ray wraps it with ``ray.remote`` in
:class:`~interp.distributed.ray_engine.RayEngine`), so this module imports without Ray.
Its tasks call the library's own functions on the worker's model:

* :meth:`Worker.cache_shard` runs :func:`interp.cache.collect` (in RAM) on one shard's prompts,
  in the driver's processing order and batches, and writes the shard with
  :func:`interp.cache.layout.write_shard` (temporary file, checksum, write-ahead record, rename):
  the same bytes as a local run. Rerunning it (a retried task) rewrites the same bytes.
* :meth:`Worker.patch` runs :func:`interp.patching.activation_patching` on a subset of layers
  (rows of the one engine's passes) and returns its Result.
* :meth:`Worker.trace_rows` runs :func:`interp.tracing.restoration_probs` on a chunk of one fact's
  restorations (causal tracing).
* :meth:`Worker.circuit_masks` runs :meth:`interp.circuits.Evaluator.run_masks` on a chunk of circuits
  (the Evaluator of one evaluation is built once per worker and kept).
* :meth:`Worker.chg_stage` runs one CHG stage for a subset of masks for all ``max_steps`` and returns
  the gates after every step (the driver applies the stopping rule to all masks).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["Worker", "model_recipe"]


def model_recipe(model: Any) -> dict[str, Any]:
    """How a worker loads the same model as ``model``: spec (an absolute path for a local folder) and options."""
    info = getattr(model, "interp_info", None)
    if info is None:
        from interp.errors import ConfigError

        raise ConfigError("the Ray engine needs a model from interp.load_model (it has no interp_info to reload "
                          "it in the workers)")
    spec = info.spec
    if not spec.startswith("toy:") and Path(spec).exists():
        spec = str(Path(spec).resolve())
    device = next(model.parameters()).device.type
    return {"spec": spec, "revision": info.revision, "dtype": info.dtype, "processing": info.processing,
            "prepend_bos": info.prepend_bos, "device": device, "device_map": getattr(info, "device_map", None)}


class Worker:
    """A Ray actor's state: the model, loaded once (again only if Ray restarts the actor)."""

    def __init__(self, recipe: dict[str, Any]) -> None:
        import torch

        from interp.errors import InterpError
        from interp.models import load_model

        self.error = ""
        self.model: Any = None
        self._evaluators: dict[str, Any] = {}
        self.started = time.time()
        try:
            where = {"device_map": recipe["device_map"]} if recipe.get("device_map") else {"device": recipe["device"]}
            self.model = load_model(recipe["spec"], dtype=getattr(torch, recipe["dtype"]), **where,
                                    processing=recipe["processing"], prepend_bos=recipe["prepend_bos"])
        except InterpError as e:
            self.error = str(e)
            return
        mine = self.model.interp_info.revision
        if mine != recipe["revision"]:
            self.error = (f"on host {socket.gethostname()} {recipe['spec']!r} loads as {mine}, the driver's model is "
                          f"{recipe['revision']} (a different model or version on this node)")

    def info(self) -> dict[str, Any]:
        """Process id, host and any loading error (the driver checks it before giving tasks)."""
        return {"pid": os.getpid(), "host": socket.gethostname(), "error": self.error,
                "threads": _threads()}

    def set_fault(self, fn: Callable[[str, Path], None]) -> int:
        """Tests only: call ``fn(point, path)`` at each step of this process's shard writes (a restarted
        actor starts without it). Returns the pid."""
        from interp.cache import layout

        layout._fault = fn
        return os.getpid()

    def cache_shard(self, out: str, name: str, ids: list[int], prompts: list[str], sites: list[str],
                    batch_size: int, dtype: str, allow_nonfinite: bool) -> dict[str, Any]:
        """Compute and write shard ``name`` of the store in ``out``: ``prompts`` (global indices ``ids``) in
        processing order, batches of ``batch_size`` as the plan cut them. Returns its record and timing."""
        import torch

        from interp.cache import collect
        from interp.cache.layout import MANIFEST, write_shard
        from interp.errors import DataError, StoreError

        t0 = time.perf_counter()
        folder = Path(out)
        if not (folder / MANIFEST).is_file():
            raise StoreError(f"Ray worker on host {socket.gethostname()} cannot see the store {folder} (no "
                             f"{MANIFEST}): --out must be on a file system every Ray node shares")
        try:
            store = collect(self.model, prompts, sites, batch_size=batch_size, dtype=dtype, progress=False,
                            allow_nonfinite=allow_nonfinite)
        except DataError as e:
            raise DataError(f"shard {name} (prompts {ids[0]}..., local index in the message): {e}") from None
        tensors: dict[str, torch.Tensor] = {}
        for j, start in enumerate(range(0, len(prompts), batch_size)):
            rows = list(range(start, min(start + batch_size, len(prompts))))
            for s in store.sites:
                tensors[f"{s}@{j}"] = store.get(s, prompts=rows)
            tensors[f"prompt_ids@{j}"] = torch.tensor([ids[r] for r in rows], dtype=torch.long)
            tensors[f"lengths@{j}"] = store.lengths[rows].clone()
        t1 = time.perf_counter()
        record = write_shard(folder, name, tensors)
        return {"record": record, "pid": os.getpid(), "compute_s": t1 - t0, "write_s": time.perf_counter() - t1}

    def patch(self, data: Any, config: Any) -> Any:
        """:func:`interp.patching.activation_patching` of ``config`` (a subset of layers) on ``data``."""
        from interp.patching import activation_patching

        return activation_patching(self.model, data, config)


    def trace_rows(self, job: dict[str, Any]) -> Any:
        """:func:`interp.tracing.restoration_probs` of one chunk (``job``: its keyword arguments after the model)."""
        import torch

        from interp.tracing import restoration_probs

        with torch.inference_mode():
            return restoration_probs(self.model, **job)

    def circuit_masks(self, key: str, data: Any, config: Any, masks: list[Any]) -> dict[str, Any]:
        """``run_masks(masks)`` on this worker's Evaluator of evaluation ``key`` (built on first use; one kept)."""
        from interp.circuits.evaluate import Evaluator

        ev = self._evaluators.get(key)
        if ev is None:
            self._evaluators = {key: Evaluator(self.model, data, config)}
            ev = self._evaluators[key]
            f0 = r0 = 0                       # this worker's baseline pass counts once, with its first chunk
        else:
            f0, r0 = ev.counter.forward, ev.counter.rows
        values = ev.run_masks(masks)
        return {"values": values, "forward": ev.counter.forward - f0, "rows": ev.counter.rows - r0}

    def chg_stage(self, data: Any, init: Any, lam: Any, config: Any, anneal: bool = False) -> dict[str, Any]:
        """One CHG stage of ``init``'s masks (``lam`` per mask) for ``config.max_steps`` steps, no early stop
        (``anneal``: the annealed lr of the stages that decide roles, :meth:`interp.gating.CHGConfig.lr_at`).

        Returns ``gates`` ``[steps, masks, layers, heads]`` (after each step) and ``task`` ``[steps, masks]``."""
        import dataclasses

        import torch

        from interp.gating.chg import _batch_sampler, _nll, _optimize

        dev = next(self.model.parameters()).device
        data = dataclasses.replace(data, tokens=data.tokens.to(dev), last=data.last.to(dev),
                                   targets=data.targets.to(dev))
        gates: list[torch.Tensor] = []
        task: list[torch.Tensor] = []

        def record(step: int, g: torch.Tensor, t: torch.Tensor) -> None:
            gates.append(g.detach().cpu().clone())
            task.append(t.detach().cpu().clone())

        cfg = dataclasses.replace(config, patience=0, progress=False)
        _optimize(self.model, data, init, lam, cfg, _batch_sampler(len(data), cfg.batch_size), _nll,
                  "CHG (ray)", None, on_step=record, anneal=anneal)
        return {"gates": torch.stack(gates), "task": torch.stack(task), "pid": os.getpid()}


def _threads() -> int:
    import torch

    return torch.get_num_threads()
