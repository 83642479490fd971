"""Activations for SAEs: capture once (forward pass stopped at the SAE's layer), store as
safetensors shards, and serve shuffled ``[batch, d_in]`` batches to the trainer.

An SAE reads one site flattened to ``d_in`` per token: ``resid_post`` / ``mlp_out`` /
``resid_pre`` ... as ``d_model``; attention ``z`` with its heads concatenated
(``head * d_head``, the layout of SAE-Lens's ``reshape_activations="hook_z"``).
Padding (``lengths``) and the first ``start_pos`` positions of each row (BOS, or
SmolLM2's massive-activation first token) are masked out.

On disk (:func:`cache_activations`): ``folder/manifest.json`` plus, per site,
``<site>/shard_00000.safetensors`` holding ``acts [n_tokens, d_in]``; the manifest records
each shard's size, sha256, shape and dtype, and :class:`ActivationShards` checks them (and
that every path stays inside the folder) before using a shard. Any object with
``__getitem__(site) -> [batch, pos, ...]`` (such as ``interp.cache.ActivationStore``) can be
used instead through :func:`flatten_store`.

Example:
    >>> from interp import load_model, Site
    >>> from interp.sae.data import capture_activations, ActivationBatches
    >>> from interp import tokenize
    >>> model = load_model("toy:llama")
    >>> tokens = tokenize(model, ["Hello world", "Hi there"]).tokens
    >>> acts = capture_activations(model, tokens, [Site("z", 1)])
    >>> acts[Site("z", 1)].shape                 # [n_tokens, n_heads * d_head], padding masked out
    torch.Size([22, 64])
    >>> batches = ActivationBatches.from_tensor(acts[Site("z", 1)], batch_size=4, seed=0)
    >>> next(batches).shape
    torch.Size([4, 64])
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.errors import ConfigError, DataError, ShapeError, SiteError, StoreError, nearest
from interp.sites import Site

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["SAE_COMPONENTS", "site_width", "flatten_site", "unflatten_site", "capture_activations",
           "cache_activations", "ActivationShards", "ActivationBatches", "flatten_store", "check_sae_site"]

FORMAT = "interp.sae.acts/2"

#: Components an SAE can be trained on here (flattened per token).
SAE_COMPONENTS = ("resid_pre", "resid_mid", "resid_post", "mlp_out", "attn_out", "z", "mlp_post", "mlp_in")


def _as_site(site: Site | str) -> Site:
    s = site if isinstance(site, Site) else Site.parse(site)
    if s.component not in SAE_COMPONENTS:
        raise SiteError(f"an SAE cannot read site {s} (component {s.component!r}); use one of {SAE_COMPONENTS}")
    if s.layer is None:
        raise SiteError(f"SAE site {s} needs a layer")
    return s


def site_width(model: Model, site: Site | str) -> int:
    """``d_in`` of an SAE at ``site``: d_model, d_mlp, or n_heads * d_head for ``z`` (one head: d_head)."""
    s = _as_site(site)
    cfg = model.cfg
    if s.component == "z":
        return cfg.d_head if s.head is not None else cfg.n_heads * cfg.d_head
    if s.component == "mlp_post":
        return cfg.d_mlp
    return cfg.d_model


def check_sae_site(model: Model, site: Site | str, d_in: int) -> Site:
    """Raise :class:`ShapeError` unless an SAE of width ``d_in`` fits ``site`` of ``model``."""
    s = _as_site(site)
    if s.layer >= model.cfg.n_layers:
        raise SiteError(f"site {s}: layer {s.layer} out of range, the model has {model.cfg.n_layers} layers")
    width = site_width(model, s)
    if width != d_in:
        what = (f"{model.cfg.n_heads} heads x d_head {model.cfg.d_head}" if s.component == "z" and s.head is None
                else s.component)
        raise ShapeError(f"SAE width d_in={d_in} does not match site {s} ({s.hook_name}) of this model: "
                         f"expected d_in={width} ({what})")
    return s


def flatten_site(act: Float[Tensor, "batch pos *rest"], site: Site) -> Float[Tensor, "batch pos d_in"]:
    """``[batch, pos, head, d_head] -> [batch, pos, head*d_head]`` for ``z``; other sites unchanged."""
    if site.component == "z" and site.head is None:
        return act.flatten(-2)
    return act


def unflatten_site(x: Float[Tensor, "batch pos d_in"], site: Site, like: Float[Tensor, "batch pos *rest"]) -> Float[Tensor, "batch pos *rest"]:
    """Inverse of :func:`flatten_site` given the original activation ``like``."""
    return x.reshape(like.shape)


def _positions_mask(n_rows: int, n_pos: int, lengths: torch.Tensor | None, start_pos: int) -> torch.Tensor:
    pos = torch.arange(n_pos)[None, :]
    mask = (pos >= start_pos).expand(n_rows, n_pos)
    if lengths is not None:
        mask = mask & (pos < lengths.cpu()[:, None])
    return mask


def _batches(tokens: torch.Tensor, lengths: torch.Tensor | None, batch_size: int):
    for i in range(0, tokens.shape[0], batch_size):
        yield tokens[i:i + batch_size], (lengths[i:i + batch_size] if lengths is not None else None)


def _check_finite(act: torch.Tensor, mask: torch.Tensor, site: Site, first_row: int) -> None:
    """Raise DataError naming ``site``, the first row and position whose activations are NaN/inf."""
    if bool(torch.isfinite(act.sum())):   # any NaN/inf makes the sum non-finite (fast path)
        return
    bad = ~torch.isfinite(act.flatten(2)).all(-1) & mask          # [batch, pos]
    if not bool(bad.any()):
        return
    row = int(bad.any(1).nonzero()[0])
    pos = int(bad[row].nonzero()[0])
    kind = "NaN" if bool(torch.isnan(act[row, pos]).any()) else "inf"
    raise DataError(f"{site} ({site.hook_name}) has {kind} activations at row {first_row + row} of the tokens, "
                    f"position {pos}: the model produces non-finite values (a NaN/inf weight, or an overflow). "
                    "Pass allow_nonfinite=True to keep them anyway")


def _iter_captures(model: Model, tokens: torch.Tensor, sites: Sequence[Site], *, batch_size: int,
                   lengths: torch.Tensor | None, start_pos: int, dtype: torch.dtype | None,
                   desc: str, allow_nonfinite: bool = True) -> Iterator[dict[Site, torch.Tensor]]:
    from tqdm.auto import tqdm

    from interp.hooks import run_capture

    if tokens.ndim != 2:
        raise ShapeError(f"tokens: expected (batch, pos), got {tuple(tokens.shape)}")
    if start_pos >= tokens.shape[1]:
        raise ConfigError(f"start_pos={start_pos} leaves no positions of rows of {tokens.shape[1]} tokens")
    device = next(model.parameters()).device
    with torch.inference_mode():
        for b, (toks, lens) in enumerate(tqdm(list(_batches(tokens, lengths, batch_size)), desc=desc, leave=False)):
            acts = run_capture(model, toks.to(device), sites)
            mask = _positions_mask(toks.shape[0], toks.shape[1], lens, start_pos).to(device)
            out = {}
            for s in sites:
                a = flatten_site(acts[s], s)
                a = a.to(dtype) if dtype is not None else a
                if not allow_nonfinite:  # after the cast: an overflow to inf in float16 counts too
                    _check_finite(a, mask, s, b * batch_size)
                out[s] = a[mask]   # boolean indexing copies
            yield out


def capture_activations(model: Model, tokens: Int[Tensor, "batch pos"], sites: Sequence[Site | str], *, batch_size: int = 8,
                        lengths: Int[Tensor, " batch"] | None = None, start_pos: int = 1,
                        dtype: torch.dtype | None = None) -> dict[Site, Float[Tensor, "n_tokens d_in"]]:
    """Activations at ``sites`` of every real token, flattened per token, in memory.

    The forward pass stops after the deepest site.

    Args:
        tokens: ``[batch, pos]`` rows (e.g. :class:`~interp.sae.corpus.TokenSplit` ``.train``).
        lengths: ``[batch]`` real tokens per row (right padding), or ``None`` (all real).
        start_pos: skip positions ``< start_pos`` of every row.

    Returns:
        ``{site: [n_tokens, d_in]}`` on the model's device.
    """
    sites = [_as_site(s) for s in sites]
    parts: dict[Site, list[torch.Tensor]] = {s: [] for s in sites}
    for chunk in _iter_captures(model, tokens, sites, batch_size=batch_size, lengths=lengths, start_pos=start_pos,
                                dtype=dtype, desc="capture"):
        for s, a in chunk.items():
            parts[s].append(a)
    return {s: torch.cat(v) for s, v in parts.items()}


def _site_dir(site: Site) -> str:
    return str(site)


_STAGING = ".staging"


def _holds_cache(folder: Path) -> bool:
    """Whether ``folder`` holds anything besides a lock file and a staging folder."""
    from interp._fs import LOCK_NAME

    return folder.is_dir() and any(p.name not in (LOCK_NAME, _STAGING) for p in folder.iterdir())


def cache_activations(model: Model, tokens: Int[Tensor, "batch pos"], sites: Sequence[Site | str], folder: str | Path, *,
                      batch_size: int = 8, lengths: Int[Tensor, " batch"] | None = None, start_pos: int = 1,
                      shard_tokens: int = 65_536, dtype: torch.dtype = torch.float32,
                      overwrite: bool = False, meta: dict[str, Any] | None = None,
                      allow_nonfinite: bool = False) -> Path:
    """Capture ``sites`` once (forward stopped at the deepest) and write flat safetensors shards.

    One writer per folder (:func:`interp._fs.folder_lock`). The cache is built in
    ``folder/.staging`` and moved into place at the end, the manifest last, so on any error
    an existing cache is untouched and a new folder is removed. The manifest records each
    shard's path, size, sha256, shape and dtype.

    Args:
        allow_nonfinite: keep NaN/inf activations instead of raising DataError.

    Raises:
        StoreError: ``folder`` holds a cache and ``overwrite`` is False, or another process writes it.
        DataError: NaN/inf activations (site, row and position named), unless ``allow_nonfinite``.
    """
    import shutil

    from safetensors.torch import save_file

    from interp._fs import atomic_write_json, folder_lock, fsync_dir, sha256_file

    folder = Path(folder)
    if _holds_cache(folder) and not overwrite:
        raise StoreError(f"{folder} exists; pass overwrite=True (--overwrite) or choose another folder")
    sites = [_as_site(s) for s in sites]
    widths = {s: site_width(model, s) for s in sites}
    created = not folder.exists()
    try:
        with folder_lock(folder, what="SAE activation cache"):
            if _holds_cache(folder) and not overwrite:
                raise StoreError(f"{folder} exists; pass overwrite=True (--overwrite) or choose another folder")
            tmp = folder / _STAGING
            shutil.rmtree(tmp, ignore_errors=True)   # left by an interrupted run (we hold the lock)
            tmp.mkdir()
            try:
                pending: dict[Site, list[torch.Tensor]] = {s: [] for s in sites}
                counts = {s: 0 for s in sites}
                shards: dict[Site, list[dict[str, Any]]] = {s: [] for s in sites}
                for s in sites:
                    (tmp / _site_dir(s)).mkdir()

                def flush(s: Site, final: bool) -> None:
                    while pending[s] and (final or sum(x.shape[0] for x in pending[s]) >= shard_tokens):
                        allx = torch.cat(pending[s])
                        take = allx if final else allx[:shard_tokens]
                        rest = allx[take.shape[0]:]
                        name = f"{_site_dir(s)}/shard_{len(shards[s]):05d}.safetensors"
                        save_file({"acts": take.contiguous().cpu()}, str(tmp / name))
                        shards[s].append({"file": name, "bytes": (tmp / name).stat().st_size,
                                          "sha256": sha256_file(tmp / name), "shape": list(take.shape),
                                          "dtype": str(take.dtype).replace("torch.", "")})
                        counts[s] += take.shape[0]
                        pending[s] = [rest] if rest.shape[0] else []

                for chunk in _iter_captures(model, tokens, sites, batch_size=batch_size, lengths=lengths,
                                            start_pos=start_pos, dtype=dtype, desc="cache activations",
                                            allow_nonfinite=allow_nonfinite):
                    for s, a in chunk.items():
                        pending[s].append(a.cpu())
                        flush(s, final=False)
                for s in sites:
                    flush(s, final=True)
                info = getattr(model, "interp_info", None)
                atomic_write_json(tmp / "manifest.json", {
                    "format": FORMAT, "model": info.spec if info else "", "start_pos": start_pos,
                    "dtype": str(dtype).replace("torch.", ""), "n_rows": int(tokens.shape[0]),
                    "context_size": int(tokens.shape[1]),
                    "sites": {str(s): {"hook_name": s.hook_name, "d_in": widths[s], "n_tokens": counts[s],
                                       "shards": shards[s]} for s in sites},
                    "meta": meta or {}})
                # swap in: the old manifest goes first (no cache), the new one last (the new cache)
                (folder / "manifest.json").unlink(missing_ok=True)
                for p in folder.iterdir():
                    if p.name not in (_STAGING, ".lock"):
                        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                for p in tmp.iterdir():
                    if p.name != "manifest.json":
                        p.rename(folder / p.name)
                (tmp / "manifest.json").rename(folder / "manifest.json")
                fsync_dir(folder)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()   # empty once the lock is released
        raise
    return folder


class ActivationShards:
    """Read-only view of one site in a :func:`cache_activations` folder.

    Every shard path of the manifest is confined to the folder (``..``, absolute paths and
    symlinks leaving it are refused); each shard's size, sha256, shape and dtype are checked
    against the manifest when it is loaded.

    Attributes:
        site, d_in, n_tokens, shards (paths), manifest.
    """

    def __init__(self, folder: str | Path, site: Site | str) -> None:
        from interp._fs import confined_path

        self.folder = Path(folder)
        path = self.folder / "manifest.json"
        if not path.exists():
            raise StoreError(f"{self.folder} is not an SAE activation cache (no manifest.json); "
                             "write one with `interp sae cache` / interp.sae.data.cache_activations")
        try:
            self.manifest = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StoreError(f"{path} is not valid JSON ({e})") from e
        got = self.manifest.get("format") if isinstance(self.manifest, dict) else type(self.manifest).__name__
        if got != FORMAT:
            hint = (" (an older cache without checksums: rebuild it with --overwrite)"
                    if got == "interp.sae.acts/1" else "")
            raise StoreError(f"{path}: unknown format {got!r}, expected {FORMAT!r}{hint}")
        self.site = _as_site(site)
        entry = self.manifest["sites"].get(str(self.site))
        if entry is None:
            raise SiteError(f"site {self.site} is not in {self.folder} (has {list(self.manifest['sites'])})."
                            f"{nearest(str(self.site), self.manifest['sites'])}")
        self.d_in = int(entry["d_in"])
        self.n_tokens = int(entry["n_tokens"])
        self._entries: list[Mapping[str, Any]] = []
        for i, sh in enumerate(entry["shards"]):
            where = f"sites[{str(self.site)!r}].shards[{i}]"
            if not isinstance(sh, dict) or not {"file", "bytes", "sha256", "shape", "dtype"} <= set(sh):
                raise StoreError(f"{path} ({where}): expected file, bytes, sha256, shape and dtype, got {sh!r}")
            confined_path(self.folder, sh["file"], source=path, entry=f"{where}.file")
            if len(sh["shape"]) != 2 or sh["shape"][1] != self.d_in:
                raise StoreError(f"{path} ({where}): shape {sh['shape']} does not match d_in={self.d_in}")
            self._entries.append(sh)
        if sum(sh["shape"][0] for sh in self._entries) != self.n_tokens:
            raise StoreError(f"{path}: the shards of {self.site} hold "
                             f"{sum(sh['shape'][0] for sh in self._entries)} tokens, n_tokens says {self.n_tokens}")
        self.shards = [self.folder / sh["file"] for sh in self._entries]

    def load(self, i: int) -> torch.Tensor:
        """Shard ``i`` as ``[n, d_in]``, after checking its size, sha256, shape and dtype.

        Raises:
            StoreError: the shard is missing, truncated, altered or unreadable (named).
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from interp._fs import confined_path, sha256_file

        sh, p = self._entries[i], self.shards[i]
        confined_path(self.folder, sh["file"], source=self.folder / "manifest.json", entry=sh["file"])
        if not p.is_file():
            raise StoreError(f"activation shard {p} is missing; rebuild the cache with --overwrite")
        if p.stat().st_size != sh["bytes"] or sha256_file(p) != sh["sha256"]:
            raise StoreError(f"activation shard {p} is truncated or altered ({p.stat().st_size} bytes, the manifest "
                             f"records {sh['bytes']} and a different sha256); rebuild the cache with --overwrite")
        try:
            t = load_file(str(p))["acts"]
        except (SafetensorError, OSError, KeyError) as e:
            raise StoreError(f"cannot read activation shard {p}: {e}") from e
        if list(t.shape) != list(sh["shape"]) or str(t.dtype).replace("torch.", "") != sh["dtype"]:
            raise ShapeError(f"{p}: expected {sh['dtype']} {tuple(sh['shape'])}, got {t.dtype} {tuple(t.shape)}")
        return t

    def __len__(self) -> int:
        return len(self.shards)


