"""Train per-layer transcoders (MLP input ``mlp_in`` -> MLP output ``mlp_out``) from an activation store.

SAE-Lens (6.54) ships transcoder *models* (``sae_lens.saes.transcoder``: ``Transcoder``,
``JumpReLUTranscoder``, ``TranscoderConfig`` with ``d_out``) but no transcoder trainer:
``sae_lens.training`` (``SAETrainer``, ``ActivationsStore``) trains SAEs that reconstruct their
own input. So the training loop here is our own, and the model it trains and saves *is*
SAE-Lens's ``JumpReLUTranscoder``:

* ``architecture="topk"``: per-token top-k (each token keeps its ``k`` largest ReLU
  pre-activations; batch top-k shares one budget across a batch, and SmolLM2's rare
  massive-activation tokens can take much of it), decoder rows kept at unit norm, Adam with a linear decay over the last 20% of the
  steps. Inference is JumpReLU: :func:`calibrate_thresholds` sets per-feature thresholds so that
  each feature fires on the calibration tokens exactly as often as under top-k (mean L0 = k
  there; the old global threshold, a plain mean of each batch's smallest kept value over all
  steps, is dominated by the early steps' small values and set too low). Then the decoder and its bias are refitted by (ridge) least squares to
  the JumpReLU codes of the training tokens (:func:`_refit_decoder`), which a short CPU budget
  of SGD steps leaves far from optimal.
* ``architecture="jumprelu"``: JumpReLU with a learned per-feature threshold (straight-through
  rectangle-kernel gradients, Rajamanoharan et al. 2024) and an L0 penalty (the count of open gates).

Initialisation (``init="data"``): each feature starts as a template of one training token
(encoder = its unit centred input, decoder = its unit centred output), with the encoder scale
fitted by least squares so the first reconstruction has the right size.

Data: the pairs ``(mlp_in.l, mlp_out.l)`` of every real token (padding and the first
``start_pos`` positions dropped) from an :class:`interp.cache.ActivationStore` holding both
sites, read with :func:`interp.sae.data.flatten_store` and shuffled by
:class:`interp.sae.data.ActivationBatches` (paired columns, so the rows stay aligned). Inputs
and outputs are scaled so the median token norm is ``sqrt(d)`` during training (SAE-Lens's
``normalize_activations``, with the median rather than the mean, robust to massive tokens),
and the scales are folded back into the saved weights.

**Sink positions.** SmolLM2's first token carries a massive activation (MLP input norm
~24,000 against a median of ~160 at layer 15), as do ~0.1% of later tokens. They are not
encoded: positions ``< start_pos`` and tokens whose MLP input norm exceeds
:data:`SINK_NORM_RATIO` x the training median (stored as ``interp_max_in_norm``) are left out
of training, get no active feature (:func:`encode_tokens`), and keep the real MLP output in the
replacement model (in a graph: the error node), as circuit-tracer does for BOS.

SAE-Lens 6.x ships transcoder models (``JumpReLUTranscoder``) but no transcoder trainer, so
the loop is ours and the saved model is SAE-Lens's.

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
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp.errors import ConfigError, DataError, ShapeError

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["TranscoderTrainConfig", "TrainedLayer", "transcoder_home", "train_transcoders", "train_layer",
           "encode_pre", "training_rows", "collect_training_store", "sink_positions", "encode_tokens",
           "calibrate_thresholds", "SINK_NORM_RATIO"]

ARCHITECTURES = ("topk", "jumprelu")
#: A token whose MLP input norm exceeds this multiple of the training tokens' median is a *sink
#: position* (SmolLM2's massive-activation tokens: ~100x the median from layer 15 on), like position 0.
SINK_NORM_RATIO = 10.0
_BANDWIDTH = 0.05   # JumpReLU pseudo-gradient width / initial threshold, on unit-scale data


@dataclass(frozen=True, kw_only=True)
class TranscoderTrainConfig:
    """How to train one layer's transcoder.

    Attributes:
        d_sae: number of features.
        architecture: ``"topk"`` (per-token top-k, saved as JumpReLU) or ``"jumprelu"``.
        k: active features per token (top-k; the mean at inference on the calibration tokens).
        l0_coeff: weight of the tanh L0 penalty (jumprelu).
        steps: optimiser steps per layer; batch_size: tokens per step; lr: Adam learning rate.
        start_pos: positions dropped at the start of every prompt (BOS / SmolLM2's first token).
        init: ``"data"`` (features start as training-token templates) or ``"random"``.
        refit_decoder: refit decoder + bias by least squares to the JumpReLU codes (topk);
            ``ridge`` its ridge factor, ``refit_tokens`` / ``calibration_tokens`` how many
            training tokens the refit / threshold calibration use.
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
    init: str = "data"
    refit_decoder: bool = True
    ridge: float = 1e-3
    refit_tokens: int = 32_768
    calibration_tokens: int = 8_192
    seed: int = 0

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"transcoder architecture {self.architecture!r} unknown; expected one of {ARCHITECTURES}")
        for name in ("d_sae", "k", "steps", "batch_size"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"TranscoderTrainConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.init not in ("data", "random"):
            raise ConfigError(f"TranscoderTrainConfig.init must be 'data' or 'random', got {self.init!r}")
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


def training_rows(split_train: Int[Tensor, "rows ctx"], tokens: int) -> Int[Tensor, "n ctx"]:
    """About ``tokens`` predicted tokens' worth of corpus rows, evenly spaced over ``split_train``.

    The corpus is ordered by source (stdlib, then numpy, then pandas docstrings), so taking the
    first rows would train on one source only; evenly spaced rows cover all of them.
    """
    n, ctx = split_train.shape
    rows = min(n, max(1, math.ceil(tokens / max(ctx - 1, 1))))
    return split_train[torch.linspace(0, n - 1, rows).round().long()]


def collect_training_store(model: Model, rows: Int[Tensor, "n ctx"], layers: list[int], out: str | Path,
                           *, dtype: torch.dtype = torch.bfloat16) -> Any:
    """``mlp_in`` + ``mlp_out`` of ``layers`` for ``rows`` into the activation store ``out`` (resumable).

    Stored as bfloat16 by default: 30 SmolLM2 layers x 2 sites x 576 values are 69 kB a token
    (138 kB in float32), and training reads them back as float32.
    """
    from interp.cache import collect
    from interp.models import TokenBatch

    batch = TokenBatch(tokens=rows, lengths=torch.full((rows.shape[0],), rows.shape[1]), texts=("",) * rows.shape[0])
    return collect(model, batch, [f"{c}.{x}" for x in layers for c in ("mlp_in", "mlp_out")], out=out,
                   dtype=dtype, progress=False)


def _meta(tc: Any, key: str, default: Any) -> Any:
    meta = getattr(tc.cfg, "metadata", None)
    value = getattr(meta, key, None) if meta is not None else None
    return default if value is None else value


def sink_positions(tc: Any, x: Float[Tensor, "*batch pos d_in"]) -> Bool[Tensor, "*batch pos"]:
    """Positions the transcoder does not encode: ``pos < start_pos`` (metadata ``interp_start_pos``)
    or an input norm above ``interp_max_in_norm`` (:data:`SINK_NORM_RATIO` x the training median).

    There the replacement keeps the real MLP output (in an attribution graph: the error node
    holds it), as circuit-tracer does for the BOS position. Transcoders without the metadata
    treat no position as a sink.
    """
    start = int(_meta(tc, "interp_start_pos", 0))
    cap = _meta(tc, "interp_max_in_norm", None)
    mask = (torch.arange(x.shape[-2], device=x.device) < start).expand(x.shape[:-1])
    if cap is not None:
        mask = mask | (x.float().norm(dim=-1) > float(cap))
    return mask


def encode_tokens(tc: Any, x: Float[Tensor, "*batch pos d_in"]) -> Float[Tensor, "*batch pos d_sae"]:
    """``tc.encode`` with the sink positions (:func:`sink_positions`) set to no active feature."""
    acts = tc.encode(x.to(tc.W_enc.dtype))
    return acts.masked_fill(sink_positions(tc, x)[..., None], 0.0)


def encode_pre(tc: Any, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
    """Pre-activations ``x @ W_enc + b_enc`` of a SAE-Lens transcoder (the attribution targets)."""
    return x.to(tc.W_enc.dtype) @ tc.W_enc + tc.b_enc


def _new_transcoder(cfg: TranscoderTrainConfig, model: Model, layer: int, d_model: int,
                    max_in_norm: float | None = None) -> Any:
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
        interp_training=json.dumps(asdict(cfg)), interp_start_pos=int(cfg.start_pos),
        interp_max_in_norm=max_in_norm)
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


def _unit_scale(v: Float[Tensor, "n d"]) -> float:
    """Factor that brings the *median* row norm to sqrt(d) (robust to SmolLM2's massive-activation rows)."""
    return math.sqrt(v.shape[1]) / float(v.norm(dim=1).median().clamp_min(1e-12))


def _topk_acts(pre: Float[Tensor, "n d_sae"], k: int) -> Float[Tensor, "n d_sae"]:
    """Per-token top-k of ``relu(pre)`` (differentiable through the kept values)."""
    vals, idx = torch.relu(pre).topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, idx, vals)


