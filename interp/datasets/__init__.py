"""Prompt sets and task datasets written by this project.

* :class:`TaskDataset` — clean / corrupted prompt pairs with answer and
  counterfactual continuations; :meth:`TaskDataset.tokenize` validates them for a
  model (single-token answers, equal clean/corrupted lengths where needed).
* task builders (IOI, facts, colored objects ...) live in their own modules;
  :func:`build_task` (``interp.datasets.registry``) builds any of them by name, the one
  way the CLI, the pipeline and the notebooks do.
"""

from interp.datasets.base import TaskBatch, TaskDataset, load_prompts
from interp.datasets.colored_objects import colored_objects_dataset
from interp.datasets.facts import facts_dataset, known_facts, load_facts
from interp.datasets.ioi import ioi_dataset, ioi_names
from interp.datasets.registry import build_task, check_task, register_task, task_names

__all__ = ["TaskDataset", "TaskBatch", "load_prompts", "ioi_dataset", "ioi_names", "facts_dataset", "known_facts", "load_facts",
           "colored_objects_dataset", "build_task", "check_task", "register_task", "task_names"]
