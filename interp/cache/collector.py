"""``collect``: batched, filtered, memory-bounded activation caching, to RAM or to disk.

Example:
    >>> from interp import load_model, collect, Site
    >>> import tempfile
    >>> model = load_model("toy:llama")
    >>> store = collect(model, ["Hello world", "Hi"], "resid_post,pattern")
    >>> store[Site("pattern", 0)].shape          # [batch, head, query_pos, key_pos]
    torch.Size([2, 4, 12, 12])
    >>> disk = collect(model, ["Hello world", "Hi"], "resid_post",
    ...                out=tempfile.mkdtemp() + "/cache", max_memory="64MB")
    >>> disk[Site("resid_post", 0)].shape        # [batch, pos, d_model], read back from disk
    torch.Size([2, 12, 64])
"""

from __future__ import annotations

import contextlib
import json

from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from interp._fs import atomic_write_bytes, atomic_write_json, confined_path, folder_lock, sha256_file
from interp.arch import padding_kwargs
from interp.cache.layout import (FORMAT, MANIFEST, RECORD, TEXTS, TOKENS, encode_texts, encode_tokens, read_manifest,
                                 repair, shard_name, sort_records, write_shard)
from interp.cache.reducers import Reducer
from interp.cache.store import ActivationStore, _Chunk, _dtype_name, _pos_axes, dtype_from_name, parse_bytes
from interp.errors import ConfigError, DataError, StoreError
from interp.sites import Site, expected_shape, parse_sites, validate_site

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["collect", "DEFAULT_SHARD_BYTES", "ShardRunner"]

#: ``shard_runner(out, manifest, prompts, [(shard file, prompt indices in processing order)])``: see :func:`collect`.
ShardRunner = Callable[[Path, dict[str, Any], list[str], list[tuple[str, list[int]]]], None]

#: Shard size when writing to disk without ``max_memory``.
DEFAULT_SHARD_BYTES = 256 * 2**20

# Identity of a store: a rerun with the same values resumes; other values are a different store.
_IDENTITY = ("model_spec", "model_revision", "sites", "dtype", "tokens", "texts", "batch_size", "shards", "images")


@dataclass(frozen=True)
class _Batch:
    rows: tuple[int, ...]   # positions in the processing order
    width: int


@dataclass(frozen=True)
class _Shard:
    first: int              # first row of the processing order (inclusive)
    last: int               # last row (inclusive)
    width: int
    batches: tuple[_Batch, ...]

    @property
    def name(self) -> str:
        return shard_name(self.first, self.last)


def _site_numel(site: Site, cfg: Any, batch: int, width: int) -> int:
    shape = list(expected_shape(site.layer_site, cfg, batch, width))
    if site.head is not None and site.head_axis is not None:
        shape.pop(site.head_axis)
    n = 1
    for d in shape:
        n *= d
    return n


def _plan(lengths: Sequence[int], order: Sequence[int], batch_size: int, keep: Sequence[Site], cfg: Any,
          itemsize: int, shard_bytes: int | None) -> list[_Shard]:
    """Cut the processing order into batches, and batches into shards of at most ``shard_bytes``."""
    batches = []
    for start in range(0, len(order), batch_size):
        rows = tuple(range(start, min(start + batch_size, len(order))))
        batches.append(_Batch(rows, max(lengths[order[r]] for r in rows)))

    def nbytes(n_rows: int, width: int) -> int:
        return sum(_site_numel(s, cfg, n_rows, width) for s in keep) * itemsize

    shards: list[_Shard] = []
    current: list[_Batch] = []
    for b in batches:
        if shard_bytes is not None and nbytes(len(b.rows), b.width) > shard_bytes:
            raise StoreError(f"one batch of {len(b.rows)} prompts of {b.width} tokens needs "
                             f"{_fmt(nbytes(len(b.rows), b.width))} for the requested sites, more than the shard budget "
                             f"of {_fmt(shard_bytes)} (half of max_memory when writing to disk); lower batch_size, "
                             "raise max_memory or request fewer sites")
        if current and shard_bytes is not None:
            rows = sum(len(c.rows) for c in current) + len(b.rows)
            if nbytes(rows, current[0].width) > shard_bytes:
                shards.append(_make_shard(current))
                current = []
        current.append(b)
    if current:
        shards.append(_make_shard(current))
    return shards


