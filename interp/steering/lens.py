"""Decodability vs steerability ("Steerable but Not Decodable").

* :func:`logit_lens_logits` — ``W_U . final_norm(h_l) + b_U`` for residual rows of any layer.
* :func:`fit_affine_lens` — optional per-layer affine map ``h_l -> h_final`` fitted by
  (ridge-regularised) least squares on real-token residuals, applied before the final
  norm and unembedding (a tuned-lens-style translator without training loops).
* :func:`decodability_vs_steerability` — per layer: accuracy of decoding the ICL answer
  from the last-token residual of few-shot prompts (``decode_acc``, and
  ``affine_decode_acc`` with an affine lens), against zero-shot accuracy after adding the
  task's function vector at that layer (``steer_acc``). Result ``steering.lens``.

Example:
    >>> import torch
    >>> from interp import load_model
    >>> from interp.steering.lens import logit_lens_logits
    >>> model = load_model("toy:llama")
    >>> logit_lens_logits(model, torch.zeros(2, 64)).shape              # [2, d_model] -> [2, d_vocab]
    torch.Size([2, 259])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.errors import ConfigError, DataError, ShapeError
from interp.nodes import node_id
from interp.sites import Site

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["logit_lens_logits", "AffineLens", "fit_affine_lens", "decode_accuracy", "decodability_vs_steerability"]


def logit_lens_logits(model: Model, resid: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_vocab"]:
    """``[..., d_model] -> [..., d_vocab]``: final norm then unembedding (with ``b_U`` if present)."""
    if resid.shape[-1] != model.cfg.d_model:
        raise ShapeError(f"logit lens: expected [..., d_model={model.cfg.d_model}], got {tuple(resid.shape)}")
    with torch.inference_mode():
        w_u = model.W_U
        h = model.ln_final(resid.to(device=w_u.device, dtype=w_u.dtype))
        logits = h @ w_u
        b_u = getattr(model, "b_U", None)
        if b_u is not None:
            logits = logits + b_u
    return logits.float()


class AffineLens:
    """Per-layer affine maps ``h_l -> A_l h_l + b_l`` approximating the last layer's residual.

    Attributes:
        maps: ``{layer: (A [d_model, d_model], b [d_model])}`` applied as ``h @ A + b``.
    """

    def __init__(self, maps: dict[int, tuple[torch.Tensor, torch.Tensor]]):
        self.maps = maps

    def __call__(self, layer: int, resid: torch.Tensor) -> torch.Tensor:
        if layer not in self.maps:
            raise ConfigError(f"affine lens has no map for layer {layer}; fitted layers: {sorted(self.maps)}")
        a, b = self.maps[layer]
        return resid.float() @ a + b


def fit_affine_lens(model: Model, texts: Sequence[str], layers: Sequence[int], *, ridge: float = 1e-2,
                    batch_size: int = 8) -> AffineLens:
    """Least-squares affine maps from each layer's residual to the final residual (all real tokens).

    ``ridge`` (relative to the mean squared feature scale) keeps the solve stable when there
    are fewer tokens than dims. Massive-activation positions are included as they are.
    """
    from interp.arch import require_arch

    require_arch(model, method="affine lens (right-padded batches)", causal=True)
    from interp.hooks import run_capture
    from interp.models import tokenize

    if not texts:
        raise DataError("fit_affine_lens: no texts")
    last = model.cfg.n_layers - 1
    sites = [Site("resid_post", int(l)) for l in sorted(set(layers) | {last})]
    rows: dict[int, list[torch.Tensor]] = {s.layer: [] for s in sites}
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            tb = tokenize(model, list(texts[i:i + batch_size]))
            acts = run_capture(model, tb.tokens, sites)
            for s in sites:
                rows[s.layer].append(acts[s][tb.mask].float().cpu())
    target = torch.cat(rows[last]).double()
    maps = {}
    for l in layers:
        x = torch.cat(rows[int(l)]).double()
        x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
        lam = ridge * float((x**2).mean())
        gram = x1.T @ x1 + lam * torch.eye(x1.shape[1], dtype=x.dtype)
        sol = torch.linalg.solve(gram, x1.T @ target)
        maps[int(l)] = (sol[:-1].float(), sol[-1].float())
    return AffineLens(maps)


def decode_accuracy(model: Model, resid: Float[Tensor, "batch d_model"], answer_ids: Int[Tensor, " batch"]) -> float:
    """Fraction of rows whose logit-lens argmax is the answer token."""
    pred = logit_lens_logits(model, resid).argmax(-1).cpu()
    return float((pred == answer_ids.cpu()).float().mean())


def decodability_vs_steerability(model: Model, task: Any, fv: Any, layers: Sequence[int], *, n_prompts: int = 32,
                                 n_demos: int = 5, seed: int = 0, alpha: float = 1.0,
                                 affine_lens: AffineLens | None = None, meta: Any = None) -> Any:
    """Result ``steering.lens``: (task, layer, node, decode_acc, steer_acc[, affine_decode_acc], baseline).

    Args:
        task: :class:`~interp.datasets.icl.IclTask`.
        fv: :class:`~interp.steering.fv.FunctionVector` of that task.
        affine_lens: optional :class:`AffineLens` fitted for ``layers``.
    """
    import pandas as pd

    from interp.results import Result, RunMeta
    from interp.steering.axes import residual_activations
    from interp.steering.steer import accuracy, steer_factory

    task = task.for_model(model)
    few = task.prompts(n_prompts, n_demos, seed=seed + 100)
    ans = torch.tensor([model.tokenizer(a, add_special_tokens=False).input_ids[0] for a in few.answers])
    acts = residual_activations(model, few.prompts, layers)
    zs = task.zero_shot(n_prompts, seed=seed)
    base = accuracy(model, zs.prompts, zs.answers)
    rows = []
    for l in layers:
        row = {"task": task.name, "layer": int(l), "node": node_id("resid", layer=int(l)),
               "decode_acc": decode_accuracy(model, acts[l], ans),
               "steer_acc": accuracy(model, zs.prompts, zs.answers,
                                     steer=steer_factory(model, fv.at_layer(int(l)), alpha, positions="last")),
               "baseline": base}
        if affine_lens is not None:
            row["affine_decode_acc"] = decode_accuracy(model, affine_lens(int(l), acts[l]), ans)
        rows.append(row)
    return Result("steering.lens", pd.DataFrame(rows), meta or RunMeta(), name=task.name)
