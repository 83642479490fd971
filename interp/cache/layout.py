"""On-disk layout of an activation store: manifest, token and text files, shards, the completion record.

Layout of a store folder (format ``interp.activation_store/2``)::

    DIR/manifest.json         written once when the store is created: format, model, sites and
                              dims, dtype, counts, the shard plan, checksums of the two files below
    DIR/tokens.safetensors    ``ids`` (every prompt's token ids, concatenated), ``lengths``, ``order``
    DIR/texts.jsonl           the prompts, one JSON string a line
    DIR/completed.jsonl       append-only: one line per finished shard (file, bytes, sha256,
                              tensor dtypes and shapes), written *before* the shard is renamed
                              into place (write-ahead)
    DIR/shard-00000000-00000015.safetensors   rows 0..15 of the processing order
    DIR/.lock                 while a writer runs (:func:`interp._fs.folder_lock`)

A shard counts as complete when ``completed.jsonl`` holds its record and the file has the
recorded size and checksum. So no kill can lose a finished shard or make a broken one
count: a kill before the record leaves only a temporary file (removed on resume); a kill
between the record and the rename leaves a record without a file (recomputed on resume);
a truncated or altered shard fails its checksum (recomputed on resume, refused on read,
naming it). Manifest I/O over a run is O(N): the manifest once, one record line per shard.

Every path named by the manifest or the record is confined to the folder
(:func:`interp._fs.confined_path`): ``..``, absolute paths and symlinks leaving it are refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int, Shaped
from torch import Tensor

from interp._fs import atomic_write_bytes, confined_path, fsync_dir, sha256_file
from interp.errors import StoreError

__all__ = ["FORMAT", "FORMAT_V1", "MANIFEST", "TOKENS", "TEXTS", "RECORD", "shard_name", "read_manifest",
           "encode_tokens", "encode_texts", "load_tokens", "load_texts", "shard_entries", "read_records",
           "shard_problem", "write_shard", "repair", "sort_records", "dtype_name"]

FORMAT = "interp.activation_store/2"
FORMAT_V1 = "interp.activation_store/1"
MANIFEST = "manifest.json"
TOKENS = "tokens.safetensors"
TEXTS = "texts.jsonl"
RECORD = "completed.jsonl"
_SHARD_RE = re.compile(r"^shard-(\d{8})-(\d{8})\.safetensors$")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def shard_name(first: int, last: int) -> str:
    """File name of the shard holding rows ``first..last`` (inclusive) of the processing order."""
    return f"shard-{first:08d}-{last:08d}.safetensors"


def _fault(point: str, path: Path) -> None:
    """Test hook called at each named step of a shard write (``"shard_written"``, ``"recorded"``,
    ``"renamed"``); does nothing. Fault-injection tests replace it in a subprocess."""


# ---------------------------------------------------------------- manifest
def read_manifest(path: Path) -> dict[str, Any] | None:
    """The store manifest in ``path`` (format 2, or the older 1), ``None`` if there is none.

    Raises:
        StoreError: ``manifest.json`` exists but is not an activation-store manifest.
    """
    mpath = Path(path) / MANIFEST
    if not mpath.exists():
        return None
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{mpath} is not valid JSON ({e})") from e
    if not isinstance(data, dict) or data.get("format") not in (FORMAT, FORMAT_V1):
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise StoreError(f"{mpath} is not an activation-store manifest (format={got!r}, expected {FORMAT!r}); "
                         "choose another output folder, or pass overwrite=True / --overwrite to replace it")
    return data


def shard_entries(path: Path, manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The manifest's shard plan, each ``file`` checked: confined to ``path`` and named by its rows."""
    src = Path(path) / MANIFEST
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise StoreError(f"{src}: 'shards' must be a list, got {type(shards).__name__}")
    for i, sh in enumerate(shards):
        entry = f"shards[{i}].file"
        if not isinstance(sh, dict):
            raise StoreError(f"{src} ({entry}): expected an object, got {sh!r}")
        confined_path(path, sh.get("file"), source=src, entry=entry)
        try:
            want = shard_name(int(sh["first"]), int(sh["last"]))
        except (KeyError, TypeError, ValueError) as e:
            raise StoreError(f"{src} (shards[{i}]): needs integer 'first' and 'last' ({e})") from e
        if sh["file"] != want:
            raise StoreError(f"{src} ({entry}): expected {want!r} for rows {sh['first']}..{sh['last']}, "
                             f"got {sh['file']!r}")
    return shards