def _make_shard(batches: list[_Batch]) -> _Shard:
    return _Shard(batches[0].rows[0], batches[-1].rows[-1], max(b.width for b in batches), tuple(batches))


def _fmt(n: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _own(act: torch.Tensor, dtype: torch.dtype, site: Site, lengths: Sequence[int]) -> torch.Tensor:
    """A captured activation as a compact CPU tensor of ``dtype`` with padding zeroed.

    Copies only when needed: a dtype/device change, or a view into a larger storage
    (e.g. one head of a per-layer hook), which would otherwise keep the whole storage alive.
    """
    a = act.to(device="cpu", dtype=dtype)
    if not a.is_contiguous() or a.untyped_storage().nbytes() != a.numel() * a.element_size():
        a = a.contiguous().clone()
    _zero_padding(a, site, lengths)
    return a


def _site_pos_axes(site: Site) -> list[int]:
    """Position axes (batch first) of ``site``'s captured tensor (a head of a per-layer site has no head axis)."""
    axes = _pos_axes(site.layer_site)
    if site.head is not None and site.head_axis is not None:
        axes = [a - (1 if a > site.head_axis else 0) for a in axes]
    return axes


def _check_finite(t: torch.Tensor, site: Site, ids: Sequence[int], prompts: Sequence[str], dtype: torch.dtype) -> None:
    """Raise DataError naming ``site``, the first prompt and position where ``t`` holds NaN/inf."""
    # fast path: any NaN/inf makes the sum NaN/inf (IEEE); a finite sum means none (an overflowing
    # sum of finite values takes the exact path below). ~400x faster than isfinite().all() on CPU.
    if bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all()):
        return
    bad = ~torch.isfinite(t)
    rows = bad.flatten(1).any(1).nonzero().flatten().tolist()
    r = min(rows, key=lambda i: ids[i])
    where = ""
    axes = _site_pos_axes(site)
    if axes:
        per_pos = bad[r].movedim(axes[0] - 1, 0).flatten(1).any(1)
        where = f", position {int(per_pos.nonzero()[0])}"
    kind = "NaN" if bool(torch.isnan(t[r]).any()) else "inf"
    text = prompts[ids[r]]
    raise DataError(f"collect: {site} ({site.hook_name}) has {kind} activations at prompt {ids[r]}{where} "
                    f"({text[:40]!r}{'...' if len(text) > 40 else ''}): the model produces non-finite values "
                    f"(a NaN/inf weight, or an overflow in {_dtype_name(dtype)}). Pass allow_nonfinite=True to "
                    "store them anyway")


def _zero_padding(t: torch.Tensor, site: Site, lengths: Sequence[int]) -> None:
    """Zero positions at or beyond each row's length along every position axis, in place."""
    axes = _site_pos_axes(site)
    for r, n in enumerate(lengths):
        for ax in axes:
            if n < t.shape[ax]:
                t[r].narrow(ax - 1, n, t.shape[ax] - n).zero_()


def _model_meta(model: Model) -> dict[str, Any]:
    info = getattr(model, "interp_info", None)
    if info is not None:
        return info.as_dict()
    return {"spec": type(model).__name__, "name": type(model).__name__, "revision": "", "path": None}


def _identity(manifest: Mapping[str, Any]) -> dict[str, Any]:
    return {"model_spec": manifest["model"].get("spec"), "model_revision": manifest["model"].get("revision"),
            "sites": manifest["sites"], "dtype": manifest["dtype"], "tokens": manifest["tokens"]["sha256"],
            "texts": manifest["texts"]["sha256"], "batch_size": manifest["batch_size"],
            "shards": [[s["first"], s["last"]] for s in manifest["shards"]], "images": manifest.get("images")}


