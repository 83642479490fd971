"""Doctest fixtures: the docstring examples under ``interp/`` run with the test command.

``pytest`` (testpaths ``tests`` and ``interp``, ``--doctest-modules``) runs every ``>>>``
example in the package. Each example's namespace also holds:

* ``model``: the toy Llama (``load_model("toy:llama")``: 2 layers, 4 heads, d_model 64,
  byte-level tokenizer), for examples in function docstrings that need a model without
  loading one.

Examples print NumPy scalars as plain numbers (``0.7``, not ``np.float64(0.7)``): the
NumPy 1.25 print style is set for the duration of each example only.

This file is only read by pytest; importing the package never imports it.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _doctest_model(doctest_namespace):
    from interp.models import load_model

    doctest_namespace["model"] = load_model("toy:llama")


@pytest.fixture(autouse=True)
def _doctest_print_style():
    import numpy as np

    with np.printoptions(legacy="1.25"):
        yield
