"""Results: what every analysis returns, with provenance, saved as parquet + JSON.

A :class:`Result` is a *kind* (``"sinks.alpha"``, ``"patching.heads"`` ...), a tidy
pandas table with one row per measured unit (columns such as ``layer``, ``head``,
``pos``, ``feature``, ``metric``, ``value``) and a :class:`RunMeta` (model, dataset
hash, seed, config, versions, git revision). ``Result.save(folder)`` writes
``<id>.parquet`` and ``<id>.json`` and records the Result in the folder's
``manifest.json``; :func:`load_result` / :func:`load_results` read them back identical.

Example:
    >>> import pandas as pd
    >>> from interp.results import Result, RunMeta
    >>> r = Result("demo", pd.DataFrame({"layer": [0, 1], "value": [0.5, 0.7]}),
    ...            RunMeta(model="toy:llama", seed=0))
    >>> r.table.value.max()
    0.7
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import io
import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from interp._fs import atomic_write_bytes, atomic_write_json
from interp.errors import StoreError

__all__ = ["RunMeta", "Result", "load_result", "load_results", "dataset_hash", "library_versions", "git_revision",
           "run_meta"]

_VERSIONED = ("interp", "torch", "transformer_lens", "transformers", "sae_lens", "numpy", "pandas")


def library_versions() -> dict[str, str]:
    """Versions of interp and the main libraries it runs on (those importable)."""
    from importlib import metadata

    out = {}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            continue
    return out


def git_revision(path: Path | None = None) -> str | None:
    """The git commit of the interp checkout (``None`` outside a git checkout)."""
    where = path or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def dataset_hash(items: Any) -> str:
    """Stable short hash of prompts, token ids or any JSON-able dataset."""
    if hasattr(items, "tolist"):
        items = items.tolist()
    blob = json.dumps(items, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True, kw_only=True)
class RunMeta:
    """Provenance of a Result.

    Attributes:
        model: model spec; ``model_revision`` the weights' hash (see ``ModelInfo``).
        dataset: dataset name; ``dataset_hash`` a hash of its prompts / tokens.
        seed: random seed, if any.
        config: the analysis config as a dict.
        versions: library versions; ``git`` the interp commit; ``created`` ISO time.
        extra: anything else worth keeping (timings, notes).
    """

    model: str = ""
    model_revision: str = ""
    tokenizer: str = ""
    dataset: str = ""
    dataset_hash: str = ""
    seed: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=library_versions)
    git: str | None = field(default_factory=git_revision)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunMeta":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def run_meta(model: Any = None, *, dataset: str = "", data: Any = None, seed: int | None = None,
             config: Any = None, **extra: Any) -> RunMeta:
    """Build a RunMeta from a loaded model, a dataset, and a config dataclass or dict."""
    info = getattr(model, "interp_info", None)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    return RunMeta(
        model=info.spec if info else (str(model) if isinstance(model, str) else ""),
        model_revision=info.revision if info else "",
        tokenizer=getattr(getattr(model, "tokenizer", None), "name_or_path", "") or "",
        dataset=dataset,
        dataset_hash=dataset_hash(data) if data is not None else "",
        seed=seed,
        config=json.loads(json.dumps(config or {}, default=str)),
        extra=extra,
    )


_ID_OK = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Result:
    """Kind + tidy table + provenance; what every analysis returns.

    Attributes:
        kind: dotted name of the measurement, e.g. ``"patching.heads"``.
        table: tidy DataFrame, one row per measured unit.
        meta: :class:`RunMeta`.
        name: optional id suffix to tell apart several Results of one kind.
    """

    kind: str
    table: pd.DataFrame
    meta: RunMeta = field(default_factory=RunMeta)
    name: str = ""

    @property
    def id(self) -> str:
        """File-safe id: ``kind`` plus ``name`` when given."""
        return _ID_OK.sub("_", self.kind + (f"-{self.name}" if self.name else ""))

    def figure(self, **kwargs: Any) -> Any:
        """A plotly figure of this Result (see :func:`interp.plots.figure`)."""
        from interp.plots import figure

        return figure(self, **kwargs)

    def save(self, folder: str | Path) -> Path:
        """Write ``<id>.parquet`` + ``<id>.json`` into ``folder`` and list it in ``manifest.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        self.table.to_parquet(buf, index=False)
        atomic_write_bytes(folder / f"{self.id}.parquet", buf.getvalue())
        atomic_write_json(folder / f"{self.id}.json", {"kind": self.kind, "name": self.name, "id": self.id,
                                                       "columns": list(map(str, self.table.columns)),
                                                       "rows": len(self.table), "meta": self.meta.as_dict()})
        manifest = _read_manifest(folder)
        entry = {"id": self.id, "kind": self.kind, "name": self.name, "rows": len(self.table),
                 "model": self.meta.model}
        manifest["results"] = [e for e in manifest["results"] if e["id"] != self.id] + [entry]
        atomic_write_json(folder / "manifest.json", manifest)
        return folder / f"{self.id}.parquet"

    def __repr__(self) -> str:
        return f"Result(kind={self.kind!r}, name={self.name!r}, rows={len(self.table)}, model={self.meta.model!r})"


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / "manifest.json"
    if not path.exists():
        return {"format": "interp.results/1", "results": []}
    data = json.loads(path.read_text())
    if data.get("format") != "interp.results/1":
        raise StoreError(f"{path} is not an interp results manifest (format={data.get('format')!r})")
    return data


def load_result(folder: str | Path, id: str) -> Result:
    """Load one Result by id from a results folder."""
    folder = Path(folder)
    meta_path, table_path = folder / f"{id}.json", folder / f"{id}.parquet"
    if not meta_path.exists() or not table_path.exists():
        known = [e["id"] for e in _read_manifest(folder)["results"]] if (folder / "manifest.json").exists() else []
        from interp.errors import nearest

        raise StoreError(f"no Result {id!r} in {folder}.{nearest(id, known)}")
    head = json.loads(meta_path.read_text())
    table = pd.read_parquet(table_path)
    return Result(head["kind"], table, RunMeta.from_dict(head["meta"]), head.get("name", ""))


def load_results(folder: str | Path) -> dict[str, Result]:
    """Load every Result listed in ``folder/manifest.json``, by id."""
    folder = Path(folder)
    return {e["id"]: load_result(folder, e["id"]) for e in _read_manifest(folder)["results"]}
