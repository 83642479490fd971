"""TaskDataset: clean/corrupted prompt pairs with answers, validated per tokenizer.

Example:
    >>> from interp.datasets import TaskDataset
    >>> ds = TaskDataset("demo", clean=("When Mary and John went out, John gave it to",),
    ...                  corrupted=("When Anna and Paul went out, Mark gave it to",),
    ...                  answers=(" Mary",), counterfactuals=(" John",))
    >>> len(ds)
    1
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from interp.datasets._align import encode
from interp.errors import DataError

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["TaskDataset", "TaskBatch", "load_prompts", "iter_jsonl"]


@dataclass(frozen=True)
class TaskBatch:
    """A tokenized TaskDataset.

    Attributes:
        clean, corrupted: :class:`~interp.models.TokenBatch` (right-padded).
        answer_ids: ``[batch]`` token id of the correct answer.
        counter_ids: ``[batch]`` token id of the counterfactual (wrong) answer.
        dataset: the source TaskDataset.
    """

    clean: Any
    corrupted: Any
    answer_ids: Any
    counter_ids: Any
    dataset: "TaskDataset"

    def __len__(self) -> int:
        return len(self.clean)


@dataclass(frozen=True)
class TaskDataset:
    """Clean/corrupted prompt pairs with answer and counterfactual continuations.

    Attributes:
        name: dataset name (``"ioi"``, ``"facts"`` ...).
        clean, corrupted: prompts; ``corrupted`` may be empty for tasks without pairs.
        answers: correct continuation of each clean prompt (a single token, usually
            with a leading space, e.g. ``" Mary"``).
        counterfactuals: the wrong continuation used for logit differences (e.g. the
            subject name in IOI, or the answer of the corrupted prompt).
        meta: one dict per prompt (template id, names, subject span, ...).
    """

    name: str
    clean: tuple[str, ...]
    corrupted: tuple[str, ...] = ()
    answers: tuple[str, ...] = ()
    counterfactuals: tuple[str, ...] = ()
    meta: tuple[dict[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        n = len(self.clean)
        if n == 0:
            raise DataError(f"dataset {self.name!r} is empty")
        for attr in ("corrupted", "answers", "counterfactuals", "meta"):
            got = len(getattr(self, attr))
            if got not in (0, n):
                raise DataError(f"dataset {self.name!r}: {attr} has {got} items, clean has {n}")

    def __len__(self) -> int:
        return len(self.clean)

    def subset(self, idx: Any) -> "TaskDataset":
        """A TaskDataset of the given prompt indices (list or slice)."""
        idx = list(range(len(self))[idx]) if isinstance(idx, slice) else list(idx)
        if not idx:
            raise DataError(f"dataset {self.name!r}: empty subset")

        def pick(t: tuple) -> tuple:
            return tuple(t[i] for i in idx) if t else t

        return TaskDataset(self.name, pick(self.clean), pick(self.corrupted), pick(self.answers),
                           pick(self.counterfactuals), pick(self.meta))

    def tokenize(self, model: Model, *, same_length: bool = True, prepend_bos: bool | None = None) -> TaskBatch:
        """Tokenize for ``model`` and validate.

        Args:
            same_length: require each clean prompt and its corrupted prompt to have the
                same number of tokens (needed by position-wise patching).

        Raises:
            DataError: answers that are not single tokens, or clean/corrupted length
                mismatches; the message names the offending prompts.
        """
        import torch

        from interp.models import tokenize

        clean = tokenize(model, self.clean, prepend_bos=prepend_bos)
        corrupted = tokenize(model, self.corrupted, prepend_bos=prepend_bos) if self.corrupted else None
        if corrupted is not None and same_length:
            bad = [i for i in range(len(self)) if int(clean.lengths[i]) != int(corrupted.lengths[i])]
            if bad:
                lines = [f"  #{i}: {int(clean.lengths[i])} vs {int(corrupted.lengths[i])} tokens: "
                         f"{self.clean[i]!r} / {self.corrupted[i]!r}" for i in bad[:5]]
                raise DataError(f"dataset {self.name!r}: {len(bad)} clean/corrupted pairs differ in token length "
                                "(position-wise patching needs equal lengths):\n" + "\n".join(lines))
        answer_ids = self._single_tokens(model, self.answers, "answer") if self.answers else None
        counter_ids = self._single_tokens(model, self.counterfactuals, "counterfactual") if self.counterfactuals else None
        dev = clean.tokens.device
        return TaskBatch(clean, corrupted,
                         torch.tensor(answer_ids, device=dev) if answer_ids is not None else None,
                         torch.tensor(counter_ids, device=dev) if counter_ids is not None else None, self)

    def check_pairs(self, model: Model) -> TaskBatch:
        """Check a patching dataset before any sweep: every clean/corrupted pair has equal token
        lengths and differs, answers and counterfactuals are single tokens.

        Returns:
            The validated :class:`TaskBatch` (``same_length=True``).

        Raises:
            DataError: no corrupted prompts, a pair of different token lengths, a pair
                whose clean and corrupted prompts are the same text (no contrast to
                patch), or answers that are not single tokens; the message names the pairs.
        """
        if not self.corrupted:
            raise DataError(f"dataset {self.name!r} has no corrupted prompts; patching needs clean/corrupted pairs")
        same = [i for i in range(len(self)) if self.clean[i] == self.corrupted[i]]
        if same:
            lines = [f"  #{i}: {self.clean[i]!r}" for i in same[:5]]
            raise DataError(f"dataset {self.name!r}: {len(same)} of {len(self)} pairs have identical clean and "
                            "corrupted prompts (nothing to patch):\n" + "\n".join(lines))
        return self.tokenize(model, same_length=True)

    def _single_tokens(self, model: Model, words: tuple[str, ...], what: str) -> list[int]:
        ids = encode(model, list(words)).input_ids
        bad = [(i, w, row) for i, (w, row) in enumerate(zip(words, ids)) if len(row) != 1]
        if bad:
            lines = [f"  #{i}: {w!r} -> {len(row)} tokens" for i, w, row in bad[:5]]
            raise DataError(f"dataset {self.name!r}: {len(bad)} {what}s are not single tokens for this tokenizer:\n"
                            + "\n".join(lines))
        return [row[0] for row in ids]

    def to_jsonl(self, path: str | Path) -> None:
        """Write one JSON object per prompt."""
        from interp._fs import atomic_write_bytes

        rows = []
        for i in range(len(self)):
            rows.append({"clean": self.clean[i],
                         "corrupted": self.corrupted[i] if self.corrupted else None,
                         "answer": self.answers[i] if self.answers else None,
                         "counterfactual": self.counterfactuals[i] if self.counterfactuals else None,
                         "meta": self.meta[i] if self.meta else {}})
        atomic_write_bytes(Path(path), "".join(json.dumps(r) + "\n" for r in rows).encode())

    @classmethod
    def from_jsonl(cls, path: str | Path, name: str | None = None) -> "TaskDataset":
        """Read a file written by :meth:`to_jsonl` (keys clean, corrupted, answer, counterfactual, meta).

        Each line is a JSON object with a string ``clean``; ``corrupted``, ``answer`` and
        ``counterfactual`` are strings or null, ``meta`` an object or null.

        Raises:
            DataError: a missing or unreadable file, invalid JSON, a row that is not an
                object, a missing ``clean`` or a value of the wrong type; the message names
                ``file:line`` and the key.
        """
        path = Path(path)
        rows = []
        for n, row in iter_jsonl(_read_text(path), str(path)):
            if not isinstance(row, dict):
                raise DataError(f"{path}:{n}: expected a JSON object with a 'clean' key, got "
                                f"{type(row).__name__} {str(row)[:60]!r}")
            if not isinstance(row.get("clean"), str):
                got = "no 'clean' key" if "clean" not in row else f"'clean' = {row['clean']!r}"
                raise DataError(f"{path}:{n}: expected a string 'clean' prompt, got {got}")
            for key in ("corrupted", "answer", "counterfactual"):
                if row.get(key) is not None and not isinstance(row[key], str):
                    raise DataError(f"{path}:{n}: expected {key!r} to be a string or null, got "
                                    f"{type(row[key]).__name__} {row[key]!r}")
            if row.get("meta") is not None and not isinstance(row["meta"], dict):
                raise DataError(f"{path}:{n}: expected 'meta' to be an object or null, got {type(row['meta']).__name__}")
            rows.append((n, row))
        if not rows:
            raise DataError(f"{path}: no rows")

        def col(key: str) -> tuple:
            vals = [r.get(key) for _, r in rows]
            if all(v is None for v in vals):
                return ()
            missing = [n for n, r in rows if r.get(key) is None]
            if missing:
                raise DataError(f"{path}:{missing[0]}: no {key!r}, which other rows have (give it on every row or none)")
            return tuple(vals)

        return cls(name or path.stem, tuple(r["clean"] for _, r in rows), col("corrupted"), col("answer"),
                   col("counterfactual"), tuple(r.get("meta") or {} for _, r in rows))


def _read_text(path: Path) -> str:
    """The UTF-8 text of ``path``; a UTF-8 byte-order mark at the start is dropped.

    Editors on Windows and copied chat transcripts often start with a BOM (``EF BB BF``);
    kept, it would become part of the first prompt (its own tokens), so it is removed
    (the ``utf-8-sig`` codec). A BOM anywhere else is kept as text.

    Raises:
        DataError: a missing path, a folder, an unreadable file or bytes that are not UTF-8.
    """
    if not path.exists():
        raise DataError(f"no such file: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a folder; expected a file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason})") from e


def iter_jsonl(text: str, where: str) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, parsed row)`` of JSONL text, skipping blank lines.

    Raises:
        DataError: a line that is not valid JSON, naming ``where`` and the line.
    """
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}:{n}: not valid JSON ({e.msg})") from e


def load_prompts(path: str | Path) -> list[str]:
    """Read prompts: a text file with one prompt a line, or JSONL with a ``"prompt"`` or ``"text"`` key.

    The file must be UTF-8; a byte-order mark at its start is dropped. Text that looks
    like a special token (``<|im_start|>``) stays plain text when tokenized (see
    :func:`interp.models.tokenize`, ``allow_special``).

    Raises:
        DataError: missing file, not UTF-8, no prompts, or JSONL rows without a prompt.
    """
    path = Path(path)
    text = _read_text(path)
    if path.suffix in (".jsonl", ".json"):
        prompts = []
        for n, row in iter_jsonl(text, str(path)):
            p = row.get("prompt", row.get("text")) if isinstance(row, dict) else row if isinstance(row, str) else None
            if not isinstance(p, str):
                raise DataError(f"{path}:{n}: expected a string or an object with a 'prompt' or 'text' key")
            prompts.append(p)
    else:
        prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise DataError(f"{path} holds no prompts")
    return prompts
