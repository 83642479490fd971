"""One forward pass, many streaming reducers: the engine behind every sink statistic.

A *reducer* names the sites it reads and folds each activation into small running
arrays as soon as the hook fires, so nothing bigger than one layer's activation of
one batch is alive at a time (the model's own attention pattern of that layer).
Memory of the sink statistics grows with ``layer x head x pos``, never ``pos^2``
across layers.

Prompts are tokenized the interp way (right padding, explicit lengths); a prompt
longer than the model's context raises :class:`~interp.errors.DataError` naming it;
prompts are then cut to ``max_len`` tokens (Gu et al. use T = 64).

Example:
    >>> from interp.models import load_model
    >>> from interp.sinks._stream import prepare, stream
    >>> batch, kept = prepare(load_model("toy:llama"), ["ab", "abc"], 3)
    >>> batch.tokens.shape, batch.lengths.tolist(), kept     # BOS + bytes, cut to 3 tokens
    (torch.Size([2, 3]), [3, 3], [0, 1])
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import torch

from interp.arch import padding_kwargs
from interp.errors import DataError
from interp.hooks import StopForward, hooked
from interp.models import TokenBatch, tokenize
from interp.sites import Site

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["Reducer", "Chunk", "prepare", "stream", "token_strings"]


class Chunk:
    """The batch a forward pass is running on, as reducers see it.

    Attributes:
        tokens: ``[batch, pos]`` token ids (right padded).
        lengths: ``[batch]`` real tokens per prompt.
        offset: index of the chunk's first prompt in the whole prompt list.
    """

    def __init__(self, tokens: torch.Tensor, lengths: torch.Tensor, offset: int) -> None:
        self.tokens = tokens
        self.lengths = lengths
        self.offset = offset
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        self.mask = pos[None, :] < lengths[:, None]           # [batch, pos] real tokens

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


class Reducer(Protocol):
    """Folds activations of some sites into running statistics."""

    def sites(self) -> list[Site]:  # pragma: no cover - protocol
        ...

    def update(self, act: torch.Tensor, site: Site, chunk: Chunk) -> None:  # pragma: no cover - protocol
        ...


def prepare(model: Model, prompts: Sequence[str] | TokenBatch, max_len: int | None,
            min_tokens: int = 2) -> tuple[TokenBatch, list[int]]:
    """Tokenize, cut to ``max_len`` tokens, and drop prompts with fewer than ``min_tokens``.

    Args:
        model: a model from :func:`interp.load_model`.
        prompts: texts, or an already tokenized :class:`TokenBatch`.
        max_len: keep at most this many tokens per prompt (``None``: all).
        min_tokens: prompts shorter than this are dropped with a warning (a one-token
            prompt has no query that sees a key other than itself).

    Returns:
        The kept prompts as a TokenBatch (possibly empty: ``tokens`` of shape ``[0, 0]``)
        and the indices of the kept prompts in the input.

    Raises:
        DataError: no prompts, an empty prompt, a prompt longer than the context when
            ``max_len`` is None (named), or ``max_len`` beyond the context.
    """
    n_ctx = model.cfg.n_ctx
    if max_len is not None and max_len > n_ctx:
        raise DataError(f"max_len={max_len} is longer than the model's context of {n_ctx} tokens")
    # Prompts are cut to max_len anyway, so only a prompt the cut cannot fix (max_len None) is an error.
    limit = n_ctx if max_len is None else 10**9
    batch = prompts if isinstance(prompts, TokenBatch) else tokenize(model, list(prompts), max_len=limit)
    if isinstance(prompts, TokenBatch) and max_len is None and batch.tokens.shape[1] > n_ctx:
        raise DataError(f"token batch has {batch.tokens.shape[1]} positions, more than the model's context of {n_ctx}")
    lengths = batch.lengths.clone()
    if max_len is not None:
        lengths = lengths.clamp(max=max_len)
    keep = [i for i, n in enumerate(lengths.tolist()) if n >= min_tokens]
    dropped = len(lengths) - len(keep)
    if dropped:
        short = [i for i in range(len(lengths)) if i not in set(keep)][:5]
        warnings.warn(f"{dropped} prompt(s) have fewer than {min_tokens} tokens and are skipped "
                      f"(indices {short}{'...' if dropped > 5 else ''}): no query sees a key but itself",
                      stacklevel=3)
    if not keep:
        empty = torch.zeros((0, 0), dtype=torch.long, device=batch.tokens.device)
        return TokenBatch(empty, lengths[:0], ()), []
    width = int(lengths[keep].max())
    idx = torch.tensor(keep, device=batch.tokens.device)
    tokens = batch.tokens[idx, :width].clone()
    return TokenBatch(tokens, lengths[idx], tuple(batch.texts[i] for i in keep)), keep


def stream(model: Model, batch: TokenBatch, reducers: Sequence[Reducer], *, batch_size: int = 8,
           progress: bool = False, desc: str = "sinks") -> None:
    """Run ``batch`` through ``model`` in chunks; every reducer sees every activation it asked for.

    Reducers receive each chunk's prompt indices through :class:`Chunk` (``offset`` plus
    row), in the batch's own order. The forward pass stops once every requested site has
    fired, so layers and logits past the deepest site are never computed.
    """
    if len(batch) == 0:
        return
    if batch_size <= 0:
        raise DataError(f"batch_size must be > 0, got {batch_size}")
    current: list[Chunk] = []
    # One hook per site, fanning out to the reducers (registering hooks on the bridge is slow).
    by_site: dict[Site, list[Reducer]] = {}
    for red in reducers:
        for site in red.sites():
            by_site.setdefault(site, []).append(red)

    fired: set[Site] = set()

    def fan_out(act: torch.Tensor, site: Site) -> None:
        for red in by_site[site]:
            red.update(act.detach(), site, current[0])
        fired.add(site)
        if len(fired) == len(by_site):   # every site seen: skip the rest of the model (and the logits)
            raise StopForward(str(site))

    pairs = [(site, fan_out) for site in by_site]
    from tqdm.auto import tqdm

    starts = range(0, len(batch), batch_size)
    with hooked(model, pairs), torch.inference_mode():
        for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
            lengths = batch.lengths[start:start + batch_size]
            width = int(lengths.max())
            tokens = batch.tokens[start:start + batch_size, :width]
            current[:] = [Chunk(tokens, lengths.to(tokens.device), start)]
            fired.clear()
            try:
                model(tokens, **padding_kwargs(model, current[0].mask))
            except StopForward:
                pass


def token_strings(model: Model, ids: Sequence[int]) -> list[str]:
    """Readable token strings (one per id), via the model's tokenizer."""
    tok = model.tokenizer
    return [tok.decode([int(i)]) for i in ids]
