"""Function vectors (Todd et al. 2024): heads whose mean output carries an in-context task.

1. :func:`mean_head_outputs` — mean ``z`` of every head at the last token over ICL prompts.
2. :func:`indirect_effects` — average indirect effect (AIE) of each head: on prompts
   whose demonstration labels are shuffled, patch the head's last-token ``z`` with its
   ICL mean and measure the gain in probability of the correct answer.
3. :func:`function_vector` — FV = sum over the top-k heads (by AIE) of their mean outputs
   through ``W_O`` (``mean_z[l, h] @ W_O[l, h]``), an :class:`Axis` at ``resid_post`` of
   a chosen layer; add it to the last token of zero-shot prompts with
   :func:`interp.steering.steered` (``positions="last"``).
4. :func:`fv_layer_sweep` — zero-shot accuracy with the FV added at each layer.

Defaults follow the paper where known (10 demonstrations per prompt, top-10 heads,
shuffled-label corruption, all layers scored, FV at layer ``n_layers // 3``); 50 prompts
is ours [U]. Evaluate on held-out pairs (:meth:`~interp.datasets.icl.IclTask.split`) and
pick the layer and alpha on the fit pairs: the paper's layer is not the best one here.

Measured on SmolLM2-135M-Instruct, antonyms (95 single-token pairs; ``split(45, seed=0)``:
45 fit, 50 held out; ``FVConfig()`` defaults; 426 s on one CPU thread): top heads L20.H5
(AIE 0.031) and L14.H1 (0.028), the other eight < 0.01, all in layers 14-29. Zero-shot
accuracy (argmax next token = the answer token) on the 50 held-out ``"Q: x\\nA:"`` prompts
goes from 0.00 to 0.52 with the FV at layer 13, alpha 2 (chosen as the best zero-shot
accuracy on the fit pairs, 0.67); layers 11-15 with alpha 1-2 give 0.44-0.54; top-k 5 / 15
/ 20 peak at 0.62 / 0.54 / 0.50 (layers 9-16, alpha 1-3). The paper's layer 10 gives 0.30
(alpha 1) / 0.34 (alpha 2); layers >= 24 give <= 0.06. 10-shot ICL on the same held-out
queries (demonstrations from the fit pairs): 0.84. The logit lens decodes no answer before
layer 22 of 10-shot prompts (0.92 at layer 29), yet the FV steers best at layers 11-15:
steerable, not decodable (:func:`interp.steering.lens.decodability_vs_steerability`).
An earlier fit (8 prompts x 3 demonstrations, heads in layers 10-19 only) reached 0.125-0.167.

Example:
    >>> from interp import load_model
    >>> from interp.datasets.icl import load_icl
    >>> from interp.steering.fv import FVConfig, fit_function_vector, fv_layer_sweep
    >>> fit, held = load_icl("capitalization").split(30, seed=0)
    >>> len(fit), len(held)
    (30, 31)
    >>> fit.prompts(1, n_demos=1, seed=0).prompts[0].count("Q:")    # one demonstration + the query
    2
    >>> model = load_model("smollm2")  # toy bytes: answers " x" are 2 tokens  # doctest: +SKIP
    >>> fv = fit_function_vector(model, fit, FVConfig(n_prompts=4, n_demos=3, top_k=2))  # SmolLM2  # doctest: +SKIP
    >>> fv_layer_sweep(model, fv, held, range(model.cfg.n_layers)).table  # SmolLM2  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from interp import metrics
from interp.errors import ConfigError, DataError
from interp.nodes import node_id
from interp.sites import Site
from interp.steering.axes import Axis, data_hash

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["FVConfig", "FunctionVector", "mean_head_outputs", "indirect_effects", "function_vector",
           "fit_function_vector", "fv_layer_sweep", "head_outputs"]


@dataclass(frozen=True, kw_only=True)
class FVConfig:
    """Function-vector settings.

    Attributes:
        n_prompts: ICL prompts for the mean head outputs and for the AIE (the same
            number of clean and of shuffled-label prompts).
        n_demos: demonstrations per prompt (Todd et al.: 10).
        top_k: heads summed into the FV (Todd et al.: 10).
        layer: layer whose ``resid_post`` receives the FV; ``None`` = ``n_layers // 3``.
        head_layers: layers whose heads are scored (``None`` = all).
        seed: prompt sampling seed.
        batch_size: prompts per forward pass.
    """

    n_prompts: int = 50
    n_demos: int = 10
    top_k: int = 10
    layer: int | None = None
    head_layers: tuple[int, ...] | None = None
    seed: int = 0
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.n_prompts < 1 or self.n_demos < 1 or self.top_k < 1 or self.batch_size < 1:
            raise ConfigError(f"n_prompts, n_demos, top_k and batch_size must be >= 1, got {self}")
        if self.layer is not None and self.layer < 0:
            raise ConfigError(f"layer must be >= 0, got {self.layer}")


@dataclass(frozen=True, kw_only=True, eq=False)
class FunctionVector:
    """Fit of a function vector: the per-head statistics and the resulting axis.

    Attributes:
        axis: the FV as an :class:`Axis` (method ``"fv"``) at ``resid_post`` of its layer.
        mean_z: ``[n_layers, n_heads, d_head]`` mean last-token head outputs on ICL prompts.
        aie: ``[n_layers, n_heads]`` average indirect effect (NaN for unscored layers).
        heads: the top-k ``(layer, head)`` pairs, best first.
    """

    axis: Axis
    mean_z: torch.Tensor
    aie: torch.Tensor
    heads: tuple[tuple[int, int], ...]
    task: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def at_layer(self, layer: int) -> Axis:
        """The same vector placed at ``resid_post`` of another layer."""
        return Axis(name=self.axis.name, vector=self.axis.vector, site=Site("resid_post", layer), method="fv",
                    data_hash=self.axis.data_hash, model=self.axis.model, stats={**self.axis.stats, "layer": layer})

    def result(self, meta: Any = None) -> Any:
        """Result ``steering.fv``: (layer, head, node, aie, top) per scored head."""
        import pandas as pd

        from interp.results import Result, RunMeta

        top = set(self.heads)
        rows = [{"layer": l, "head": h, "node": node_id("head", layer=l, head=h), "aie": float(self.aie[l, h]),
                 "top": (l, h) in top}
                for l in range(self.aie.shape[0]) for h in range(self.aie.shape[1])
                if torch.isfinite(self.aie[l, h])]
        return Result("steering.fv", pd.DataFrame(rows), meta or RunMeta(), name=self.task)


def _answer_ids(model: Model, answers: Any) -> torch.Tensor:
    ids = []
    for a in answers:
        row = model.tokenizer(a, add_special_tokens=False).input_ids
        if len(row) != 1:
            raise DataError(f"answer {a!r} is {len(row)} tokens; use IclTask.for_model(model) to keep single tokens")
        ids.append(row[0])
    return torch.tensor(ids)


def mean_head_outputs(model: Model, prompts: Any, *, batch_size: int = 16) -> Float[Tensor, "layer head d_head"]:
    """``[n_layers, n_heads, d_head]`` mean of ``z`` at each prompt's last real token."""
    from interp.hooks import run_capture
    from interp.models import tokenize

    sites = [Site("z", l) for l in range(model.cfg.n_layers)]
    total, n = None, 0
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            tb = tokenize(model, list(prompts[i:i + batch_size]))
            acts = run_capture(model, tb.tokens, sites)
            rows = torch.stack([acts[s][torch.arange(len(tb)), tb.last].float().sum(0) for s in sites]).cpu()
            total = rows if total is None else total + rows
            n += len(tb)
    return total / n


