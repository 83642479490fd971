"""Scoped hook contexts: capture, patch, ablate. Hooks are always removed, also on errors.

Every context registers its hooks on the model's TransformerLens hook points and
removes exactly those hooks (and no others) in ``finally``. Hook functions receive
the activation and the :class:`~interp.sites.Site` they were registered for.

Example:
    >>> import torch
    >>> from interp import load_model, Site
    >>> from interp.hooks import capturing, patched
    >>> model = load_model("toy:llama")
    >>> tokens = torch.tensor([[256, 72, 105]])
    >>> with capturing(model, [Site("resid_post", 0)]) as acts:
    ...     _ = model(tokens)
    >>> acts[Site("resid_post", 0)].shape
    torch.Size([1, 3, 64])
    >>> with patched(model, {Site("z", 1, head=0): 0.0}):
    ...     logits = model(tokens)          # head 1.0 zero-ablated
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.sites import Site, sites_by_layer, validate_site

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["HookFn", "hooked", "capturing", "patched", "ablated", "StopForward", "run_capture"]

#: ``fn(activation, site) -> new activation or None`` (None: keep, possibly modified in place).
HookFn = Callable[[torch.Tensor, Site], Union[torch.Tensor, None]]


class StopForward(Exception):
    """Raised by a hook to end a forward pass early; caught by :func:`run_capture`."""


def _as_site(site: Site | str) -> Site:
    return site if isinstance(site, Site) else Site.parse(site)


@contextlib.contextmanager
def hooked(model: Model, hooks: Mapping[Site | str, HookFn] | Iterable[tuple[Site | str, HookFn]],
           *, direction: str = "fwd") -> Iterator[None]:
    """Register ``fn(act, site)`` hooks for the duration of the block.

    Args:
        model: a model from :func:`interp.load_model`.
        hooks: mapping or pairs of (site, fn); several fns may share a hook point
            (they run in the given order).
        direction: ``"fwd"`` (activations) or ``"bwd"`` (gradients w.r.t. the activation).

    Raises:
        SiteError: a site the model does not have (nearest hook names suggested).
    """
    pairs = list(hooks.items()) if isinstance(hooks, Mapping) else list(hooks)
    added: list[tuple[Any, Any]] = []
    try:
        hook_dict = model.hook_dict  # rebuilt by the bridge on every access: read it once
        for raw, fn in pairs:
            site = validate_site(_as_site(raw), model, hook_dict=hook_dict)
            point = hook_dict[site.hook_name]

            def wrapper(act: torch.Tensor, hook: Any = None, _site: Site = site, _fn: HookFn = fn):
                return _fn(act, _site)

            handles = point.fwd_hooks if direction == "fwd" else point.bwd_hooks
            point.add_hook(wrapper, dir=direction)
            added.append((point, handles[-1]))
        yield
    finally:
        for point, handle in reversed(added):
            handle.hook.remove()
            for name in ("fwd_hooks", "bwd_hooks"):
                lst = getattr(point, name)
                if handle in lst:
                    lst.remove(handle)


@contextlib.contextmanager
def capturing(model: Model, sites: Iterable[Site | str], *, clone: bool = True,
              stop_after: bool = False) -> Iterator[dict[Site, Float[Tensor, "batch ..."]]]:
    """Capture activations at ``sites``; yields a dict filled during the forward pass.

    A site with a head yields only that head's slice. Activations are detached
    (and cloned unless ``clone=False``).

    Args:
        stop_after: raise :class:`StopForward` once the deepest requested site has
            been captured, so the rest of the forward pass is skipped (catch it, or
            use :func:`run_capture`).
    """
    sites = [_as_site(s) for s in sites]
    store: dict[Site, torch.Tensor] = {}
    deepest = sites_by_layer(sites)
    last = [s for s in sites if (s.layer if s.layer is not None else -1) == deepest] if stop_after else []
    remaining = set(last)

    def grab(act: torch.Tensor, site: Site, _targets: list[Site]) -> None:
        for target in _targets:
            a = target.select(act.detach())
            store[target] = a.clone() if clone else a
            if stop_after and target in remaining:
                remaining.discard(target)
                if not remaining:
                    remaining.update(last)
                    raise StopForward(str(target))

    by_point: dict[Site, list[Site]] = {}
    for s in sites:
        by_point.setdefault(s.layer_site, []).append(s)
    hooks = [(point, (lambda a, st, _t=targets: grab(a, st, _t))) for point, targets in by_point.items()]
    with hooked(model, hooks):
        yield store


def run_capture(model: Model, tokens: Int[Tensor, "batch pos"], sites: Iterable[Site | str], *, clone: bool = False,
                stop_early: bool = True, **forward_kwargs: Any) -> dict[Site, Float[Tensor, "batch ..."]]:
    """One forward pass on ``tokens`` returning the activations at ``sites``.

    With ``stop_early`` the pass stops after the deepest site (layers beyond it never run).
    """
    sites = [_as_site(s) for s in sites]
    with capturing(model, sites, clone=clone, stop_after=stop_early) as store:
        try:
            model(tokens, **forward_kwargs)
        except StopForward:
            pass
    return store


def _replacer(value: Callable[[torch.Tensor, Site], Any]) -> HookFn:
    """Hook writing ``value(act, site)`` into the site's head slice."""
    def fn(act: torch.Tensor, site: Site) -> torch.Tensor:
        out = act.clone()
        region = site.select(out)
        v = value(act, site)
        if isinstance(v, torch.Tensor):
            v = v.to(device=region.device, dtype=region.dtype)
        region[...] = v
        return out
    return fn


@contextlib.contextmanager
def patched(model: Model, patches: Mapping[Site | str, Any]) -> Iterator[None]:
    """Replace activations at sites during the block.

    Each value is one of:

    * a tensor or scalar: written into the site's region (the head slice for a
      Site with a head; broadcasting applies), e.g. a cached clean activation
      (an :mod:`interp.engine` ``set`` intervention);
    * a callable ``fn(act, site)``: if ``site`` has a head, its return value is written
      into that head's slice; otherwise it is the hook's return value (None = keep).
    """
    from interp.engine import Intervention, as_hook

    hooks: list[tuple[Site, HookFn]] = []
    for raw, value in patches.items():
        site = _as_site(raw)
        if not callable(value):
            hooks.append((site.layer_site, as_hook([Intervention("set", site, value)])))
        elif site.head is None:
            hooks.append((site, value))
        else:
            hooks.append((site, _replacer(value)))
    with hooked(model, hooks):
        yield


@contextlib.contextmanager
def ablated(model: Model, sites: Iterable[Site | str], *, values: Mapping[Site, Float[Tensor, "..."]] | None = None) -> Iterator[None]:
    """Ablate sites during the block: zero, or set to the given ``values`` (e.g. means).

    ``values[site]`` must broadcast against the site's region (a mean over batch, say,
    shaped ``[pos, d_head]`` for one head of ``z``). One :mod:`interp.engine` ``ablate``
    intervention per site.
    """
    from interp.engine import Intervention, intervening

    values = values or {}
    with intervening(model, [Intervention("ablate", s, values.get(s, 0.0)) for s in map(_as_site, sites)]):
        yield
