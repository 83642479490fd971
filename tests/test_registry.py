"""The one task registry: names -> TaskDatasets for a model, nearest names for typos, files by path."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from interp.datasets import TaskDataset
from interp.datasets.registry import TASKS, Task, build_task, check_task, task_names
from interp.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]


def test_unknown_names_get_the_nearest():
    with pytest.raises(ConfigError, match=r"--task: unknown task 'fatcs'\. Did you mean 'facts'"):
        check_task("fatcs", "--task")
    with pytest.raises(ConfigError, match=r"Did you mean 'colored_objects'"):
        build_task("colored_object", model=None, n=2)
    assert check_task("colored-objects") == "colored_objects"          # the CLI's old spelling
    assert task_names() == ["ioi", "facts", "colored_objects"]


def test_bad_n_is_refused_before_building():
    with pytest.raises(ConfigError, match="n must be an int >= 1"):
        build_task("ioi", model=None, n=0)


def test_jsonl_file_gives_its_first_n_rows(tmp_path):
    p = tmp_path / "mine.jsonl"
    p.write_text("".join(json.dumps({"clean": f"p{i}", "corrupted": f"q{i}"}) + "\n" for i in range(5)))
    ds = build_task(str(p), model=None, n=3)
    assert ds.clean == ("p0", "p1", "p2") and ds.corrupted == ("q0", "q1", "q2") and ds.name == "mine"
    assert len(build_task(str(p), model=None, n=50)) == 5


def test_registered_builders_get_one_signature(monkeypatch):
    seen = {}

    def builder(model, *, n, seed):
        seen.update(model=model, n=n, seed=seed)
        return TaskDataset("mine", tuple(f"p{i}" for i in range(n)))

    monkeypatch.setitem(TASKS, "mine", Task("mine", builder))
    ds = build_task("mine", model="M", n=3, seed=7)
    assert seen == {"model": "M", "n": 3, "seed": 7} and len(ds) == 3


def test_no_second_task_dispatch():
    """The CLI and the pipeline build tasks only through the registry (no private name -> builder copies).

    ``interp trace`` is the exception by design: ROME tracing reads unpaired facts from its own ``--facts`` file.
    """
    pattern = re.compile(r"\b(ioi_dataset|colored_objects_dataset|facts_dataset|known_facts)\(")
    files = [f for f in sorted((ROOT / "interp" / "cli").glob("*.py")) if f.name != "trace.py"]
    hits = [f"{f.name}:{n}" for f in [*files, ROOT / "interp" / "pipeline.py"]
            for n, line in enumerate(f.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []


@pytest.mark.bundled
@pytest.mark.parametrize("name", ["ioi", "facts", "colored_objects"])
def test_every_registered_task_builds_pairs_for_smollm2(smollm2, name):
    ds = build_task(name, model=smollm2, n=4, seed=0)
    assert 1 <= len(ds) <= 4 and ds.corrupted and ds.answers and ds.counterfactuals
    ds.check_pairs(smollm2)              # equal lengths, not identical, single-token answers


def test_facts_through_the_registry_on_a_model_that_knows_none(toy_llama):
    """The toy model knows no fact: a DataError saying so (not a TypeError about n)."""
    with pytest.raises(DataError, match="facts|single-token|empty"):
        build_task("facts", model=toy_llama, n=4)