def head_outputs(model: Model, mean_z: Float[Tensor, "layer head d_head"]) -> Float[Tensor, "layer head d_model"]:
    """``[n_layers, n_heads, d_model]``: each head's mean ``z`` through its ``W_O`` slice."""
    outs = []
    for l in range(mean_z.shape[0]):
        w_o = model.blocks[l].attn.W_O.detach().float().cpu()            # [head, d_head, d_model]
        outs.append(torch.einsum("hd,hdm->hm", mean_z[l], w_o))
    return torch.stack(outs)


def indirect_effects(model: Model, prompts: Any, answers: Any, mean_z: Float[Tensor, "layer head d_head"], *,
                     layers: Any = None, batch_size: int = 16, kv_cache: bool | None = None,
                     progress: bool = True) -> Float[Tensor, "layer head"]:
    """AIE ``[n_layers, n_heads]``: gain in P(answer) when a head's last-token z is set to its ICL mean.

    Without ``kv_cache`` the patches run on :mod:`interp.engine`: per layer and batch of
    prompts one pass, a world per head entering at that layer. Patching the last token's
    ``z`` changes nothing at earlier positions (causal attention), so with ``kv_cache`` each prompt's prefix runs once and every patch
    re-runs only the last token, all heads of a layer in one batch: the same numbers
    (to float rounding) about 8x faster on SmolLM2 with 10-demonstration prompts.

    Args:
        prompts: corrupted (shuffled-label) ICL prompts; ``answers`` their correct answers.
        layers: layers to score (others are NaN).
        kv_cache: use the cached path; ``None`` = when the model wraps a Hugging Face
            model (``model.original_model``) whose cache reproduces the full forward on
            the first prompt, else the full forward per patch.
    """
    from tqdm.auto import tqdm

    from interp.engine import Intervention, World, run
    from interp.models import tokenize

    ids = _answer_ids(model, answers)
    if len(ids) != len(prompts):
        raise DataError(f"{len(prompts)} prompts but {len(ids)} answers")
    n_layers, n_heads = mean_z.shape[:2]
    layers = list(range(n_layers)) if layers is None else [int(l) for l in layers]
    if kv_cache is None:
        kv_cache = _cache_reproduces_forward(model, prompts[0])
    if kv_cache:
        return _indirect_effects_cached(model, prompts, ids, mean_z, layers, progress=progress)
    gain = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    batches = [(tokenize(model, list(prompts[i:i + batch_size])), ids[i:i + batch_size])
               for i in range(0, len(prompts), batch_size)]
    for l in tqdm(layers, disable=not progress, desc="head AIE"):
        for tb, a in batches:
            worlds = [World((Intervention("set", Site("z", l, h), mean_z[l, h], positions=tb.last),), enter=l)
                      for h in range(n_heads)]
            with torch.inference_mode():
                out = run(model, tb.tokens, worlds, positions=tb.last, with_base=True)
            p = metrics.prob(out.worlds.reshape(-1, out.worlds.shape[-1]), a.repeat(n_heads)).view(n_heads, -1)
            gain[l] += (p.double().sum(1) - metrics.prob(out.base, a).double().sum()).cpu()
    aie = torch.full((n_layers, n_heads), float("nan"))
    aie[layers] = (gain[layers] / len(ids)).float()
    return aie


