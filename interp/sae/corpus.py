"""An offline text corpus for SAE training and evaluation, with provenance and licences.

The corpus is generated at run time, deterministically, from text that is installed
on every machine that runs interp: the docstrings of the Python standard library
(PSF License 2.0) and of a few installed packages (their licence read from the
package metadata). Nothing large is committed; ``data/corpus/README.md`` describes the
sources and licences, and every :class:`Corpus` records the files it read and a content
hash, so two machines with the same installed versions build the same corpus.

Documents (one docstring each) are split into train and held-out parts **by document**
(a hash of the document's source file and qualified name), then tokenized, joined with
the tokenizer's EOS token and cut into rows of ``context_size`` tokens.

Example:
    >>> from interp.models import load_model
    >>> from interp.sae.corpus import CorpusConfig, build_corpus, tokenize_corpus
    >>> corpus = build_corpus(CorpusConfig(sources=("stdlib",), max_chars=20_000))
    >>> split = tokenize_corpus(load_model("toy:llama"), corpus, context_size=64)
    >>> split.train.shape[1], split.held_out.shape[1]
    (64, 64)
"""

from __future__ import annotations

import ast
import hashlib
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interp.errors import ConfigError, DataError

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["CorpusConfig", "Document", "Corpus", "TokenSplit", "build_corpus", "tokenize_corpus", "SOURCES"]

#: Sources known to :func:`build_corpus`: "stdlib" or the distribution name of an installed package.
SOURCES = ("stdlib", "numpy", "pandas", "scikit-learn", "networkx", "torch")
_SKIP_PARTS = {"test", "tests", "testing", "site-packages", "idlelib", "lib2to3", "__pycache__", "_vendor",
               "vendored", "externals", "_build_utils"}


@dataclass(frozen=True, kw_only=True)
class CorpusConfig:
    """Which installed text to read.

    Attributes:
        sources: ``"stdlib"`` and/or distribution names of installed packages (see :data:`SOURCES`;
            any installed distribution with Python sources works).
        min_chars: docstrings shorter than this are skipped (signatures, one-liners).
        max_chars: stop after this many characters in total (``None``: everything).
        held_out_percent: share of documents (by hash) kept for evaluation.
    """

    sources: tuple[str, ...] = ("stdlib", "numpy", "pandas")
    min_chars: int = 80
    max_chars: int | None = None
    held_out_percent: int = 5

    def __post_init__(self) -> None:
        if not self.sources:
            raise ConfigError("CorpusConfig.sources is empty; e.g. ('stdlib',)")
        if isinstance(self.sources, str):
            raise ConfigError(f"CorpusConfig.sources must be a tuple of names, got the string {self.sources!r}")
        if self.min_chars < 0 or (self.max_chars is not None and self.max_chars <= 0):
            raise ConfigError(f"min_chars must be >= 0 and max_chars > 0, got {self.min_chars}, {self.max_chars}")
        if not 0 < self.held_out_percent < 100:
            raise ConfigError(f"held_out_percent must be in 1..99, got {self.held_out_percent}")


@dataclass(frozen=True)
class Document:
    """One docstring with its provenance."""

    text: str
    source: str      # "stdlib" or a distribution name
    path: str        # file relative to the source root
    name: str        # qualified name inside the file ("" = module docstring)

    @property
    def held_out_key(self) -> int:
        """Stable number in 0..99 deciding the split (independent of order and of other documents)."""
        h = hashlib.sha256(f"{self.source}:{self.path}:{self.name}".encode()).digest()
        return int.from_bytes(h[:4], "little") % 100


@dataclass(frozen=True)
class Corpus:
    """Documents plus provenance: per source its root, version, licence and files."""

    documents: tuple[Document, ...]
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)
    config: CorpusConfig = field(default_factory=CorpusConfig)

    @property
    def n_chars(self) -> int:
        return sum(len(d.text) for d in self.documents)

    @property
    def content_hash(self) -> str:
        h = hashlib.sha256()
        for d in self.documents:
            h.update(d.text.encode())
            h.update(b"\0")
        return h.hexdigest()[:16]

    def split(self, held_out_percent: int | None = None) -> tuple[list[Document], list[Document]]:
        """(train, held-out) documents, decided per document by :attr:`Document.held_out_key`."""
        p = self.config.held_out_percent if held_out_percent is None else held_out_percent
        train = [d for d in self.documents if d.held_out_key >= p]
        held = [d for d in self.documents if d.held_out_key < p]
        return train, held


def _source_root(source: str) -> tuple[Path, str, str, list[Path]]:
    """(root folder, version, licence, python files) of a source."""
    if source == "stdlib":
        import platform

        root = Path(sysconfig.get_paths()["stdlib"])
        files = [p for p in root.rglob("*.py")]
        return root, platform.python_version(), "PSF-2.0 (Python Software Foundation License Version 2)", files
    from importlib import metadata

    try:
        dist = metadata.distribution(source)
    except metadata.PackageNotFoundError as e:
        from interp.errors import nearest

        known = [d.metadata["Name"] for d in metadata.distributions() if d.metadata["Name"]]
        raise DataError(f"corpus source {source!r} is neither 'stdlib' nor an installed package."
                        f"{nearest(source, known)} Try one of {SOURCES}.") from e
    meta = dist.metadata
    licence = meta.get("License-Expression") or (meta.get("License") or "").splitlines()[0:1]
    if isinstance(licence, list):
        licence = licence[0] if licence else ""
    classifiers = [c.split("::")[-1].strip() for c in (meta.get_all("Classifier") or []) if c.startswith("License")]
    licence = licence or "; ".join(classifiers) or "unknown (see the package metadata)"
    files = [Path(dist.locate_file(f)) for f in (dist.files or []) if str(f).endswith(".py")]
    top = {Path(str(f)).parts[0] for f in (dist.files or []) if str(f).endswith(".py")}
    root = Path(dist.locate_file("")).resolve()
    if not files:
        raise DataError(f"installed package {source!r} ships no Python sources to read docstrings from")
    return root, meta.get("Version", "?"), f"{licence} (package metadata; top-level {sorted(top)[:3]})", files


