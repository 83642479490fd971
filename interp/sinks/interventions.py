"""Interventions on sinks and massive activations, each as a hook context with its evaluation.

* :func:`act_calibrated` — ACT attention calibration (Yu et al. 2024): in the chosen
  heads, keys other than the first whose alpha_k > ``threshold`` (0.1) are sinks; their
  attention is scaled by ``beta`` (0.4) and the freed mass goes to the other keys of the
  row in proportion to their attention, after softmax and before ``A V``.
  :func:`select_act_heads` picks heads greedily on calibration data.
* :func:`massive_set` — set massive activations (dims of ``massive.dims``, entries with
  ``|value| > min_value``) at one layer's ``resid_post`` to zero or to a given value
  (their mean): Sun et al. find zero destroys the model and the mean changes nothing.
* :func:`next_token_loss` — the evaluation: mean next-token cross-entropy on
  held-out text; :func:`interventions` runs all of them into ``sinks.interventions``.

Batches for the interventions are unpadded windows of held-out text (:func:`text_windows`),
so alpha_k in the calibration hook uses the full causal triangle.

Example:
    >>> from interp.models import load_model
    >>> model = load_model("toy:llama")
    >>> tokens = text_windows(model, ["Some held-out text. " * 4], 16)
    >>> tokens.shape
    torch.Size([5, 16])
    >>> with act_calibrated(model, [(1, 0)]):
    ...     loss = next_token_loss(model, tokens)
    >>> round(loss, 2)
    5.51
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.errors import ConfigError, DataError
from interp.engine import Intervention, intervening
from interp.hooks import hooked
from interp.results import Result, run_meta
from interp.nodes import node_id
from interp.sites import Site

if TYPE_CHECKING:
    from interp.types import Model, Tokens

__all__ = ["InterventionConfig", "act_calibrate", "act_calibrated", "select_act_heads", "massive_set",
           "massive_mean", "next_token_loss", "text_windows", "interventions", "COLUMNS"]

COLUMNS = ["intervention", "target", "loss_before", "loss_after", "delta"]


@dataclass(frozen=True, kw_only=True)
class InterventionConfig:
    """Settings of the interventions.

    Attributes:
        beta: ACT scale of sink attention (Yu et al.: 0.4).
        threshold: alpha_k above which a non-first key is a sink (Yu et al.: 0.1).
        max_heads: heads the greedy ACT selection may add.
        n_candidates: heads considered by the greedy selection (those with the largest
            non-first sink alpha), to bound its cost [U].
        window: tokens per evaluation window.
        max_windows: at most this many windows of calibration and of held-out text
            (bounds the cost of the greedy search: ~n_candidates x max_heads passes).
        batch_size: windows per forward pass.
        massive_min_value: |value| above which an entry of a massive dim is set.
    """

    beta: float = 0.4
    threshold: float = 0.1
    max_heads: int = 2
    n_candidates: int = 4
    window: int = 64
    max_windows: int = 8
    batch_size: int = 8
    massive_min_value: float = 100.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta <= 1.0:
            raise ConfigError(f"beta must be in [0, 1], got {self.beta}")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.max_heads < 0 or self.n_candidates < 0:
            raise ConfigError(f"max_heads and n_candidates must be >= 0, got {self.max_heads}, {self.n_candidates}")
        if self.window < 2 or self.batch_size < 1 or self.max_windows < 1:
            raise ConfigError(f"window must be >= 2 and batch_size >= 1, got {self.window}, {self.batch_size}")


def act_calibrate(pattern: Float[Tensor, "*batch query_pos key_pos"], beta: float = 0.4, threshold: float = 0.1) -> Float[Tensor, "*batch query_pos key_pos"]:
    """ACT on one head's (or several heads') attention of unpadded causal sequences.

    Args:
        pattern: ``[..., query_pos, key_pos]`` rows summing to 1 (causal).

    Returns:
        The calibrated pattern, same shape; rows still sum to 1. A row whose visible keys
        are all sinks (nothing to give the mass to) is left unchanged.
    """
    t = pattern.shape[-1]
    pos = torch.arange(t, device=pattern.device)
    n_q = (t - pos).to(pattern.dtype)                                          # queries seeing key k
    alpha = pattern.sum(-2) / n_q                                              # [..., key]
    sink = (alpha > threshold) & (pos > 0)                                     # [..., key]
    sink_k = sink.unsqueeze(-2).to(pattern.dtype)                              # [..., 1, key]
    on_sink = pattern * sink_k
    rest = pattern - on_sink
    freed = (1 - beta) * on_sink.sum(-1, keepdim=True)
    rest_sum = rest.sum(-1, keepdim=True)
    ok = rest_sum > 0
    share = torch.where(ok, rest / torch.where(ok, rest_sum, torch.ones_like(rest_sum)), torch.zeros_like(rest))
    new = on_sink * beta + rest + freed * share
    return torch.where(ok, new, pattern)


@contextlib.contextmanager
def act_calibrated(model: Model, heads: Sequence[tuple[int, int]], *, beta: float = 0.4,
                   threshold: float = 0.1) -> Iterator[None]:
    """ACT calibration of ``heads`` (``(layer, head)`` pairs) for the duration of the block."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(int(layer), []).append(int(head))

    def calibrate(heads: list[int]) -> Any:
        def fn(region: torch.Tensor) -> torch.Tensor:              # [batch, head, q, k]
            out = region.clone()
            idx = torch.tensor(heads, device=region.device)
            out[:, idx] = act_calibrate(region[:, idx], beta, threshold)
            return out
        return fn

    with intervening(model, [Intervention("apply", Site("pattern", layer), calibrate(hs))
                             for layer, hs in by_layer.items()]):
        yield


