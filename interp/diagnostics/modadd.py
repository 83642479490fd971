"""Modular-addition toy: ``a + b mod p`` learned by a one-layer transformer under several weight decays.

**Data.** Every pair ``(a, b)`` with ``0 <= a, b < p`` as the sequence ``[a, b, =]`` (``=`` is token
``p``); the label is ``(a + b) mod p``, read at the last position. A seeded ``train_fraction`` of
the ``p^2`` pairs is the training set, the rest the test set.

**Model** (:class:`ModAddTransformer`): token and learned position embeddings, one causal
``torch.nn.MultiheadAttention`` layer, a ReLU MLP, no layer norm, unembedding; a plain
``nn.Module``, so the online diagnostics read its patterns through :func:`~.callback.mha_patterns`.

**Training** (:func:`train_modadd`): AdamW (betas 0.9, 0.98), constant learning rate, minibatches of
``batch_size`` pairs (0: full batch); train/test accuracy and loss (on the whole sets) with the
diagnostics every ``every`` steps (an :class:`~.callback.AttentionDiagnostics` injected).
:func:`sweep` trains one run per weight decay; ``data/toy/modadd`` holds the committed curves of
:data:`COMMITTED_DECAYS` (settings and seconds in its ``interp_source.json``; figure ``curves.svg``).

**Against the paper** (Verma 2026; its abstract: memorisation below lambda_c = 0.0158, grokking for
lambda in [0.1, 2] with time-to-grok falling from 1090 to 83 epochs, collapse to identical attention
patterns at lambda = 10; models of 0.82M-85M parameters; its learning rate, data fraction and batch
are not in the abstract we could read): the defaults are the classic grokking setup (Power et al. 2022): p = 97, half the pairs trained, AdamW lr 1e-3, betas (0.9, 0.98),
minibatches of 512; the model is smaller (one layer, d_model 128, 4 heads: ~0.2M parameters) and
the budget 2000 steps (~217 epochs) for this CPU. Which runs reach which regime: :data:`REGIMES`.

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
           "COMMITTED_DECAYS", "REGIMES"]


@dataclass(frozen=True, kw_only=True)
class ModAddConfig:
    """Task, model and training settings of the modular-addition toy (defaults: the committed curves).

    Attributes:
        p: the modulus (prime).
        train_fraction: share of the ``p^2`` pairs trained on.
        d_model, n_heads, d_mlp: model sizes.
        steps, lr: AdamW steps and learning rate.
        batch_size: training pairs per step, drawn without replacement from a seeded shuffle of the
            training set (reshuffled when fewer than ``batch_size`` remain); 0: full batch.
        every: diagnostics and accuracies every ``every`` steps.
        seed: split, initialisation (private generators; the global RNG is untouched).
    """

    p: int = 97
    train_fraction: float = 0.5
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    steps: int = 2000
    lr: float = 1e-3
    every: int = 100
    batch_size: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if self.p < 3 or not 0 < self.train_fraction < 1:
            raise ConfigError(f"ModAddConfig: need p >= 3 and 0 < train_fraction < 1, got p={self.p}, "
                              f"train_fraction={self.train_fraction}")
        if self.d_model % self.n_heads or self.steps < 1 or self.every < 1 or not self.lr > 0 or self.batch_size < 0:
            raise ConfigError(f"ModAddConfig: need n_heads dividing d_model and positive steps/every/lr, got "
                              f"d_model={self.d_model}, n_heads={self.n_heads}, steps={self.steps}, every={self.every}, "
                              f"lr={self.lr}, batch_size={self.batch_size}")


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
        h = (h + a)[:, -1]                    # one layer: only the last position reaches the output
        h = h + self.mlp(h)
        return self.unembed(h)


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
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    order = torch.empty(0, dtype=torch.long)
    for step in range(cfg.steps):
        if step % cfg.every == 0 or step == cfg.steps - 1:
            with torch.no_grad():
                train, test = model(tx), model(vx)
                cb(step, model, force=step == cfg.steps - 1, weight_decay=weight_decay,
                   train_loss=float(ce(train, ty)), test_loss=float(ce(test, vy)),
                   train_acc=float((train.argmax(-1) == ty).float().mean()),
                   test_acc=float((test.argmax(-1) == vy).float().mean()))
        if cfg.batch_size and cfg.batch_size < len(tx):
            if len(order) < cfg.batch_size:
                order = torch.randperm(len(tx), generator=gen)
            idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
            x, y = tx[idx], ty[idx]
        else:
            x, y = tx, ty
        loss = ce(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return cb.table


#: the weight decays of the committed curves (2000 steps): 0 memorises, 1 has not grokked yet, 2 groks,
#: 4 fits neither set fully, 10 collapses (identical, uniform attention); README "What it finds"
COMMITTED_DECAYS = (0.0, 1.0, 2.0, 4.0, 10.0)
#: the runs of COMMITTED_DECAYS that reach the paper's three regimes
REGIMES = {"memorising": 0.0, "grokking": 2.0, "collapse": 10.0}
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