def _hf_prefix_cache(model: Model, tokens: torch.Tensor) -> tuple[Any, Any] | None:
    """(Hugging Face model, KV cache of ``tokens[:, :-1]``), or None when the model cannot do it."""
    hf = getattr(model, "original_model", None)
    if hf is None or tokens.shape[1] < 2:
        return None
    with torch.inference_mode():
        cache = getattr(hf(tokens[:, :-1], use_cache=True), "past_key_values", None)
    if cache is None or not (hasattr(cache, "crop") and hasattr(cache, "batch_repeat_interleave")):
        return None
    return hf, cache


def _cache_reproduces_forward(model: Model, prompt: str) -> bool:
    from interp.models import tokenize

    tokens = tokenize(model, [prompt]).tokens
    got = _hf_prefix_cache(model, tokens)
    if got is None:
        return False
    hf, cache = got
    with torch.inference_mode():
        full = metrics.log_probs(model(tokens)[0, -1])
        last = hf(tokens[:, -1:].to(full.device), past_key_values=cache, use_cache=True).logits[0, -1]
    return bool((metrics.log_probs(last).to(full.device) - full).abs().max() < 1e-3)


def _indirect_effects_cached(model: Model, prompts: Any, ids: torch.Tensor, mean_z: torch.Tensor, layers: list[int],
                             *, progress: bool) -> torch.Tensor:
    from tqdm.auto import tqdm

    from interp.engine import Intervention, World, intervening_worlds
    from interp.models import tokenize

    n_layers, n_heads = mean_z.shape[:2]
    gain = torch.zeros(n_layers, n_heads)
    for prompt, a in tqdm(list(zip(prompts, ids.tolist())), disable=not progress, desc="head AIE (KV cache)"):
        tokens = tokenize(model, [prompt]).tokens
        got = _hf_prefix_cache(model, tokens)
        if got is None:
            raise DataError(f"indirect_effects(kv_cache=True): cannot cache the prefix of {prompt[:60]!r}")
        hf, cache = got
        with torch.inference_mode():
            device = next(hf.parameters()).device
            last = tokens[:, -1:].to(device)
            base = metrics.probs(hf(last, past_key_values=cache, use_cache=True).logits[0, -1])[a]
            cache.crop(-1)
            cache.batch_repeat_interleave(n_heads)              # row h patches head h
            last = last.expand(n_heads, 1)
            for l in layers:
                worlds = [World((Intervention("set", Site("z", l, head=h), mean_z[l, h]),)) for h in range(n_heads)]
                with intervening_worlds(model, worlds, 1):     # the cached step: one row per world
                    p = metrics.probs(hf(last, past_key_values=cache, use_cache=True).logits[:, -1])[:, a]
                cache.crop(-1)
                gain[l] += (p - base).cpu()
    aie = torch.full((n_layers, n_heads), float("nan"))
    aie[layers] = gain[layers] / len(ids)
    return aie


