"""Steering: add ``alpha * axis`` at the axis's site during a forward pass, and measure it.

* :func:`steered` — the hook context (all positions, the last real token, or from a
  position on). Refuses NaN/inf alphas, a site other than the axis's own, and vectors of
  the wrong width.
* :func:`next_token_probs`, :func:`target_prob`, :func:`accuracy`, :func:`perplexity`,
  :func:`probe_score`, :func:`generate` (KV cache, via :func:`interp.generate`) — evaluations that take an optional ``steer``
  factory ``fn(TokenBatch) -> context manager`` (so "last position" steering knows
  each prompt's length).
* :func:`sweep` — alpha x layer grid; Result ``steering.sweep`` with the target effect and
  the perplexity on neutral text as the control.

Example:
    >>> import torch
    >>> from interp import load_model, Site
    >>> from interp.steering import Axis, steered
    >>> model = load_model("toy:llama")
    >>> ax = Axis(name="demo", vector=torch.ones(64), site=Site("resid_post", 0), method="contrast")
    >>> tokens = torch.tensor([[256, 72, 105]])
    >>> clean = model(tokens)
    >>> with steered(model, ax, alpha=2.0):
    ...     logits = model(tokens)
    >>> torch.allclose(logits, clean), torch.equal(model(tokens), clean)   # steered inside, hooks gone after
    (False, True)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ContextManager, Union

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from interp import metrics
from interp.arch import require_arch
from interp.errors import ConfigError, DataError, ShapeError, SiteError
from interp.sites import Site
from interp.steering.axes import Axis

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["steered", "steer_factory", "next_token_probs", "target_prob", "accuracy", "perplexity", "probe_score",
           "generate", "sweep", "token_ids", "Positions"]

#: ``"all"``, ``"last"`` (last real token of each prompt) or an int (that position and later).
Positions = Union[str, int]
SteerFactory = Callable[[Any], ContextManager[Any]]

_D_MODEL_COMPONENTS = ("embed", "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "final_resid")


def _check_alpha(alpha: Any) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"alpha must be a finite number, got {alpha!r}") from e
    if not math.isfinite(a):
        raise ConfigError(f"alpha must be finite, got {alpha!r}")
    return a


@contextlib.contextmanager
def steered(model: Model, axis: Axis, alpha: float, *, positions: Positions = "all", lengths: Any = None,
            site: Site | None = None) -> Iterator[None]:
    """Add ``alpha * axis.vector`` to the activation at ``axis.site`` during the block.

    Args:
        positions: ``"all"``; ``"last"`` (position ``lengths - 1`` per prompt, or the last
            column when ``lengths`` is None); or an int ``p`` (positions ``p`` and later).
        lengths: ``[batch]`` real lengths of right-padded prompts (``TokenBatch.lengths``).
        site: optional check: the site the caller means to steer; must equal ``axis.site``.

    Raises:
        ConfigError: alpha NaN/inf, bad ``positions``. SiteError: ``site`` differs from the
        axis's site, or the site is not a residual-width component. ShapeError: the vector
        width differs from the model's ``d_model``.
    """
    a = _check_alpha(alpha)
    if site is not None and site != axis.site:
        raise SiteError(f"axis {axis.name!r} was fitted at {axis.site} ({axis.site.hook_name}); "
                        f"refusing to apply it at {site} ({site.hook_name}). Fit an axis at {site} instead.")
    if axis.site.component not in _D_MODEL_COMPONENTS:
        raise SiteError(f"axis {axis.name!r}: steering needs a d_model site ({', '.join(_D_MODEL_COMPONENTS)}), "
                        f"got {axis.site}")
    if axis.vector.numel() != model.cfg.d_model:
        raise ShapeError(f"axis {axis.name!r}: vector has {axis.vector.numel()} dims, the model's d_model is "
                         f"{model.cfg.d_model} (fitted on {axis.model or 'another model'}?)")
    if not (positions in ("all", "last") or (isinstance(positions, int) and not isinstance(positions, bool)
                                             and positions >= 0)):
        raise ConfigError(f"positions must be 'all', 'last' or an int >= 0, got {positions!r}")
    from interp.engine import Intervention, intervening

    if positions == "all":
        where: Any = None
    elif positions == "last":
        where = slice(-1, None) if lengths is None else torch.as_tensor(lengths).long() - 1
    else:
        where = slice(positions, None)
    with intervening(model, [Intervention("add", axis.site, a * axis.vector, positions=where)]):
        yield


class _Steer:
    """What :func:`steer_factory` returns: ``fn(TokenBatch) -> steered(...)``, plus the same steering as
    one engine intervention for generation (:meth:`intervention`)."""

    def __init__(self, model: Model, axis: Axis, alpha: float, positions: Positions) -> None:
        self.model, self.axis, self.alpha, self.positions = model, axis, _check_alpha(alpha), positions

    def __call__(self, tb: Any) -> ContextManager[Any]:
        return steered(self.model, self.axis, self.alpha, positions=self.positions, lengths=tb.lengths)

    def intervention(self) -> Any:
        """The ``add`` intervention in :func:`interp.generate` positions: ``"all"`` = every position, ``"last"`` =
        the prompt's last token and every generated one (each position that predicts a token), ``p`` = ``p`` on."""
        from interp.engine import Intervention

        with steered(self.model, self.axis, self.alpha, positions=self.positions):   # the same checks
            pass
        where = {"all": None, "last": slice(-1, None)}.get(self.positions, None) if isinstance(self.positions, str) \
            else slice(self.positions, None)
        return Intervention("add", self.axis.site, self.alpha * self.axis.vector, positions=where)


