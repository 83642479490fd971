"""Execute every tutorial notebook top to bottom on the bundled model (nbclient)."""

from __future__ import annotations

from pathlib import Path

import pytest

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(p.name for p in NB_DIR.glob("*.ipynb"))


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
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NB_DIR / name, as_version=4)
    # run from the repository root, like a user who opened notebooks from a checkout (outputs go to temp dirs)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NB_DIR.parent)}})
    client.execute()     # raises CellExecutionError naming the failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors == []
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code")
