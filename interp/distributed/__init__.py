"""Distributed runs on Ray: activation caching and exact patching sweeps over workers that keep the model.

* :class:`EngineConfig` — ``local`` (default: this process, nothing changes) or ``ray``, workers, address;
  the CLI's ``--engine/--workers/--address`` and a pipeline config's ``[engine]`` table.
* :class:`RayEngine` — connects to a cluster (or starts a local one), one actor per worker.
* :func:`collect_ray` — :func:`interp.cache.collect` with one task per shard; the store equals a
  local run's byte for byte.
* :func:`activation_patching_ray` — :func:`interp.patching.activation_patching` with the sweep's
  layers spread over tasks; the Result equals a local run's within float rounding.

Ray is optional (``pip install 'interp[ray]'``); nothing here imports it until an engine is entered.
"""

from interp.distributed.config import ENGINES, EngineConfig, open_engine, require_ray

__all__ = ["ENGINES", "EngineConfig", "open_engine", "require_ray", "RayEngine", "collect_ray", "activation_patching_ray"]


def __getattr__(name: str):  # lazy: the Ray-facing modules load on first use
    if name == "RayEngine":
        from interp.distributed.ray_engine import RayEngine

        return RayEngine
    if name == "collect_ray":
        from interp.distributed.cache import collect_ray

        return collect_ray
    if name == "activation_patching_ray":
        from interp.distributed.patching import activation_patching_ray

        return activation_patching_ray
    raise AttributeError(f"module 'interp.distributed' has no attribute {name!r}")
