"""Train SAEs with SAE-Lens, offline: from stored activations or with the model in the loop.

Both paths build a SAE-Lens training SAE (``standard``, ``topk``, ``batchtopk`` or
``jumprelu``) and run SAE-Lens's own :class:`sae_lens.SAETrainer` (wandb off, no hub):

* :func:`train_sae` — from any iterator of ``[batch, d_in]`` activations, e.g.
  :class:`~interp.sae.data.ActivationBatches` over an on-disk activation cache
  (captured once, forward pass stopped at the SAE's layer; several epochs are fine).
* :func:`train_streaming` — SAE-Lens's own ``ActivationsStore`` with the model in the loop
  (a ``datasets.Dataset`` with a ``tokens`` column, as ``LanguageModelSAETrainingRunner`` uses).

Sites: ``resid_*``, ``mlp_out``, ``attn_out`` (d_model) and attention ``z`` with the heads
concatenated (``n_heads * d_head``); z SAEs are saved with
``reshape_activations="hook_z"`` so they splice straight into ``attn.hook_z``.

Example:
    >>> from interp.sae.train import SAETrainConfig, train_sae
    >>> from interp.sae.data import ActivationBatches, capture_activations
    >>> from interp import Site, tokenize
    >>> tokens = tokenize(model, ["Hello world, this is a toy.", "Hi there, another prompt here."]).tokens
    >>> acts = capture_activations(model, tokens, [Site("resid_post", 1)])[Site("resid_post", 1)]
    >>> cfg = SAETrainConfig(architecture="topk", k=4, expansion=2, training_tokens=640, batch_size=32,
    ...                      log_every=5)
    >>> out = train_sae(ActivationBatches.from_tensor(acts, batch_size=32, seed=0), cfg, site="resid_post.1",
    ...                 model_name="toy:llama")
    >>> out.sae.cfg.d_sae                        # expansion * d_model
    128
    >>> out.history.table[["step", "tokens", "l0"]].tail(1).values.tolist()   # top-k: exactly k active
    [[20.0, 640.0, 4.0]]
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.errors import ConfigError, ShapeError
from interp.sites import Site

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["ARCHITECTURES", "SAETrainConfig", "TrainedSAE", "make_training_sae", "train_sae", "train_streaming"]

ARCHITECTURES = ("standard", "topk", "batchtopk", "jumprelu")
_NORMS = ("none", "expected_average_only_in")


@dataclass(frozen=True, kw_only=True)
class SAETrainConfig:
    """How to train one SAE (defaults: METHODS.md section 6, scaled for a CPU).

    Attributes:
        architecture: ``"standard"`` (ReLU + L1), ``"topk"``, ``"batchtopk"`` or ``"jumprelu"``.
        expansion: d_sae = expansion * d_in (METHODS.md: 32; 8 here by default for CPUs),
            unless ``d_sae`` is given.
        k: active latents per token (topk; mean per token for batchtopk).
        l1_coefficient: sparsity weight of the standard SAE.
        l0_coefficient: sparsity weight of the JumpReLU SAE.
        lr, lr_warm_up_steps, lr_decay_fraction: Adam learning rate, linear warm-up steps and
            the final fraction of steps with linear decay to ``lr / 10`` (0: constant).
        batch_size: tokens per training step (METHODS.md: 4096).
        training_tokens: total activation tokens seen (several epochs over a cache allowed).
        normalize_activations: ``"expected_average_only_in"`` scales inputs to norm sqrt(d_in)
            during training and folds the factor into the weights at the end.
        dead_feature_window: steps without firing after which a latent counts as dead.
        log_every: record a training-curve point every this many steps.
        seed: seed of the weight initialisation (private RNG fork; the global RNG is untouched).
        device: device of the SAE; ``None`` = where the activations are.
    """

    architecture: str = "topk"
    expansion: int = 8
    d_sae: int | None = None
    k: int = 32
    l1_coefficient: float = 5.0
    l0_coefficient: float = 1.0
    lr: float = 4e-4
    lr_warm_up_steps: int = 0
    lr_decay_fraction: float = 0.2
    batch_size: int = 4096
    training_tokens: int = 1_000_000
    normalize_activations: str = "expected_average_only_in"
    dead_feature_window: int = 1000
    log_every: int = 10
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        from interp.errors import nearest

        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}."
                              f"{nearest(self.architecture, ARCHITECTURES)}")
        if self.normalize_activations not in _NORMS:
            raise ConfigError(f"normalize_activations must be one of {_NORMS}, got {self.normalize_activations!r}")
        for name in ("expansion", "k", "batch_size", "training_tokens", "log_every", "dead_feature_window"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"SAETrainConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.d_sae is not None and self.d_sae <= 0:
            raise ConfigError(f"d_sae must be > 0, got {self.d_sae}")
        if self.training_tokens < self.batch_size:
            raise ConfigError(f"training_tokens={self.training_tokens} is less than one batch of {self.batch_size}")
        if not 0 <= self.lr_decay_fraction <= 1 or self.lr <= 0:
            raise ConfigError(f"need lr > 0 and 0 <= lr_decay_fraction <= 1, got {self.lr}, {self.lr_decay_fraction}")

    @property
    def steps(self) -> int:
        return self.training_tokens // self.batch_size


@dataclass(frozen=True)
class TrainedSAE:
    """A trained SAE (SAE-Lens inference SAE) and its training curve (Result ``sae.training``)."""

    sae: Any
    history: Any
    site: Site
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return float(self.history.meta.extra.get("tokens", 0)) / max(self.seconds, 1e-9)


def _offline() -> Any:
    """Scoped: SAE-Lens / transformers / datasets / wandb must never reach the network from here.

    The environment is restored on exit (no process-wide ``HF_HUB_OFFLINE`` left behind).
    """
    from interp.models import offline_env

    return offline_env(WANDB_MODE="disabled", HF_DATASETS_OFFLINE="1")


def _sae_config(cfg: SAETrainConfig, site: Site, d_in: int, model_name: str, context_size: int | None) -> Any:
    from sae_lens import (BatchTopKTrainingSAEConfig, JumpReLUTrainingSAEConfig, StandardTrainingSAEConfig,
                          TopKTrainingSAEConfig)
    from sae_lens.saes.sae import SAEMetadata

    d_sae = cfg.d_sae or cfg.expansion * d_in
    common = dict(d_in=d_in, d_sae=d_sae, dtype="float32", device=cfg.device or "cpu",
                  normalize_activations=cfg.normalize_activations,
                  reshape_activations="hook_z" if site.component == "z" and site.head is None else "none")
    if cfg.architecture == "standard":
        sc = StandardTrainingSAEConfig(l1_coefficient=cfg.l1_coefficient, **common)
    elif cfg.architecture == "topk":
        sc = TopKTrainingSAEConfig(k=cfg.k, **common)
    elif cfg.architecture == "batchtopk":
        sc = BatchTopKTrainingSAEConfig(k=float(cfg.k), **common)
    else:
        sc = JumpReLUTrainingSAEConfig(l0_coefficient=cfg.l0_coefficient, **common)
    sc.metadata = SAEMetadata(model_name=model_name, hook_name=site.hook_name, hook_head_index=site.head,
                              context_size=context_size, prepend_bos=False, interp_site=str(site))
    sc.add_training_info_to_metadata()
    return sc


def make_training_sae(cfg: SAETrainConfig, *, site: Site | str, d_in: int, model_name: str = "",
                      context_size: int | None = None) -> Any:
    """A fresh SAE-Lens training SAE for ``site`` (weights drawn from a private RNG seeded by ``cfg.seed``)."""
    from sae_lens import TrainingSAE

    site = site if isinstance(site, Site) else Site.parse(site)
    with _offline():
        sc = _sae_config(cfg, site, d_in, model_name, context_size)
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(cfg.seed)  # CPU only: CUDA generators stay untouched
            sae = TrainingSAE.from_dict(sc.to_dict())
    return sae


def _trainer_class() -> type:
    from sae_lens import SAETrainer

    class RecordingTrainer(SAETrainer):
        """SAE-Lens's trainer plus a training curve (every ``log_every`` steps); nothing else changed."""

        log_every: int = 10
        records: list[dict[str, float]]

        def step(self, batch: torch.Tensor) -> Any:
            out = super().step(batch)
            if self.n_training_steps % self.log_every == 0 or self.n_training_samples >= self.cfg.total_training_samples:
                with torch.no_grad():
                    x, x_hat = out.sae_in.float(), out.sae_out.float()
                    resid = (x_hat - x).pow(2).sum(-1)
                    total = (x - x.mean(0)).pow(2).sum(-1)
                    rec = {"step": self.n_training_steps + 1, "tokens": self.n_training_samples,
                           "loss": float(out.loss), "l0": float((out.feature_acts != 0).float().sum(-1).mean()),
                           "explained_variance": float(1 - resid.mean() / total.mean()),
                           "dead_features": int(self.dead_neurons.sum()),
                           "lr": float(self.optimizer.param_groups[0]["lr"]), "time_s": time.perf_counter() - self.t0}
                    for name, v in out.losses.items():
                        rec[name] = float(v.item() if isinstance(v, torch.Tensor) else v)
                    self.records.append(rec)
            return out

    return RecordingTrainer