# ---------------------------------------------------------------- tokens and texts
def encode_tokens(rows_ids: Int[Tensor, " n_tokens"], lengths: Sequence[int], order: Sequence[int]) -> bytes:
    """Bytes of ``tokens.safetensors``: flat ``ids`` [n_tokens], ``lengths`` and ``order`` [n_prompts]."""
    from safetensors.torch import save

    return save({"ids": rows_ids.to(torch.long).contiguous(), "lengths": torch.tensor(list(lengths), dtype=torch.long),
                 "order": torch.tensor(list(order), dtype=torch.long)}, metadata={"format": "pt"})


def encode_texts(texts: Sequence[str]) -> bytes:
    """Bytes of ``texts.jsonl``: one JSON string a line (ASCII escapes: lone surrogates survive)."""
    return "".join(json.dumps(t) + "\n" for t in texts).encode("ascii")


def _checked_file(path: Path, manifest: Mapping[str, Any], key: str) -> tuple[Path, bytes]:
    """Read the file the manifest names under ``key`` and check its size and checksum."""
    import hashlib

    src = Path(path) / MANIFEST
    entry = manifest.get(key)
    if not isinstance(entry, dict):
        raise StoreError(f"{src}: '{key}' must be an object with file, bytes and sha256, got {entry!r}")
    f = confined_path(path, entry.get("file"), source=src, entry=f"{key}.file")
    if not f.is_file():
        raise StoreError(f"{f} (named by {src}) is missing; the store cannot be read. Rerun collect with the same "
                         "arguments to rewrite it")
    data = f.read_bytes()
    if len(data) != entry.get("bytes") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise StoreError(f"{f} does not match its checksum in {src} ({len(data)} bytes, expected "
                         f"{entry.get('bytes')}): it was altered or truncated. Rerun collect with the same arguments "
                         "to rewrite it, or recreate the store")
    return f, data


def load_tokens(path: Path, manifest: Mapping[str, Any]) -> tuple[Int[Tensor, " n_tokens"], Int[Tensor, " n_prompts"], list[int]]:
    """``(ids [n_tokens], lengths [n_prompts], order)`` from ``tokens.safetensors``, checked."""
    from safetensors.torch import load

    f, data = _checked_file(path, manifest, "tokens")
    t = load(data)
    ids, lengths, order = t.get("ids"), t.get("lengths"), t.get("order")
    n = manifest.get("n_prompts")
    if ids is None or lengths is None or order is None or len(lengths) != n or int(lengths.sum()) != len(ids) \
            or sorted(order.tolist()) != list(range(len(lengths))):
        raise StoreError(f"{f}: inconsistent token file (expected ids, lengths and order of {n} prompts)")
    return ids, lengths, order.tolist()


def load_texts(path: Path, manifest: Mapping[str, Any]) -> list[str]:
    """The prompts from ``texts.jsonl``, checked."""
    f, data = _checked_file(path, manifest, "texts")
    try:
        texts = [json.loads(line) for line in data.decode("ascii").splitlines()]
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(f"{f}: unreadable ({e})") from e
    if len(texts) != manifest.get("n_prompts") or not all(isinstance(t, str) for t in texts):
        raise StoreError(f"{f}: expected {manifest.get('n_prompts')} prompt strings, got {len(texts)} lines")
    return texts