def function_vector(model: Model, mean_z: Float[Tensor, "layer head d_head"], aie: Float[Tensor, "layer head"], *,
                    top_k: int = 10, layer: int,
                    name: str = "", data: str = "") -> tuple[Axis, tuple[tuple[int, int], ...]]:
    """FV = sum of the top-k heads' (by AIE) mean outputs through ``W_O``; an Axis at ``resid_post.layer``."""
    flat = torch.nan_to_num(aie, nan=float("-inf")).flatten()
    k = min(top_k, int(torch.isfinite(aie).sum()))
    if k < 1:
        raise DataError("function_vector: no scored heads")
    idx = flat.topk(k).indices
    heads = tuple((int(i) // aie.shape[1], int(i) % aie.shape[1]) for i in idx)
    outs = head_outputs(model, mean_z)
    vec = sum(outs[l, h] for l, h in heads)
    info = getattr(model, "interp_info", None)
    ax = Axis(name=name, vector=vec, site=Site("resid_post", layer), method="fv", data_hash=data,
              model=info.spec if info else "",
              stats={"heads": [node_id("head", layer=l, head=h) for l, h in heads],
                     "aie": [float(aie[l, h]) for l, h in heads], "top_k": k, "layer": layer})
    return ax, heads


def fit_function_vector(model: Model, task: Any, config: FVConfig = FVConfig(), *, progress: bool = True) -> FunctionVector:
    """The whole recipe on an :class:`~interp.datasets.icl.IclTask` (filtered to single-token answers)."""
    from interp.arch import require_arch

    require_arch(model, method="function vectors (next-token answers)", causal=True)
    task = task.for_model(model)
    clean = task.prompts(config.n_prompts, config.n_demos, seed=config.seed)
    shuffled = task.prompts(config.n_prompts, config.n_demos, seed=config.seed + 1, shuffled=True)
    mean_z = mean_head_outputs(model, clean.prompts, batch_size=config.batch_size)
    aie = indirect_effects(model, shuffled.prompts, shuffled.answers, mean_z, layers=config.head_layers,
                           batch_size=config.batch_size, progress=progress)
    layer = config.layer if config.layer is not None else model.cfg.n_layers // 3
    if layer >= model.cfg.n_layers:
        raise ConfigError(f"FV layer {layer} out of range (model has {model.cfg.n_layers} layers)")
    ax, heads = function_vector(model, mean_z, aie, top_k=config.top_k, layer=layer, name=task.name,
                                data=data_hash(mean_z))
    return FunctionVector(axis=ax, mean_z=mean_z, aie=aie, heads=heads, task=task.name,
                          meta={"config": config.__dict__})


def fv_layer_sweep(model: Model, fv: FunctionVector, task: Any, layers: Any, *, n: int | None = None, seed: int = 0,
                   alpha: float = 1.0, meta: Any = None) -> Any:
    """Zero-shot accuracy with the FV added at the last token of each layer's ``resid_post``.

    Result ``steering.fv_sweep``: (layer, node, accuracy, baseline) where baseline is the
    unsteered zero-shot accuracy on the same prompts.
    """
    import pandas as pd

    from interp.results import Result, RunMeta
    from interp.steering.steer import accuracy, steer_factory

    zs = task.for_model(model).zero_shot(n, seed=seed)
    base = accuracy(model, zs.prompts, zs.answers)
    rows = []
    for l in layers:
        acc = accuracy(model, zs.prompts, zs.answers,
                       steer=steer_factory(model, fv.at_layer(int(l)), alpha, positions="last"))
        rows.append({"task": fv.task, "layer": int(l), "node": node_id("resid", layer=int(l)), "accuracy": acc,
                     "baseline": base, "alpha": alpha})
    return Result("steering.fv_sweep", pd.DataFrame(rows), meta or RunMeta(), name=fv.task)
