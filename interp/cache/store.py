"""ActivationStore: cached activations, in RAM or as safetensors shards plus a JSON manifest.

Layout of a store folder (written by :func:`interp.cache.collect` with ``out=``)::

    DIR/manifest.json                       format, model spec + revision, sites, dims,
                                            dtype, token ids, prompt texts, lengths,
                                            library versions, shard plan, completed shards
    DIR/shard-00000000-00000015.safetensors rows 0..15 (inclusive) of the processing order

Prompts are processed in an *order* (longest first, to cut padding); a shard holds a
contiguous range of that order, so its name is fixed by the plan in the manifest and
independent workers could write disjoint shards in parallel. A shard holds whole
batches: for batch ``j`` of the shard and each site, a tensor ``"<site>@<j>"`` (e.g.
``"resid_post.3@0"``, ``[batch rows, batch width, ...]``, padded to the longest prompt of
the batch), plus ``"prompt_ids@<j>"`` (original prompt indices) and ``"lengths@<j>"``;
the manifest lists each shard's batches. Shards are written to a temporary file and
renamed (never half-written); the manifest is rewritten atomically after each shard.

Padding: every tensor returned by the store is right-padded to the longest selected
prompt; positions at or beyond a prompt's length (``store.lengths``) hold zeros
(for ``pattern``, query *and* key positions). ``store.mask`` marks real tokens.

Example:
    >>> from interp import load_model, collect, Site
    >>> model = load_model("toy:llama")                                   # doctest: +SKIP
    >>> store = collect(model, ["hi", "hello there"], "resid_post")       # doctest: +SKIP
    >>> store[Site("resid_post", 1)].shape                                # doctest: +SKIP
    torch.Size([2, 12, 64])
    >>> store[Site("resid_post", 1), 1, :3].shape   # prompt 1, first 3 positions  # doctest: +SKIP
    torch.Size([3, 64])
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from interp.errors import SiteError, StoreError, nearest
from interp.sites import Site

__all__ = ["ActivationStore", "FORMAT", "MANIFEST", "shard_name", "parse_bytes", "dtype_from_name"]

FORMAT = "interp.activation_store/1"
MANIFEST = "manifest.json"
_SHARD_RE = re.compile(r"^shard-(\d{8})-(\d{8})\.safetensors$")

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


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def shard_name(first: int, last: int) -> str:
    """File name of the shard holding rows ``first..last`` (inclusive) of the processing order."""
    return f"shard-{first:08d}-{last:08d}.safetensors"


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
    """

    def __init__(self, *, sites: Sequence[Site], token_rows: Sequence[Sequence[int]], texts: Sequence[str],
                 model: Mapping[str, Any], dtype: torch.dtype, chunks: Sequence[_Chunk],
                 site_dims: Mapping[str, Sequence[str]] | None = None, path: Path | None = None,
                 manifest: Mapping[str, Any] | None = None, reductions: Mapping[str, Any] | None = None) -> None:
        self.sites: tuple[Site, ...] = tuple(sites)
        self._token_rows = [list(r) for r in token_rows]
        self.texts: tuple[str, ...] = tuple(texts)
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
        return len(self._token_rows)

    @property
    def lengths(self) -> torch.Tensor:
        """``[batch]`` int64 number of real tokens of each prompt."""
        return torch.tensor([len(r) for r in self._token_rows], dtype=torch.long)

    @property
    def tokens(self) -> torch.Tensor:
        """``[batch, pos]`` int64 token ids, right-padded with 0 (see :attr:`mask`)."""
        width = max(len(r) for r in self._token_rows)
        out = torch.zeros(len(self), width, dtype=torch.long)
        for i, r in enumerate(self._token_rows):
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return out

    @property
    def mask(self) -> torch.Tensor:
        """``[batch, pos]`` bool, True at real tokens."""
        lengths = self.lengths
        return torch.arange(int(lengths.max()))[None, :] < lengths[:, None]

    @property
    def complete(self) -> bool:
        """Whether every prompt's activations are present."""
        return len(self._where) == len(self) or not self.sites

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
        width = max((len(self._token_rows[p]) for p in rows), default=0)
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
        from safetensors import safe_open

        assert chunk.path is not None
        if not chunk.path.exists():
            raise StoreError(f"shard {chunk.path.name} listed in {self.path}/{MANIFEST} is missing; rerun collect "
                             "with the same arguments to recompute it")
        name = key + chunk.suffix
        with safe_open(str(chunk.path), framework="pt") as f:
            if name not in f.keys():
                raise StoreError(f"shard {chunk.path} has no tensor {name!r}")
            if rows == list(range(rows[0], rows[-1] + 1)):
                return f.get_slice(name)[rows[0]: rows[-1] + 1]
            return f.get_tensor(name)[torch.tensor(rows, dtype=torch.long)]

    def to_dict(self) -> dict[Site, torch.Tensor]:
        """Every stored site as one full tensor (reads everything into RAM)."""
        return {s: self.get(s) for s in self.sites}

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path) -> "ActivationStore":
        """Open a store folder written by :func:`~interp.cache.collect` (lazy: reads only the manifest).

        Raises:
            StoreError: no manifest, or a manifest of another format.
        """
        path = Path(path)
        manifest = read_manifest(path)
        if manifest is None:
            raise StoreError(f"{path} holds no activation store (no {MANIFEST}); create one with `interp cache` "
                             "or interp.collect(..., out=...)")
        sites = [Site.parse(s) for s in manifest["sites"]]
        order = manifest["order"]
        done = completed_shards(path, manifest)
        chunks = []
        for sh in manifest["shards"]:
            name = shard_name(sh["first"], sh["last"])
            if name in done:
                for j, (first, last, width) in enumerate(sh["batches"]):
                    chunks.append(_Chunk(tuple(order[first: last + 1]), width, path=path / name, suffix=f"@{j}"))
        return cls(sites=sites, token_rows=manifest["tokens"], texts=manifest["prompts"], model=manifest["model"],
                   dtype=dtype_from_name(manifest["dtype"]), chunks=chunks, path=path, manifest=manifest)


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The store manifest in ``path``, ``None`` if there is none.

    Raises:
        StoreError: ``manifest.json`` exists but is not an activation-store manifest.
    """
    mpath = Path(path) / MANIFEST
    if not mpath.exists():
        return None
    try:
        data = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{mpath} is not valid JSON ({e})") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise StoreError(f"{mpath} is not an activation-store manifest (format={got!r}, expected {FORMAT!r}); "
                         "choose another output folder, or pass overwrite=True / --overwrite to replace it")
    return data


def completed_shards(path: Path, manifest: Mapping[str, Any]) -> set[str]:
    """Names of planned shards that are complete, i.e. present on disk.

    A shard file only exists once fully written (temp file + rename), so a planned
    shard present on disk is complete even if the manifest update was interrupted.
    """
    planned = {shard_name(sh["first"], sh["last"]) for sh in manifest["shards"]}
    present = {p.name for p in Path(path).glob("shard-*.safetensors") if _SHARD_RE.match(p.name)}
    return planned & present
