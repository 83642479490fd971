"""The one task registry: a task name (or a TaskDataset JSONL file) -> a TaskDataset for a model.

Every place that takes a task by name uses it: the CLI (``--task``), the pipeline
(``tasks = [...]``) and the notebooks. Each builder has one signature,
``builder(model, n=..., seed=...) -> TaskDataset``; a name that is not registered gets
the nearest names, and a path to a ``.jsonl`` file is read with
:meth:`TaskDataset.from_jsonl` (its first ``n`` rows).

Example:
    >>> from interp.datasets.registry import build_task, task_names
    >>> task_names()
    ['ioi', 'facts', 'colored_objects']
    >>> ds = build_task("ioi", model=load_model("smollm2"), n=8, seed=0)  # SmolLM2: toy bytes: no 1-token names  # doctest: +SKIP
    >>> len(ds), ds.name  # needs the SmolLM2 line above  # doctest: +SKIP
    (8, 'ioi')

    A TaskDataset ``.jsonl`` file works with any model (here the toy Llama):

    >>> import tempfile
    >>> from interp.datasets import TaskDataset
    >>> path = tempfile.mkdtemp() + "/demo.jsonl"
    >>> TaskDataset("demo", clean=("ab cd x", "ef gh y"), answers=("y", "z")).to_jsonl(path)
    >>> ds = build_task(path, model=model, n=1)
    >>> len(ds), ds.name
    (1, 'demo')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from interp.datasets.base import TaskDataset
from interp.errors import ConfigError, nearest

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["Task", "TASKS", "register_task", "task_names", "check_task", "build_task"]


@dataclass(frozen=True)
class Task:
    """A registered task.

    Attributes:
        name: the registry key (``"ioi"``).
        build: ``build(model, n=..., seed=...) -> TaskDataset`` with at most ``n`` prompts.
        doc: one line for help texts.
    """

    name: str
    build: Callable[..., TaskDataset]
    doc: str = ""


def _ioi(model: Model, *, n: int, seed: int) -> TaskDataset:
    from interp.datasets.ioi import ioi_dataset

    return ioi_dataset(model, n=n, seed=seed)


def _colored_objects(model: Model, *, n: int, seed: int) -> TaskDataset:
    from interp.datasets.colored_objects import colored_objects_dataset

    return colored_objects_dataset(model, n=n, seed=seed)


def _facts(model: Model, *, n: int, seed: int) -> TaskDataset:
    """Bundled facts the model knows, each paired with a same-relation, same-length fact (first ``n``)."""
    import warnings

    from interp.datasets.facts import facts_dataset, known_facts

    with warnings.catch_warnings():  # dropped multi-token / unpaired facts: expected for any tokenizer
        warnings.simplefilter("ignore")
        return known_facts(model, facts_dataset(model, pairs=True, seed=seed), limit=n,
                           batch_size=min(32, max(8, n)))


#: name -> Task. Add one with :func:`register_task`.
TASKS: dict[str, Task] = {
    t.name: t for t in [
        Task("ioi", _ioi, "indirect object identification, ABC-corrupted (Wang et al. 2022)"),
        Task("facts", _facts, "known bundled facts, corrupted by a same-relation fact (ROME-style)"),
        Task("colored_objects", _colored_objects, "one-shot Colored Objects, corrupted by another object"),
    ]
}
_ALIASES = {"colored-objects": "colored_objects"}


def register_task(name: str, build: Callable[..., TaskDataset], doc: str = "") -> Task:
    """Register ``build(model, n=..., seed=...) -> TaskDataset`` under ``name`` (replacing any)."""
    if not name or "/" in name or name.endswith((".jsonl", ".json")):
        raise ConfigError(f"task name must be a plain name, got {name!r}")
    TASKS[name] = Task(name, build, doc)
    return TASKS[name]


def task_names() -> list[str]:
    """The registered task names."""
    return list(TASKS)


def _is_file(name: str) -> bool:
    return Path(name).suffix in (".jsonl", ".json") or Path(name).exists()


def check_task(name: str, where: str = "task") -> str:
    """Check a task name or file without a model; return the registry name (or the file path).

    A file is read and checked (:meth:`TaskDataset.from_jsonl`), so a malformed line fails
    here, before any model is loaded.

    Raises:
        ConfigError: an unknown name (nearest names suggested; ``where`` names the argument).
        DataError: a task file that is missing, a folder or malformed (``file:line``).
    """
    if not isinstance(name, str):
        raise ConfigError(f"{where}: expected a task name or a .jsonl file, got {type(name).__name__} {name!r}")
    name = _ALIASES.get(name, name)
    if name in TASKS:
        return name
    if _is_file(name):
        TaskDataset.from_jsonl(name)
        return name
    raise ConfigError(f"{where}: unknown task {name!r}.{nearest(name, [*TASKS, *_ALIASES])} "
                      f"Known: {', '.join(TASKS)}, or a TaskDataset .jsonl file")


def build_task(name: str, *, model: Model, n: int, seed: int = 0) -> TaskDataset:
    """The TaskDataset of task ``name`` for ``model``: at most ``n`` prompts.

    Args:
        name: a registered name (:func:`task_names`) or a TaskDataset ``.jsonl`` file.
        model: the model whose tokenizer the prompts are built and checked for.
        n: number of prompts (builders that generate prompts make exactly ``n``; fixed
            sets such as facts and files give their first ``n``).
        seed: seed of the builder's private random generator.

    Raises:
        ConfigError: unknown name (nearest names), ``n < 1``.
        DataError: the builder's own checks (single-token answers, lengths, empty sets).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"build_task({name!r}): n must be an int >= 1, got {n!r}")
    key = check_task(name)
    if key in TASKS:
        return TASKS[key].build(model, n=n, seed=seed)
    ds = TaskDataset.from_jsonl(key)
    return ds.subset(range(min(n, len(ds))))
