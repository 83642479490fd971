"""Train per-layer transcoders (MLP input ``mlp_in`` -> MLP output ``mlp_out``) from an activation store.

SAE-Lens (6.x) ships transcoder *models* (``sae_lens.saes.transcoder``: ``Transcoder``,
``JumpReLUTranscoder``, ``TranscoderConfig`` with ``d_out``) but no transcoder trainer:
``sae_lens.training`` (``SAETrainer``, ``ActivationsStore``) trains SAEs that reconstruct their
own input. So the training loop here is a plain one, and the model it trains and saves *is*
SAE-Lens's ``JumpReLUTranscoder``:

* ``architecture="topk"``: batch top-k (the ``k * batch`` largest ReLU pre-activations of a
  batch are kept, Bussmann et al. 2024), decoder rows kept at unit norm; the threshold used at
  inference is the running mean of the smallest kept activation (SAE-Lens's own batch-top-k ->
  JumpReLU conversion), so the saved transcoder is a JumpReLU transcoder with L0 ~ k.
* ``architecture="jumprelu"``: JumpReLU with a learned per-feature threshold (straight-through
  rectangle-kernel gradients, Rajamanoharan et al. 2024) and an L0 penalty (the count of open gates).

Data: the pairs ``(mlp_in.l, mlp_out.l)`` of every real token (padding and the first
``start_pos`` positions dropped) from an :class:`interp.cache.ActivationStore` holding both
sites, read with :func:`interp.sae.data.flatten_store` and shuffled by
:class:`interp.sae.data.ActivationBatches` (paired columns, so the rows stay aligned).

Storage: one SAE-Lens folder per layer (``cfg.json`` + ``sae_weights.safetensors`` via
:func:`interp.sae.io.save_sae`) under ``interp_home()/transcoders/<model identity>/L<l>/``; the
cfg's metadata records the model identity, ``n_layers``, ``d_model``, the layer and both hook
names, and :func:`interp.transcoders.io.load_transcoders` checks them. A finished layer is
skipped on the next call (resumable per layer).

Example:
    >>> import tempfile
    >>> from interp.cache import collect
    >>> from interp.transcoders import TranscoderTrainConfig, train_transcoders, load_transcoders
    >>> store = collect(model, ["a b c d e f"] * 8, "mlp_in,mlp_out", progress=False)
    >>> root = tempfile.mkdtemp()
    >>> out = train_transcoders(model, store, TranscoderTrainConfig(d_sae=32, k=4, steps=5, batch_size=16),
    ...                         folder=root)
    >>> [(r.layer, r.skipped) for r in out], [r.skipped for r in train_transcoders(model, store, folder=root)]
    ([(0, False), (1, False)], [True, True])
    >>> type(load_transcoders(model, root)[1]).__name__
    'JumpReLUTranscoder'
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from interp.errors import ConfigError, DataError, ShapeError

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["TranscoderTrainConfig", "TrainedLayer", "transcoder_home", "train_transcoders", "train_layer",
           "encode_pre"]

ARCHITECTURES = ("topk", "jumprelu")
_BANDWIDTH = 0.05   # JumpReLU pseudo-gradient width / initial threshold, on unit-scale data


@dataclass(frozen=True, kw_only=True)
class TranscoderTrainConfig:
    """How to train one layer's transcoder.

    Attributes:
        d_sae: number of features.
        architecture: ``"topk"`` (batch top-k, saved as JumpReLU) or ``"jumprelu"``.
        k: mean active features per token (top-k).
        l0_coeff: weight of the tanh L0 penalty (jumprelu).
        steps: optimiser steps per layer; batch_size: tokens per step; lr: Adam learning rate.
        start_pos: positions dropped at the start of every prompt (BOS / SmolLM2's first token).
        seed: initialisation and shuffling seed.
    """

    d_sae: int = 512
    architecture: str = "topk"
    k: int = 16
    l0_coeff: float = 1e-3
    steps: int = 500
    batch_size: int = 256
    lr: float = 1e-3
    start_pos: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"transcoder architecture {self.architecture!r} unknown; expected one of {ARCHITECTURES}")
        for name in ("d_sae", "k", "steps", "batch_size"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"TranscoderTrainConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.k > self.d_sae:
            raise ConfigError(f"TranscoderTrainConfig.k={self.k} exceeds d_sae={self.d_sae}")


@dataclass
class TrainedLayer:
    """One layer's outcome: the folder, whether it was trained now or skipped, and its final losses."""

    layer: int
    folder: Path
    skipped: bool
    seconds: float = 0.0
    final_mse: float = float("nan")
    final_l0: float = float("nan")
    history: list[dict[str, float]] = field(default_factory=list)


def transcoder_home(model: Model) -> Path:
    """``interp_home()/transcoders/<model identity>``: where a model's transcoders live by default."""
    from interp._fs import interp_home
    from interp.models import model_info

    return interp_home() / "transcoders" / model_info(model).identity


def encode_pre(tc: Any, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
    """Pre-activations ``x @ W_enc + b_enc`` of a SAE-Lens transcoder (the attribution targets)."""
    return x.to(tc.W_enc.dtype) @ tc.W_enc + tc.b_enc


def _new_transcoder(cfg: TranscoderTrainConfig, model: Model, layer: int, d_model: int) -> Any:
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.transcoder import JumpReLUTranscoder, JumpReLUTranscoderConfig

    from interp.models import model_info
    from interp.sites import Site

    info = model_info(model)
    tcfg = JumpReLUTranscoderConfig(d_in=d_model, d_sae=cfg.d_sae, d_out=d_model, dtype="float32", device="cpu",
                                    apply_b_dec_to_input=False)
    tcfg.metadata = SAEMetadata(
        model_name=info.spec, hook_name=Site("mlp_in", layer).hook_name,
        hook_name_out=Site("mlp_out", layer).hook_name, interp_model_identity=info.identity,
        interp_n_layers=int(model.cfg.n_layers), interp_d_model=d_model, interp_layer=layer,
        interp_training=json.dumps(asdict(cfg)))
    torch.manual_seed(cfg.seed + 1000 * layer)
    return JumpReLUTranscoder(tcfg)


def _rect(x: torch.Tensor, width: float) -> torch.Tensor:
    return ((x > -width / 2) & (x < width / 2)).to(x.dtype)


class _JumpStep(torch.autograd.Function):
    """Heaviside step with a rectangle-kernel pseudo-gradient for the threshold (JumpReLU training)."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor, width: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.width = width
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        pre, threshold = ctx.saved_tensors
        g_thr = -(1.0 / ctx.width) * _rect(pre - threshold, ctx.width) * grad
        return None, g_thr.sum(tuple(range(g_thr.ndim - 1))), None


def train_layer(model: Model, store: Any, layer: int, cfg: TranscoderTrainConfig, folder: str | Path) -> TrainedLayer:
    """Train and save the transcoder of one layer (see the module doc); returns its :class:`TrainedLayer`."""
    from interp.sae.data import ActivationBatches, flatten_store
    from interp.sae.io import save_sae
    from interp.sites import Site

    x = flatten_store(store, Site("mlp_in", layer), start_pos=cfg.start_pos).float()
    y = flatten_store(store, Site("mlp_out", layer), start_pos=cfg.start_pos).float()
    if x.shape != y.shape:
        raise ShapeError(f"store: mlp_in.{layer} has {tuple(x.shape)} token rows, mlp_out.{layer} {tuple(y.shape)}")
    if not bool(torch.isfinite(x).all() & torch.isfinite(y).all()):
        raise DataError(f"store: non-finite activations at mlp_in.{layer} / mlp_out.{layer}")
    d = x.shape[1]
    # train on unit-scale data (mean row norm sqrt(d)); the scales are folded into the weights at the end
    cx = math.sqrt(d) / float(x.norm(dim=1).mean().clamp_min(1e-12))
    cy = math.sqrt(d) / float(y.norm(dim=1).mean().clamp_min(1e-12))
    x, y = x * cx, y * cy
    tc = _new_transcoder(cfg, model, layer, d)
    var = float(y.var(0).sum())                 # the loss is the MSE over the output's total variance
    with torch.no_grad():
        tc.b_dec.copy_(y.mean(0))
        tc.W_dec.div_(tc.W_dec.norm(dim=1, keepdim=True))
        tc.W_enc.copy_(tc.W_dec.T)
        tc.threshold.fill_(_BANDWIDTH)
    params = [tc.W_enc, tc.b_enc, tc.W_dec, tc.b_dec] + ([tc.threshold] if cfg.architecture == "jumprelu" else [])
    opt = torch.optim.Adam(params, lr=cfg.lr)
    batches = ActivationBatches.from_tensor(torch.cat([x, y], dim=1), batch_size=cfg.batch_size, seed=cfg.seed)
    thr_sum, thr_n, history = 0.0, 0, []
    t0 = time.perf_counter()
    tc.train()
    for step in range(cfg.steps):
        batch = next(batches)
        bx, by = batch[:, :d], batch[:, d:]
        pre = bx @ tc.W_enc + tc.b_enc
        if cfg.architecture == "topk":
            flat = torch.relu(pre).flatten()
            vals, idx = flat.topk(min(cfg.k * bx.shape[0], flat.numel()), sorted=False)
            acts = torch.zeros_like(flat).scatter(0, idx, vals).view_as(pre)
            kept = vals.detach()[vals.detach() > 0]
            if kept.numel():
                thr_sum, thr_n = thr_sum + float(kept.min()), thr_n + 1
            l0_pen = torch.zeros(())
        else:
            gate = _JumpStep.apply(pre, tc.threshold, _BANDWIDTH)
            acts = torch.relu(pre) * gate
            l0_pen = cfg.l0_coeff * gate.sum(-1).mean()
        recon = acts @ tc.W_dec + tc.b_dec
        mse = (recon - by).pow(2).sum(-1).mean() / max(var, 1e-12)
        loss = mse + l0_pen
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            if cfg.architecture == "topk":
                tc.W_dec.div_(tc.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))
            else:
                tc.threshold.clamp_(min=1e-4)
        if step % 10 == 0 or step == cfg.steps - 1:
            history.append({"step": step, "nmse": float(mse.detach()), "l0": float((acts.detach() > 0).float().sum(-1).mean())})
    tc.eval()
    with torch.no_grad():
        if cfg.architecture == "topk":
            tc.threshold.fill_(thr_sum / max(thr_n, 1))
        tc.W_enc.mul_(cx)                       # fold the data scales back: the transcoder reads raw mlp_in
        tc.W_dec.div_(cy)
        tc.b_dec.div_(cy)
    seconds = time.perf_counter() - t0
    save_sae(tc, folder, overwrite=True)
    return TrainedLayer(layer, Path(folder), False, seconds, history[-1]["nmse"], history[-1]["l0"], history)


def train_transcoders(model: Model, store: Any, cfg: TranscoderTrainConfig = TranscoderTrainConfig(), *,
                      layers: list[int] | None = None, folder: str | Path | None = None,
                      progress: bool = False) -> list[TrainedLayer]:
    """Train one transcoder per layer into ``folder/L<l>`` (default :func:`transcoder_home`); finished layers are skipped.

    Args:
        store: an :class:`interp.cache.ActivationStore` (or any ``store[site]`` mapping) holding
            ``mlp_in.l`` and ``mlp_out.l`` of the layers, collected from this model.
        layers: which layers (default: all).

    Raises:
        ConfigError: the store was collected from another model identity, or a layer out of range.
        SiteError: the store lacks ``mlp_in``/``mlp_out`` of a requested layer.
    """
    from interp.models import model_info
    from interp.sites import Site
    from interp.transcoders.io import check_transcoder_folder

    from interp.errors import SiteError

    info = model_info(model)
    n_layers = int(model.cfg.n_layers)
    layers = list(range(n_layers)) if layers is None else [int(layer) for layer in layers]
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise ConfigError(f"layers {bad} out of range: the model has {n_layers} layers")
    store_model = getattr(store, "model", None)
    if isinstance(store_model, dict) and store_model.get("revision") and store_model["revision"] != info.identity:
        raise ConfigError(f"activation store {getattr(store, 'path', '')} was collected from model identity "
                          f"{store_model['revision']}, not {info.identity} ({info.spec})")
    stored = getattr(store, "sites", None)
    if stored is not None:
        have = set(stored)
        missing = [str(s) for layer in layers for c in ("mlp_in", "mlp_out") if (s := Site(c, layer)) not in have]
        if missing:
            raise SiteError(f"activation store lacks {', '.join(missing)}; collect them with sites 'mlp_in,mlp_out'")
    root = Path(folder) if folder is not None else transcoder_home(model)
    out = []
    for layer in layers:
        target = root / f"L{layer}"
        if target.exists():
            check_transcoder_folder(target, model, layer)        # refuses a foreign or broken one
            out.append(TrainedLayer(layer, target, True))
            continue
        rec = train_layer(model, store, layer, cfg, target)
        if progress:
            print(f"L{layer}: nmse {rec.final_mse:.4f}  L0 {rec.final_l0:.1f}  {rec.seconds:.1f}s", flush=True)
        out.append(rec)
    return out
