"""Extreme-token phenomena (Guo et al. 2024): value-state drain, residual-state peak, dormant heads.

* **Value-state drain**: per head, the norm of the first token's value vector vs the
  mean norm of the other tokens' value vectors (``ratio`` < 1: drained). With grouped
  query attention a query head reads the value of its key/value group
  (``kv = head // (n_heads / n_kv_heads)``).
* **Residual-state peak**: per layer, the norm of the first token's ``resid_post`` vs
  the median norm of the other tokens (``sinks.peak``).
* **Active / dormant heads**: for every prompt domain (e.g. prose vs code), each head's
  *sink mass* (mean attention on position 0 from queries t >= 1) and *output norm*
  (mean ``|z_h W_O[h]|`` over queries t >= 1). Dormancy score [U]::

      dormancy = sink_mass x (1 - out_norm / max over domains of out_norm)

  high when the head parks on the sink and writes little. A head *switches* when its
  sink mass differs between two domains by more than ``switch_gap`` (0.3) and the domain
  with more sink mass has the smaller output norm.

Example:
    >>> from interp.models import load_model
    >>> from interp.sinks import dormant_heads
    >>> r = dormant_heads(load_model("toy:llama"), {"prose": ["Hi there"], "code": ["x = 1"]})
    >>> r.kind, len(r.table), sorted(set(r.table.domain))        # every head (2 x 4) in each domain
    ('sinks.dormancy', 16, ['code', 'prose'])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from interp.errors import ConfigError, DataError
from interp.nodes import node_id
from interp.results import Result, run_meta
from interp.sinks._stream import Chunk, prepare, stream
from interp.sinks.stats import SinkReducer
from interp.sites import Site

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["DormancyConfig", "DrainReducer", "OutputNormReducer", "dormant_heads", "extreme_tokens",
           "DRAIN_COLUMNS", "PEAK_COLUMNS", "DORMANCY_COLUMNS"]

DRAIN_COLUMNS = ["layer", "head", "node", "value_norm_sink", "value_norm_other", "ratio"]
PEAK_COLUMNS = ["layer", "norm_sink", "norm_other", "ratio"]
DORMANCY_COLUMNS = ["layer", "head", "node", "domain", "sink_mass", "out_norm", "dormancy", "switches"]


@dataclass(frozen=True, kw_only=True)
class DormancyConfig:
    """Settings of the extreme-token measurements.

    Attributes:
        switch_gap: sink-mass difference between domains that makes a head switch [U].
        max_len: cut prompts to this many tokens (``None``: all).
        batch_size: prompts per forward pass.
    """

    switch_gap: float = 0.3
    max_len: int | None = 64
    batch_size: int = 8

    def __post_init__(self) -> None:
        if not 0.0 < self.switch_gap < 1.0:
            raise ConfigError(f"switch_gap must be in (0, 1), got {self.switch_gap}")
        if self.max_len is not None and self.max_len < 2:
            raise ConfigError(f"max_len must be >= 2 or None, got {self.max_len}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")


class DrainReducer:
    """Value norms of the first vs other tokens per kv head, and residual norms per layer."""

    def __init__(self, n_prompts: int, n_layers: int, n_kv: int) -> None:
        self.n_layers = n_layers
        self.v_sink = np.zeros((n_prompts, n_layers, n_kv))
        self.v_other = np.zeros((n_prompts, n_layers, n_kv))
        self.r_sink = np.zeros((n_prompts, n_layers))
        self.r_other = np.zeros((n_prompts, n_layers))

    def sites(self) -> list[Site]:
        return [s for layer in range(self.n_layers) for s in (Site("v", layer), Site("resid_post", layer))]

    def update(self, act: torch.Tensor, site: Site, chunk: Chunk) -> None:
        rows = slice(chunk.offset, chunk.offset + len(chunk))
        other = chunk.mask.clone()
        other[:, 0] = False
        n_other = other.sum(1).clamp(min=1)
        if site.component == "v":
            norms = act.float().norm(dim=-1)                                   # [batch, pos, kv]
            self.v_sink[rows, site.layer] = norms[:, 0].cpu().numpy()
            self.v_other[rows, site.layer] = ((norms * other[:, :, None]).sum(1) / n_other[:, None]).cpu().numpy()
        else:
            norms = act.float().norm(dim=-1)                                   # [batch, pos]
            self.r_sink[rows, site.layer] = norms[:, 0].cpu().numpy()
            for i in range(len(chunk)):
                n = int(chunk.lengths[i])
                self.r_other[chunk.offset + i, site.layer] = float(norms[i, 1:n].median()) if n > 1 else 0.0


class OutputNormReducer:
    """Mean norm of each head's output ``z_h W_O[h]`` over queries t >= 1, per prompt."""

    def __init__(self, model: Model, n_prompts: int) -> None:
        cfg = model.cfg
        self.n_layers = cfg.n_layers
        self.w_o = [getattr(model.blocks[layer].attn, "W_O", None) for layer in range(cfg.n_layers)]
        self.out = np.zeros((n_prompts, cfg.n_layers, cfg.n_heads))

    def sites(self) -> list[Site]:
        return [Site("z", layer) for layer in range(self.n_layers)]

    def update(self, act: torch.Tensor, site: Site, chunk: Chunk) -> None:
        z = act.float()                                                        # [batch, pos, head, d_head]
        w = self.w_o[site.layer]
        out = torch.einsum("bphd,hdm->bphm", z, w.float()) if w is not None else z
        norms = out.norm(dim=-1)                                               # [batch, pos, head]
        q = chunk.mask.clone()
        q[:, 0] = False
        mean = (norms * q[:, :, None]).sum(1) / q.sum(1).clamp(min=1)[:, None]
        self.out[chunk.offset:chunk.offset + len(chunk), site.layer] = mean.cpu().numpy()


