"""Prompt sets and task datasets written by this project.

* :class:`TaskDataset` — clean / corrupted prompt pairs with answer and
  counterfactual continuations; :meth:`TaskDataset.tokenize` validates them for a
  model (single-token answers, equal clean/corrupted lengths where needed).
* task builders (IOI, facts, colored objects ...) live in their own modules.
"""

from interp.datasets.base import TaskBatch, TaskDataset, load_prompts

__all__ = ["TaskDataset", "TaskBatch", "load_prompts"]