def _refuse_foreign_folder(out: Path) -> None:
    """Refuse, even with ``overwrite``, a folder whose ``manifest.json`` belongs to something else (a results
    folder): overwriting replaces an activation store, never another kind of folder's manifest."""
    path = out / MANIFEST
    try:
        fmt = json.loads(path.read_text(encoding="utf-8")).get("format", "") if path.is_file() else ""
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(fmt, str) and fmt.startswith("interp.") and not fmt.startswith("interp.activation_store"):
        raise StoreError(f"{out} is not an activation store ({path} is a {fmt!r} manifest); overwrite only "
                         "replaces an activation store: choose another folder")


def _prepare_out(out: Path, manifest: dict[str, Any], files: Mapping[str, bytes],
                 overwrite: bool) -> tuple[dict[str, Any], set[str]]:
    """With the folder lock held: create, resume or replace the store in ``out``.

    Returns the manifest to continue from and the names of the shards already complete.
    A new store writes its token and text files first and the manifest last, so a store
    exists once its manifest does; the manifest is never rewritten afterwards.
    """
    _refuse_foreign_folder(out)
    try:
        old = read_manifest(out)
    except StoreError:
        if not overwrite:
            raise
        old = None
    if old is not None and not overwrite:
        if old.get("format") != FORMAT:
            raise StoreError(f"{out} holds an activation store of the older format {old.get('format')!r} (token ids "
                             f"in the manifest, no checksums); pass overwrite=True / --overwrite to rebuild it as "
                             f"{FORMAT!r}, or choose another folder (reading it still works)")
        try:
            theirs = _identity(old)
        except (KeyError, TypeError, AttributeError) as e:
            raise StoreError(f"{out / MANIFEST}: malformed activation-store manifest ({e!r}); pass overwrite=True / "
                             "--overwrite to replace it") from e
        mine = _identity(manifest)
        if mine != theirs:
            diff = [k for k in _IDENTITY if mine[k] != theirs[k]]
            who = (f" (model identity: the store's {theirs['model_revision']}, this model's "
                   f"{mine['model_revision']})" if "model_revision" in diff else "")
            raise StoreError(f"{out} holds a different activation store (differs in: {', '.join(diff)}){who}; "
                             "choose another folder, pass the same arguments to resume it, or overwrite=True / "
                             "--overwrite to replace it")
        for key, data in files.items():  # resume: the same data, so rewrite a damaged token / text file
            f = confined_path(out, old[key]["file"], source=out / MANIFEST, entry=f"{key}.file")
            if not f.is_file() or f.stat().st_size != len(data) or sha256_file(f) != old[key]["sha256"]:
                atomic_write_bytes(f, data)
        return old, repair(out, old)
    for name in (MANIFEST, RECORD, TOKENS, TEXTS):
        (out / name).unlink(missing_ok=True)
    for p in [*out.glob("shard-*.safetensors"), *out.glob(".shard-*.tmp")]:
        p.unlink()
    for key, data in files.items():
        atomic_write_bytes(out / manifest[key]["file"], data)
    atomic_write_json(out / MANIFEST, manifest)
    return manifest, set()


def _new_manifest(model: Model, keep: Sequence[Site], dtype: torch.dtype, lengths: Sequence[int],
                  files: Mapping[str, bytes], batch_size: int, budget: int | None, shards: Sequence[_Shard],
                  versions: Mapping[str, str]) -> dict[str, Any]:
    """The manifest of a new store: provenance, sites and dims, counts, checksummed token/text files, shard plan."""
    import hashlib

    cfg = model.cfg
    site_info = {}
    for s in keep:
        dims, sizes = s.layer_site.dims, expected_shape(s.layer_site, cfg, 1, 1)
        drop = s.head_axis if s.head is not None else None
        site_info[str(s)] = {
            "hook": s.hook_name, "head": s.head,
            "dims": [d for i, d in enumerate(dims) if i != drop],
            "shape": [d if d in ("batch", "pos", "query_pos", "key_pos") else n
                      for i, (d, n) in enumerate(zip(dims, sizes)) if i != drop]}
    names = {"tokens": TOKENS, "texts": TEXTS}
    return {
        "format": FORMAT, "model": _model_meta(model), "sites": [str(s) for s in keep], "site_info": site_info,
        "dtype": _dtype_name(dtype), "n_prompts": len(lengths), "n_tokens": int(sum(lengths)),
        **{k: {"file": names[k], "bytes": len(v), "sha256": hashlib.sha256(v).hexdigest()} for k, v in files.items()},
        "prepend_bos": bool(getattr(cfg, "default_prepend_bos", False)),
        "padding": "right-padded to the longest prompt of each shard; positions >= length hold zeros",
        "batch_size": batch_size, "max_memory": budget,
        "shards": [{"file": sh.name, "first": sh.first, "last": sh.last, "width": sh.width,
                    "batches": [[b.rows[0], b.rows[-1], b.width] for b in sh.batches]} for sh in shards],
        "versions": dict(versions),
    }


