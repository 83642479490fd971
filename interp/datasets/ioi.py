"""Indirect object identification (IOI, Wang et al. 2022) prompts, built per tokenizer.

Clean prompts follow ~15 project-written templates in both name orders::

    ABBA: "When Mary and John went to the store, John gave a drink to"  -> " Mary"
    BABA: "When John and Mary went to the store, John gave a drink to"  -> " Mary"

The corrupted prompt of each pair is the *ABC* distribution: the same template,
place and object with three other, distinct names (so clean and corrupted have the
same token length). Answer = the indirect object (``" IO"``), counterfactual = the
subject (``" S"``). Names are filtered per tokenizer to those that are a single token
with a leading space. Data: ``interp/data/tasks/ioi.json``.

Each prompt's ``meta`` holds ``template`` (id), ``order`` (``"ABBA"``/``"BABA"``),
``io``, ``s``, ``corrupt_names`` (the three ABC names), ``place``, ``object`` and the
token positions ``io_pos``, ``s1_pos``, ``s2_pos``, ``end_pos`` in THIS model's
tokenization (BOS counted if the model prepends it; the same positions hold in the
corrupted prompt).

Example:
    >>> from interp.models import load_model
    >>> model = load_model("smollm2")  # SmolLM2 only: the toy byte tokenizer has no single-token names  # doctest: +SKIP
    >>> ds = ioi_dataset(model, n=8, seed=0)  # needs the SmolLM2 tokenizer  # doctest: +SKIP
    >>> ds.clean[0], ds.answers[0], ds.meta[0]["io_pos"]  # needs SmolLM2  # doctest: +SKIP
    ('When Anna and Tom went to the park, Tom gave a ring to', ' Anna', 1)
"""

from __future__ import annotations

import random
import string
from typing import TYPE_CHECKING

from interp.datasets._align import char_span_to_tokens, encode, single_token_id, task_data_json
from interp.datasets.base import TaskDataset
from interp.errors import ConfigError, DataError

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["ioi_dataset", "ioi_names", "IOI_ORDERS"]

IOI_ORDERS = ("ABBA", "BABA", "both")
_FIELDS = {"N1", "N2", "S2", "place", "object"}


def ioi_names(model: Model, names: list[str] | None = None) -> list[str]:
    """Names (without the leading space) that are one token with a leading space, distinct ids.

    Raises:
        DataError: fewer than 5 names survive (IOI with the ABC corruption needs 5);
            the message lists rejected names with their token counts.
    """
    names = list(task_data_json("ioi.json")["names"] if names is None else names)
    keep, seen, rejected = [], set(), []
    for name in names:
        tid = single_token_id(model, " " + name)
        if tid is None:
            rejected.append(f"{name!r} ({len(encode(model, ' ' + name).input_ids)} tokens)")
        elif tid not in seen:
            seen.add(tid)
            keep.append(name)
    if len(keep) < 5:
        raise DataError(f"IOI needs at least 5 names that are single tokens with a leading space for this tokenizer; "
                        f"{len(keep)} of {len(names)} left after filtering (empty after filtering). Rejected e.g. "
                        + ", ".join(rejected[:8]))
    return keep


def _fill(template: str, values: dict[str, str]) -> tuple[str, dict[str, tuple[int, int]]]:
    """Format ``template`` and return the text and the character span of each field."""
    out, spans = [], {}
    pos = 0
    for literal, field, _spec, _conv in string.Formatter().parse(template):
        out.append(literal)
        pos += len(literal)
        if field is None:
            continue
        if field not in _FIELDS:
            raise DataError(f"IOI template field {{{field}}} unknown; expected one of {sorted(_FIELDS)}: {template!r}")
        text = values[field]
        spans.setdefault(field, (pos, pos + len(text)))
        out.append(text)
        pos += len(text)
    return "".join(out), spans