def calibrate_thresholds(pre: Float[Tensor, "n d_sae"], k: int) -> Float[Tensor, " d_sae"]:
    """Per-feature JumpReLU thresholds under which each feature fires exactly as often as under top-k.

    ``c_f`` = how many of the ``n`` calibration tokens have feature ``f`` among their ``k`` largest
    positive pre-activations; the threshold is set between the ``c_f``-th and ``(c_f+1)``-th largest
    pre-activation of ``f``, so ``pre > threshold`` holds for exactly ``c_f`` tokens and the mean L0 on
    the calibration tokens is ``sum_f c_f / n`` (= k when every token has k positive pre-activations).
    A feature never selected gets its largest calibration value (it stays off there).

    Example:
        >>> pre = torch.tensor([[3., 1., 0.5], [0.2, 2., 1.5]])
        >>> thr = calibrate_thresholds(pre, 1)
        >>> ((pre > thr) & (pre > 0)).sum(1).tolist()
        [1, 1]
    """
    n = pre.shape[0]
    vals, idx = torch.relu(pre).topk(k, dim=-1)
    counts = torch.zeros(pre.shape[1], dtype=torch.long).index_add_(
        0, idx[vals > 0], torch.ones(int((vals > 0).sum()), dtype=torch.long))
    srt = pre.sort(dim=0, descending=True).values                       # [n, d_sae]
    c = counts.clamp(max=n - 1)
    above = srt.gather(0, (c - 1).clamp(min=0)[None])[0]                # c-th largest (kept)
    below = srt.gather(0, c[None])[0]                                   # (c+1)-th largest (dropped)
    thr = torch.where(counts > 0, (above + below) / 2, srt[0])
    thr = torch.where(counts >= n, torch.minimum(srt[-1] - 1e-6, torch.zeros(())), thr)
    return thr.clamp_min(0.0)


