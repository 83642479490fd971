"""Colored Objects (Merullo et al. 2024), one-shot, written by this project.

Each prompt shows one solved example and one question about a new scene::

    Q: On the table, I see an orange textbook, a red puzzle, and a purple cup. What color is the textbook?
    A: Orange
    Q: On the desk, I see a blue pencil, a green mug, and a black hat. What color is the pencil?
    A:                                                                           -> " Blue"

The corrupted prompt asks about another object of the same scene (``"... the mug?"``);
the counterfactual is that object's colour (``" Green"``), so the metric is the logit
difference of the two colours. Colours and objects are filtered per tokenizer to
single tokens with a leading space, so clean and corrupted have the same length.
Data: ``interp/data/tasks/colored_objects.json``.

Meta per prompt: ``surface``, ``objects``, ``colors`` (of the queried scene),
``asked``, ``corrupt_asked``, ``asked_pos`` (token of the asked object in the
question) and ``end_pos``, for this model's tokenization.

Example:
    >>> from interp.models import load_model
    >>> model = load_model("smollm2")  # SmolLM2: toy bytes: no 1-token colours  # doctest: +SKIP
    >>> ds = colored_objects_dataset(model, n=8, seed=0)  # needs the SmolLM2 model above  # doctest: +SKIP
    >>> ds.answers[0], ds.counterfactuals[0]  # needs the SmolLM2 model above  # doctest: +SKIP
    (' Blue', ' Green')
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from interp.datasets._align import bos_offset, char_span_to_tokens, encode, single_token_id, task_data_json
from interp.datasets.base import TaskDataset
from interp.errors import ConfigError, DataError

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["colored_objects_dataset"]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _filter(model: Model, words: list[str], forms: tuple[str, ...], what: str, need: int) -> list[str]:
    keep, seen = [], set()
    for w in words:
        ids = [single_token_id(model, f.format(w)) for f in forms]
        if all(i is not None for i in ids) and ids[0] not in seen:
            seen.add(ids[0])
            keep.append(w)
    if len(keep) < need:
        raise DataError(f"colored objects needs at least {need} {what} that are single tokens with a leading space "
                        f"for this tokenizer; {len(keep)} of {len(words)} left (empty after filtering): {keep}")
    return keep


def _scene(rng: random.Random, colors: list[str], objects: list[str], surfaces: list[str]) -> dict[str, Any]:
    return {"surface": rng.choice(surfaces), "colors": rng.sample(colors, 3), "objects": rng.sample(objects, 3)}


def _question(template: str, scene: dict[str, Any], asked: str) -> str:
    c, o = scene["colors"], scene["objects"]
    return template.format(surface=scene["surface"], q=asked,
                           **{f"a{k + 1}": _article(c[k]) for k in range(3)},
                           **{f"c{k + 1}": c[k] for k in range(3)}, **{f"o{k + 1}": o[k] for k in range(3)})


def colored_objects_dataset(model: Model, n: int = 64, seed: int = 0, *, shots: int = 1) -> TaskDataset:
    """One-shot Colored Objects prompts; corruption asks about another object of the scene.

    Args:
        model: a model from :func:`interp.load_model`.
        n: number of prompt pairs.
        seed: seed of a private ``random.Random``.
        shots: solved examples before the question (1 = the published one-shot format).

    Returns:
        TaskDataset ``"colored_objects"``: answers = colour of the asked object
        (capitalised, leading space), counterfactuals = colour of the corrupted prompt's object.

    Raises:
        ConfigError: ``n < 1``.
        DataError: too few single-token colours/objects, or clean/corrupted lengths
            that differ (names the prompts).
    """
    if n < 1 or shots < 0:
        raise ConfigError(f"colored_objects_dataset: need n >= 1 and shots >= 0, got n={n}, shots={shots}")
    data = task_data_json("colored_objects.json")
    colors = _filter(model, [c.lower() for c in data["colors"]], (" {}", " {}"), "colours", 3)
    colors = _filter(model, [c.capitalize() for c in colors], (" {}",), "capitalised colours", 3)
    colors = [c.lower() for c in colors]
    objects = _filter(model, data["objects"], (" {}",), "objects", 6)
    rng = random.Random(seed)
    template = data["template"]
    off = bos_offset(model)
    clean, corrupted, answers, counters, metas = [], [], [], [], []
    for _ in range(n):
        shot = ""
        for _ in range(shots):
            ex = _scene(rng, colors, objects, data["surfaces"])
            k_ex = rng.randrange(3)
            shot += _question(template, ex, ex["objects"][k_ex]) + " " + ex["colors"][k_ex].capitalize() + "\n"
        sc = _scene(rng, colors, objects, data["surfaces"])
        k, j = rng.sample(range(3), 2)
        c_text = shot + _question(template, sc, sc["objects"][k])
        x_text = shot + _question(template, sc, sc["objects"][j])
        q_start = c_text.rindex("What color is the ") + len("What color is the")
        a, b = char_span_to_tokens(model, c_text, q_start, q_start + 1 + len(sc["objects"][k]))
        if b - a != 1:
            raise DataError(f"colored objects: asked object {sc['objects'][k]!r} is {b - a} tokens in context "
                            f"(expected 1) in prompt {c_text!r}")
        end = len(encode(model, c_text).input_ids) - 1 + off
        clean.append(c_text)
        corrupted.append(x_text)
        answers.append(" " + sc["colors"][k].capitalize())
        counters.append(" " + sc["colors"][j].capitalize())
        metas.append({"surface": sc["surface"], "objects": sc["objects"], "colors": sc["colors"],
                      "asked": sc["objects"][k], "corrupt_asked": sc["objects"][j], "asked_pos": a, "end_pos": end})
    ds = TaskDataset("colored_objects", tuple(clean), tuple(corrupted), tuple(answers), tuple(counters), tuple(metas))
    ds.tokenize(model, same_length=True)  # validates lengths and single-token answers, naming prompts
    return ds