def _fit(sae: Any, provider: Iterator[torch.Tensor], cfg: SAETrainConfig, device: str) -> tuple[Any, list[dict]]:
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    decay = int(cfg.steps * cfg.lr_decay_fraction)
    tcfg = SAETrainerConfig(total_training_samples=cfg.steps * cfg.batch_size, train_batch_size_samples=cfg.batch_size,
                            lr=cfg.lr, lr_end=cfg.lr / 10, lr_scheduler_name="constant",
                            lr_warm_up_steps=cfg.lr_warm_up_steps, lr_decay_steps=decay, device=device,
                            dead_feature_window=cfg.dead_feature_window,
                            feature_sampling_window=max(cfg.dead_feature_window, cfg.steps + 1),
                            logger=LoggingConfig(log_to_wandb=False), n_batches_for_norm_estimate=
                            max(1, min(50, cfg.steps)))
    trainer = _trainer_class()(cfg=tcfg, sae=sae, data_provider=provider)
    trainer.log_every, trainer.records, trainer.t0 = cfg.log_every, [], time.perf_counter()
    # SAE-Lens prints a tqdm bar of its own; keep it (long loops show progress).
    trained = trainer.fit()
    return trained, trainer.records


def _to_inference(sae: Any, device: str) -> Any:
    from interp.sae.io import load_sae, save_sae

    with tempfile.TemporaryDirectory(prefix="interp-sae-") as tmp:
        save_sae(sae, os.path.join(tmp, "sae"))
        return load_sae(os.path.join(tmp, "sae"), device=device)