def _jumprelu_codes(tc: Any, x: Float[Tensor, "n d"], chunk: int = 8192) -> tuple[Int[Tensor, "nnz 2"], Float[Tensor, " nnz"]]:
    """Nonzero (token, feature) pairs and values of the JumpReLU codes of ``x`` (chunked: never n x d_sae at once)."""
    idx, val = [], []
    for i in range(0, x.shape[0], chunk):
        pre = x[i:i + chunk] @ tc.W_enc + tc.b_enc
        acts = torch.relu(pre) * (pre > tc.threshold)
        nz = acts.nonzero()
        idx.append(nz + torch.tensor([i, 0]))
        val.append(acts[nz[:, 0], nz[:, 1]])
    return torch.cat(idx), torch.cat(val)


def _refit_decoder(tc: Any, x: Float[Tensor, "n d"], y: Float[Tensor, "n d_out"], *, ridge: float) -> None:
    """Least-squares decoder (and bias) for the *inference* (JumpReLU) codes of the training tokens.

    The codes are sparse (~k per token), so ``A^T A`` is accumulated from the k^2 pairs of each
    token and ``A^T Y`` from its k rows; the ridge term is ``ridge`` x the mean diagonal.
    """
    n, d_sae = x.shape[0], int(tc.cfg.d_sae)
    nz, v = _jumprelu_codes(tc, x)
    rows, feats = nz[:, 0], nz[:, 1]
    gram = torch.zeros(d_sae * d_sae, dtype=torch.float64)
    order = torch.argsort(rows, stable=True)
    rows, feats, v = rows[order], feats[order], v[order]
    counts = torch.bincount(rows, minlength=n)
    # pairs within each token: expand by the token's count (memory ~ n k^2)
    start = torch.cumsum(counts, 0) - counts
    rep = torch.repeat_interleave(torch.arange(len(rows)), counts[rows])          # each nz paired with its token's nzs
    offs = torch.arange(len(rep)) - torch.repeat_interleave(torch.cumsum(counts[rows], 0) - counts[rows], counts[rows])
    partner = start[rows[rep]] + offs
    gram.index_add_(0, feats[rep] * d_sae + feats[partner], (v[rep] * v[partner]).double())
    gram = gram.view(d_sae, d_sae)
    aty = torch.zeros(d_sae, y.shape[1], dtype=torch.float64)
    for i in range(0, len(rows), 1 << 18):
        sl = slice(i, i + (1 << 18))
        aty.index_add_(0, feats[sl], (v[sl, None] * y[rows[sl]]).double())
    a_mean = torch.zeros(d_sae, dtype=torch.float64).index_add_(0, feats, v.double()) / n
    y_mean = y.double().mean(0)
    cov = gram / n - a_mean[:, None] * a_mean[None, :]
    cross = aty / n - a_mean[:, None] * y_mean[None, :]
    lam = ridge * float(cov.diagonal().mean().clamp_min(1e-12))
    w = torch.linalg.solve(cov + lam * torch.eye(d_sae, dtype=torch.float64), cross)
    tc.W_dec.copy_(w.to(tc.W_dec.dtype))
    tc.b_dec.copy_((y_mean - a_mean @ w).to(tc.b_dec.dtype))


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
    # sink positions beyond start_pos (massive-activation tokens) are left out, as at inference
    max_in_norm = SINK_NORM_RATIO * float(x.norm(dim=1).median())
    keep = x.norm(dim=1) <= max_in_norm
    x, y = x[keep], y[keep]
    d = x.shape[1]
    # train on unit-scale data (median row norm sqrt(d)); the scales are folded into the weights at the end
    cx, cy = _unit_scale(x), _unit_scale(y)
    x, y = x * cx, y * cy
    tc = _new_transcoder(cfg, model, layer, d, max_in_norm)
    y_mean = y.mean(0)
    var = float((y - y_mean).pow(2).sum(-1).mean())    # the loss is the MSE over the output's variance
    gen = torch.Generator().manual_seed(cfg.seed + 1000 * layer)
    with torch.no_grad():
        tc.b_dec.copy_(y_mean)
        if cfg.init == "data":
            # each feature starts as a template of one training token: encoder = its (unit) input,
            # decoder = its (unit) centred output; every feature is alive from the first step
            pick = torch.randperm(x.shape[0], generator=gen)[:cfg.d_sae]
            pick = torch.cat([pick, torch.randint(0, x.shape[0], (cfg.d_sae - len(pick),), generator=gen)])
            xe = x[pick] - x.mean(0)
            tc.W_enc.copy_((xe / xe.norm(dim=1, keepdim=True).clamp_min(1e-8)).T)
            yd = y[pick] - y_mean
            tc.W_dec.copy_(yd / yd.norm(dim=1, keepdim=True).clamp_min(1e-8))
            tc.b_enc.copy_(-(x.mean(0) @ tc.W_enc))
        else:
            tc.W_dec.div_(tc.W_dec.norm(dim=1, keepdim=True))
            tc.W_enc.copy_(tc.W_dec.T)
            tc.b_enc.zero_()
        # encoder scale fitted by least squares on one batch (top-k selection is scale-free, the
        # activations scale with it): the first reconstruction has the right size
        sel = torch.randperm(x.shape[0], generator=gen)[:4096]
        a = _topk_acts(x[sel] @ tc.W_enc + tc.b_enc, cfg.k) @ tc.W_dec
        scale = float((a * (y[sel] - y_mean)).sum() / a.pow(2).sum().clamp_min(1e-12))
        if scale > 0:
            tc.W_enc.mul_(scale)
            tc.b_enc.mul_(scale)
        tc.threshold.fill_(_BANDWIDTH)
    params = [tc.W_enc, tc.b_enc, tc.W_dec, tc.b_dec] + ([tc.threshold] if cfg.architecture == "jumprelu" else [])
    opt = torch.optim.Adam(params, lr=cfg.lr)
    decay_from = int(cfg.steps * 0.8)               # linear decay to 0 over the last 20% of the steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 1.0 if s < decay_from else max(0.0, (cfg.steps - s) / max(cfg.steps - decay_from, 1)))
    batches = ActivationBatches.from_tensor(torch.cat([x, y], dim=1), batch_size=cfg.batch_size, seed=cfg.seed)
    history = []
    t0 = time.perf_counter()
    tc.train()
    for step in range(cfg.steps):
        batch = next(batches)
        bx, by = batch[:, :d], batch[:, d:]
        if cfg.architecture == "topk":
            # sparse path: choose each token's k features without grad, then recompute only those
            # k pre-activations and decode by gathering k decoder rows (k x d instead of d_sae x d)
            with torch.no_grad():
                idx = (bx @ tc.W_enc + tc.b_enc).topk(cfg.k, dim=-1, sorted=False).indices       # [B, k]
            sel = torch.relu(torch.einsum("bd,bkd->bk", bx, tc.W_enc.T[idx]) + tc.b_enc[idx])
            recon = torch.einsum("bk,bkd->bd", sel, tc.W_dec[idx]) + tc.b_dec
            acts_l0 = (sel.detach() > 0).float().sum(-1).mean()
            l0_pen = torch.zeros(())
        else:
            pre = bx @ tc.W_enc + tc.b_enc
            gate = _JumpStep.apply(pre, tc.threshold, _BANDWIDTH)
            acts = torch.relu(pre) * gate
            acts_l0 = (acts.detach() > 0).float().sum(-1).mean()
            l0_pen = cfg.l0_coeff * gate.sum(-1).mean()
            recon = acts @ tc.W_dec + tc.b_dec
        mse = (recon - by).pow(2).sum(-1).mean() / max(var, 1e-12)
        loss = mse + l0_pen
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            if cfg.architecture == "topk":
                tc.W_dec.div_(tc.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))
            else:
                tc.threshold.clamp_(min=1e-4)
        if step % 50 == 0 or step == cfg.steps - 1:
            history.append({"step": step, "nmse": float(mse.detach()), "l0": float(acts_l0)})
    tc.eval()
    with torch.no_grad():
        if cfg.architecture == "topk":
            # inference is JumpReLU: per-feature thresholds calibrated so each feature fires as often
            # as under top-k on (up to) calibration_tokens training tokens -> mean L0 = k there
            cal = x[torch.randperm(x.shape[0], generator=gen)[:cfg.calibration_tokens]]
            tc.threshold.copy_(calibrate_thresholds(cal @ tc.W_enc + tc.b_enc, cfg.k))
        if cfg.refit_decoder:
            sub = torch.randperm(x.shape[0], generator=gen)[:cfg.refit_tokens]
            _refit_decoder(tc, x[sub], y[sub], ridge=cfg.ridge)
        tc.W_enc.mul_(cx)                       # fold the data scales back: the transcoder reads raw mlp_in
        tc.W_dec.div_(cy)
        tc.b_dec.div_(cy)
    seconds = time.perf_counter() - t0
    save_sae(tc, folder, overwrite=True)
    return TrainedLayer(layer, Path(folder), False, seconds, history[-1]["nmse"], history[-1]["l0"], history)