def flatten_store(store: Any, site: Site | str, *, start_pos: int = 1) -> Float[Tensor, "n_tokens d_in"]:
    """``[n_tokens, d_in]`` from any store with ``store[site] -> [batch, pos, ...]``.

    Padding is masked with ``store.lengths`` when the store has it (``interp.cache``'s
    ActivationStore keeps the tokens' lengths), and positions ``< start_pos`` are dropped.
    """
    s = _as_site(site)
    act = store[s]
    act = torch.as_tensor(act)
    act = flatten_site(act, s)
    if act.ndim != 3:
        raise ShapeError(f"store[{s}]: expected (batch, pos, d), got {tuple(act.shape)}")
    lengths = getattr(store, "lengths", None)
    if lengths is None and getattr(store, "tokens", None) is not None and hasattr(store.tokens, "lengths"):
        lengths = store.tokens.lengths
    mask = _positions_mask(act.shape[0], act.shape[1], None if lengths is None else torch.as_tensor(lengths),
                           start_pos).to(act.device)
    return act[mask]


class ActivationBatches:
    """Endless iterator of shuffled ``[batch_size, d_in]`` activation batches (SAE-Lens DataProvider).

    Reads from memory (:meth:`from_tensor`) or from shards on disk (:meth:`from_shards`,
    ``buffer_shards`` shards mixed at a time). Each epoch reshuffles with a private
    ``torch.Generator(seed)``; the global RNG is untouched.

    Attributes:
        d_in, n_tokens, epoch (completed passes), tokens_served.
    """

    def __init__(self, loaders: list[Any], sizes: list[int], d_in: int, *, batch_size: int, seed: int = 0,
                 buffer_shards: int = 4, device: str | torch.device = "cpu") -> None:
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be > 0, got {batch_size}")
        total = sum(sizes)
        if total < batch_size:
            raise DataError(f"only {total} activation tokens, fewer than one batch of {batch_size}; "
                            "use more tokens or a smaller batch")
        self._loaders, self._sizes = loaders, sizes
        self.d_in, self.n_tokens, self.batch_size = d_in, total, batch_size
        self.buffer_shards = max(1, buffer_shards)
        self.device = torch.device(device)
        self._gen = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.tokens_served = 0
        self._iter = self._generate()

    @classmethod
    def from_tensor(cls, acts: torch.Tensor, *, batch_size: int, seed: int = 0,
                    device: str | torch.device | None = None) -> "ActivationBatches":
        """Batches from an in-memory ``[n_tokens, d_in]`` tensor."""
        if acts.ndim != 2:
            raise ShapeError(f"activations: expected (n_tokens, d_in), got {tuple(acts.shape)}")
        return cls([lambda: acts], [acts.shape[0]], acts.shape[1], batch_size=batch_size, seed=seed,
                   buffer_shards=1, device=device or acts.device)

    @classmethod
    def from_shards(cls, shards: ActivationShards, *, batch_size: int, seed: int = 0, buffer_shards: int = 4,
                    device: str | torch.device = "cpu") -> "ActivationBatches":
        """Batches from an on-disk activation cache (shards loaded lazily, ``buffer_shards`` at a time)."""
        sizes = [int(n) for n in _shard_sizes(shards)]
        return cls([(lambda i=i: shards.load(i)) for i in range(len(shards))], sizes, shards.d_in,
                   batch_size=batch_size, seed=seed, buffer_shards=buffer_shards, device=device)

    @classmethod
    def from_store(cls, store: Any, site: Site | str, *, batch_size: int, seed: int = 0, start_pos: int = 1,
                   rows_per_chunk: int = 64, buffer_shards: int = 4,
                   device: str | torch.device = "cpu") -> "ActivationBatches":
        """Batches from an ``interp.cache.ActivationStore`` (in RAM or on disk), read lazily.

        Prompts are read ``rows_per_chunk`` at a time (``store.get(site, prompts=slice)``), padding
        masked with ``store.lengths``, positions ``< start_pos`` dropped, heads of ``z`` concatenated.
        """
        s = _as_site(site)
        lengths = torch.as_tensor(store.lengths)
        chunks = [(a, min(a + rows_per_chunk, len(lengths))) for a in range(0, len(lengths), rows_per_chunk)]
        sizes = [int((lengths[a:b] - start_pos).clamp_min(0).sum()) for a, b in chunks]

        def load(a: int, b: int) -> torch.Tensor:
            act = flatten_site(torch.as_tensor(store.get(s, prompts=slice(a, b))), s)
            mask = _positions_mask(act.shape[0], act.shape[1], lengths[a:b], start_pos)
            return act[mask].float()

        first = load(*chunks[0]) if chunks else torch.zeros(0, 0)
        return cls([(lambda a=a, b=b: load(a, b)) for a, b in chunks], sizes, int(first.shape[-1]),
                   batch_size=batch_size, seed=seed, buffer_shards=buffer_shards, device=device)

    def _generate(self) -> Iterator[torch.Tensor]:
        carry: torch.Tensor | None = None
        while True:
            order = torch.randperm(len(self._loaders), generator=self._gen).tolist()
            for g in range(0, len(order), self.buffer_shards):
                group = [self._loaders[i]() for i in order[g:g + self.buffer_shards]]
                buf = torch.cat(group) if len(group) > 1 else group[0]
                buf = buf[torch.randperm(buf.shape[0], generator=self._gen).to(buf.device)]
                if carry is not None and carry.shape[0]:
                    buf = torch.cat([carry.to(buf.device), buf])
                n_full = buf.shape[0] // self.batch_size
                for b in range(n_full):
                    yield buf[b * self.batch_size:(b + 1) * self.batch_size]
                carry = buf[n_full * self.batch_size:]
            self.epoch += 1

    def __iter__(self) -> "ActivationBatches":
        return self

    def __next__(self) -> torch.Tensor:
        batch = next(self._iter).to(self.device, torch.float32, non_blocking=True)
        self.tokens_served += batch.shape[0]
        return batch


def _shard_sizes(shards: ActivationShards) -> list[int]:
    """Tokens per shard, as the (checked) manifest records them."""
    return [int(sh["shape"][0]) for sh in shards._entries]
