"""Modular-addition toy: ``a + b mod p`` learned by a one-layer transformer under several weight decays.

**Data.** Every pair ``(a, b)`` with ``0 <= a, b < p`` as the sequence ``[a, b, =]`` (``=`` is token
``p``); the label is ``(a + b) mod p``, read at the last position. A seeded ``train_fraction`` of
the ``p^2`` pairs is the training set (full batch), the rest the test set.

**Model** (:class:`ModAddTransformer`): token and learned position embeddings, one causal
``torch.nn.MultiheadAttention`` layer, a ReLU MLP, no layer norm, unembedding; a plain
``nn.Module``, so the online diagnostics read its patterns through :func:`~.callback.mha_patterns`.

**Training** (:func:`train_modadd`): AdamW (betas 0.9, 0.98), constant learning rate, full batch;
train/test accuracy and loss with the diagnostics every ``every`` steps (an
:class:`~.callback.AttentionDiagnostics` injected). :func:`sweep` trains one run per weight decay;
``data/toy/modadd`` holds the committed curves of :data:`COMMITTED` (settings and seconds in its
``interp_source.json``; figure ``curves.svg``); the regimes they show are in the README ("What it finds").

Example:
    >>> cfg = ModAddConfig(p=7, d_model=16, n_heads=2, d_mlp=32, steps=3, every=1)
    >>> train_modadd(cfg, weight_decay=1.0)[["step", "m_train_acc"]].shape
    (3, 2)
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from interp.errors import ConfigError

__all__ = ["ModAddConfig", "ModAddTransformer", "modadd_data", "train_modadd", "sweep", "COMMITTED",
           "COMMITTED_DECAYS"]


@dataclass(frozen=True, kw_only=True)
class ModAddConfig:
    """Task, model and training settings of the modular-addition toy (defaults: the committed curves).

    Attributes:
        p: the modulus (prime).
        train_fraction: share of the ``p^2`` pairs trained on.
        d_model, n_heads, d_mlp: model sizes.
        steps, lr: full-batch AdamW steps and learning rate.
        every: diagnostics and accuracies every ``every`` steps.
        seed: split, initialisation (private generators; the global RNG is untouched).
    """

    p: int = 23
    train_fraction: float = 0.5
    d_model: int = 64
    n_heads: int = 4
    d_mlp: int = 256
    steps: int = 4000
    lr: float = 3e-3
    every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.p < 3 or not 0 < self.train_fraction < 1:
            raise ConfigError(f"ModAddConfig: need p >= 3 and 0 < train_fraction < 1, got p={self.p}, "
                              f"train_fraction={self.train_fraction}")
        if self.d_model % self.n_heads or self.steps < 1 or self.every < 1 or not self.lr > 0:
            raise ConfigError(f"ModAddConfig: need n_heads dividing d_model and positive steps/every/lr, got "
                              f"d_model={self.d_model}, n_heads={self.n_heads}, steps={self.steps}, every={self.every}, "
                              f"lr={self.lr}")


class ModAddTransformer(torch.nn.Module):
    """One causal attention layer + ReLU MLP over ``[a, b, =]``; ``forward(tokens) -> [batch, p]`` logits."""

    def __init__(self, cfg: ModAddConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.embed = torch.nn.Embedding(cfg.p + 1, d)
        self.pos = torch.nn.Parameter(torch.randn(3, d) / d ** 0.5)
        self.attn = torch.nn.MultiheadAttention(d, cfg.n_heads, bias=False, batch_first=True)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d, cfg.d_mlp), torch.nn.ReLU(), torch.nn.Linear(cfg.d_mlp, d))
        self.unembed = torch.nn.Linear(d, cfg.p, bias=False)
        self.register_buffer("mask", torch.triu(torch.ones(3, 3, dtype=torch.bool), 1), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.pos[: tokens.shape[1]]
        n = tokens.shape[1]
        a, _ = self.attn(h, h, h, attn_mask=self.mask[:n, :n], need_weights=False)
        h = h + a
        h = h + self.mlp(h)
        return self.unembed(h[:, -1])


def modadd_data(cfg: ModAddConfig) -> tuple[Int[Tensor, "n_train 3"], Int[Tensor, " n_train"], Int[Tensor, "n_test 3"], Int[Tensor, " n_test"]]:
    """``(train_x, train_y, test_x, test_y)``: sequences ``[n, 3]`` and labels ``[n]``, split by ``cfg.seed``."""
    a, b = torch.meshgrid(torch.arange(cfg.p), torch.arange(cfg.p), indexing="ij")
    x = torch.stack([a.flatten(), b.flatten(), torch.full((cfg.p ** 2,), cfg.p)], 1)
    y = (x[:, 0] + x[:, 1]) % cfg.p
    perm = torch.randperm(cfg.p ** 2, generator=torch.Generator().manual_seed(cfg.seed))
    n = int(round(cfg.train_fraction * cfg.p ** 2))
    return x[perm[:n]], y[perm[:n]], x[perm[n:]], y[perm[n:]]


def train_modadd(cfg: ModAddConfig, *, weight_decay: float, callback: Any = None) -> pd.DataFrame:
    """Train one run; returns its curves (one row per recorded step: diagnostics + ``m_train_acc``,
    ``m_test_acc``, ``m_train_loss``, ``m_test_loss``).

    Args:
        weight_decay: AdamW's decoupled weight decay.
        callback: an :class:`~.callback.AttentionDiagnostics` (default: one on the test inputs, every
            ``cfg.every`` steps, ``run="wd=<weight_decay>"``).
    """
    from interp.diagnostics.callback import AttentionDiagnostics

    if weight_decay < 0:
        raise ConfigError(f"train_modadd: weight_decay must be >= 0, got {weight_decay}")
    tx, ty, vx, vy = modadd_data(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = ModAddTransformer(cfg)
    cb = callback or AttentionDiagnostics(vx, every=cfg.every, run=f"wd={weight_decay:g}")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    ce = torch.nn.functional.cross_entropy
    for step in range(cfg.steps):
        logits = model(tx)
        loss = ce(logits, ty)
        if step % cfg.every == 0 or step == cfg.steps - 1:
            with torch.no_grad():
                test = model(vx)
                cb(step, model, force=step == cfg.steps - 1, weight_decay=weight_decay, train_loss=float(loss),
                   test_loss=float(ce(test, vy)), train_acc=float((logits.argmax(-1) == ty).float().mean()),
                   test_acc=float((test.argmax(-1) == vy).float().mean()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return cb.table


#: the weight decays of the committed curves: memorising (0), grokking (1), collapse (10)
COMMITTED_DECAYS = (0.0, 1.0, 10.0)
COMMITTED = Path(__file__).resolve().parents[2] / "data" / "toy" / "modadd"


def sweep(cfg: ModAddConfig, weight_decays: tuple[float, ...] = COMMITTED_DECAYS, *,
          folder: str | Path | None = None) -> Any:
    """Train one run per weight decay; a ``diagnostics.curves`` Result (saved to ``folder`` if given, with
    ``interp_source.json`` recording the settings, weight decays and seconds)."""
    from interp.results import Result, RunMeta

    t0 = time.perf_counter()
    table = pd.concat([train_modadd(cfg, weight_decay=wd) for wd in weight_decays], ignore_index=True)
    seconds = round(time.perf_counter() - t0, 1)
    source = {"toy": "modadd", "train": dataclasses.asdict(cfg), "weight_decays": list(weight_decays),
              "seconds": seconds, "threads": torch.get_num_threads()}
    res = Result("diagnostics.curves", table, RunMeta(model="modadd", dataset=f"a+b mod {cfg.p}",
                                                      seed=cfg.seed, config=source), name="modadd")
    if folder is not None:
        res.save(folder)
        (Path(folder) / "interp_source.json").write_text(json.dumps(source, indent=1) + "\n")
    return res