def _history(records: list[dict], cfg: SAETrainConfig, site: Site, model: Model, model_name: str,
             data_desc: dict[str, Any], seconds: float) -> Any:
    import pandas as pd

    from interp.results import Result, run_meta

    table = pd.DataFrame(records)
    table.insert(0, "layer", site.layer)
    table.insert(0, "site", str(site))
    meta = run_meta(model if model is not None else model_name, dataset=data_desc.get("dataset", ""),
                    seed=cfg.seed, config=cfg, site=str(site), seconds=seconds,
                    tokens=int(records[-1]["tokens"]) if records else 0, **{k: v for k, v in data_desc.items()
                                                                        if k != "dataset"})
    return Result("sae.training", table, meta, name=str(site))


def train_sae(provider: Iterator[Float[Tensor, "batch d_in"]], cfg: SAETrainConfig, *, site: Site | str, model: Model = None,
              model_name: str = "", context_size: int | None = None,
              data_desc: dict[str, Any] | None = None) -> TrainedSAE:
    """Train an SAE with SAE-Lens's ``SAETrainer`` on batches from ``provider``.

    Args:
        provider: endless iterator of ``[batch_size, d_in]`` activations (an
            :class:`~interp.sae.data.ActivationBatches`, SAE-Lens's ``ActivationsStore``, ...).
        site: where the activations come from (recorded in the SAE's metadata).
        model: the model, to check the width and record provenance (optional).
        data_desc: provenance of the data (dataset name, hashes) for the Result.

    Returns:
        :class:`TrainedSAE` with the inference SAE (SAE-Lens format) and Result ``sae.training``.

    Raises:
        ShapeError: the provider's ``d_in`` does not match the site of ``model``.
    """
    from interp.sae.data import check_sae_site

    site = site if isinstance(site, Site) else Site.parse(site)
    d_in = getattr(provider, "d_in", None)
    first = None
    if d_in is None:
        first = next(provider)
        d_in = first.shape[-1]
    if model is not None:
        check_sae_site(model, site, d_in)
        info = getattr(model, "interp_info", None)
        model_name = model_name or (info.spec if info else "")
    batch_size = getattr(provider, "batch_size", cfg.batch_size)
    if batch_size != cfg.batch_size:
        raise ConfigError(f"provider yields batches of {batch_size}, config says batch_size={cfg.batch_size}")
    device = cfg.device or str(getattr(provider, "device", "cpu"))
    sae = make_training_sae(cfg, site=site, d_in=d_in, model_name=model_name, context_size=context_size)
    if first is not None:
        provider = _prepend(first, provider)
    provider = _checked(provider, d_in)
    t0 = time.perf_counter()
    with _offline():
        trained, records = _fit(sae, provider, cfg, device)
    seconds = time.perf_counter() - t0
    history = _history(records, cfg, site, model, model_name, data_desc or {}, seconds)
    return TrainedSAE(_to_inference(trained, device), history, site, seconds)


