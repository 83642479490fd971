"""ActivationStore: cached activations, in RAM or as safetensors shards on disk.

The folder layout (manifest, token and text files, shards, the append-only completion
record with a checksum per shard) is described in :mod:`interp.cache.layout`.

Prompts are processed in an *order* (longest first, to cut padding); a shard holds a
contiguous range of that order, so its name is fixed by the plan in the manifest and
independent workers could write disjoint shards in parallel. A shard holds whole
batches: for batch ``j`` of the shard and each site, a tensor ``"<site>@<j>"`` (e.g.
``"resid_post.3@0"``, ``[batch rows, batch width, ...]``, padded to the longest prompt of
the batch), plus ``"prompt_ids@<j>"`` (original prompt indices) and ``"lengths@<j>"``;
the manifest lists each shard's batches.

Reading checks what it reads: the token and text files against their checksums when the
store is opened, each shard's size when opened and its sha256 on first use (``verify``).
A truncated, altered or missing shard is refused, naming it.

Padding: every tensor returned by the store is right-padded to the longest selected
prompt; positions at or beyond a prompt's length (``store.lengths``) hold zeros
(for ``pattern``, query *and* key positions). ``store.mask`` marks real tokens.

Example:
    >>> from interp import load_model, collect, Site
    >>> model = load_model("toy:llama")
    >>> store = collect(model, ["hi", "hello there"], "resid_post", progress=False)
    >>> store[Site("resid_post", 1)].shape
    torch.Size([2, 12, 64])
    >>> store[Site("resid_post", 1), 1, :3].shape   # prompt 1, first 3 positions
    torch.Size([3, 64])
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from interp.cache.layout import (FORMAT, FORMAT_V1, MANIFEST, dtype_name, load_texts, load_tokens,
                                 read_manifest, read_records, shard_entries, shard_name, shard_problem)
from interp._fs import confined_path
from interp.errors import SiteError, StoreError, nearest
from interp.sites import Site

__all__ = ["ActivationStore", "FORMAT", "MANIFEST", "shard_name", "parse_bytes", "dtype_from_name",
           "read_manifest"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
           "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "half": torch.float16,
           "float": torch.float32, "double": torch.float64}


def dtype_from_name(name: str | torch.dtype) -> torch.dtype:
    """``"float16"`` / ``"bf16"`` / a torch dtype -> torch dtype (floating point only)."""
    if isinstance(name, torch.dtype):
        return name
    key = str(name).lower().replace("torch.", "")
    if key not in _DTYPES:
        raise StoreError(f"unknown dtype {name!r}; expected one of float32, float16, bfloat16, float64."
                         f"{nearest(key, _DTYPES)}")
    return _DTYPES[key]


_dtype_name = dtype_name


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(value: int | str | None) -> int | None:
    """``"1GB"`` -> 10**9, ``"512MiB"`` -> 512 * 2**20, ``4096`` -> 4096, ``None`` -> None."""
    if value is None or isinstance(value, int):
        if isinstance(value, int) and value <= 0:
            raise StoreError(f"max_memory must be > 0 bytes, got {value}")
        return value
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise StoreError(f"cannot read a memory size from {value!r}; write e.g. '1GB', '512MiB' or a byte count")
    out = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if out <= 0:
        raise StoreError(f"max_memory must be > 0 bytes, got {value!r}")
    return out


def _rows_of(index: Any, n: int) -> list[int]:
    """Normalise a batch index (int, slice, list, tensor) to a list of prompt ids."""
    if isinstance(index, int):
        if not -n <= index < n:
            raise IndexError(f"prompt index {index} out of range for a store of {n} prompts")
        return [index % n]
    if isinstance(index, slice):
        return list(range(n))[index]
    if isinstance(index, torch.Tensor):
        index = index.tolist()
    rows = [int(i) for i in index]
    for i in rows:
        if not -n <= i < n:
            raise IndexError(f"prompt index {i} out of range for a store of {n} prompts")
    return [i % n for i in rows]


def _pos_axes(site: Site) -> list[int]:
    """Axes of ``site``'s activation (batch first) that run over token positions."""
    return [i for i, d in enumerate(site.dims) if d in ("pos", "query_pos", "key_pos")]