@contextlib.contextmanager
def massive_set(model: Model, layer: int, dims: Sequence[int], value: float | Sequence[float] = 0.0, *,
                min_value: float = 100.0) -> Iterator[None]:
    """Set massive entries (``|x[..., dim]| > min_value``) of ``resid_post`` at ``layer`` to ``value``.

    Args:
        value: one number, or one per dim (e.g. :func:`massive_mean`).
    """
    dims = [int(d) for d in dims]
    values = [float(value)] * len(dims) if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != len(dims):
        raise ConfigError(f"massive_set: {len(dims)} dims but {len(values)} values")

    def fn(region: torch.Tensor) -> torch.Tensor:
        out = region.clone()
        for d, v in zip(dims, values):
            col = out[..., d]
            out[..., d] = torch.where(col.abs() > min_value, torch.full_like(col, v), col)
        return out

    with intervening(model, [Intervention("apply", Site("resid_post", layer), fn)]):
        yield


def text_windows(model: Model, texts: Sequence[str], window: int) -> Tokens:
    """Concatenate ``texts`` (tokenized with the model's BOS rule) and cut into ``[n, window]`` windows.

    Raises:
        DataError: fewer than ``window`` tokens in all.
    """
    tok = model.tokenizer
    ids: list[int] = []
    for t in texts:
        ids.extend(tok(t + "\n", add_special_tokens=False).input_ids)
    bos = getattr(model.cfg, "default_prepend_bos", False) and tok.bos_token_id is not None
    width = window - 1 if bos else window
    n = len(ids) // width
    if n == 0:
        raise DataError(f"held-out text has {len(ids)} tokens, fewer than one window of {width}")
    rows = torch.tensor(ids[: n * width], dtype=torch.long).reshape(n, width)
    if bos:
        rows = torch.cat([torch.full((n, 1), tok.bos_token_id, dtype=torch.long), rows], 1)
    return rows.to(getattr(model.cfg, "device", "cpu"))


def _loss(model: Model, tokens: Tokens, batch_size: int, observers: Sequence[tuple[Site, Any]] = ()) -> float:
    """Mean next-token loss of ``tokens``; ``observers`` (``(site, fn(act, site))``) see the same passes."""
    from interp.hooks import StopForward
    from interp.metrics import unembedded_nll

    final = Site("ln_final")
    b_u = getattr(model, "b_U", None)
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    got: dict[str, Tensor] = {}

    def grab(act: Tensor, site: Site) -> None:
        got["h"] = act
        raise StopForward("ln_final")

    total, count = 0.0, 0
    with hooked(model, [*observers, (final, grab)]), torch.inference_mode():
        for start in range(0, tokens.shape[0], batch_size):
            chunk = tokens[start:start + batch_size]
            try:
                model(chunk)
            except StopForward:
                pass
            nll = unembedded_nll(got.pop("h"), model.W_U, chunk, b_U=b_u if isinstance(b_u, Tensor) else None,
                                 soft_cap=cap)
            total += float(nll.sum())
            count += chunk[:, 1:].numel()
    return total / max(count, 1)