def _safe_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


def drain_results(red: DrainReducer, n_heads: int, meta: Any) -> list[Result]:
    """``sinks.drain`` (per query head) and ``sinks.peak`` (per layer) from a filled :class:`DrainReducer`."""
    if red.v_sink.shape[0] == 0:
        return [Result("sinks.drain", pd.DataFrame(columns=DRAIN_COLUMNS), meta),
                Result("sinks.peak", pd.DataFrame(columns=PEAK_COLUMNS), meta)]
    n_kv = red.v_sink.shape[2]
    group = max(n_heads // n_kv, 1)
    vs, vo = red.v_sink.mean(0), red.v_other.mean(0)
    rows = [{"layer": layer, "head": head, "node": node_id("head", layer=layer, head=head),
             "value_norm_sink": float(vs[layer, head // group]), "value_norm_other": float(vo[layer, head // group])}
            for layer in range(red.n_layers) for head in range(n_heads)]
    drain = pd.DataFrame(rows, columns=DRAIN_COLUMNS[:-1])
    drain["ratio"] = _safe_ratio(drain.value_norm_sink.to_numpy(), drain.value_norm_other.to_numpy())
    rs, ro = red.r_sink.mean(0), red.r_other.mean(0)
    peak = pd.DataFrame({"layer": np.arange(red.n_layers), "norm_sink": rs, "norm_other": ro,
                         "ratio": _safe_ratio(rs, ro)})
    return [Result("sinks.drain", drain, meta), Result("sinks.peak", peak, meta)]


def extreme_tokens(model: Model, prompts: Sequence[str], config: DormancyConfig = DormancyConfig(), *,
                   dataset: str = "", progress: bool = False) -> list[Result]:
    """Value-state drain per head and residual-state peak per layer.

    Returns:
        ``[sinks.drain, sinks.peak]`` (empty, valid tables when no prompt has two tokens).
    """
    batch, kept = prepare(model, prompts, config.max_len)
    cfg = model.cfg
    red = DrainReducer(len(batch), cfg.n_layers, getattr(cfg, "n_key_value_heads", None) or cfg.n_heads)
    stream(model, batch, [red], batch_size=config.batch_size, progress=progress, desc="value drain")
    meta = run_meta(model, dataset=dataset, data=batch.tokens, config=config, prompts_kept=len(kept))
    return drain_results(red, cfg.n_heads, meta)


def dormancy_table(per_domain: Mapping[str, tuple[np.ndarray, np.ndarray]], switch_gap: float) -> pd.DataFrame:
    """``sinks.dormancy`` rows from ``{domain: (sink_mass [layer, head], out_norm [layer, head])}`` means."""
    if not per_domain:
        return pd.DataFrame(columns=DORMANCY_COLUMNS)
    domains = list(per_domain)
    mass = np.stack([per_domain[d][0] for d in domains])                      # [domain, layer, head]
    out = np.stack([per_domain[d][1] for d in domains])
    top = out.max(0, keepdims=True)
    dorm = mass * (1 - _safe_ratio(out, np.broadcast_to(top, out.shape)))
    hi, lo = mass.argmax(0), mass.argmin(0)
    gap = mass.max(0) - mass.min(0)
    out_hi = np.take_along_axis(out, hi[None], 0)[0]
    out_lo = np.take_along_axis(out, lo[None], 0)[0]
    switches = (gap > switch_gap) & (out_hi < out_lo)
    rows = []
    for di, d in enumerate(domains):
        for layer in range(mass.shape[1]):
            for head in range(mass.shape[2]):
                rows.append({"layer": layer, "head": head, "node": node_id("head", layer=layer, head=head),
                             "domain": d, "sink_mass": float(mass[di, layer, head]),
                             "out_norm": float(out[di, layer, head]), "dormancy": float(np.nan_to_num(dorm[di, layer, head])),
                             "switches": bool(switches[layer, head])})
    return pd.DataFrame(rows, columns=DORMANCY_COLUMNS)


def dormant_heads(model: Model, domains: Mapping[str, Sequence[str]], config: DormancyConfig = DormancyConfig(), *,
                  progress: bool = False) -> Result:
    """Sink mass, output norm and dormancy of every head in every prompt domain.

    Args:
        domains: ``{name: prompts}``; two or more domains are needed for ``switches``.

    Returns:
        ``sinks.dormancy``: layer, head, node, domain, sink_mass, out_norm, dormancy, switches.

    Raises:
        DataError: no domains given.
    """
    if not domains:
        raise DataError("dormant_heads needs at least one prompt domain, e.g. {'prose': [...], 'code': [...]}")
    cfg = model.cfg
    means: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, prompts in domains.items():
        batch, _ = prepare(model, prompts, config.max_len)
        if len(batch) == 0:
            continue
        sinks = SinkReducer(len(batch), cfg.n_layers, cfg.n_heads, batch.tokens.shape[1])
        outs = OutputNormReducer(model, len(batch))
        stream(model, batch, [sinks, outs], batch_size=config.batch_size, progress=progress, desc=f"domain {name}")
        means[name] = (sinks.sink_mass.mean(0), outs.out.mean(0))
    meta = run_meta(model, dataset="+".join(domains), data={k: list(v) for k, v in domains.items()}, config=config)
    return Result("sinks.dormancy", dormancy_table(means, config.switch_gap), meta)