def train_transcoders(model: Model, store: Any, cfg: TranscoderTrainConfig = TranscoderTrainConfig(), *,
                      layers: list[int] | None = None, folder: str | Path | None = None,
                      progress: bool = False, max_seconds: float | None = None) -> list[TrainedLayer]:
    """Train one transcoder per layer into ``folder/L<l>`` (default :func:`transcoder_home`); finished layers are skipped.

    Args:
        store: an :class:`interp.cache.ActivationStore` (or any ``store[site]`` mapping) holding
            ``mlp_in.l`` and ``mlp_out.l`` of the layers, collected from this model.
        layers: which layers (default: all).
        max_seconds: wall-time budget: no new layer is started once it is spent (the layers
            finished are kept; a rerun resumes with the rest).

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
    t_start = time.perf_counter()
    for layer in layers:
        target = root / f"L{layer}"
        if max_seconds is not None and time.perf_counter() - t_start > max_seconds and not target.exists():
            if progress:
                print(f"time budget of {max_seconds:.0f} s spent; layers from L{layer} on are left for a rerun", flush=True)
            break
        if target.exists():
            check_transcoder_folder(target, model, layer)        # refuses a foreign or broken one
            out.append(TrainedLayer(layer, target, True))
            continue
        rec = train_layer(model, store, layer, cfg, target)
        if progress:
            print(f"L{layer}: nmse {rec.final_mse:.4f}  L0 {rec.final_l0:.1f}  {rec.seconds:.1f}s", flush=True)
        out.append(rec)
    return out
