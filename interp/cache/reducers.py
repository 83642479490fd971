"""Streaming reducers: statistics over many tokens without keeping the activations.

A reducer names the sites it needs and folds each batch into a running state;
:func:`interp.cache.collect` calls it on every batch, for real tokens only, then
stores ``reducer.result()`` in ``store.reductions[name]``.

Protocol (:class:`Reducer`)::

    sites: tuple[Site, ...]                      # what to capture for it
    update(site, acts, mask, prompt_ids) -> None # acts [batch, pos, ...], mask [batch, pos] bool,
                                                 # prompt_ids [batch] original prompt indices
    result() -> Any

Reducers work on sites with a ``pos`` dim (not ``pattern``/``attn_scores``, whose
key dim changes with the padded width). Accumulation is in float64.

Example:
    >>> from interp import load_model, collect, Site
    >>> from interp.cache import Mean, TopK
    >>> model = load_model("toy:llama")
    >>> s = Site("resid_post", 1)
    >>> store = collect(model, ["hi", "hello"], [], reducers={"mean": Mean([s]), "top": TopK([s], k=3)})
    >>> store.reductions["mean"][s].shape
    torch.Size([64])
    >>> import torch
    >>> from interp.hooks import capturing
    >>> from interp.models import tokenize
    >>> acts = []
    >>> for text in ["hi", "hello"]:                  # oracle: the mean over every real token, one prompt at a time
    ...     with capturing(model, [s]) as got:
    ...         _ = model(tokenize(model, [text]).tokens)
    ...     acts.append(got[s][0])
    >>> torch.allclose(store.reductions["mean"][s].float(), torch.cat(acts).mean(0), atol=1e-5)
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Shaped
from torch import Tensor

from interp.errors import ConfigError
from interp.sites import Site

__all__ = ["Reducer", "Mean", "MeanNorm", "TopK", "TopKResult", "FnReducer", "real_tokens"]


@runtime_checkable
class Reducer(Protocol):
    """What :func:`~interp.cache.collect` needs from a streaming reducer."""

    sites: tuple[Site, ...]

    def update(self, site: Site, acts: torch.Tensor, mask: torch.Tensor, prompt_ids: torch.Tensor) -> None: ...

    def result(self) -> Any: ...


def _sites(sites: Iterable[Site | str] | Site | str) -> tuple[Site, ...]:
    if isinstance(sites, (Site, str)):
        sites = [sites]
    out = tuple(s if isinstance(s, Site) else Site.parse(s) for s in sites)
    if not out:
        raise ConfigError("a reducer needs at least one site")
    for s in out:
        if "pos" not in s.dims:
            raise ConfigError(f"reducers work on sites with a 'pos' dim; {s} has dims {s.dims}")
    return out


def real_tokens(acts: Shaped[Tensor, "batch pos *rest"], mask: Bool[Tensor, "batch pos"]) -> Shaped[Tensor, "n_tokens *rest"]:
    """``[batch, pos, *rest]`` + ``[batch, pos]`` mask -> ``[n_tokens, *rest]`` (real tokens only)."""
    return acts[mask.to(acts.device)]


class Mean:
    """Running mean over real tokens: ``result()[site]`` has the activation's per-token shape.

    Args:
        sites: sites to average (each with a ``pos`` dim).
    """

    def __init__(self, sites: Iterable[Site | str] | Site | str) -> None:
        self.sites = _sites(sites)
        self._sum: dict[Site, torch.Tensor] = {}
        self._n: dict[Site, int] = {}

    def per_token(self, x: torch.Tensor) -> torch.Tensor:
        """The quantity averaged, per real token: ``[n_tokens, *rest]`` -> ``[n_tokens, ...]``."""
        return x

    def update(self, site: Site, acts: torch.Tensor, mask: torch.Tensor, prompt_ids: torch.Tensor) -> None:
        x = self.per_token(real_tokens(acts, mask).double())
        s = x.sum(0)
        self._sum[site] = self._sum[site] + s if site in self._sum else s
        self._n[site] = self._n.get(site, 0) + x.shape[0]

    def result(self) -> dict[Site, torch.Tensor]:
        """``{site: [*rest]}`` float64 mean; ``rest`` = the dims after ``pos``."""
        return {s: self._sum[s] / self._n[s] for s in self.sites if s in self._sum}


class MeanNorm(Mean):
    """Running mean of the L2 norm over the last dim (``d_model``, ``d_head`` ...) over real tokens.

    ``result()[site]`` is a scalar for ``resid_post``, ``[head]`` for ``z``.
    """

    def per_token(self, x: torch.Tensor) -> torch.Tensor:
        return x.norm(dim=-1)


@dataclass(frozen=True)
class TopKResult:
    """The k highest-scoring tokens of one site.

    Attributes:
        values: ``[k]`` scores, descending.
        prompt: ``[k]`` original prompt index of each token.
        pos: ``[k]`` token position in its prompt.
    """

    values: torch.Tensor
    prompt: torch.Tensor
    pos: torch.Tensor


class TopK:
    """The k tokens with the highest score, with (prompt, pos) indices.

    Args:
        sites: sites to score.
        k: how many tokens to keep.
        score: ``fn([n_tokens, *rest]) -> [n_tokens]``; default the L2 norm over all
            non-token dims. E.g. ``lambda x: x[:, 507]`` for one residual dim.
    """

    def __init__(self, sites: Iterable[Site | str] | Site | str, k: int = 10,
                 score: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if k <= 0:
            raise ConfigError(f"TopK needs k > 0, got {k}")
        self.sites = _sites(sites)
        self.k = k
        self.score = score or (lambda x: x.flatten(1).double().norm(dim=1))
        self._best: dict[Site, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def update(self, site: Site, acts: torch.Tensor, mask: torch.Tensor, prompt_ids: torch.Tensor) -> None:
        mask = mask.to(acts.device)
        scores = self.score(acts[mask]).double().cpu()
        b_idx, p_idx = mask.nonzero(as_tuple=True)
        prompts = prompt_ids.cpu()[b_idx.cpu()]
        pos = p_idx.cpu()
        if site in self._best:
            v0, pr0, po0 = self._best[site]
            scores, prompts, pos = torch.cat([v0, scores]), torch.cat([pr0, prompts]), torch.cat([po0, pos])
        # stable: ties keep the earlier (prompt, pos)
        order = torch.sort(scores, descending=True, stable=True).indices[: self.k]
        self._best[site] = (scores[order], prompts[order], pos[order])

    def result(self) -> dict[Site, TopKResult]:
        """``{site: TopKResult}``."""
        return {s: TopKResult(*self._best[s]) for s in self.sites if s in self._best}


class FnReducer:
    """A custom reducer from a fold function: ``state = fn(state, tokens, site)`` per batch.

    Args:
        sites: sites to fold over.
        fn: ``fn(state, tokens [n_tokens, *rest], site) -> new state``; ``state`` starts as ``init``.
        init: initial state (per site).

    Example:
        >>> count = FnReducer(["resid_post.0"], lambda st, x, s: st + (x.abs() > 1).sum().item(), init=0)
    """

    def __init__(self, sites: Iterable[Site | str] | Site | str, fn: Callable[[Any, torch.Tensor, Site], Any],
                 init: Any = None) -> None:
        self.sites = _sites(sites)
        self.fn = fn
        self.init = init
        self._state: dict[Site, Any] = {}

    def update(self, site: Site, acts: torch.Tensor, mask: torch.Tensor, prompt_ids: torch.Tensor) -> None:
        self._state[site] = self.fn(self._state.get(site, self.init), real_tokens(acts, mask), site)

    def result(self) -> dict[Site, Any]:
        """``{site: final state}``."""
        return {s: self._state.get(s, self.init) for s in self.sites}