@dataclass(frozen=True)
class _Chunk:
    """A group of prompts stored together: in RAM (``tensors``) or in a shard file (``path``)."""

    prompt_ids: tuple[int, ...]
    width: int
    path: Path | None = None
    tensors: Mapping[str, torch.Tensor] | None = None
    suffix: str = ""        # tensor names in the shard are f"{site}{suffix}" (one batch of the shard)
    shard: Mapping[str, Any] | None = None    # its entry of the manifest's plan (disk stores)
    record: Mapping[str, Any] | None = None   # its line of completed.jsonl (None: format 1, unchecked)


class ActivationStore:
    """Cached activations: token ids, lengths, ``{Site: tensor}`` and the model id.

    Build one with :func:`interp.cache.collect`; open a folder with
    :meth:`ActivationStore.open`. Indexing reads lazily from disk (memory-mapped
    safetensors, only the shards that hold the requested prompts):

    * ``store[site]`` -> ``[batch, pos, ...]`` every prompt, original order;
    * ``store[site, prompts]`` -> prompts by int / slice / list (int drops the batch dim);
    * ``store[site, prompts, positions]`` -> also slice token positions (for
      ``pattern``: query positions).

    A site with a head (``Site("z", 3, 1)``) selects that head from a stored ``z.3``.
    The store keeps no model reference and has no analysis methods.

    Attributes:
        sites: stored sites, in collection order.
        tokens: ``[batch, pos]`` int64 right-padded token ids (pad value 0).
        lengths: ``[batch]`` number of real tokens per prompt.
        texts: the prompts.
        model: provenance of the model (``ModelInfo.as_dict()``), model id = ``model["spec"]``.
        dtype: dtype of stored activations.
        reductions: results of streaming reducers, by reducer name (RAM only, not saved).
        path: the store folder, or ``None`` for an in-RAM store.
        verify: check each shard's sha256 on its first read (disk stores; sizes are always checked).
    """

    def __init__(self, *, sites: Sequence[Site], ids: torch.Tensor, lengths: torch.Tensor, texts: Sequence[str],
                 model: Mapping[str, Any], dtype: torch.dtype, chunks: Sequence[_Chunk], path: Path | None = None,
                 manifest: Mapping[str, Any] | None = None, reductions: Mapping[str, Any] | None = None,
                 verify: bool = True) -> None:
        self.sites: tuple[Site, ...] = tuple(sites)
        self._ids = ids.to(torch.long)                       # [n_tokens] every prompt's ids, concatenated
        self._lengths = lengths.to(torch.long)               # [n_prompts]
        self._starts = torch.cumsum(self._lengths, 0) - self._lengths
        self.texts: tuple[str, ...] = tuple(texts)
        self.verify = verify
        self._checked: set[Path] = set()
        self.model: dict[str, Any] = dict(model)
        self.dtype = dtype
        self._chunks = list(chunks)
        self.path = path
        self.manifest: dict[str, Any] = dict(manifest or {})
        self.reductions: dict[str, Any] = dict(reductions or {})
        self._by_key = {str(s): s for s in self.sites}
        # which chunk / row each prompt lives in
        self._where: dict[int, tuple[int, int]] = {}
        for ci, ch in enumerate(self._chunks):
            for r, p in enumerate(ch.prompt_ids):
                self._where[p] = (ci, r)

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self._lengths)

    @property
    def lengths(self) -> torch.Tensor:
        """``[batch]`` int64 number of real tokens of each prompt."""
        return self._lengths.clone()

    @property
    def tokens(self) -> torch.Tensor:
        """``[batch, pos]`` int64 token ids, right-padded with 0 (see :attr:`mask`)."""
        out = torch.zeros(len(self), int(self._lengths.max()), dtype=torch.long)
        out[self.mask] = self._ids
        return out

    @property
    def mask(self) -> torch.Tensor:
        """``[batch, pos]`` bool, True at real tokens."""
        lengths = self.lengths
        return torch.arange(int(lengths.max()))[None, :] < lengths[:, None]

    @property
    def complete(self) -> bool:
        """Whether every prompt's activations are present (shards recorded, on disk, of their recorded size)."""
        if not self.sites:
            return True
        if len(self._where) != len(self):
            return False
        return all(ch.path is None or ch.record is None or ch.path in self._checked
                   or (ch.path.is_file() and ch.path.stat().st_size == ch.record["bytes"]) for ch in self._chunks)

    def __contains__(self, site: object) -> bool:
        try:
            self._resolve(site)  # type: ignore[arg-type]
        except (SiteError, StoreError):
            return False
        return True

    def __repr__(self) -> str:
        where = f"path={str(self.path)!r}" if self.path else "in RAM"
        return (f"ActivationStore(model={self.model.get('spec')!r}, prompts={len(self)}, sites={len(self.sites)}, "
                f"dtype={_dtype_name(self.dtype)}, {where})")

    # ------------------------------------------------------------------ reading
    def _resolve(self, site: Site | str) -> tuple[str, Site]:
        site = site if isinstance(site, Site) else Site.parse(site)
        if str(site) in self._by_key:
            return str(site), site
        if site.head is not None and str(site.layer_site) in self._by_key:
            return str(site.layer_site), site
        known = list(self._by_key)
        raise SiteError(f"site {site} is not in this store.{nearest(str(site), known)} "
                        f"Stored: {', '.join(known[:8])}{' ...' if len(known) > 8 else ''}")

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, tuple):
            site, *rest = key
        else:
            site, rest = key, []
        if len(rest) > 2:
            raise IndexError("index a store as store[site], store[site, prompts] or store[site, prompts, positions]")
        prompts = rest[0] if rest else slice(None)
        positions = rest[1] if len(rest) > 1 else slice(None)
        out = self.get(site, prompts=prompts, positions=positions)
        return out[0] if isinstance(prompts, int) else out

    def get(self, site: Site | str, *, prompts: Any = slice(None), positions: slice = slice(None)) -> torch.Tensor:
        """Activations of ``site`` for ``prompts`` (original indices), padded to the longest of them.

        Args:
            site: a stored Site (or a head of a stored per-head site), or its string form.
            prompts: int, slice, list or tensor of prompt indices.
            positions: slice of token positions (query positions for ``pattern``).

        Returns:
            ``[batch, pos, ...]`` tensor (dims as ``site.dims``), a fresh tensor.

        Raises:
            SiteError: the site is not stored (nearest stored names suggested).
            StoreError: a shard is missing or the store is incomplete.
        """
        key, site = self._resolve(site)
        if not isinstance(positions, slice):
            raise IndexError(f"positions must be a slice, got {type(positions).__name__}")
        rows = _rows_of(prompts, len(self))
        missing = [p for p in rows if p not in self._where]
        if missing:
            raise StoreError(f"{len(missing)} prompts (first: #{missing[0]}) have no activations in this store; "
                             "it is incomplete (an interrupted collect?). Rerun collect with the same arguments "
                             "to resume.")
        width = int(self._lengths[rows].max()) if rows else 0
        pos_idx = range(width)[positions]
        dims = [d for i, d in enumerate(site.dims) if not (key != str(site) and i == site.head_axis)]
        axes = [i for i, d in enumerate(dims) if d in ("pos", "query_pos", "key_pos")]
        by_chunk: dict[int, list[tuple[int, int]]] = {}
        for out_row, p in enumerate(rows):
            ci, r = self._where[p]
            by_chunk.setdefault(ci, []).append((out_row, r))
        out: torch.Tensor | None = None
        for ci, pairs in by_chunk.items():
            part = self._read_chunk(self._chunks[ci], key, [r for _, r in pairs])  # [n, chunk width, ...]
            if key != str(site):
                part = site.select(part)  # one head of a stored per-layer site
            if out is None:
                shape = list(part.shape)
                shape[0] = len(rows)
                for ax in axes:
                    shape[ax] = width
                out = torch.zeros(shape, dtype=part.dtype)
            for ax in axes:
                part = part.narrow(ax, 0, min(part.shape[ax], width))
            idx: list[Any] = [torch.tensor([o for o, _ in pairs], dtype=torch.long)]
            idx += [slice(0, part.shape[ax]) if ax in axes else slice(None) for ax in range(1, part.dim())]
            out[tuple(idx)] = part
        if out is None:  # no prompts selected
            return torch.zeros((0,), dtype=self.dtype)
        if axes and (pos_idx.start, pos_idx.stop, pos_idx.step) != (0, width, 1):
            out = out.index_select(axes[0], torch.tensor(list(pos_idx), dtype=torch.long))
        return out

    def _read_chunk(self, chunk: _Chunk, key: str, rows: list[int]) -> torch.Tensor:
        """Rows ``rows`` of one chunk's tensor for ``key`` (a view or a fresh read)."""
        if chunk.tensors is not None:
            t = chunk.tensors[key]
            return t if rows == list(range(t.shape[0])) else t[torch.tensor(rows, dtype=torch.long)]
        from safetensors import SafetensorError, safe_open

        assert chunk.path is not None
        self._check(chunk)
        name = key + chunk.suffix
        try:
            with safe_open(str(chunk.path), framework="pt") as f:
                if name not in f.keys():
                    raise StoreError(f"shard {chunk.path} has no tensor {name!r}")
                if rows == list(range(rows[0], rows[-1] + 1)):
                    return f.get_slice(name)[rows[0]: rows[-1] + 1]
                return f.get_tensor(name)[torch.tensor(rows, dtype=torch.long)]
        except (SafetensorError, OSError) as e:
            raise StoreError(f"cannot read shard {chunk.path}: {e}; rerun collect with the same arguments to "
                             "recompute it") from e

    def _check(self, chunk: _Chunk) -> None:
        """Refuse a shard that is missing, truncated or altered (checksum once per shard and store object)."""
        assert chunk.path is not None and self.path is not None
        if chunk.path in self._checked:
            return
        if chunk.record is None:  # format 1: no record, no checksum
            if not chunk.path.is_file():
                raise StoreError(f"shard {chunk.path.name} listed in {self.path}/{MANIFEST} is missing; rerun "
                                 "collect with the same arguments to recompute it")
        else:
            assert chunk.shard is not None
            problem = shard_problem(self.path, self.manifest, chunk.shard, chunk.record, checksum=self.verify)
            if problem:
                raise StoreError(f"{self.path}: {problem}; refusing to read it. Rerun collect with the same "
                                 "arguments to recompute it")
        self._checked.add(chunk.path)

    def to_dict(self) -> dict[Site, torch.Tensor]:
        """Every stored site as one full tensor (reads everything into RAM)."""
        return {s: self.get(s) for s in self.sites}

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path, *, verify: bool = True) -> "ActivationStore":
        """Open a store folder written by :func:`~interp.cache.collect` (lazy: reads no activations).

        The token and text files are checked against their checksums now; each shard's size
        now and its sha256 on first use (``verify=False`` skips the sha256, not the size).
        Stores of the older format 1 (tokens in the manifest, no checksums) are read unchecked.

        Raises:
            StoreError: no manifest, a manifest of another format, a path in it that leaves the
                folder, or a token / text file that does not match its checksum.
        """
        path = Path(path)
        manifest = read_manifest(path)
        if manifest is None:
            raise StoreError(f"{path} holds no activation store (no {MANIFEST}); create one with `interp cache` "
                             "or interp.collect(..., out=...)")
        try:
            sites = [Site.parse(s) for s in manifest["sites"]]
            if manifest["format"] == FORMAT_V1:
                return cls._open_v1(path, manifest, sites)
            ids, lengths, order = load_tokens(path, manifest)
            texts = load_texts(path, manifest)
            records = read_records(path, manifest)
            chunks = []
            for sh in shard_entries(path, manifest):
                rec = records.get(sh["file"])
                if rec is None:
                    continue  # never finished: its prompts are reported missing
                for j, (first, last, width) in enumerate(sh["batches"]):
                    chunks.append(_Chunk(tuple(order[first: last + 1]), width, path=path / sh["file"],
                                         suffix=f"@{j}", shard=sh, record=rec))
            return cls(sites=sites, ids=ids, lengths=lengths, texts=texts, model=manifest["model"],
                       dtype=dtype_from_name(manifest["dtype"]), chunks=chunks, path=path, manifest=manifest,
                       verify=verify)
        except (KeyError, TypeError, ValueError) as e:
            raise StoreError(f"{path / MANIFEST}: malformed activation-store manifest ({type(e).__name__}: {e})") from e

    @classmethod
    def _open_v1(cls, path: Path, manifest: Mapping[str, Any], sites: list[Site]) -> "ActivationStore":
        """A format-1 store: tokens and texts in the manifest, shards complete when present (unchecked)."""
        rows = manifest["tokens"]
        order = manifest["order"]
        chunks = []
        for sh in shard_entries(path, manifest):
            f = path / sh["file"]
            if f.is_file() or f.is_symlink():
                confined_path(path, sh["file"], source=path / MANIFEST, entry=sh["file"])
                for j, (first, last, width) in enumerate(sh["batches"]):
                    chunks.append(_Chunk(tuple(order[first: last + 1]), width, path=f, suffix=f"@{j}"))
        ids = torch.tensor([t for r in rows for t in r], dtype=torch.long)
        return cls(sites=sites, ids=ids, lengths=torch.tensor([len(r) for r in rows], dtype=torch.long),
                   texts=manifest["prompts"], model=manifest["model"], dtype=dtype_from_name(manifest["dtype"]),
                   chunks=chunks, path=path, manifest=manifest)
