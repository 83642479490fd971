"""Load per-layer transcoders saved by :func:`interp.transcoders.train_transcoders`, checked against the model.

Each ``L<l>/`` folder is an SAE-Lens folder (:func:`interp.sae.io.load_sae` reads it); its
cfg metadata says which model identity, layer layout (``n_layers``, ``d_model``), layer and
hooks it was trained for. A transcoder from another model identity or another layout is
refused, and missing layers are named.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interp.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["check_transcoder_folder", "load_transcoders"]


def check_transcoder_folder(folder: str | Path, model: Model, layer: int) -> dict[str, Any]:
    """Check ``folder`` holds the layer-``layer`` transcoder of ``model``; return its cfg.json.

    Raises:
        StoreError: not an SAE-Lens transcoder folder (missing / corrupt files).
        ConfigError: trained for another model identity, layer layout, layer or hooks.
    """
    from interp.models import model_info
    from interp.sae.io import CFG_FILE, check_weights_file
    from interp.sites import Site

    folder = Path(folder)
    cfg_path = folder / CFG_FILE
    if not cfg_path.is_file():
        raise StoreError(f"{folder} has no {CFG_FILE}; not a transcoder folder (train with interp transcoders train)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise StoreError(f"{cfg_path} is not valid JSON ({e})") from e
    check_weights_file(folder / "sae_weights.safetensors")
    if "transcoder" not in str(cfg.get("architecture", "")):
        raise StoreError(f"{cfg_path}: architecture {cfg.get('architecture')!r} is not a transcoder")
    meta = cfg.get("metadata") or {}
    info = model_info(model)
    want = {"interp_model_identity": info.identity, "interp_n_layers": int(model.cfg.n_layers),
            "interp_d_model": int(model.cfg.d_model), "interp_layer": int(layer),
            "hook_name": Site("mlp_in", layer).hook_name, "hook_name_out": Site("mlp_out", layer).hook_name}
    for key, value in want.items():
        if meta.get(key) != value:
            what = key.removeprefix("interp_")
            raise ConfigError(f"transcoder {folder}: {what} is {meta.get(key)!r}, this model ({info.spec}) needs "
                              f"{value!r}; transcoders from another model identity or layer layout are refused")
    return cfg


def load_transcoders(model: Model, folder: str | Path | None = None, *, layers: list[int] | None = None,
                     device: str = "cpu") -> dict[int, Any]:
    """``{layer: JumpReLUTranscoder}`` for ``layers`` (default all) from ``folder`` (default the model's cache).

    Raises:
        StoreError: layers without a transcoder (all named), or broken folders.
        ConfigError: a transcoder trained for another model identity or layer layout.
    """
    from interp.sae.io import load_sae
    from interp.transcoders.train import transcoder_home

    root = Path(folder) if folder is not None else transcoder_home(model)
    n_layers = int(model.cfg.n_layers)
    layers = list(range(n_layers)) if layers is None else [int(x) for x in layers]
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad:
        raise ConfigError(f"layers {bad} out of range: the model has {n_layers} layers")
    missing = [x for x in layers if not (root / f"L{x}").is_dir()]
    if missing:
        raise StoreError(f"no transcoder for layer(s) {', '.join(map(str, missing))} under {root} "
                         f"(expected {root}/L<layer>/); train them with interp transcoders train")
    out = {}
    for x in layers:
        check_transcoder_folder(root / f"L{x}", model, x)
        tc = load_sae(root / f"L{x}", device=device)
        tc.eval()
        for p in tc.parameters():
            p.requires_grad_(False)
        out[x] = tc
    return out
