"""Factual recall prompts (subject, relation, one-token answer), written by this project.

``interp/data/tasks/facts.jsonl`` holds one fact a line::

    {"prompt": "The Eiffel Tower is located in the city of", "subject": "The Eiffel Tower",
     "answer": " Paris", "relation": "landmark_city"}

:func:`facts_dataset` builds a :class:`TaskDataset` for one model: answers must be a
single token for its tokenizer (others are dropped with a warning naming them, or
raise with ``on_multi_token="error"``) and ``meta`` holds the subject's token span
``subject_start``/``subject_end`` (end exclusive, BOS counted if the model prepends it).
:func:`known_facts` keeps the facts the model gets right.

Example:
    >>> import json, tempfile
    >>> from interp.models import load_model
    >>> model = load_model("toy:llama")            # byte tokenizer: the answer must be one byte
    >>> path = Path(tempfile.mkdtemp()) / "facts.jsonl"
    >>> _ = path.write_text(json.dumps({"prompt": "Paris is in", "subject": "Paris", "answer": "F"}))
    >>> ds = facts_dataset(model, path)
    >>> ds.clean, ds.answers
    (('Paris is in',), ('F',))
    >>> ds.meta[0]["subject_start"], ds.meta[0]["subject_end"]     # BOS is token 0, 'Paris' tokens 1-5
    (1, 6)
    >>> len(known_facts(model, ds, min_prob=0.0))   # the argmax default would keep none: the toy knows no facts
    1
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interp.datasets._align import char_span_to_tokens, encode, single_token_id, task_data_text
from interp.datasets.base import TaskDataset, _read_text, iter_jsonl
from interp.errors import ConfigError, DataError

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["load_facts", "facts_dataset", "known_facts"]

_KEYS = ("prompt", "subject", "answer")


def load_facts(path: str | Path | None = None) -> list[dict[str, Any]]:
    """Read facts from JSONL (keys ``prompt``, ``subject``, ``answer``, optional ``relation``).

    Args:
        path: a JSONL file; ``None`` = the bundled ``facts.jsonl``.

    Raises:
        DataError: missing keys, a subject that does not occur in its prompt, bad JSON,
            or no facts (the message names the line).
    """
    text = task_data_text("facts.jsonl") if path is None else _read_text(Path(path))
    where = "facts.jsonl (bundled)" if path is None else str(path)
    facts = []
    for n, row in iter_jsonl(text, where):
        if not isinstance(row, dict) or any(not isinstance(row.get(k), str) or not row.get(k) for k in _KEYS):
            raise DataError(f"{where}:{n}: expected an object with string keys {_KEYS}, got {str(row)[:80]!r}")
        if row["subject"] not in row["prompt"]:
            raise DataError(f"{where}:{n}: subject {row['subject']!r} does not occur in prompt {row['prompt']!r}")
        facts.append({"prompt": row["prompt"], "subject": row["subject"], "answer": row["answer"],
                      "relation": row.get("relation", "")})
    if not facts:
        raise DataError(f"{where} holds no facts")
    return facts


def facts_dataset(model: Model, path: str | Path | None = None, *, on_multi_token: str = "drop",
                  pairs: bool = False, seed: int = 0) -> TaskDataset:
    """Facts as a TaskDataset for ``model``, with subject token spans.

    Args:
        model: a model from :func:`interp.load_model`.
        path: facts JSONL; ``None`` = the bundled set.
        on_multi_token: ``"drop"`` facts whose answer is not one token (a warning names
            them) or ``"error"``.
        pairs: also build corrupted prompts for patching: each fact is paired with
            another fact of the same relation, a different answer and the same token
            length (its prompt = corrupted, its answer = counterfactual); facts with no
            such partner are dropped (warned). ``False``: no corrupted prompts, no
            counterfactuals (causal tracing corrupts with noise instead).
        seed: seed of the partner choice.

    Returns:
        TaskDataset ``"facts"``; meta keys ``subject``, ``relation``, ``subject_start``,
        ``subject_end`` (token positions, end exclusive) and with ``pairs`` ``partner``.

    Raises:
        DataError: an empty set after filtering, or (``on_multi_token="error"``) the
            facts whose answers are not single tokens.
    """
    if on_multi_token not in ("drop", "error"):
        raise ConfigError(f"on_multi_token must be 'drop' or 'error', got {on_multi_token!r}")
    facts = load_facts(path)
    keep, bad = [], []
    for f in facts:
        (keep if single_token_id(model, f["answer"]) is not None else bad).append(f)
    if bad:
        lines = ", ".join(f"{f['prompt']!r} -> {f['answer']!r}" for f in bad[:6])
        msg = f"{len(bad)} of {len(facts)} facts have answers that are not single tokens for this tokenizer: {lines}"
        if on_multi_token == "error":
            raise DataError(msg)
        warnings.warn(msg + " (dropped)", stacklevel=2)
    if not keep:
        raise DataError(f"facts: empty after filtering: no fact has a single-token answer ({len(facts)} read)")
    metas = []
    for f in keep:
        start = f["prompt"].index(f["subject"])
        a, b = char_span_to_tokens(model, f["prompt"], start, start + len(f["subject"]))
        metas.append({"subject": f["subject"], "relation": f["relation"], "subject_start": a, "subject_end": b})
    if not pairs:
        return TaskDataset("facts", tuple(f["prompt"] for f in keep), (), tuple(f["answer"] for f in keep), (),
                           tuple(metas))
    lengths = [len(encode(model, f["prompt"]).input_ids) for f in keep]
    rng = random.Random(seed)
    rows, unpaired = [], []
    for i, f in enumerate(keep):
        cands = [j for j, g in enumerate(keep) if j != i and g["relation"] == f["relation"]
                 and g["answer"] != f["answer"] and lengths[j] == lengths[i]]
        if not cands:
            unpaired.append(f["prompt"])
            continue
        j = rng.choice(cands)
        rows.append((f, keep[j], {**metas[i], "partner": keep[j]["subject"]}))
    if unpaired:
        warnings.warn(f"facts: {len(unpaired)} facts have no same-relation, same-length partner with another answer "
                      f"(dropped), e.g. {unpaired[:4]}", stacklevel=2)
    if not rows:
        raise DataError("facts: empty after filtering: no fact has a same-relation, same-length partner")
    return TaskDataset("facts", tuple(f["prompt"] for f, _, _ in rows), tuple(g["prompt"] for _, g, _ in rows),
                       tuple(f["answer"] for f, _, _ in rows), tuple(g["answer"] for _, g, _ in rows),
                       tuple(m for _, _, m in rows))


def known_facts(model: Model, ds: TaskDataset, *, min_prob: float | None = None, batch_size: int = 32,
                limit: int | None = None) -> TaskDataset:
    """The facts of ``ds`` the model gets right at the last position.

    Args:
        min_prob: ``None`` = keep facts whose answer is the argmax next token; a float
            = keep facts whose answer has at least this probability.
        batch_size: prompts per forward pass.
        limit: stop once this many known facts are found (the first ones in ``ds``
            order); ``None`` = check every fact.

    Returns:
        The kept facts; their meta gains ``p_answer`` and ``top_token``.

    Raises:
        DataError: no fact is known (empty after filtering); the message shows what
            the model predicted for a few prompts.
    """
    import torch

    from interp.models import tokenize

    if min_prob is not None and not 0.0 <= min_prob <= 1.0:
        raise ConfigError(f"min_prob must be in [0, 1], got {min_prob}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1 or None, got {limit}")
    answer_ids = ds._single_tokens(model, ds.answers, "answer")
    keep, misses, metas = [], [], {}
    with torch.inference_mode():
        for lo in range(0, len(ds), batch_size):
            if limit is not None and len(keep) >= limit:
                break
            idx = list(range(lo, min(lo + batch_size, len(ds))))
            tb = tokenize(model, [ds.clean[i] for i in idx])
            logits = model(tb.tokens)
            last = logits[torch.arange(len(idx), device=logits.device), tb.last].float()
            probs = last.softmax(-1)
            for r, i in enumerate(idx):
                p = float(probs[r, answer_ids[i]])
                top = int(last[r].argmax())
                ok = (top == answer_ids[i]) if min_prob is None else p >= min_prob
                if ok:
                    keep.append(i)
                    metas[i] = {**(ds.meta[i] if ds.meta else {}), "p_answer": p,
                                "top_token": model.tokenizer.decode([top])}
                else:
                    misses.append(f"{ds.clean[i]!r} -> {model.tokenizer.decode([top])!r} "
                                  f"(p{ds.answers[i]!r}={p:.3f})")
    if not keep:
        raise DataError(f"{ds.name}: empty after filtering: the model gets none of {len(ds)} facts right "
                        f"({'argmax' if min_prob is None else f'p >= {min_prob}'}), e.g. " + "; ".join(misses[:4]))
    keep = keep[:limit] if limit is not None else keep
    sub = ds.subset(keep)
    return TaskDataset(sub.name, sub.clean, sub.corrupted, sub.answers, sub.counterfactuals,
                       tuple(metas[i] for i in keep))
