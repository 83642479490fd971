"""Shared forward-pass plumbing of the patching methods (internal).

:func:`last_hidden` runs the model on ``tokens`` with extra hooks and returns the final
normalised hidden state at each row's last real token, stopping the pass at
``ln_final`` so the full ``[rows, pos, d_vocab]`` logits are never built. Hooks may
*grow* the batch mid-forward (append rows at a layer), which is how a patch at layer
``l`` skips the layers before ``l``: rows are laid out ``block * B + b`` and every
block is a copy of the first ``B`` rows. Growing needs a causal mask with batch 1,
passed explicitly.

Only the last real token of the *last* layer's MLP is needed, so (where a one-off check
on the model shows it is exact) that MLP runs on one position per row instead of all of
them; its output broadcasts over positions, which leaves every other position of the
final residual wrong and unread. Hooks on that MLP or on the last ``resid_post`` turn it off.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from interp.hooks import HookFn, StopForward, hooked
from interp.sites import Site

from interp.patching.metrics import causal_mask

_FINAL = Site("ln_final")


class Counter:
    """Counts forward and backward passes (reported in Result metadata)."""

    def __init__(self) -> None:
        self.forward = 0
        self.backward = 0
        self.rows = 0


def last_hidden(model: Any, tokens: torch.Tensor, last: torch.Tensor, hooks: Iterable[tuple[Site, HookFn]], *,
                grow: bool, counter: Counter | None = None) -> torch.Tensor:
    """Final normalised hidden states ``[rows, d_model]`` at the last real token of every row.

    Args:
        tokens: ``[B', pos]`` input rows (``B' = B`` when hooks grow the batch).
        last: ``[B]`` last real positions of the ``B`` prompts; row ``r`` uses ``last[r % B]``.
        hooks: (site, fn) pairs registered for this pass.
        grow: pass a batch-1 causal mask so hooks may append rows.
    """
    out: dict[str, torch.Tensor] = {}
    n_b = last.shape[0]

    def grab(act: torch.Tensor, site: Site) -> None:
        rows = torch.arange(act.shape[0], device=act.device)
        out["h"] = act[rows, last.to(act.device)[rows % n_b]]
        raise StopForward("ln_final")

    hooks = list(hooks)
    kwargs = {"attention_mask": causal_mask(tokens.shape[1], tokens.device)} if grow else {}
    if _tail_free(model, hooks) and _tail_ok(model):
        def one_position(act: torch.Tensor, site: Site) -> torch.Tensor:
            rows = torch.arange(act.shape[0], device=act.device)
            return act[rows, last.to(act.device)[rows % n_b]][:, None]
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


def _tail_free(model: Any, hooks: list[tuple[Site, HookFn]]) -> bool:
    last = model.cfg.n_layers - 1
    return not any((s.layer == last and s.component in _TAIL_SITES) or s.component in ("final_resid", "ln_final")
                   for s, _ in hooks)


def _tail_ok(model: Any) -> bool:
    """Whether running the last MLP on one position per row reproduces the final hidden states (checked once)."""
    cached = getattr(model, "_interp_tail_ok", None)
    if cached is not None:
        return cached
    from interp.hooks import capturing

    tokens = torch.randint(0, min(int(model.cfg.d_vocab), 1000), (2, 6), generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(next(model.parameters()).device)
    rows, last = torch.arange(2), torch.tensor([5, 3])

    def one_position(act: torch.Tensor, site: Site) -> torch.Tensor:
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
    model._interp_tail_ok = ok
    return ok