def steer_factory(model: Model, axis: Axis | None, alpha: float, *, positions: Positions = "all") -> SteerFactory | None:
    """``fn(TokenBatch) -> steered(...)`` for the evaluation functions (None when no axis)."""
    if axis is None:
        return None
    return _Steer(model, axis, alpha, positions)


def _ctx(steer: SteerFactory | None, tb: Any) -> ContextManager[Any]:
    return steer(tb) if steer is not None else contextlib.nullcontext()


def token_ids(model: Model, words: Sequence[str] | Sequence[int]) -> list[int]:
    """Token ids of single-token words (ints pass through). Raises DataError naming multi-token words."""
    out = []
    for w in words:
        if isinstance(w, (int, np.integer)):
            out.append(int(w))
            continue
        ids = model.tokenizer(w, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise DataError(f"target {w!r} is {len(ids)} tokens for this tokenizer; targets must be single tokens")
        out.append(ids[0])
    if not out:
        raise DataError("no target tokens given")
    return out


def next_token_probs(model: Model, prompts: Sequence[str], *, steer: SteerFactory | None = None,
                     batch_size: int = 16) -> Float[Tensor, "prompt d_vocab"]:
    """``[n_prompts, d_vocab]`` next-token probabilities at each prompt's last real token."""
    from interp.models import tokenize

    if not prompts:
        raise DataError("no prompts given")
    require_arch(model, method="next-token probabilities", causal=True)
    out = []
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            tb = tokenize(model, list(prompts[i:i + batch_size]))
            with _ctx(steer, tb):
                logits = model(tb.tokens)
            out.append(metrics.probs(metrics.at_positions(logits, tb.last)).cpu())
    return torch.cat(out)


def target_prob(model: Model, prompts: Sequence[str], targets: Sequence[str] | Sequence[int], *,
                steer: SteerFactory | None = None, batch_size: int = 16) -> float:
    """Mean over prompts of the total next-token probability of the target tokens."""
    ids = token_ids(model, targets)
    return float(next_token_probs(model, prompts, steer=steer, batch_size=batch_size)[:, ids].sum(1).mean())


def accuracy(model: Model, prompts: Sequence[str], answers: Sequence[str] | Sequence[int], *,
             steer: SteerFactory | None = None, batch_size: int = 16) -> float:
    """Fraction of prompts whose argmax next token is the (first token of the) answer."""
    if len(answers) != len(prompts):
        raise DataError(f"{len(prompts)} prompts but {len(answers)} answers")
    ids = torch.tensor([a if isinstance(a, (int, np.integer)) else model.tokenizer(a, add_special_tokens=False)
                        .input_ids[0] for a in answers])
    return float(metrics.accuracy(next_token_probs(model, prompts, steer=steer, batch_size=batch_size), ids).mean())


def perplexity(model: Model, texts: Sequence[str], *, steer: SteerFactory | None = None, batch_size: int = 8) -> float:
    """Perplexity ``exp(mean NLL)`` over all predicted real tokens of ``texts``."""
    from interp.models import tokenize

    if not texts:
        raise DataError("no texts given for perplexity")
    require_arch(model, method="perplexity (next-token loss)", causal=True)
    nll, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            tb = tokenize(model, list(texts[i:i + batch_size]))
            with _ctx(steer, tb):
                logits = model(tb.tokens)
            mask = tb.mask[:, 1:]
            nll += float(metrics.next_token_nll(logits, tb.tokens)[mask].sum())
            count += int(mask.sum())
    if count == 0:
        raise DataError("texts too short for perplexity (need >= 2 tokens)")
    return math.exp(nll / count)


def probe_score(model: Model, probe: Axis, texts: Sequence[str], *, batch_size: int = 16) -> float:
    """Mean probability the probe assigns to class 1 at the last token of each text (unsteered)."""
    from interp.steering.axes import residual_activations

    if probe.method != "probe" or "intercept" not in probe.stats:
        raise ConfigError(f"probe_score needs a probe axis (method 'probe'), got {probe.method!r}")
    if probe.site.component != "resid_post":
        raise SiteError(f"probe_score reads resid_post; the probe was fitted at {probe.site}")
    acts = residual_activations(model, texts, [probe.layer], batch_size=batch_size)[probe.layer]
    logit = probe.stats["weight_norm"] * probe.project(acts) + probe.stats["intercept"]
    return float(torch.sigmoid(logit).mean())


def generate(model: Model, prompts: Sequence[str] | str, *, max_new_tokens: int = 8,
             steer: SteerFactory | None = None) -> list[str]:
    """Greedy continuations under a :func:`steer_factory` steering, with the KV cache (:func:`interp.generate`).

    Each position is steered when it is run and its cached keys/values keep the steering: ``"last"``
    steers the prompt's last token and every generated token. Returns the generated text only.

    Raises:
        ConfigError: ``max_new_tokens < 1``, or a ``steer`` that did not come from :func:`steer_factory`.
    """
    from interp.generation import generate as _generate

    if isinstance(prompts, str):
        prompts = [prompts]
    require_arch(model, method="generation", causal=True)
    if steer is not None and not isinstance(steer, _Steer):
        raise ConfigError("generate: steer must come from steer_factory (generation applies it as an engine "
                          "intervention with the KV cache); for other interventions call interp.generate")
    ivs = [steer.intervention()] if steer is not None else []
    return _generate(model, list(prompts), interventions=ivs, max_new_tokens=max_new_tokens).texts


def sweep(model: Model, axes: Sequence[Axis], alphas: Sequence[float], prompts: Sequence[str],
          targets: Sequence[str], neutral: Sequence[str], *, negatives: Sequence[str] = (),
          positions: Positions = "all", probe: Axis | None = None, gen_tokens: int = 0,
          meta: Any = None, name: str = "", progress: bool = True) -> Any:
    """Steering sweep over axes (one per layer) and alphas.

    Result ``steering.sweep``, one row per (axis, alpha): ``layer``, ``node``, ``alpha``,
    ``alpha_norm`` (alpha times the axis norm: the length added), ``target_prob`` (mean
    total probability of ``targets`` as the next token), ``negative_prob`` and
    ``target_share`` (= target / (target + negative)) when ``negatives`` are given,
    ``perplexity`` on ``neutral`` texts (the control), and with a ``probe`` and
    ``gen_tokens > 0`` the ``probe_score`` of the steered greedy continuations.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from interp.results import Result, RunMeta

    alphas = [_check_alpha(a) for a in alphas]
    if not axes:
        raise ConfigError("sweep: no axes given")
    if not alphas:
        raise ConfigError("sweep: no alphas given")
    tgt = token_ids(model, targets)
    neg = token_ids(model, negatives) if negatives else []
    rows = []
    grid = [(ax, a) for ax in axes for a in alphas]
    for ax, a in tqdm(grid, disable=not progress, desc="steering sweep"):
        st = steer_factory(model, ax, a, positions=positions)
        probs = next_token_probs(model, prompts, steer=st)
        row: dict[str, Any] = {"name": ax.name, "method": ax.method, "layer": ax.layer, "node": ax.node,
                               "alpha": a, "alpha_norm": a * ax.norm,
                               "target_prob": float(probs[:, tgt].sum(1).mean())}
        if neg:
            p_neg = probs[:, neg].sum(1)
            p_tgt = probs[:, tgt].sum(1)
            row["negative_prob"] = float(p_neg.mean())
            row["target_share"] = float((p_tgt / (p_tgt + p_neg).clamp_min(1e-12)).mean())
        row["perplexity"] = perplexity(model, neutral, steer=st)
        if probe is not None and gen_tokens > 0:
            conts = generate(model, prompts, max_new_tokens=gen_tokens, steer=st)
            row["probe_score"] = probe_score(model, probe, [p + c for p, c in zip(prompts, conts)])
            row["example"] = conts[0]
        rows.append(row)
    return Result("steering.sweep", pd.DataFrame(rows), meta or RunMeta(), name=name)