def ioi_dataset(model: Model, n: int = 64, seed: int = 0, order: str = "both", *,
                templates: list[str] | None = None, names: list[str] | None = None) -> TaskDataset:
    """IOI clean prompts with ABC corrupted prompts, positions for ``model``'s tokenizer.

    Args:
        model: a model from :func:`interp.load_model` (its tokenizer and BOS default are used).
        n: number of prompt pairs.
        seed: seed of a private ``random.Random`` (templates are cycled in a seeded order,
            names/places/objects drawn from it).
        order: ``"ABBA"``, ``"BABA"`` or ``"both"`` (alternating, ABBA first).
        templates: override the bundled templates (fields ``{N1} {N2} {S2} {place} {object}``;
            must end just before the answer).
        names: override the bundled name list (before per-tokenizer filtering).

    Returns:
        TaskDataset named ``"ioi"``.

    Raises:
        ConfigError: bad ``n`` or ``order``.
        DataError: too few single-token names; a name that is not a single token in
            context (names the prompt); clean/corrupted token lengths that differ.
    """
    if n < 1:
        raise ConfigError(f"ioi_dataset: n must be >= 1, got {n}")
    if order not in IOI_ORDERS:
        raise ConfigError(f"ioi_dataset: order must be one of {IOI_ORDERS}, got {order!r}")
    data = task_data_json("ioi.json")
    templates = list(data["templates"] if templates is None else templates)
    if not templates:
        raise DataError("ioi_dataset: no templates")
    pool = ioi_names(model, names)
    places, objects = data["places"], data["objects"]
    rng = random.Random(seed)
    tmpl_order = list(range(len(templates)))
    rng.shuffle(tmpl_order)
    orders = ["ABBA", "BABA"] if order == "both" else [order]

    clean, corrupted, answers, counters, metas = [], [], [], [], []
    for i in range(n):
        tid = tmpl_order[(i // len(orders)) % len(templates)]
        o = orders[i % len(orders)]
        io, s, *abc = rng.sample(pool, 5)
        place, obj = rng.choice(places), rng.choice(objects)
        n1, n2 = (io, s) if o == "ABBA" else (s, io)
        c_text, spans = _fill(templates[tid], {"N1": n1, "N2": n2, "S2": s,
                                               "place": place, "object": obj})
        x_text, _ = _fill(templates[tid], {"N1": abc[0], "N2": abc[1], "S2": abc[2], "place": place, "object": obj})
        for f in ("N1", "N2", "S2"):
            if f not in spans:
                raise DataError(f"IOI template {tid} lacks the field {{{f}}}: {templates[tid]!r}")
        pos = {f: _name_pos(model, c_text, spans[f], name)
               for f, name in (("N1", n1), ("N2", n2), ("S2", s))}
        end_pos = len(encode(model, c_text).input_ids) - 1 \
            + (1 if model.cfg.default_prepend_bos else 0)
        io_pos, s1_pos = (pos["N1"], pos["N2"]) if o == "ABBA" else (pos["N2"], pos["N1"])
        clean.append(c_text)
        corrupted.append(x_text)
        answers.append(" " + io)
        counters.append(" " + s)
        metas.append({"template": tid, "order": o, "io": io, "s": s, "corrupt_names": abc, "place": place,
                      "object": obj, "io_pos": io_pos, "s1_pos": s1_pos, "s2_pos": pos["S2"], "end_pos": end_pos})
    ds = TaskDataset("ioi", tuple(clean), tuple(corrupted), tuple(answers), tuple(counters), tuple(metas))
    ds.tokenize(model, same_length=True)  # validates lengths and single-token answers, naming prompts
    return ds


def _name_pos(model: Model, prompt: str, span: tuple[int, int], name: str) -> int:
    a, b = char_span_to_tokens(model, prompt, *span)
    ids = encode(model, prompt).input_ids
    off = 1 if model.cfg.default_prepend_bos else 0
    want = single_token_id(model, " " + name)
    if b - a != 1 or ids[a - off] != want:
        got = model.tokenizer.decode(ids[a - off:b - off])
        raise DataError(f"IOI name {name!r} is not the single token {' ' + name!r} in context "
                        f"(got {b - a} token(s) {got!r}) in prompt {prompt!r}")
    return a
