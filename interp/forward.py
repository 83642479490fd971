"""One forward pass of the engine: stop at ``ln_final``, read chosen positions, unembed chosen columns.

* :func:`forward_hidden`: final normalised hidden states at one position per row, the pass stopped at
  ``ln_final``; where a one-off check on the model (:func:`tail_ok`) shows it exact, the last layer's
  MLP runs at that position only.
* :func:`final_logits`: unembedding of those hidden states, optionally of a few columns per row.
* :func:`causal_mask`: the batch-1 causal mask (a mask per layer type for sliding-window models) that
  lets hooks append rows mid-forward (:func:`interp.engine.run`'s worlds entering at a layer).
* :class:`Counter`: passes and rows run, for benchmarks.

:mod:`interp.engine` builds on these and re-exports them.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp.hooks import HookFn, StopForward, hooked
from interp.sites import Site

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["Counter", "forward_hidden", "final_logits", "causal_mask", "tail_ok"]

_FINAL = Site("ln_final")
#: Components without a layer that come after every block.
_AFTER_BLOCKS = ("ln_final", "final_resid", "ln_final_scale")


class Counter:
    """Counts forward and backward passes and rows (reported in Result metadata)."""

    def __init__(self) -> None:
        self.forward = 0
        self.backward = 0
        self.rows = 0


def causal_mask(n_pos: int, device: Any, model: Model = None) -> Bool[Tensor, "1 1 pos pos"] | dict[str, Bool[Tensor, "1 1 pos pos"]]:
    """``[1, 1, pos, pos]`` boolean causal mask (batch 1, so rows may be added mid-forward).

    For a model with sliding-window (local) attention layers (Gemma-2/3, Mistral style; see
    :func:`interp.arch.arch_facts`) one explicit mask would give every layer full attention, so the
    mask is a mapping by layer type, as transformers accepts: ``{"full_attention": causal,
    "sliding_attention": causal within the window}``.
    """
    full = torch.ones(n_pos, n_pos, dtype=torch.bool, device=device).tril()[None, None]
    if model is None:
        return full
    from interp.arch import arch_facts

    window = arch_facts(model).sliding_window
    if not window:
        return full
    i = torch.arange(n_pos, device=device)
    local = full & ((i[:, None] - i[None, :]) < int(window))[None, None]
    return {"full_attention": full, "sliding_attention": local}


def _grow_kwargs(model: Model, n_pos: int, device: Any) -> dict[str, Any]:
    """Forward kwargs of a pass whose rows may grow mid-forward: a batch-1 mask (by layer type for sliding-window
    models) and explicit positions (the bridge would otherwise derive them from a 2-D mask)."""
    mask = causal_mask(n_pos, device, model)
    if isinstance(mask, dict):
        return {"attention_mask": mask, "position_ids": torch.arange(n_pos, device=device)[None]}
    return {"attention_mask": mask}


def final_logits(model: Model, hidden: Float[Tensor, "rows d_model"],
                 columns: Int[Tensor, "rows k"] | None = None) -> Float[Tensor, "rows vocab_or_k"]:
    """Logits from final normalised hidden states ``[rows, d_model] -> [rows, d_vocab]``.

    With ``columns`` (``[rows, k]`` token ids) only those logits are computed: ``[rows, k]``.
    Applies the model's unembedding (and its output soft-cap, where the config has one).
    """
    if columns is None:
        logits = model.unembed(hidden[:, None, :])[:, 0, :]
    else:
        w = model.W_U.T[columns.to(model.W_U.device)].to(hidden.dtype)              # [rows, k, d_model]
        logits = (hidden[:, None, :] * w).sum(-1)
        b_u = getattr(model, "b_U", None)
        if isinstance(b_u, Tensor):
            logits = logits + b_u[columns.to(b_u.device)].to(logits.dtype)
    cap = getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0
    if cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits


def forward_hidden(model: Model, tokens: Int[Tensor, "rows pos"], positions: Int[Tensor, " batch"],
                   hooks: Iterable[tuple[Site, HookFn]], *, grow: bool,
                   counter: Counter | None = None) -> Float[Tensor, "rows d_model"]:
    """Final normalised hidden states at ``positions`` of every row, stopping the pass at ``ln_final``.

    Row ``r`` reads position ``positions[r % batch]`` (rows are laid out ``block * batch + b``).
    ``grow`` passes a batch-1 causal mask so hooks may append rows mid-forward.
    """
    out: dict[str, Tensor] = {}
    n_b = positions.shape[0]

    def grab(act: Tensor, site: Site) -> None:
        rows = torch.arange(act.shape[0], device=act.device)
        out["h"] = act[rows, positions.to(act.device)[rows % n_b]]
        raise StopForward("ln_final")

    hooks = list(hooks)
    kwargs = _grow_kwargs(model, tokens.shape[1], tokens.device) if grow else {}
    if _tail_free(model, [s for s, _ in hooks]) and tail_ok(model):
        def one_position(act: Tensor, site: Site) -> Tensor:
            rows = torch.arange(act.shape[0], device=act.device)
            return act[rows, positions.to(act.device)[rows % n_b]][:, None]
        hooks.append((Site("mlp_in", model.cfg.n_layers - 1), one_position))
    with hooked(model, [*hooks, (_FINAL, grab)]):
        try:
            model(tokens, **kwargs)
        except StopForward:
            pass
    if counter is not None:
        counter.forward += 1
        counter.rows += int(out["h"].shape[0])
    return out["h"]


#: Sites of the last layer whose shape or value the one-position tail MLP changes.
_TAIL_SITES = {"mlp_in", "mlp_out", "mlp_post", "resid_post"}
#: Per model: whether the one-position tail MLP is exact (checked once; no state on the model).
_TAIL_OK: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()


def _tail_free(model: Model, sites: Iterable[Site]) -> bool:
    last = model.cfg.n_layers - 1
    return not any((s.layer == last and s.component in _TAIL_SITES) or s.component in _AFTER_BLOCKS for s in sites)


def tail_ok(model: Model) -> bool:
    """Whether running the last MLP on one position per row reproduces the final hidden states (checked once)."""
    cached = _TAIL_OK.get(model)
    if cached is not None:
        return cached
    from interp.hooks import capturing

    tokens = torch.randint(0, min(int(model.cfg.d_vocab), 1000), (2, 6), generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(next(model.parameters()).device)
    rows, last = torch.arange(2), torch.tensor([5, 3])

    def one_position(act: Tensor, site: Site) -> Tensor:
        return act[rows, last][:, None]
    try:
        with torch.inference_mode():
            with capturing(model, [_FINAL]) as acts:
                model(tokens)
            want = acts[_FINAL][rows, last]
            with hooked(model, [(Site("mlp_in", model.cfg.n_layers - 1), one_position)]), \
                    capturing(model, [_FINAL]) as acts:
                model(tokens)
            got = acts[_FINAL][rows, last]
        ok = got.shape == want.shape and bool(torch.allclose(got.float(), want.float(), atol=1e-5, rtol=1e-5))
    except Exception:  # an architecture where the broadcast does not apply (e.g. no separate MLP norm)
        ok = False
    _TAIL_OK[model] = ok
    return ok
