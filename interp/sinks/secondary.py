"""Secondary attention sinks (Wong et al. 2025): later tokens that turn into copies of the first.

For every layer ``l`` and token ``j >= 1`` the reducer keeps ``cos(h_l[j], h_l[0])``
(``h`` = ``resid_post``), the norm of ``h_l[0]`` relative to the median norm of the
other tokens, and ``cos(mlp_out_l[j], h_l[0])`` (does the layer's MLP write the
primary sink direction into token ``j``?).

Definitions (METHODS.md section 4):

* *window*: layers where the first token's norm is large, ``|h_l[0]| >
  norm_factor x median_j |h_l[j]|`` (norm_factor = 5 [U]);
* a token *holds* the sink state at layer ``l`` of the window when ``|cos| > 0.9``;
  lifetime = number of window layers it holds; creation layer = the first;
* class: ``primary`` (position 0); ``secondary`` when ``lo < lifetime < hi``;
  ``noise`` otherwise. Wong et al. use ``4 < lifetime < L - 15`` for L-layer models
  (L = 28-32); here both bounds scale with depth [U]:
  ``lo = round(4 L / 32)`` and ``hi = L - round(15 L / 32)``, so a 30-layer model gets
  ``4 < lifetime < 16`` and models under ~4 layers have no secondary class at all;
* mlp_cos: ``cos(mlp_out[j], h[0])`` at the creation layer;
* level: sink levels = clusters of (creation layer, lifetime); here the rank of the
  distinct rounded (creation_layer, lifetime) pairs, most frequent first [U].

Example:
    >>> from interp.models import load_model
    >>> from interp.sinks import secondary_sinks
    >>> r = secondary_sinks(load_model("toy:llama"), ["Hello. World."])
    >>> r.kind, r.table.columns.tolist()
    ('sinks.secondary', ['prompt', 'pos', 'token', 'creation_layer', 'lifetime', 'class', 'mlp_cos', 'level'])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from interp.errors import ConfigError
from interp.models import TokenBatch
from interp.results import Result, run_meta
from interp.sinks._stream import Chunk, prepare, stream, token_strings
from interp.sites import Site

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["SecondaryConfig", "SecondaryReducer", "secondary_sinks", "lifetime_bounds", "COLUMNS"]

COLUMNS = ["prompt", "pos", "token", "creation_layer", "lifetime", "class", "mlp_cos", "level"]


@dataclass(frozen=True, kw_only=True)
class SecondaryConfig:
    """Settings of the secondary-sink search.

    Attributes:
        cos_threshold: |cos| with the first token's state (Wong et al.: 0.9).
        norm_factor: the first token's norm must exceed this times the median norm of
            the other tokens for a layer to be in the window [U].
        max_len: cut prompts to this many tokens (``None``: all).
        batch_size: prompts per forward pass.
    """

    cos_threshold: float = 0.9
    norm_factor: float = 5.0
    max_len: int | None = None
    batch_size: int = 8

    def __post_init__(self) -> None:
        if not 0.0 < self.cos_threshold < 1.0:
            raise ConfigError(f"cos_threshold must be in (0, 1), got {self.cos_threshold}")
        if self.norm_factor <= 0:
            raise ConfigError(f"norm_factor must be > 0, got {self.norm_factor}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")


def lifetime_bounds(n_layers: int) -> tuple[int, int]:
    """Exclusive bounds ``(lo, hi)`` of a secondary sink's lifetime, scaled from Wong et al.'s 4 and L - 15."""
    return round(4 * n_layers / 32), n_layers - round(15 * n_layers / 32)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)


class SecondaryReducer:
    """Per prompt and layer: cos of every token with token 0, the window flag, MLP alignment."""

    def __init__(self, n_prompts: int, n_layers: int, width: int, norm_factor: float) -> None:
        self.n_layers, self.norm_factor = n_layers, norm_factor
        self.cos = np.zeros((n_prompts, n_layers, width))
        self.mlp_cos = np.zeros((n_prompts, n_layers, width))
        self.norm_ratio = np.zeros((n_prompts, n_layers))
        self.lengths = np.zeros(n_prompts, dtype=np.int64)
        self.token_ids: dict[int, list[int]] = {}
        self._mlp: dict[int, torch.Tensor] = {}

    def sites(self) -> list[Site]:
        return [s for layer in range(self.n_layers) for s in (Site("mlp_out", layer), Site("resid_post", layer))]

    def update(self, act: torch.Tensor, site: Site, chunk: Chunk) -> None:
        if site.component == "mlp_out":
            self._mlp[site.layer] = act.float()
            return
        h = act.float()
        b, p, _ = h.shape
        rows = slice(chunk.offset, chunk.offset + b)
        first = h[:, :1]
        self.cos[rows, site.layer, :p] = (_cos(h, first) * chunk.mask).cpu().numpy()
        mlp = self._mlp.pop(site.layer, None)
        if mlp is not None:
            self.mlp_cos[rows, site.layer, :p] = (_cos(mlp, first) * chunk.mask).cpu().numpy()
        norms = h.norm(dim=-1)
        for i in range(b):
            n = int(chunk.lengths[i])
            other = norms[i, 1:n]
            med = float(other.median()) if n > 1 else float("nan")
            self.norm_ratio[chunk.offset + i, site.layer] = float(norms[i, 0]) / med if med and med > 0 else 0.0
            self.lengths[chunk.offset + i] = n
            self.token_ids.setdefault(chunk.offset + i, chunk.tokens[i, :n].tolist())


def secondary_results(red: SecondaryReducer, model: Model, config: SecondaryConfig, meta: Any) -> Result:
    """The ``sinks.secondary`` Result from a filled :class:`SecondaryReducer`."""
    lo, hi = lifetime_bounds(red.n_layers)
    rows = []
    for prompt in range(red.cos.shape[0]):
        window = red.norm_ratio[prompt] > config.norm_factor                  # [layer]
        if not window.any():
            continue
        n = int(red.lengths[prompt])
        ids = red.token_ids[prompt]
        holds = (np.abs(red.cos[prompt, :, :n]) > config.cos_threshold) & window[:, None]   # [layer, pos]
        for pos in range(n):
            life = int(holds[:, pos].sum())
            if life == 0:
                continue
            created = int(np.argmax(holds[:, pos]))
            cls = "primary" if pos == 0 else "secondary" if lo < life < hi else "noise"
            rows.append({"prompt": prompt, "pos": pos, "token": token_strings(model, [ids[pos]])[0],
                         "creation_layer": created, "lifetime": life, "class": cls,
                         "mlp_cos": float(red.mlp_cos[prompt, created, pos]) if pos else 1.0, "level": -1})
    table = pd.DataFrame(rows, columns=COLUMNS)
    sec = table["class"] == "secondary"
    if sec.any():
        pairs = table.loc[sec, ["creation_layer", "lifetime"]].apply(tuple, axis=1)
        order = pairs.value_counts().index.tolist()
        table.loc[sec, "level"] = pairs.map({p: i for i, p in enumerate(order)}).astype(int)
    table["level"] = table["level"].astype(int)
    return Result("sinks.secondary", table, meta)


def secondary_sinks(model: Model, prompts: Sequence[str] | TokenBatch, config: SecondaryConfig = SecondaryConfig(), *,
                    dataset: str = "", progress: bool = False) -> Result:
    """Find tokens whose hidden state aligns with the first token's (see the module docstring).

    Returns:
        ``sinks.secondary``: prompt, pos, token, creation_layer, lifetime, class
        (primary / secondary / noise), mlp_cos, level. Empty (with these columns) when the
        first token's norm is never large, i.e. the model has no first-token sink state.
    """
    batch, kept = prepare(model, prompts, config.max_len)
    red = SecondaryReducer(len(batch), model.cfg.n_layers, max(batch.tokens.shape[1], 1), config.norm_factor)
    stream(model, batch, [red], batch_size=config.batch_size, progress=progress, desc="secondary sinks")
    meta = run_meta(model, dataset=dataset, data=batch.tokens, config=config, prompts_kept=len(kept))
    return secondary_results(red, model, config, meta)