# ---------------------------------------------------------------- completion record
def read_records(path: Path, manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{shard file: record}`` from ``completed.jsonl`` (the last record of a file wins).

    A line cut short by a kill is ignored (its shard was never renamed into place); a record
    naming a file outside the folder is refused; records of files not in the plan are ignored.

    Raises:
        StoreError: a record names a path that leaves the folder.
    """
    rpath = Path(path) / RECORD
    if not rpath.exists():
        return {}
    planned = {sh["file"] for sh in shard_entries(path, manifest)}
    out: dict[str, dict[str, Any]] = {}
    for n, line in enumerate(rpath.read_bytes().split(b"\n"), start=1):
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(rec, dict):
            continue
        confined_path(path, rec.get("file"), source=rpath, entry=f"line {n}")
        if rec["file"] in planned and isinstance(rec.get("bytes"), int) and isinstance(rec.get("sha256"), str):
            out[rec["file"]] = rec
    return out


def _expected_tensors(manifest: Mapping[str, Any], shard: Mapping[str, Any]) -> dict[str, list[Any]]:
    """``{tensor name: [dtype, shape]}`` a shard of the plan must hold."""
    site_info, dtype = manifest["site_info"], manifest["dtype"]
    out: dict[str, list[Any]] = {}
    for j, (first, last, width) in enumerate(shard["batches"]):
        n = last - first + 1
        for s in manifest["sites"]:
            shape = [n if d == "batch" else width if isinstance(d, str) else d for d in site_info[s]["shape"]]
            out[f"{s}@{j}"] = [dtype, shape]
        out[f"prompt_ids@{j}"] = ["int64", [n]]
        out[f"lengths@{j}"] = ["int64", [n]]
    return out


def shard_problem(path: Path, manifest: Mapping[str, Any], shard: Mapping[str, Any], record: Mapping[str, Any] | None,
                  *, checksum: bool = True) -> str | None:
    """Why the planned ``shard`` cannot be trusted (missing, truncated, altered, wrong tensors), or ``None``."""
    name = shard["file"]
    f = confined_path(path, name, source=Path(path) / MANIFEST, entry=name)
    if record is None:
        return f"shard {name} has no record in {RECORD} (an interrupted write)"
    if not f.is_file():
        return f"shard {name} recorded in {RECORD} is missing"
    size = f.stat().st_size
    if size != record["bytes"]:
        return f"shard {name} is truncated or altered: {size} bytes, {RECORD} records {record['bytes']}"
    if record.get("tensors") != _expected_tensors(manifest, shard):
        return f"shard {name}: its recorded tensors (names, dtypes, shapes) do not match the manifest's plan"
    if checksum and sha256_file(f) != record["sha256"]:
        return f"shard {name} was altered: its sha256 differs from the one in {RECORD}"
    return None


def _append_record(path: Path, record: Mapping[str, Any]) -> None:
    fd = os.open(Path(path) / RECORD, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def write_shard(path: Path, name: str, tensors: Mapping[str, Shaped[Tensor, "..."]]) -> dict[str, Any]:
    """Write one shard: temp file, checksum, record (write-ahead, fsynced), rename. Returns the record."""
    from safetensors.torch import save_file

    tmp = Path(path) / f".{name}.{os.getpid()}.tmp"
    try:
        # one metadata key only: safetensors writes metadata from a hash map, so several keys
        # would come out in a random order and identical shards would differ in bytes
        # no fsync of the shard: one damaged by a power cut fails its checksum and is recomputed
        save_file(dict(tensors), str(tmp), metadata={"format": "pt"})
        _fault("shard_written", tmp)
        record = {"file": name, "bytes": tmp.stat().st_size, "sha256": sha256_file(tmp),
                  "tensors": {k: [dtype_name(t.dtype), list(t.shape)] for k, t in tensors.items()}}
        _append_record(path, record)
        _fault("recorded", tmp)
        os.replace(tmp, Path(path) / name)
        fsync_dir(Path(path))
        _fault("renamed", Path(path) / name)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(e, StoreError) or not (isinstance(e, OSError) or type(e).__name__ == "SafetensorError"):
            raise
        raise StoreError(f"cannot write shard {name} in {path}: {e}") from e   # e.g. no space left on device
    return record


def repair(path: Path, manifest: Mapping[str, Any]) -> set[str]:
    """Before resuming (the folder lock held): the names of planned shards that are complete.

    Removes leftover temporary files, deletes planned shards that fail their checks
    (truncated, altered, unrecorded) so they are recomputed, and rewrites ``completed.jsonl``
    with the valid records in plan order (only if that changes it).
    """
    path = Path(path)
    for p in path.glob(".shard-*.tmp"):
        p.unlink(missing_ok=True)
    records = read_records(path, manifest)
    done: set[str] = set()
    kept: list[Mapping[str, Any]] = []
    for sh in shard_entries(path, manifest):
        rec = records.get(sh["file"])
        if shard_problem(path, manifest, sh, rec) is None:
            done.add(sh["file"])
            kept.append(rec)  # type: ignore[arg-type]
        else:
            (path / sh["file"]).unlink(missing_ok=True)
    _rewrite_records(path, kept)
    return done


def sort_records(path: Path, manifest: Mapping[str, Any]) -> None:
    """After a run (the folder lock held): ``completed.jsonl`` in plan order, one record per shard.

    A resumed run appends the shards it recomputed after the ones kept; sorting makes the
    record, like every other file, equal byte for byte to that of an uninterrupted run.
    """
    records = read_records(path, manifest)
    _rewrite_records(Path(path), [records[sh["file"]] for sh in shard_entries(path, manifest)
                                  if sh["file"] in records])


def _rewrite_records(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Replace ``completed.jsonl`` atomically by ``records``, unless it already holds exactly them."""
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()
    rpath = path / RECORD
    if (rpath.read_bytes() if rpath.exists() else b"") != text:
        atomic_write_bytes(rpath, text)
