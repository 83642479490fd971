"""Gate hooks of causal head gating: gates on every head's ``z``, a frozen model, last-token log-probs.

* :func:`gated`: multiply head outputs by fixed gates ``[n_layers, n_heads]`` or per mask tile
  ``[n_masks, n_layers, n_heads]`` for the duration of a block;
* ``_gate_hooks``: the same gates, read from a callable when the hooks run (the engine's live ``gate``
  interventions, registered once per fit);
* ``_last_logprobs``: a forward pass stopped at the final norm that unembeds only each row's last token.

Example:
    >>> import torch
    >>> from interp.gating.gates import gated
    >>> tokens = torch.tensor([[256, 72, 105]])
    >>> g = torch.ones(model.cfg.n_layers, model.cfg.n_heads); g[1, 0] = 0
    >>> with gated(model, g):
    ...     logits = model(tokens)       # head L1.H0 removed
    >>> logits.shape
    torch.Size([1, 3, 259])
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from interp.errors import ConfigError
from interp.sites import Site

__all__ = ["gated"]


@contextlib.contextmanager
def _frozen(model: Any) -> Iterator[None]:
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


@contextlib.contextmanager
def _gate_hooks(model: Any, current: Callable[[], torch.Tensor | None]) -> Iterator[None]:
    """Live ``gate`` interventions of the engine on every layer's ``z`` reading ``current()``
    (``[k, layer, head]``: ``k`` mask tiles of consecutive rows; None = no gating).

    Registered once per fit: looking hook points up costs more than a toy forward pass.
    """
    from interp.engine import Intervention, intervening

    def layer_gates(layer: int) -> Callable[[], torch.Tensor | None]:
        def value() -> torch.Tensor | None:
            gates = current()
            return None if gates is None else gates[:, layer]          # [tile, head]
        return value

    with intervening(model, [Intervention("gate", Site("z", layer), layer_gates(layer))
                             for layer in range(model.cfg.n_layers)]):
        yield


@contextlib.contextmanager
def gated(model: Any, gates: Float[Tensor, "layer head"] | Float[Tensor, "mask layer head"]) -> Iterator[None]:
    """Multiply head outputs ``z`` by ``gates`` during the block.

    Args:
        gates: ``[n_layers, n_heads]`` (same gates for every prompt) or
            ``[n_masks, n_layers, n_heads]``: the batch is then read as ``n_masks`` tiles
            of equal size, tile ``k`` gated by ``gates[k]``.

    Example:
        >>> import torch
        >>> from interp.hooks import patched
        >>> from interp.sites import Site
        >>> tokens = torch.tensor([[256, 72, 105]])
        >>> g = torch.ones(model.cfg.n_layers, model.cfg.n_heads); g[1, 0] = 0
        >>> with gated(model, g):
        ...     logits = model(tokens)       # head L1.H0 removed
        >>> with patched(model, {Site("z", 1, head=0): 0.0}):
        ...     zeroed = model(tokens)
        >>> torch.allclose(logits, zeroed, atol=1e-5)
        True
    """
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if gates.dim() == 2:
        gates = gates[None]
    if gates.dim() != 3 or tuple(gates.shape[1:]) != (n_layers, n_heads):
        raise ConfigError(f"gates: expected (n_masks, {n_layers}, {n_heads}), got {tuple(gates.shape)}")
    with _gate_hooks(model, lambda: gates):
        yield


class _Stop(Exception):
    pass


@contextlib.contextmanager
def _last_logprobs(model: Any) -> Iterator[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]]:
    """Yields ``fn(tokens, last, targets) -> log p(target) [rows]`` that stops the forward pass at the
    final norm and unembeds only each row's last token (hook registered once)."""
    from interp.hooks import hooked

    box: dict[str, Any] = {"on": False}

    def grab(x: torch.Tensor, site: Site) -> None:
        if box["on"]:
            box["x"] = x
            raise _Stop

    def fn(tokens: torch.Tensor, last: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        box["on"] = True
        try:
            model(tokens)
        except _Stop:
            pass
        finally:
            box["on"] = False
        x = box.pop("x")
        from interp import metrics

        rows = torch.arange(x.shape[0], device=x.device)
        return metrics.logprob(model.unembed(x[rows, last]), targets)

    with hooked(model, {Site("ln_final"): grab}):
        yield fn


def _target_logprobs(model: Any, tokens: torch.Tensor, last: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log p(target)`` at ``last`` per row (``[rows]``)."""
    with _last_logprobs(model) as fn:
        return fn(tokens, last, targets)
