"""Save and load SAEs in SAE-Lens's own format (``cfg.json`` + ``sae_weights.safetensors``).

Our SAEs and SAE-Lens pretrained releases are interchangeable: :func:`save_sae` writes
what ``sae_lens.SAE.load_from_disk`` reads, and :func:`load_sae` is that loader plus
checks that turn a missing, truncated or corrupt file into a clear :class:`StoreError`.
:func:`load_pretrained` loads a release from the hub where it is reachable and fails at
once, naming the offline alternatives, where it is not.

Example:
    >>> import tempfile, torch
    >>> from sae_lens import SAE
    >>> from interp.sae.io import save_sae, load_sae
    >>> from interp.sites import Site
    >>> sae = SAE.from_dict({"architecture": "standard", "d_in": 64, "d_sae": 32, "dtype": "float32",
    ...                      "device": "cpu", "metadata": {"hook_name": Site("resid_post", 1).hook_name}})
    >>> folder = save_sae(sae, tempfile.mkdtemp() + "/resid_post.1")
    >>> sorted(p.name for p in folder.iterdir())
    ['cfg.json', 'sae_weights.safetensors']
    >>> back = load_sae(folder)
    >>> back.cfg.d_sae, torch.equal(back.W_enc, sae.W_enc)
    (32, True)
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any

from interp.errors import ModelNotFoundError, StoreError, nearest

__all__ = ["save_sae", "load_sae", "load_pretrained", "check_weights_file", "WEIGHTS_FILE", "CFG_FILE"]

WEIGHTS_FILE = "sae_weights.safetensors"
CFG_FILE = "cfg.json"


def check_weights_file(path: str | Path) -> dict[str, Any]:
    """Validate a safetensors file's header and size without loading it; return the header.

    Raises:
        StoreError: missing, truncated (shorter than its header says) or corrupt file.
    """
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"SAE weights file {path} is missing")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise StoreError(f"SAE weights file {path} is truncated or corrupt: {size} bytes, no safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n <= 0 or 8 + n > size:
            raise StoreError(f"SAE weights file {path} is truncated or corrupt: header of {n} bytes announced, "
                             f"file has {size} bytes")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StoreError(f"SAE weights file {path} is corrupt: unreadable safetensors header ({e})") from e
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise StoreError(f"SAE weights file {path} is truncated or corrupt: tensors need {8 + n + end} bytes, "
                         f"file has {size} bytes")
    return header


def save_sae(sae: Any, folder: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``sae`` to ``folder`` in SAE-Lens's format, atomically.

    Training SAEs are saved as their inference architecture (SAE-Lens's
    ``save_inference_model``: a batch-top-k SAE becomes a JumpReLU SAE).

    Raises:
        StoreError: ``folder`` exists and ``overwrite`` is False (nothing is touched).
    """
    from sae_lens.saes.sae import TrainingSAE

    from interp._fs import atomic_dir

    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise StoreError(f"{folder} exists; pass overwrite=True (--overwrite) or choose another folder")
    staging = folder.with_name(folder.name + ".saving")
    shutil.rmtree(staging, ignore_errors=True)
    with atomic_dir(staging) as tmp:
        if isinstance(sae, TrainingSAE):
            sae.save_inference_model(str(tmp))
        else:
            sae.save_model(str(tmp))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)
    return folder


def load_sae(folder: str | Path, *, device: str = "cpu", dtype: str | None = None) -> Any:
    """Load an SAE saved by :func:`save_sae` or by SAE-Lens (``SAE.load_from_disk``), checked first.

    Raises:
        StoreError: no such folder, missing ``cfg.json``, or a missing / truncated / corrupt weights file.
    """
    from sae_lens import SAE

    folder = Path(folder)
    if not folder.is_dir():
        raise StoreError(f"no SAE folder at {folder} (expected {CFG_FILE} and {WEIGHTS_FILE})")
    cfg_path = folder / CFG_FILE
    if not cfg_path.is_file():
        raise StoreError(f"{folder} has no {CFG_FILE}; not an SAE-Lens SAE folder")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise StoreError(f"{cfg_path} is not valid JSON ({e})") from e
    if "architecture" not in cfg or "d_in" not in cfg or "d_sae" not in cfg:
        raise StoreError(f"{cfg_path} lacks architecture/d_in/d_sae; not an SAE-Lens config")
    header = check_weights_file(folder / WEIGHTS_FILE)
    shapes = {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
    w_dec = shapes.get("W_dec")
    if w_dec is not None and tuple(w_dec) != (cfg["d_sae"], cfg["d_in"]):
        raise StoreError(f"{folder}: W_dec has shape {tuple(w_dec)}, cfg.json says d_sae={cfg['d_sae']}, d_in={cfg['d_in']}")
    try:
        return SAE.load_from_disk(str(folder), device=device, dtype=dtype)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise StoreError(f"SAE-Lens could not load {folder}: {type(e).__name__}: {e}") from e


def _release_names() -> list[str]:
    """Top-level keys of SAE-Lens's pretrained_saes.yaml, read as text (no sae_lens import, no YAML parse)."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("sae_lens")
    if spec is None or not spec.submodule_search_locations:
        return []
    path = Path(list(spec.submodule_search_locations)[0]) / "pretrained_saes.yaml"
    if not path.exists():
        return []
    return re.findall(r"^([A-Za-z0-9][^:\s]*):\s*$", path.read_text(), flags=re.M)


def load_pretrained(release: str, sae_id: str, *, device: str = "cpu") -> Any:
    """Load a pretrained SAE-Lens release (``SAE.from_pretrained``) where the hub is reachable.

    Offline it fails at once (no 25 s of retries), naming what works offline.

    Raises:
        ModelNotFoundError: unknown release / sae_id (nearest names), or the hub is unreachable.
    """
    from interp.models import _hub_reachable

    releases = _release_names()
    if releases and release not in releases:
        raise ModelNotFoundError(f"unknown SAE-Lens release {release!r}.{nearest(release, releases)}")
    if not _hub_reachable(timeout=2.0):
        raise ModelNotFoundError(
            f"SAE-Lens release {release!r} / {sae_id!r} lives on the Hugging Face hub, which is not reachable "
            "(offline, or HF_HUB_OFFLINE set). Offline, load a folder saved by SAE-Lens or interp with "
            "interp.sae.load_sae(folder), or train one: interp sae train MODEL --site SITE --tokens N --out DIR")
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    ids = get_pretrained_saes_directory()[release].saes_map
    if sae_id not in ids:
        raise ModelNotFoundError(f"release {release!r} has no SAE {sae_id!r}.{nearest(sae_id, ids)}")
    from sae_lens import SAE

    return SAE.from_pretrained(release, sae_id, device=device)
