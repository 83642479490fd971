"""In-context learning tasks (word -> word) for function vectors and decodability tests.

Bundled tasks (``interp/data/steering/icl/<name>.tsv``, lines ``input<TAB>output``):
``antonyms``, ``country_capital``, ``capitalization``, ``present_past``, each with >= 50
pairs. Function-vector methods need single-token answers: :meth:`IclTask.for_model`
keeps the pairs whose output (with its leading space) is one token for that tokenizer.

Prompts follow Todd et al. (2024): ``"Q: hot\\nA: cold\\n\\nQ: fast\\nA:"`` -> answer
``" slow"`` (``query`` and ``joiner`` are fields, so other templates are one argument away). ``shuffled=True`` permutes the
demonstration outputs so the input->output mapping is broken (the corrupted prompts of
the indirect-effect measurement); zero-shot prompts are the bare query, ``"Q: fast\\nA:"``.
:meth:`IclTask.split` separates the pairs that build prompts (fitting) from held-out
pairs for evaluation.

Example:
    >>> from interp.datasets.icl import load_icl
    >>> task = load_icl("antonyms")
    >>> len(task) >= 50
    True
    >>> p = task.prompts(n=2, n_demos=3, seed=0)
    >>> p.prompts[0].count("Q: ")     # 3 demonstrations + the query
    4
    >>> fit, held = task.split(45, seed=0)
    >>> len(fit), len(held) == len(task) - 45, set(fit.pairs) & set(held.pairs)
    (45, True, set())
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from interp.datasets._align import single_token_id
from interp.datasets.contrast import steering_data_dir
from interp.datasets.base import _read_text
from interp.errors import ConfigError, DataError, nearest

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["IclTask", "IclPrompts", "load_icl", "icl_names"]


def icl_names() -> list[str]:
    return sorted(p.stem for p in (steering_data_dir() / "icl").glob("*.tsv"))


@dataclass(frozen=True)
class IclPrompts:
    """ICL prompts with their query and answer (answers carry the leading space)."""

    prompts: tuple[str, ...]
    queries: tuple[str, ...]
    answers: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass(frozen=True)
class IclTask:
    """Input/output word pairs of one task (duplicate inputs removed, first kept)."""

    name: str
    pairs: tuple[tuple[str, str], ...]
    query: str = "Q: {x}\nA:"
    joiner: str = "\n\n"

    def __post_init__(self) -> None:
        if len(self.pairs) < 2:
            raise DataError(f"ICL task {self.name!r} needs at least 2 pairs, got {len(self.pairs)}")

    def __len__(self) -> int:
        return len(self.pairs)

    def for_model(self, model: Model) -> "IclTask":
        """Keep the pairs whose answer ``" " + output`` is a single token for ``model``'s tokenizer."""
        keep = tuple(p for p in self.pairs if single_token_id(model, " " + p[1]) is not None)
        if len(keep) < 2:
            raise DataError(f"ICL task {self.name!r}: only {len(keep)} single-token answers for this tokenizer")
        return IclTask(self.name, keep, self.query, self.joiner)

    def split(self, n_fit: int, *, seed: int = 0) -> tuple["IclTask", "IclTask"]:
        """``(fit, held_out)``: a seeded shuffle of the pairs, the first ``n_fit`` for fitting, the rest held out.

        Build ICL prompts (and so function vectors) from ``fit`` and measure accuracy on
        ``held_out`` queries, which no prompt of the fit contains.
        """
        if not 2 <= n_fit <= len(self.pairs) - 2:
            raise ConfigError(f"split: n_fit must leave >= 2 pairs on each side of {len(self.pairs)}, got {n_fit}")
        pairs = list(self.pairs)
        random.Random(seed).shuffle(pairs)
        return (IclTask(self.name, tuple(pairs[:n_fit]), self.query, self.joiner),
                IclTask(self.name, tuple(pairs[n_fit:]), self.query, self.joiner))

    def _line(self, x: str, y: str | None) -> str:
        return self.query.format(x=x) + (f" {y}" if y is not None else "")

    def prompts(self, n: int, n_demos: int = 5, *, seed: int = 0, shuffled: bool = False) -> IclPrompts:
        """``n`` few-shot prompts, each with ``n_demos`` demonstrations and a query not among them.

        Args:
            shuffled: permute the demonstrations' outputs among themselves (corrupted ICL prompts).
        """
        if n < 1 or n_demos < 0:
            raise ConfigError(f"need n >= 1 and n_demos >= 0, got n={n}, n_demos={n_demos}")
        if n_demos + 1 > len(self.pairs):
            raise ConfigError(f"task {self.name!r} has {len(self.pairs)} pairs; cannot use {n_demos} demos + 1 query")
        rng = random.Random(seed)
        prompts, queries, answers = [], [], []
        for _ in range(n):
            chosen = rng.sample(self.pairs, n_demos + 1)
            demos, (qx, qy) = chosen[:-1], chosen[-1]
            outs = [d[1] for d in demos]
            if shuffled and len(outs) > 1:
                perm = list(range(len(outs)))
                while any(i == j for i, j in enumerate(perm)):
                    rng.shuffle(perm)
                outs = [outs[j] for j in perm]
            lines = [self._line(d[0], o) for d, o in zip(demos, outs)] + [self._line(qx, None)]
            prompts.append(self.joiner.join(lines))
            queries.append(qx)
            answers.append(" " + qy)
        return IclPrompts(tuple(prompts), tuple(queries), tuple(answers))

    def zero_shot(self, n: int | None = None, *, seed: int = 0) -> IclPrompts:
        """Zero-shot prompts ``"Q: x\\nA:"`` (all pairs, or ``n`` sampled)."""
        pairs = list(self.pairs) if n is None else random.Random(seed).sample(self.pairs, min(n, len(self.pairs)))
        return IclPrompts(tuple(self._line(x, None) for x, _ in pairs), tuple(x for x, _ in pairs),
                          tuple(" " + y for _, y in pairs))


def load_icl(name_or_path: str | Path) -> IclTask:
    """Load a bundled ICL task by name, or an ``input<TAB>output`` TSV file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = steering_data_dir() / "icl" / f"{name_or_path}.tsv"
        if not path.exists():
            raise DataError(f"no ICL task {str(name_or_path)!r}.{nearest(str(name_or_path), icl_names())} "
                            f"Bundled: {', '.join(icl_names())}")
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise DataError(f"{path}:{n}: expected 'input<TAB>output', got {line[:60]!r}")
        x, y = parts[0].strip(), parts[1].strip()
        if x not in seen:
            seen.add(x)
            pairs.append((x, y))
    return IclTask(path.stem, tuple(pairs))
