"""Distributed activation caching: the shards of one store computed and written by Ray workers.

:func:`collect_ray` is :func:`interp.cache.collect` with a ``shard_runner``: the driver (this
process) does everything but the forward passes, exactly as a local run (argument checks,
tokenization, the shard plan, the manifest, the folder lock, resume of a partial store, the
final record order); each missing shard is one task on a worker, which writes it with the
store's atomic shard write (temporary file, checksum, write-ahead record in
``completed.jsonl``, rename). The store is equal byte for byte to a local run's.

A worker killed mid-task is restarted and its task retried: a shard written twice has the same
bytes and the record keeps one line per shard (:func:`~interp.cache.layout.sort_records`);
temporary files of killed writers are removed; before returning, every planned shard is checked
(record, size, tensors) so an incomplete store is an error, never a silent gap.

The store folder must be on a file system every Ray node sees (any folder on one machine).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interp.distributed.ray_engine import RayEngine

if TYPE_CHECKING:
    from interp.cache import ActivationStore
    from interp.types import Model

__all__ = ["collect_ray", "RayShardRunner"]


class RayShardRunner:
    """The ``shard_runner`` of :func:`interp.cache.collect` that runs each shard as a task on ``engine``."""

    def __init__(self, engine: RayEngine, model: Model, *, allow_nonfinite: bool = False,
                 progress: bool = True) -> None:
        self.engine = engine
        self.model = model
        self.allow_nonfinite = allow_nonfinite
        self.progress = progress
        self.answers: list[dict[str, Any]] = []

    def __call__(self, out: Path, manifest: dict[str, Any], prompts: list[str],
                 jobs: list[tuple[str, list[int]]]) -> None:
        from interp.cache.layout import read_records, shard_entries, shard_problem
        from interp.errors import StoreError

        folder = str(Path(out).resolve())
        args = [(folder, name, ids, [prompts[i] for i in ids], list(manifest["sites"]), int(manifest["batch_size"]),
                 str(manifest["dtype"]), self.allow_nonfinite) for name, ids in jobs]
        bar = None
        if self.progress and args:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(args), unit="shard", desc="collect (ray)", leave=False)
        try:
            self.answers = self.engine.map(self.model, "cache_shard", args,
                                           progress=None if bar is None else lambda i: bar.update(1))
        finally:
            if bar is not None:
                bar.close()
        for p in Path(out).glob(".shard-*.tmp"):   # left by a writer killed mid-shard (its task was retried)
            p.unlink(missing_ok=True)
        records = read_records(Path(out), manifest)
        todo = {name for name, _ in jobs}
        for sh in shard_entries(Path(out), manifest):
            if sh["file"] in todo:
                problem = shard_problem(Path(out), manifest, sh, records.get(sh["file"]), checksum=False)
                if problem:
                    raise StoreError(f"{out}: after the Ray run, {problem}; rerun the same command to resume")


def collect_ray(model: Model, prompts: Sequence[str] | str, sites: str | Iterable[Any], *, out: str | Path,
                engine: RayEngine, batch_size: int = 8, max_memory: int | str | None = None, dtype: Any = None,
                progress: bool = True, overwrite: bool = False, allow_nonfinite: bool = False) -> ActivationStore:
    """:func:`interp.cache.collect` to ``out`` with the forward passes on ``engine``'s workers (same arguments).

    Returns:
        The store opened from ``out``, equal byte for byte to the one a local ``collect`` writes.
    """
    from interp.cache import collect

    runner = RayShardRunner(engine, model, allow_nonfinite=allow_nonfinite, progress=progress)
    return collect(model, prompts, sites, batch_size=batch_size, out=out, max_memory=max_memory, dtype=dtype,
                   progress=progress, overwrite=overwrite, allow_nonfinite=allow_nonfinite, shard_runner=runner)
