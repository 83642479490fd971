"""Which engine runs a job: this process (``local``) or a Ray cluster (``ray``); no Ray import here.

Example:
    >>> EngineConfig().kind, EngineConfig(kind="ray", workers=2).workers
    ('local', 2)
    >>> EngineConfig(kind="local", workers=2)
    Traceback (most recent call last):
    ...
    interp.errors.ConfigError: engine: workers=2 and address='' need kind='ray' (the local engine is this one process)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from interp.errors import ConfigError, nearest

__all__ = ["ENGINES", "EngineConfig", "RAY_MISSING", "require_ray", "engine_from_cli", "open_engine"]

ENGINES = ("local", "ray")
RAY_MISSING = "Ray is not installed: pip install 'interp[ray]' (or run with --engine local)"


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """Where the work runs: the ``[engine]`` table of a pipeline config and ``--engine/--workers/--address``.

    Attributes:
        kind: ``"local"`` (this process, the default) or ``"ray"``.
        workers: Ray actors, each loading the model once (0: as many as the cluster has CPUs, at most 2 locally).
        address: a Ray cluster (``"auto"``, ``"HOST:PORT"`` or ``"ray://HOST:PORT"``); ``""`` starts a local
            Ray instance inside this process.
    """

    kind: str = "local"
    workers: int = 0
    address: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ENGINES:
            raise ConfigError(f"engine: expected one of {', '.join(ENGINES)}, got {self.kind!r}."
                              f"{nearest(self.kind, ENGINES)}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ConfigError(f"engine: workers must be an integer >= 0 (0: one per CPU), got {self.workers!r}")
        if not isinstance(self.address, str):
            raise ConfigError(f"engine: address must be a string, got {self.address!r}")
        if self.kind == "local" and (self.workers or self.address):
            raise ConfigError(f"engine: workers={self.workers} and address={self.address!r} need kind='ray' "
                              "(the local engine is this one process)")

    @property
    def distributed(self) -> bool:
        return self.kind == "ray"


def require_ray() -> object:
    """The ``ray`` module, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ConfigError(RAY_MISSING) from e
    return ray


def engine_from_cli(engine: str, workers: int, address: str) -> EngineConfig:
    """The CLI's ``--engine/--workers/--address`` as an EngineConfig; with ``ray``, Ray must be importable.

    Raises:
        ConfigError: an unknown engine (nearest named), workers/address without ``--engine ray``,
            or ``--engine ray`` without Ray installed.
    """
    if engine not in ENGINES:
        raise ConfigError(f"--engine: expected one of {', '.join(ENGINES)}, got {engine!r}.{nearest(engine, ENGINES)}")
    if engine == "local" and (workers or address):
        raise ConfigError(f"--workers {workers} / --address {address!r} need --engine ray (local runs in this process)")
    if workers < 0:
        raise ConfigError(f"--workers: expected an integer >= 0 (0: one per CPU), got {workers}")
    cfg = EngineConfig(kind=engine, workers=workers, address=address)
    if cfg.distributed:
        require_ray()
    return cfg


@contextlib.contextmanager
def open_engine(config: EngineConfig) -> Iterator[Any]:
    """``None`` for the local engine, else an entered :class:`~interp.distributed.ray_engine.RayEngine`.

    Example:
        >>> with open_engine(EngineConfig()) as eng:
        ...     print(eng)
        None
    """
    if not config.distributed:
        yield None
        return
    from interp.distributed.ray_engine import RayEngine

    with RayEngine(config) as engine:
        yield engine