def next_token_loss(model: Model, tokens: Tokens, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy of ``tokens`` ``[batch, pos]`` (unpadded windows).

    The pass stops at ``ln_final``; the loss comes from the final normalised hidden states through
    the unembedding in chunks (:func:`interp.metrics.unembedded_nll`), so no ``[batch, pos, d_vocab]``
    logits tensor is built (Gemma 3's vocabulary has 262,144 tokens).
    """
    return _loss(model, tokens, batch_size)


def select_act_heads(model: Model, calib: Int[Tensor, "batch pos"], candidates: Sequence[tuple[int, int]], *,
                     max_heads: int = 3, beta: float = 0.4, threshold: float = 0.1,
                     batch_size: int = 8, base: float | None = None) -> tuple[list[tuple[int, int]], float, float]:
    """Greedy ACT head selection: add the candidate that lowers calibration loss most, while it helps.

    Args:
        base: the calibration loss without calibration, if already measured (else one more pass).

    Returns:
        (chosen heads, calibration loss before, calibration loss after).
    """
    base = next_token_loss(model, calib, batch_size) if base is None else base
    chosen: list[tuple[int, int]] = []
    best = base
    pool = list(candidates)
    while pool and len(chosen) < max_heads:
        scores = []
        for cand in pool:
            with act_calibrated(model, [*chosen, cand], beta=beta, threshold=threshold):
                scores.append((next_token_loss(model, calib, batch_size), cand))
        loss, cand = min(scores)
        if loss >= best:
            break
        best = loss
        chosen.append(cand)
        pool.remove(cand)
    return chosen, base, best


def _mean_observer(dims: Sequence[int], min_value: float) -> tuple[Any, Any]:
    """A hook ``fn(act, site)`` accumulating massive entries per dim, and ``result() -> means``."""
    sums = [0.0] * len(dims)
    counts = [0] * len(dims)

    def fn(act: torch.Tensor, site: Site) -> None:
        for i, d in enumerate(dims):
            col = act[..., int(d)]
            hit = col.abs() > min_value
            sums[i] += float(col[hit].sum())
            counts[i] += int(hit.sum())

    return fn, lambda: [s / c if c else 0.0 for s, c in zip(sums, counts)]


def massive_mean(model: Model, tokens: Tokens, layer: int, dims: Sequence[int], *, min_value: float = 100.0,
                 batch_size: int = 8) -> list[float]:
    """Mean signed value of the massive entries of each dim at ``layer`` (0 where a dim has none).

    Each pass stops after ``resid_post`` of ``layer``."""
    from interp.hooks import StopForward

    fn, result = _mean_observer(dims, min_value)

    def observe_and_stop(act: torch.Tensor, site: Site) -> None:
        fn(act, site)
        raise StopForward(str(site))

    with hooked(model, {Site("resid_post", layer): observe_and_stop}), torch.inference_mode():
        for start in range(0, tokens.shape[0], batch_size):
            try:
                model(tokens[start:start + batch_size])
            except StopForward:
                pass
    return result()


def interventions(model: Model, calib_texts: Sequence[str], eval_texts: Sequence[str], heads_table: pd.DataFrame,
                  dims_table: pd.DataFrame, config: InterventionConfig = InterventionConfig()) -> Result:
    """Run ACT (greedy heads) and massive zero / mean on held-out text; one row per intervention.

    Args:
        calib_texts: texts for head selection and the massive mean.
        eval_texts: held-out texts for the reported losses.
        heads_table: a ``sinks.heads`` table (candidates: largest ``top_alpha``).
        dims_table: a ``massive.dims`` table (dims with ``n_layers > 0``; the layer is
            their earliest ``first_layer``).

    Returns:
        ``sinks.interventions``: intervention, target (heads or dims as text), loss_before,
        loss_after, delta (after - before). Rows are left out when nothing applies (no
        candidate heads, no massive dims).
    """
    from interp.arch import require_arch

    require_arch(model, method="sink interventions (next-token loss)", causal=True)
    calib = text_windows(model, calib_texts, config.window)[: config.max_windows]
    held = text_windows(model, eval_texts, config.window)[: config.max_windows]
    before = next_token_loss(model, held, config.batch_size)
    rows = []
    cands = heads_table[heads_table.top_alpha > config.threshold] if len(heads_table) else heads_table
    cands = cands.sort_values("top_alpha", ascending=False).head(config.n_candidates) if len(cands) else cands
    pairs = [(int(r.layer), int(r.head)) for r in cands.itertuples()]
    steady = dims_table[dims_table.n_layers > 0] if len(dims_table) else dims_table
    dims = [int(d) for d in steady.dim] if len(steady) else []
    layer = int(steady.first_layer.min()) if dims else 0
    act = bool(pairs and config.max_heads)
    mean: list[float] = []
    base = None
    if act:        # one clean calibration pass: ACT's base loss and the massive means
        fn, result = _mean_observer(dims, config.massive_min_value)
        base = _loss(model, calib, config.batch_size, [(Site("resid_post", layer), fn)] if dims else [])
        mean = result()
    elif dims:
        mean = massive_mean(model, calib, layer, dims, min_value=config.massive_min_value,
                            batch_size=config.batch_size)
    if act:
        chosen, _, _ = select_act_heads(model, calib, pairs, max_heads=config.max_heads, beta=config.beta,
                                        threshold=config.threshold, batch_size=config.batch_size, base=base)
        if chosen:
            with act_calibrated(model, chosen, beta=config.beta, threshold=config.threshold):
                after = next_token_loss(model, held, config.batch_size)
            rows.append({"intervention": "act", "target": ",".join(node_id("head", layer=a, head=b) for a, b in chosen),
                         "loss_before": before, "loss_after": after, "delta": after - before})
    if dims:
        target = f"L{layer} dims " + ",".join(map(str, dims))
        for name, value in (("massive_zero", 0.0), ("massive_mean", mean)):
            with massive_set(model, layer, dims, value, min_value=config.massive_min_value):
                after = next_token_loss(model, held, config.batch_size)
            rows.append({"intervention": name, "target": target, "loss_before": before, "loss_after": after,
                         "delta": after - before})
    meta = run_meta(model, dataset="held-out", data=held, config=config, n_calib_windows=int(calib.shape[0]),
                    n_eval_windows=int(held.shape[0]))
    return Result("sinks.interventions", pd.DataFrame(rows, columns=COLUMNS), meta)
