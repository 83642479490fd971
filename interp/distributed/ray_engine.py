"""The Ray engine: connect to (or start) a Ray cluster, keep one actor per worker with the model loaded.

:class:`RayEngine` is a context manager. Entering connects: to ``address`` (``"auto"``,
``"HOST:PORT"``, ``"ray://HOST:PORT"``; an unreachable one is a one-line ConfigError naming it
and the alternatives, before anything is written), to the Ray instance this process already
runs, or to a new local one (stopped again on exit). :meth:`RayEngine.map` runs one method of
:class:`~interp.distributed.worker.Worker` over a list of argument tuples on the workers of a
model (created on first use, each loading the model once and keeping it) and returns the
answers in order. Workers are Ray actors with ``max_restarts`` / ``max_task_retries``: a worker
whose process dies is restarted (it loads the model again) and its task is retried; the tasks
are idempotent (a shard is rewritten byte for byte, a sweep chunk recomputed).

Ray is imported only here, when an engine is entered.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from interp.distributed.config import EngineConfig, require_ray
from interp.errors import ConfigError, InterpError

__all__ = ["RayEngine", "check_address"]

_ALTERNATIVES = ("use --engine local (this process), or start a cluster with `ray start --head` on a machine "
                 "and pass the address it prints (HOST:6379), or leave --address empty for a local Ray instance")


def check_address(address: str, timeout: float = 3.0) -> None:
    """Refuse a ``HOST:PORT`` / ``ray://HOST:PORT`` address that accepts no TCP connection, in ``timeout`` s.

    (A port that answers but is not a Ray cluster fails in ``ray.init`` after Ray's own connect
    timeout, ~30 s, with the same one-line error; Ray's retry logs are kept off the terminal.)

    Raises:
        ConfigError: malformed or unreachable, naming the address and the alternatives.
    """
    if address in ("", "auto", "local"):
        return
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto; {_ALTERNATIVES}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise ConfigError(f"--address {address}: no Ray cluster reachable there ({why}); {_ALTERNATIVES}") from None


class RayEngine:
    """A connection to a Ray cluster and its model-holding workers.

    Args:
        config: :class:`EngineConfig` with ``kind="ray"`` (``workers`` 0: one per CPU, at most 2 on a new
            local instance; ``address`` ``""``: this process's Ray, or a new local one).
        cpus_per_worker: CPUs each actor reserves (torch in the actor uses that many threads).
        retries: restarts of a dead worker and retries of its task before the run fails.
        ready_timeout: seconds to wait for the workers to load their model.

    Example (needs Ray; see tests/test_ray.py)::

        with RayEngine(EngineConfig(kind="ray", workers=2)) as eng:
            store = collect_ray(model, prompts, "resid_post", out="A", engine=eng)
    """

    def __init__(self, config: EngineConfig, *, cpus_per_worker: float = 1.0, retries: int = 3,
                 ready_timeout: float = 600.0) -> None:
        if config.kind != "ray":
            raise ConfigError(f"RayEngine needs EngineConfig(kind='ray'), got kind={config.kind!r}")
        self.config = config
        self.cpus_per_worker = cpus_per_worker
        self.retries = retries
        self.ready_timeout = ready_timeout
        self._started = False
        self._pools: dict[str, list[Any]] = {}
        self.stats: dict[str, Any] = {"tasks": 0, "task_seconds": [], "worker_loads": 0}

    # ------------------------------------------------------------------ connection
    def __enter__(self) -> "RayEngine":
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def connect(self) -> None:
        """Connect to the cluster (see the module doc); nothing is written anywhere before it succeeds."""
        ray = require_ray()
        address = self.config.address
        check_address(address)
        if ray.is_initialized():  # type: ignore[attr-defined]
            return
        kw: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False}
        try:
            if address:
                with _quiet_stderr():   # Ray's C++ client logs each failed retry to fd 2 for ~30 s
                    ray.init(address=address, **kw)  # type: ignore[attr-defined]
            else:
                n = self.config.workers or min(2, os.cpu_count() or 1)
                ray.init(num_cpus=max(1, int(n * self.cpus_per_worker + 0.999)), **kw)  # type: ignore[attr-defined]
        except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError ...
            where = f"--address {address}" if address else "a local Ray instance"
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"cannot connect to {where}: {first}; {_ALTERNATIVES}") from None
        self._started = True

    def close(self) -> None:
        """Drop the workers; stop Ray if this engine started it."""
        ray = require_ray()
        self.release_workers()
        if self._started:
            ray.shutdown()  # type: ignore[attr-defined]
            self._started = False

    # ------------------------------------------------------------------ workers
    def release_workers(self) -> None:
        """Kill this engine's workers (their CPUs return to the cluster); the next task starts new ones."""
        ray = require_ray()
        for actors in self._pools.values():
            for a in actors:
                try:
                    ray.kill(a)  # type: ignore[attr-defined]
                except Exception:  # noqa: BLE001 - already dead
                    pass
        self._pools.clear()

    def n_workers(self) -> int:
        """Workers to start: ``config.workers``, or as many as the cluster's CPUs allow."""
        ray = require_ray()
        if self.config.workers:
            return self.config.workers
        cpus = ray.cluster_resources().get("CPU", 1)  # type: ignore[attr-defined]
        return max(1, int(cpus // self.cpus_per_worker))

    def workers(self, model: Any) -> list[Any]:
        """The actors holding ``model`` (a loaded model; workers load the same spec and check its identity)."""
        from interp.distributed.worker import Worker, model_recipe

        recipe = model_recipe(model)
        key = recipe["revision"]
        if key in self._pools:
            return self._pools[key]
        ray = require_ray()
        self.release_workers()   # one model's workers at a time: they hold the cluster's CPUs
        n = self.n_workers()
        deadline = time.monotonic() + 15.0     # CPUs of workers just killed come back within seconds
        while True:
            free = ray.available_resources().get("CPU", 0.0)  # type: ignore[attr-defined]
            if free + 1e-9 >= n * self.cpus_per_worker or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if free + 1e-9 < n * self.cpus_per_worker:
            raise ConfigError(f"--workers {n}: the Ray cluster has {free:g} free CPUs, {n} workers need "
                              f"{n * self.cpus_per_worker:g}; ask for fewer workers or add nodes")
        cls = ray.remote(num_cpus=self.cpus_per_worker, max_restarts=self.retries,  # type: ignore[attr-defined]
                         max_task_retries=self.retries)(Worker)
        actors = [cls.remote(recipe) for _ in range(n)]
        try:
            infos = ray.get([a.info.remote() for a in actors], timeout=self.ready_timeout)  # type: ignore[attr-defined]
        except Exception as e:  # noqa: BLE001 - GetTimeoutError, actor died while loading
            for a in actors:
                ray.kill(a)  # type: ignore[attr-defined]
            raise ConfigError(f"Ray workers did not start with model {recipe['spec']!r} within "
                              f"{self.ready_timeout:g} s: {_first_line(e)}") from None
        bad = [i["error"] for i in infos if i.get("error")]
        if bad:
            for a in actors:
                ray.kill(a)  # type: ignore[attr-defined]
            raise ConfigError(f"a Ray worker could not load model {recipe['spec']!r}: {bad[0]}")
        self.stats["worker_loads"] += n
        self._pools[key] = actors
        return actors

    def map(self, model: Any, method: str, args: Sequence[tuple[Any, ...]], *,
            progress: Callable[[int], None] | None = None) -> list[Any]:
        """``[worker.method(*a) for a in args]``, spread over the workers of ``model``; answers in order.

        A task goes to the next idle worker (Ray's ActorPool). A worker's InterpError is raised here as
        itself (one line); a task that still fails after ``retries`` restarts of its worker is a
        StoreError naming the task.
        """
        ray = require_ray()
        from ray.util import ActorPool

        actors = self.workers(model)
        pool = ActorPool(actors)
        out: list[Any] = []
        t0 = time.perf_counter()
        try:
            for i, answer in enumerate(pool.map(lambda a, v: getattr(a, method).remote(*v), list(args))):
                out.append(answer)
                if progress is not None:
                    progress(i + 1)
        except ray.exceptions.RayTaskError as e:  # type: ignore[attr-defined]
            cause = getattr(e, "cause", None)
            if isinstance(cause, InterpError):
                raise cause from None
            raise
        except ray.exceptions.RayActorError as e:  # type: ignore[attr-defined]
            from interp.errors import StoreError

            raise StoreError(f"Ray worker died {self.retries + 1} times running {method} (task {len(out)} of "
                             f"{len(args)}): {_first_line(e)}") from None
        self.stats["tasks"] += len(args)
        self.stats["task_seconds"].append(time.perf_counter() - t0)
        return out


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 goes to a temporary file while the block runs (restored in ``finally``)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def absolute(path: str | Path) -> str:
    return str(Path(path).resolve())
