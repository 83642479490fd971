"""Shared forward-pass plumbing of the patching methods (internal).

:func:`last_hidden` runs the model on ``tokens`` with extra hooks and returns the final
normalised hidden state at each row's last real token, stopping the pass at
``ln_final`` so the full ``[rows, pos, d_vocab]`` logits are never built. Hooks may
*grow* the batch mid-forward (append rows at a layer), which is how a patch at layer
``l`` skips the layers before ``l``: rows are laid out ``block * B + b`` and every
block is a copy of the first ``B`` rows. Growing needs a causal mask with batch 1,
passed explicitly.
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
        out["h"] = act[rows, last[rows % n_b]]
        raise StopForward("ln_final")

    kwargs = {"attention_mask": causal_mask(tokens.shape[1], tokens.device)} if grow else {}
    with hooked(model, [*hooks, (_FINAL, grab)]):
        try:
            model(tokens, **kwargs)
        except StopForward:
            pass
    if counter is not None:
        counter.forward += 1
        counter.rows += int(out["h"].shape[0])
    return out["h"]
