"""Results: what every analysis returns, with provenance, saved as parquet + JSON.

A :class:`Result` is a *kind* (``"sinks.alpha"``, ``"patching.heads"`` ...), a tidy
pandas table with one row per measured unit (columns such as ``layer``, ``head``,
``pos``, ``feature``, ``metric``, ``value``; declared per kind in :mod:`interp.schemas`) and a :class:`RunMeta` (model, dataset
hash, seed, config, versions, git revision). ``Result.save(folder)`` writes
``<id>.parquet`` and ``<id>.json`` and records the Result in the folder's
``manifest.json``; :func:`load_result` / :func:`load_results` read them back identical.

Example:
    >>> import pandas as pd
    >>> from interp.results import Result, RunMeta
    >>> r = Result("sinks.layers", pd.DataFrame({"layer": [0, 1], "sink_rate": [0.5, 0.7],
    ...            "sink_rate_std": [0.1, 0.1], "n_prompts": [8, 8]}), RunMeta(model="toy:llama", seed=0))
    >>> r.table.sink_rate.max()
    0.7
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import io
import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from interp._fs import atomic_write_bytes, atomic_write_json, folder_lock
from interp.errors import StoreError

if TYPE_CHECKING:
    from interp.types import Model

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


def run_meta(model: Model = None, *, dataset: str = "", data: Any = None, seed: int | None = None,
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
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
_FORMAT = "interp.results/1"


@dataclass(frozen=True)
class Result:
    """Kind + tidy table + provenance; what every analysis returns.

    The table's columns follow the schema of its kind (:mod:`interp.schemas`), checked on
    save and on load.

    Attributes:
        kind: dotted name of the measurement, e.g. ``"patching.nodes"``.
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

    def validate(self, *, allow_nonfinite: bool = False) -> "Result":
        """Check the table against its kind's schema (see :func:`interp.schemas.validate`); returns self."""
        from interp.schemas import validate

        validate(self.kind, self.table, where=f"Result {self.id!r}", allow_nonfinite=allow_nonfinite)
        return self

    def save(self, folder: str | Path, *, allow_nonfinite: bool = False) -> Path:
        """Write ``<id>.parquet`` + ``<id>.json`` into ``folder`` and list it in ``manifest.json``.

        The table is checked against its kind's schema first (NaN / inf only where the schema
        allows it, unless ``allow_nonfinite``). The save is atomic as a whole: the files and the
        manifest entry appear together or not at all (on any error, e.g. a full disk, the new
        files are removed and the folder is as before). A results folder holds Results of one
        model identity: saving another model's Result there is refused, naming both.

        Raises:
            SchemaError: the table does not match its kind's schema.
            StoreError: the folder cannot be written, or holds another model's Results.
        """
        self.validate(allow_nonfinite=allow_nonfinite)
        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create results folder {folder}: {e.strerror or e}") from e
        buf = io.BytesIO()
        self.table.to_parquet(buf, index=False)
        data = buf.getvalue()
        table_path, head_path = folder / f"{self.id}.parquet", folder / f"{self.id}.json"
        head = {"kind": self.kind, "name": self.name, "id": self.id, "columns": list(map(str, self.table.columns)),
                "rows": len(self.table), "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                "meta": self.meta.as_dict()}
        with folder_lock(folder, what="results folder"):
            manifest = _read_manifest(folder)
            _check_identity(folder, manifest, self)
            backup = {p: p.read_bytes() for p in (table_path, head_path) if p.is_file() and not p.is_symlink()}
            try:
                atomic_write_bytes(table_path, data)
                atomic_write_json(head_path, head)
                entry = {"id": self.id, "kind": self.kind, "name": self.name, "rows": len(self.table),
                         "model": self.meta.model, "model_revision": self.meta.model_revision}
                manifest["results"] = [e for e in manifest["results"] if e.get("id") != self.id] + [entry]
                atomic_write_json(folder / "manifest.json", manifest)
            except BaseException as e:
                for p in (table_path, head_path):  # roll back to what was there before
                    with contextlib.suppress(OSError):
                        if p in backup:
                            p.write_bytes(backup[p])
                        else:
                            p.unlink()
                if isinstance(e, OSError):
                    raise StoreError(f"could not save Result {self.id!r} in {folder}: {e.strerror or e}; "
                                     "nothing of it was kept") from e
                raise
        return table_path

    def __repr__(self) -> str:
        return f"Result(kind={self.kind!r}, name={self.name!r}, rows={len(self.table)}, model={self.meta.model!r})"


def _check_identity(folder: Path, manifest: dict[str, Any], result: Result) -> None:
    mine = (result.meta.model, result.meta.model_revision)
    for e in manifest["results"]:
        theirs = (e.get("model", ""), e.get("model_revision", ""))
        if e.get("id") == result.id or not all(mine) or not all(theirs):
            continue
        if theirs != mine:
            raise StoreError(f"{folder} holds Results of model {theirs[0]!r} (identity {theirs[1]}), e.g. "
                             f"{e.get('id')!r}; Result {result.id!r} is from {mine[0]!r} (identity {mine[1]}). "
                             "One results folder describes one model: use another folder")


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / "manifest.json"
    if path.is_symlink():
        raise StoreError(f"{path} is a symbolic link; a results manifest must be a plain file in its folder")
    if not path.exists():
        return {"format": _FORMAT, "results": []}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(f"{path} is not readable JSON: {e}") from e
    if not isinstance(data, dict) or data.get("format") != _FORMAT or not isinstance(data.get("results"), list):
        fmt = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise StoreError(f"{path} is not an interp results manifest (format={fmt!r})")
    for e in data["results"]:
        if not isinstance(e, dict) or not isinstance(e.get("id"), str):
            raise StoreError(f"{path}: malformed entry {e!r} (expected an object with a string 'id')")
    return data


def _inside(folder: Path, id: str, suffix: str) -> Path:
    """``folder/<id><suffix>``, refusing ids that leave the folder (``..``, absolute paths, links)."""
    if not _SAFE_ID.match(id) or id in (".", ".."):
        raise StoreError(f"{folder / 'manifest.json'}: refusing Result id {id!r}: an id is a plain file name "
                         "(letters, digits, '_', '-', '.'), never a path")
    path = folder / f"{id}{suffix}"
    if path.is_symlink():
        raise StoreError(f"{path} is a symbolic link; Result files must be plain files inside {folder}")
    return path


def load_result(folder: str | Path, id: str, *, allow_nonfinite: bool = False) -> Result:
    """Load one Result by id from a results folder.

    The table is checked against the checksum written at save time and against its kind's schema.

    Raises:
        StoreError: no such Result, an id that is not a plain file name, a symbolic link, or a
            table file altered or truncated since it was saved.
        SchemaError: the table's columns do not match its kind's schema (missing / extra named).
    """
    folder = Path(folder)
    meta_path, table_path = _inside(folder, id, ".json"), _inside(folder, id, ".parquet")
    if not meta_path.is_file() or not table_path.is_file():
        known = [e["id"] for e in _read_manifest(folder)["results"]] if (folder / "manifest.json").exists() else []
        from interp.errors import nearest

        raise StoreError(f"no Result {id!r} in {folder}.{nearest(id, known)}")
    try:
        head = json.loads(meta_path.read_text(encoding="utf-8"))
        data = table_path.read_bytes()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(f"cannot read Result {id!r} in {folder}: {e}") from e
    if not isinstance(head, dict) or not isinstance(head.get("kind"), str) or not isinstance(head.get("meta"), dict):
        raise StoreError(f"{meta_path} is not a Result header (expected kind and meta)")
    want = head.get("sha256")
    if want is not None and hashlib.sha256(data).hexdigest() != want:
        raise StoreError(f"{table_path} does not match the checksum written when it was saved "
                         f"({len(data)} bytes, {head.get('bytes')} saved): altered or truncated; save it again")
    try:
        table = pd.read_parquet(io.BytesIO(data))
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise StoreError(f"{table_path} is not a readable parquet table: {e}") from e
    from interp.schemas import validate

    validate(head["kind"], table, where=str(table_path), allow_nonfinite=allow_nonfinite)
    return Result(head["kind"], table, RunMeta.from_dict(head["meta"]), head.get("name", ""))


def load_results(folder: str | Path, *, allow_nonfinite: bool = False) -> dict[str, Result]:
    """Load every Result listed in ``folder/manifest.json``, by id (see :func:`load_result`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StoreError(f"results folder {folder} does not exist" if not folder.exists()
                         else f"{folder} is not a folder")
    if not (folder / "manifest.json").exists():
        raise StoreError(f"{folder} has no manifest.json: not an interp results folder")
    return {e["id"]: load_result(folder, e["id"], allow_nonfinite=allow_nonfinite)
            for e in _read_manifest(folder)["results"]}