def _docstrings(path: Path, min_chars: int) -> Iterator[tuple[str, str]]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return
    stack: list[tuple[Any, str]] = [(tree, "")]
    while stack:
        node, prefix = stack.pop(0)
        doc = ast.get_docstring(node, clean=True)
        if doc and len(doc) >= min_chars:
            yield prefix, doc
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                stack.append((child, f"{prefix}.{child.name}" if prefix else child.name))


def build_corpus(cfg: CorpusConfig = CorpusConfig()) -> Corpus:
    """Read docstrings from the installed sources, in a fixed order (sorted paths).

    Raises:
        DataError: an unknown source, or no text found.
    """
    docs: list[Document] = []
    provenance: dict[str, dict[str, Any]] = {}
    total = 0
    for source in cfg.sources:
        root, version, licence, files = _source_root(source)
        rel = sorted({str(p.resolve().relative_to(root)) if p.resolve().is_relative_to(root) else str(p) for p in files})
        rel = [r for r in rel if not (set(Path(r).parts[:-1]) & _SKIP_PARTS) and not Path(r).name.startswith("test_")]
        used: list[str] = []
        for r in rel:
            n_before = len(docs)
            for name, text in _docstrings(root / r, cfg.min_chars):
                docs.append(Document(text, source, r, name))
                total += len(text)
                if cfg.max_chars is not None and total >= cfg.max_chars:
                    break
            if len(docs) > n_before:
                used.append(r)
            if cfg.max_chars is not None and total >= cfg.max_chars:
                break
        provenance[source] = {"root": str(root), "version": version, "licence": licence,
                              "n_files": len(used), "files": used}
        if cfg.max_chars is not None and total >= cfg.max_chars:
            break
    if not docs:
        raise DataError(f"no docstrings of >= {cfg.min_chars} characters found in sources {cfg.sources}")
    return Corpus(tuple(docs), provenance, cfg)


@dataclass(frozen=True)
class TokenSplit:
    """Token rows for training and evaluation.

    Attributes:
        train: ``[n_train, context_size]`` int64.
        held_out: ``[n_held_out, context_size]`` int64 (documents never seen in train).
        context_size: tokens per row (BOS included when the model prepends one).
        meta: provenance: corpus hash, sources, licences, token counts.
    """

    train: Any
    held_out: Any
    context_size: int
    meta: dict[str, Any]

    @property
    def n_train_tokens(self) -> int:
        return int(self.train.numel())


def _rows(model: Model, docs: list[Document], context_size: int, bos: int | None, sep: int | None) -> Any:
    import torch

    tok = model.tokenizer
    body = context_size - (1 if bos is not None else 0)
    ids: list[int] = []
    texts = [d.text for d in docs]
    for start in range(0, len(texts), 256):
        enc = tok(texts[start:start + 256], add_special_tokens=False)["input_ids"]
        for row in enc:
            ids.extend(row)
            if sep is not None:
                ids.append(sep)
    n = len(ids) // body
    if n == 0:
        return torch.zeros(0, context_size, dtype=torch.long)
    t = torch.tensor(ids[: n * body], dtype=torch.long).view(n, body)
    if bos is not None:
        t = torch.cat([torch.full((n, 1), bos, dtype=torch.long), t], dim=1)
    return t


def tokenize_corpus(model: Model, corpus: Corpus, *, context_size: int = 128, min_train_rows: int = 1,
                    min_held_out_rows: int = 1) -> TokenSplit:
    """Tokenize a corpus for ``model`` into fixed-length train and held-out rows.

    Each row starts with BOS when the model's default is to prepend one
    (``model.cfg.default_prepend_bos``); documents are separated by the EOS token.

    Raises:
        DataError: fewer rows than ``min_train_rows`` / ``min_held_out_rows`` (say, a corpus
            smaller than one training batch), with the counts.
    """
    if context_size < 2:
        raise ConfigError(f"context_size must be >= 2, got {context_size}")
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if n_ctx is not None and context_size > n_ctx:
        raise ConfigError(f"context_size {context_size} exceeds the model's context length {n_ctx}")
    tok = model.tokenizer
    bos = tok.bos_token_id if getattr(model.cfg, "default_prepend_bos", False) else None
    sep = tok.eos_token_id
    train_docs, held_docs = corpus.split()
    train = _rows(model, train_docs, context_size, bos, sep)
    held = _rows(model, held_docs, context_size, bos, sep)
    if train.shape[0] < min_train_rows or held.shape[0] < min_held_out_rows:
        raise DataError(f"corpus too small: {train.shape[0]} train rows and {held.shape[0]} held-out rows of "
                        f"{context_size} tokens from {corpus.n_chars} characters, need at least {min_train_rows} "
                        f"and {min_held_out_rows}. Add sources or raise max_chars (CorpusConfig).")
    meta = {"corpus_hash": corpus.content_hash, "n_documents": len(corpus.documents), "n_chars": corpus.n_chars,
            "sources": {k: {kk: v for kk, v in p.items() if kk != "files"} for k, p in corpus.provenance.items()},
            "context_size": context_size, "n_train_tokens": int(train.numel()), "n_held_out_tokens": int(held.numel()),
            "bos": bos, "separator": sep}
    return TokenSplit(train, held, context_size, meta)
