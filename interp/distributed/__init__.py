"""Distributed runs on Ray: activation caching and exact patching sweeps over workers that keep the model.

* :class:`EngineConfig` — ``local`` (default: this process, nothing changes) or ``ray``, workers, address;
  the CLI's ``--engine/--workers/--address`` and a pipeline config's ``[engine]`` table.
* :class:`RayEngine` — connects to a cluster (or starts a local one), one actor per worker.
* :func:`collect_ray` — :func:`interp.cache.collect` with one task per shard; the store equals a
  local run's byte for byte.
* :func:`activation_patching_ray` — :func:`interp.patching.activation_patching` with the sweep's
  layers spread over tasks; the Result equals a local run's within float rounding.
* :func:`causal_trace_ray` — :func:`interp.tracing.causal_trace` with chunks of each fact's
  restoration rows (whole passes) on the workers.
* :func:`evaluate_circuits_ray` — :func:`interp.circuits.evaluate_circuits` with chunks of circuits.
* :func:`causal_head_gating_ray` — :func:`interp.gating.causal_head_gating` with groups of masks per
  stage; the driver applies the tiled run's stopping rule to all masks (exact, see its module).

Ray is optional (``pip install 'interp[ray]'``); nothing here imports it until an engine is entered.
"""

from interp.distributed.config import ENGINES, EngineConfig, open_engine, require_ray

__all__ = ["ENGINES", "EngineConfig", "open_engine", "require_ray", "RayEngine", "collect_ray",
           "activation_patching_ray", "causal_trace_ray", "evaluate_circuits_ray", "causal_head_gating_ray"]

_LAZY = {"RayEngine": "ray_engine", "collect_ray": "cache", "activation_patching_ray": "patching",
         "causal_trace_ray": "tracing", "evaluate_circuits_ray": "circuits", "causal_head_gating_ray": "gating"}


def __getattr__(name: str):  # lazy: the Ray-facing modules load on first use
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"interp.distributed.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'interp.distributed' has no attribute {name!r}")