def collect(model: Model, prompts: Sequence[str] | str, sites: str | Iterable[str | Site] | None, *,
            batch_size: int = 8, out: str | Path | None = None, max_memory: int | str | None = None,
            dtype: torch.dtype | str | None = None, reducers: Mapping[str, Reducer] | None = None,
            progress: bool = True, overwrite: bool = False, allow_nonfinite: bool = False,
            shard_runner: ShardRunner | None = None) -> ActivationStore:
    """Run batched forward passes and keep the activations at ``sites`` (and/or streaming statistics).

    Prompts are tokenized with :func:`interp.models.tokenize` (BOS per the model's
    default), sorted longest first and batched with right padding, so each prompt's
    activations equal those of running it alone; the store keeps the original order,
    with padding positions zeroed and marked by ``store.lengths``. Each forward pass
    stops after the deepest site needed. Only the requested sites are kept.

    Args:
        model: a model from :func:`interp.load_model`.
        prompts: prompts (strings), or a :class:`~interp.models.TokenBatch` from :func:`interp.tokenize`
            (a VLM's batch with images: each forward pass gets its rows' images).
        sites: ``"resid_post,pattern"``, Sites or names (a bare component means every
            layer); ``None`` or ``[]`` to keep nothing (reducers only).
        batch_size: prompts per forward pass.
        out: folder to write safetensors shards + ``manifest.json`` to; the returned store
            reads lazily from it. A folder holding the same store resumes it (only missing
            shards are computed); a different store is refused unless ``overwrite``.
        max_memory: bound on activations held in RAM (bytes or ``"1GB"``). With ``out``,
            shards are cut so that the shard being filled plus the one being written stay
            under it; without ``out``, exceeding it is an error that says to pass ``out=``.
        dtype: dtype to store; ``None`` = the model's.
        reducers: ``{name: Reducer}`` computed over real tokens of every batch; results in
            ``store.reductions[name]``. Pass fresh reducers (they keep state).
        progress: show a tqdm progress bar.
        overwrite: replace a different store in ``out``.
        allow_nonfinite: store NaN/inf activations instead of raising DataError.
        shard_runner: computes and writes the missing shards instead of this process (with ``out``,
            no reducers), e.g. :mod:`interp.distributed` on Ray workers: called, with the folder lock
            held, as ``shard_runner(out, manifest, prompts, [(shard file, its prompt indices in
            processing order)])``; it writes each shard with :func:`interp.cache.layout.write_shard`.
            Everything else (checks, plan, manifest, resume, the final record order) stays here.

    Returns:
        An :class:`ActivationStore` (in RAM, or backed by ``out``).

    Raises:
        DataError: no prompts, an empty prompt, a prompt longer than the context (named); NaN/inf
            activations (the site and the first prompt and position where they appear: the lowest
            prompt index of the first batch that has any; prompts run longest first), checked after
            the cast to ``dtype`` so an overflow to inf counts, unless ``allow_nonfinite``.
        SiteError: unknown sites (nearest names suggested).
        StoreError: RAM bound exceeded without ``out``; ``out`` holds another store.
        ConfigError: bad batch_size or reducers.
    """
    from interp.models import tokenize
    from interp.results import library_versions

    if batch_size <= 0:
        raise ConfigError(f"batch_size must be > 0, got {batch_size}")
    budget = parse_bytes(max_memory)
    cfg = model.cfg
    param = next(model.parameters())
    dtype = dtype_from_name(dtype) if dtype is not None else param.dtype
    given = None
    if hasattr(prompts, "tokens") and hasattr(prompts, "texts"):  # a TokenBatch (a VLM's VisionBatch: images fed)
        given, prompts = prompts, list(prompts.texts)
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise DataError("no prompts given")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise DataError(f"prompts must be strings; prompt {bad[0]} is {type(prompts[bad[0]]).__name__}")
    keep = parse_sites(sites, cfg.n_layers) if sites else []
    reducers = dict(reducers or {})
    for name, red in reducers.items():
        if not isinstance(red, Reducer):
            raise ConfigError(f"reducer {name!r} does not follow the Reducer protocol (sites, update, result)")
    if not keep and not reducers:
        raise ConfigError("nothing to collect: give sites, reducers, or both")
    if out is not None and not keep:
        raise ConfigError("out= given but no sites to store; reducer results live in store.reductions")
    if shard_runner is not None and (out is None or reducers):
        raise ConfigError("shard_runner needs out= and no reducers (it writes shards; reducers run in this process)")
    red_sites = [s for r in reducers.values() for s in r.sites]
    capture: list[Site] = []
    hook_dict = model.hook_dict  # the bridge rebuilds it on every access
    for s in [*keep, *red_sites]:
        validate_site(s, model, hook_dict=hook_dict)
        if s not in capture:
            capture.append(s)

    # DataError on empty / too long prompts, before anything is written
    batch = given if given is not None else tokenize(model, prompts)
    lengths = batch.lengths.tolist()
    flat_ids = batch.tokens[batch.mask]            # [n_tokens] every prompt's ids, concatenated
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    itemsize = torch.empty((), dtype=dtype).element_size()
    out_path = Path(out) if out is not None else None
    shard_budget = (budget // 2 if budget else DEFAULT_SHARD_BYTES) if out_path is not None else None
    shards = _plan(lengths, order, batch_size, keep, cfg, itemsize, shard_budget)
    width = max(lengths)
    if out_path is None and keep:
        total = sum(_site_numel(s, cfg, len(prompts), width) for s in keep) * itemsize
        if budget is not None and total > budget:
            raise StoreError(f"the requested sites need {_fmt(total)} for {len(prompts)} prompts of up to {width} "
                             f"tokens, more than max_memory={_fmt(budget)}; pass out=<folder> to stream shards to "
                             "disk (or request fewer sites / prompts)")

    files = ({"tokens": encode_tokens(flat_ids, lengths, order), "texts": encode_texts(prompts)}
             if out_path is not None else {})
    manifest = _new_manifest(model, keep, dtype, lengths, files, batch_size, budget, shards, library_versions())
    if getattr(batch, "pixel_values", None) is not None:  # a VLM batch: its images are part of the store's identity
        manifest["images"] = batch.images_digest
    if out_path is None:
        return _fill(model, batch, flat_ids, lengths, prompts, order, shards, set(), keep, capture, reducers, dtype,
                     None, manifest, progress, allow_nonfinite)
    with folder_lock(out_path, what="activation store"):
        manifest, done = _prepare_out(out_path, manifest, files, overwrite)
        del files
        if shard_runner is not None:
            shard_runner(out_path, manifest, prompts, [(sh.name, [order[r] for r in range(sh.first, sh.last + 1)])
                                                       for sh in shards if sh.name not in done])
            sort_records(out_path, manifest)
            return ActivationStore.open(out_path)
        return _fill(model, batch, flat_ids, lengths, prompts, order, shards, done, keep, capture, reducers, dtype,
                     out_path, manifest, progress, allow_nonfinite)


def _fill(model: Model, batch: Any, flat_ids: torch.Tensor, lengths: list[int], prompts: list[str],
          order: list[int], shards: list[_Shard], done: set[str], keep: list[Site], capture: list[Site],
          reducers: dict[str, Reducer], dtype: torch.dtype, out_path: Path | None, manifest: dict[str, Any],
          progress: bool, allow_nonfinite: bool) -> ActivationStore:
    """Run the forward passes of the shards not yet ``done``; return the store (in RAM or opened from disk)."""
    from tqdm.auto import tqdm

    param = next(model.parameters())

    # Each batch's captured tensors are kept as they are (no copy unless a dtype cast or a
    # compacting clone is needed), padding zeroed in place: one chunk per batch in RAM, or
    # one ``<site>@<j>`` tensor per batch j of a shard on disk.
    device = param.device
    chunks: list[_Chunk] = []
    todo_tokens = sum(lengths[order[r]] for sh in shards if sh.name not in done or reducers
                      for b in sh.batches for r in b.rows)
    bar = tqdm(total=todo_tokens, unit="tok", desc="collect", disable=not progress, leave=False)
    pool = ThreadPoolExecutor(max_workers=1) if out_path is not None else None
    pending: Future | None = None
    try:
        for sh in shards:
            skip_store = sh.name in done
            if skip_store and not reducers:
                continue
            buf: dict[str, torch.Tensor] = {}
            for j, b in enumerate(sh.batches):
                ids = [order[r] for r in b.rows]
                blen = [lengths[i] for i in ids]
                tokens = batch.tokens[ids, : b.width].to(device)
                feed = batch.feed(model, ids) if hasattr(batch, "feed") else contextlib.nullcontext()
                with torch.inference_mode(), feed:
                    acts = _run(model, tokens, capture, padding_kwargs(model, batch.mask[ids, : b.width].to(device)))
                    kept = {} if skip_store else {str(s): _own(acts[s], dtype, s, blen) for s in keep}
                    if not allow_nonfinite:  # before any of it is stored or reduced
                        for s in capture:
                            _check_finite(kept.get(str(s), acts[s]), s, ids, prompts, dtype)
                    if reducers:
                        mask = (torch.arange(b.width, device=device)[None, :]
                                < torch.tensor(blen, device=device)[:, None])
                        pid = torch.tensor(ids, dtype=torch.long)
                        for red in reducers.values():
                            for s in red.sites:
                                red.update(s, acts[s], mask, pid)
                    if not skip_store:
                        if out_path is None:
                            chunks.append(_Chunk(tuple(ids), b.width, tensors=kept))
                        else:
                            buf.update({f"{k}@{j}": v for k, v in kept.items()})
                            buf[f"prompt_ids@{j}"] = torch.tensor(ids, dtype=torch.long)
                            buf[f"lengths@{j}"] = torch.tensor(blen, dtype=torch.long)
                del acts, kept
                bar.update(sum(blen))
            if buf:
                if pending is not None:
                    pending.result()  # at most one shard being written while the next one fills
                assert pool is not None and out_path is not None
                pending = pool.submit(_write_shard, out_path, sh, buf)
                del buf
        if pending is not None:
            pending.result()
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True)

    reductions = {name: red.result() for name, red in reducers.items()}
    if out_path is not None:
        sort_records(out_path, manifest)
        store = ActivationStore.open(out_path)
        store.reductions.update(reductions)
        return store
    return ActivationStore(sites=keep, ids=flat_ids, lengths=torch.tensor(lengths), texts=prompts,
                           model=manifest["model"], dtype=dtype,
                           chunks=chunks, manifest=manifest, reductions=reductions)


def _run(model: Model, tokens: torch.Tensor, capture: Sequence[Site],
         extra: Mapping[str, Any]) -> dict[Site, torch.Tensor]:
    from interp.hooks import run_capture

    return run_capture(model, tokens, capture, clone=False, stop_early=True, **extra)



def _write_shard(out: Path, shard: _Shard, tensors: dict[str, torch.Tensor]) -> None:
    """Write one shard and its record (see :func:`interp.cache.layout.write_shard`)."""
    write_shard(out, shard.name, tensors)