def _prepend(first: torch.Tensor, rest: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    yield first
    yield from rest


def _checked(provider: Iterator[torch.Tensor], d_in: int) -> Iterator[torch.Tensor]:
    for batch in provider:
        if batch.ndim != 2 or batch.shape[1] != d_in:
            raise ShapeError(f"activation batch: expected (batch, {d_in}), got {tuple(batch.shape)}")
        yield batch


def train_streaming(model: Model, tokens: Int[Tensor, "batch pos"], cfg: SAETrainConfig, *, site: Site | str,
                    start_pos: int = 1, store_batch_size_prompts: int = 8,
                    n_batches_in_buffer: int | None = None) -> TrainedSAE:
    """Train with SAE-Lens's own ``ActivationsStore``: the model runs inside the training loop.

    Args:
        tokens: ``[rows, context_size]`` token rows (fed as a ``datasets.Dataset`` ``tokens`` column).
        start_pos: positions ``< start_pos`` of every row are not trained on (``seqpos_slice``).
        store_batch_size_prompts: prompts per model forward pass.
        n_batches_in_buffer: SAE-Lens's mixing buffer holds ``n_batches_in_buffer * (context_size -
            start_pos)`` tokens, which must be >= ``batch_size``; ``None``: twice the batch.
    """
    import datasets
    from sae_lens import ActivationsStore, LanguageModelSAERunnerConfig
    from sae_lens.config import LoggingConfig

    from interp.sae.data import check_sae_site, site_width

    site = site if isinstance(site, Site) else Site.parse(site)
    d_in = site_width(model, site)
    check_sae_site(model, site, d_in)
    ctx = int(tokens.shape[1])
    if n_batches_in_buffer is None:
        n_batches_in_buffer = -(-2 * cfg.batch_size // (ctx - start_pos))
    buffer_tokens = n_batches_in_buffer * (ctx - start_pos)
    if buffer_tokens < cfg.batch_size:
        raise ConfigError(f"SAE-Lens's mixing buffer of {buffer_tokens} tokens is smaller than batch_size="
                          f"{cfg.batch_size}; raise n_batches_in_buffer")
    info = getattr(model, "interp_info", None)
    name = info.spec if info else "model"
    with _offline():
        sc = _sae_config(cfg, site, d_in, name, ctx)
        device = cfg.device or str(next(model.parameters()).device)
        lcfg = LanguageModelSAERunnerConfig(
            sae=sc, model_name=name, hook_name=site.hook_name, hook_head_index=site.head, dataset_path="",
            streaming=False, is_dataset_tokenized=True, context_size=ctx, n_batches_in_buffer=n_batches_in_buffer,
            training_tokens=cfg.steps * cfg.batch_size, store_batch_size_prompts=store_batch_size_prompts,
            seqpos_slice=(start_pos, None), device=device, seed=cfg.seed, prepend_bos=False,
            train_batch_size_tokens=cfg.batch_size, logger=LoggingConfig(log_to_wandb=False),
            model_from_pretrained_kwargs={}, exclude_special_tokens=False, output_path=None, checkpoint_path=None,
            n_checkpoints=0, verbose=False)
        ds = datasets.Dataset.from_dict({"tokens": tokens.tolist()})
        store = ActivationsStore.from_config(model, lcfg, override_dataset=ds)
        store.batch_size = cfg.batch_size  # store.d_in and store.device exist already
        return train_sae(store, cfg, site=site, model=model, context_size=ctx,
                         data_desc={"dataset": "tokens", "source": "sae_lens.ActivationsStore (model in the loop)"})
