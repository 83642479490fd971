"""Execute every tutorial notebook top to bottom on the bundled model (nbclient)."""

from __future__ import annotations

from pathlib import Path

import pytest

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(p.name for p in NB_DIR.glob("*.ipynb"))
#: notebooks that need more than the bundled model, each run by its own tests below
OWN_TESTS = {"attribution_graph.ipynb"}


def test_notebooks_are_generated_from_the_script():
    """The committed .ipynb files match notebooks/make_notebooks.py (regenerate after editing it)."""
    import importlib.util

    import nbformat

    spec = importlib.util.spec_from_file_location("make_notebooks", NB_DIR / "make_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert sorted(f"{n}.ipynb" for n in mod.NOTEBOOKS) == NOTEBOOKS
    for name in mod.NOTEBOOKS:
        on_disk = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
        assert [c.source for c in on_disk.cells] == [c.source for c in mod.build(name).cells], name


@pytest.mark.bundled
@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in NOTEBOOKS if n not in OWN_TESTS])
def test_notebook_runs(name):
    _execute(name)


def _execute(name, timeout=600):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NB_DIR / name, as_version=4)
    # run from the repository root, like a user who opened notebooks from a checkout (outputs go to temp dirs)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(NB_DIR.parent)}})
    client.execute()     # raises CellExecutionError naming the failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors == []
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code")
    return nb


def _explorer_pages(nb):
    """The inline explorer pages (iframe srcdoc HTML) among the notebook's outputs."""
    return [o["data"]["text/html"] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "text/html" in o.get("data", {}) and "graph-data" in o["data"]["text/html"]]


@pytest.mark.slow
def test_attribution_notebook_runs_on_a_toy(monkeypatch):
    """The attribution-graph notebook on toy:llama with transcoders trained in its first cells (seconds)."""
    monkeypatch.setenv("INTERP_ATTRIBUTION_NOTEBOOK", "toy")       # the kernel inherits the environment
    nb = _execute("attribution_graph.ipynb")
    pages = _explorer_pages(nb)
    assert len(pages) == 2 and all(p.startswith("<iframe srcdoc=") for p in pages)
    assert "most influential" in pages[1]                             # the supernode, embedded in the second page
    assert "toy:llama" in "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.bundled
@pytest.mark.slow
def test_attribution_notebook_runs_on_smollm2(monkeypatch):
    """On the bundled model with the transcoders of the user cache (skipped until they are trained)."""
    from interp import load_model
    from interp.transcoders import transcoder_home

    root = transcoder_home(load_model("smollm2"))
    missing = [x for x in range(30) if not (root / f"L{x}" / "cfg.json").is_file()]
    if missing:
        pytest.skip(f"no SmolLM2 transcoders for layer(s) {missing[:5]}... under {root} (interp transcoders train smollm2)")
    monkeypatch.setenv("INTERP_ATTRIBUTION_NOTEBOOK", "smollm2")
    # a 12-token SmolLM2 graph takes minutes on CPU (13.5 min measured in BENCHMARKS.md): one cell may take an hour
    assert len(_explorer_pages(_execute("attribution_graph.ipynb", timeout=3600))) == 2
