"""Contrast sets: labelled sentences (optionally in minimal pairs) for steering axes and probes.

Data written by this project lives in ``interp/data/steering/<name>.tsv`` with lines
``label<TAB>pair<TAB>text`` (label 1 = the concept, e.g. positive sentiment; 0 = its
opposite; ``pair`` links the two halves of a minimal pair, or is empty). Bundled:
``sentiment`` (64 pairs), ``formality`` (30 pairs), ``language`` (French vs English, 30 pairs).

Example:
    >>> from interp.datasets.contrast import load_contrast
    >>> cs = load_contrast("sentiment")
    >>> len(cs.positive) >= 50 and len(cs.negative) >= 50
    True
    >>> pos, neg = cs.pairs()
    >>> len(pos) == len(neg)
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from interp.datasets.base import _read_text
from interp.errors import DataError, nearest

__all__ = ["ContrastSet", "load_contrast", "contrast_names", "steering_data_dir", "neutral_texts",
           "sentiment_prompts", "SENTIMENT_TARGETS"]

#: Single-token continuations (SmolLM2 tokenizer) used to score positive vs negative sentiment.
SENTIMENT_TARGETS: dict[str, tuple[str, ...]] = {
    "positive": (" great", " good", " wonderful", " amazing", " excellent", " fantastic", " perfect", " lovely"),
    "negative": (" bad", " terrible", " awful", " horrible", " boring", " disappointing", " poor", " worst"),
}


def steering_data_dir() -> Path:
    """Folder of the steering data bundled with interp."""
    return Path(__file__).resolve().parent.parent / "data" / "steering"


def contrast_names() -> list[str]:
    """Names of the bundled contrast sets."""
    return sorted(p.stem for p in steering_data_dir().glob("*.tsv"))


@dataclass(frozen=True)
class ContrastSet:
    """Labelled texts for one concept.

    Attributes:
        name: concept name (``"sentiment"``).
        texts: the sentences.
        labels: 1 (concept present) or 0 (absent), one per text.
        pair_ids: minimal-pair id per text (``-1`` when unpaired).

    Raises:
        DataError: empty set, lengths that differ, labels other than 0/1, or one class empty.
    """

    name: str
    texts: tuple[str, ...]
    labels: tuple[int, ...]
    pair_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.texts:
            raise DataError(f"contrast set {self.name!r} is empty")
        if len(self.labels) != len(self.texts):
            raise DataError(f"contrast set {self.name!r}: {len(self.labels)} labels for {len(self.texts)} texts")
        if self.pair_ids and len(self.pair_ids) != len(self.texts):
            raise DataError(f"contrast set {self.name!r}: {len(self.pair_ids)} pair ids for {len(self.texts)} texts")
        bad = sorted({lab for lab in self.labels if lab not in (0, 1)})
        if bad:
            raise DataError(f"contrast set {self.name!r}: labels must be 0 or 1, got {bad}")
        for cls in (0, 1):
            if cls not in self.labels:
                raise DataError(f"contrast set {self.name!r}: class {cls} is empty "
                                f"({self.labels.count(1 - cls)} texts all have label {1 - cls}); "
                                "a contrast needs examples of both classes")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def positive(self) -> list[str]:
        return [t for t, lab in zip(self.texts, self.labels) if lab == 1]

    @property
    def negative(self) -> list[str]:
        return [t for t, lab in zip(self.texts, self.labels) if lab == 0]

    def pairs(self) -> tuple[list[str], list[str]]:
        """Minimal pairs as ``(positive texts, negative texts)``, aligned by pair id."""
        pos: dict[int, str] = {}
        neg: dict[int, str] = {}
        for t, lab, p in zip(self.texts, self.labels, self.pair_ids or [-1] * len(self)):
            if p >= 0:
                (pos if lab == 1 else neg)[p] = t
        keys = sorted(set(pos) & set(neg))
        if not keys:
            raise DataError(f"contrast set {self.name!r} has no minimal pairs (pair ids)")
        return [pos[k] for k in keys], [neg[k] for k in keys]


def load_contrast(name_or_path: str | Path) -> ContrastSet:
    """Load a bundled contrast set by name, or a ``label<TAB>pair<TAB>text`` TSV file.

    Raises:
        DataError: unknown name (nearest names suggested), malformed lines (line number named).
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = steering_data_dir() / f"{name_or_path}.tsv"
        if not path.exists():
            raise DataError(f"no contrast set {str(name_or_path)!r}.{nearest(str(name_or_path), contrast_names())} "
                            f"Bundled: {', '.join(contrast_names())}")
    texts, labels, pairs = [], [], []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 3 or parts[0].strip() not in ("0", "1"):
            raise DataError(f"{path}:{n}: expected 'label<TAB>pair<TAB>text' with label 0 or 1, got {line[:60]!r}")
        labels.append(int(parts[0]))
        pairs.append(int(parts[1]) if parts[1].strip() else -1)
        texts.append(parts[2].strip())
    return ContrastSet(path.stem, tuple(texts), tuple(labels), tuple(pairs))


def neutral_texts() -> list[str]:
    """Neutral sentences for the perplexity control of steering."""
    return [s for s in (steering_data_dir() / "neutral.txt").read_text(encoding="utf-8").splitlines() if s.strip()]


def sentiment_prompts() -> list[str]:
    """Open-ended review prompts whose next token is an evaluative adjective."""
    return [s for s in (steering_data_dir() / "prompts_sentiment.txt").read_text(encoding="utf-8").splitlines()
            if s.strip()]
