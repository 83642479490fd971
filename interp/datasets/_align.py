"""Token alignment helpers shared by the task builders (private).

Maps character spans of a prompt to token positions *for one model's tokenizer*,
counting the BOS token that :func:`interp.models.tokenize` prepends when the model's
default says so, and reads the task data files bundled with the package.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interp.errors import DataError

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["encode", "bos_offset", "char_span_to_tokens", "single_token_id", "task_data_text", "task_data_json"]


def bos_offset(model: Model, prepend_bos: bool | None = None) -> int:
    """1 if :func:`interp.models.tokenize` prepends BOS for this model (by default or as asked), else 0."""
    bos = model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
    return 1 if bos else 0


def encode(model: Model, text: str | list[str], **kwargs: Any) -> Any:
    """The tokenizer's encoding of ``text`` as :func:`interp.models.tokenize` does it: no added
    special tokens, special-token text split into plain tokens (``split_special_tokens``)."""
    return model.tokenizer(text, add_special_tokens=False, split_special_tokens=True, **kwargs)


def single_token_id(model: Model, word: str) -> int | None:
    """The id of ``word`` if the tokenizer encodes it as exactly one token, else ``None``."""
    ids = encode(model, word).input_ids
    return ids[0] if len(ids) == 1 else None


def _prompt_ids(model: Model, prompt: str) -> list[int]:
    return list(encode(model, prompt).input_ids)


def char_span_to_tokens(model: Model, prompt: str, start: int, end: int,
                        prepend_bos: bool | None = None) -> tuple[int, int]:
    """Token span ``[tok_start, tok_end)`` covering the characters ``prompt[start:end]``.

    Positions index the row that :func:`interp.models.tokenize` builds for ``prompt``
    (BOS counted when the model prepends it). A token belongs to the span if its
    characters overlap ``[start, end)``; a leading space merged into a word token
    (``" Mary"``) therefore counts as part of the word.

    Raises:
        DataError: an empty span, or no token overlapping it.
    """
    if not 0 <= start < end <= len(prompt):
        raise DataError(f"character span [{start}, {end}) is empty or outside the prompt {prompt!r}")
    off = bos_offset(model, prepend_bos)
    try:
        enc = encode(model, prompt, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        offsets = None
    if offsets is not None:
        hit = [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]
    else:  # slow tokenizers: prefix lengths (exact for word-boundary spans)
        a = start - 1 if start > 0 and prompt[start - 1] == " " else start
        hit = list(range(len(_prompt_ids(model, prompt[:a])), len(_prompt_ids(model, prompt[:end]))))
    if not hit:
        raise DataError(f"no token covers characters {start}:{end} ({prompt[start:end]!r}) of {prompt!r}")
    return hit[0] + off, hit[-1] + 1 + off


@lru_cache(maxsize=None)
def task_data_text(name: str) -> str:
    """Text of a task data file bundled under ``interp/data/tasks``."""
    try:
        return (Path(__file__).resolve().parent.parent / "data" / "tasks" / name).read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise DataError(f"bundled task data file {name!r} is missing from interp/data/tasks") from e


def task_data_json(name: str) -> dict[str, Any]:
    """Parsed JSON task data bundled under ``interp/data/tasks`` (a fresh copy each call)."""
    return json.loads(task_data_text(name))
