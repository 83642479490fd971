"""Prompt sets and task datasets written by this project.

* :class:`TaskDataset` — clean / corrupted prompt pairs with answer and
  counterfactual continuations; :meth:`TaskDataset.tokenize` validates them for a
  model (single-token answers, equal clean/corrupted lengths where needed).
* task builders (IOI, facts, colored objects ...) live in their own modules.
"""

from interp.datasets.base import TaskBatch, TaskDataset, load_prompts
from interp.datasets.colored_objects import colored_objects_dataset
from interp.datasets.facts import facts_dataset, known_facts, load_facts
from interp.datasets.ioi import ioi_dataset, ioi_names

__all__ = ["TaskDataset", "TaskBatch", "load_prompts", "ioi_dataset", "ioi_names", "facts_dataset", "known_facts", "load_facts",
           "colored_objects_dataset"]
