"""VLM analyses' figures, circuit-graph nodes, CLI and notebook on the toy VLM (issue 17 item 4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from interp import load_model, tokenize
from interp.cli import invoke
from interp.vlm import fcct as F


def _red() -> np.ndarray:
    a = np.zeros((32, 32, 3), dtype=np.uint8)
    a[8:16, 8:16, 0] = 255
    return a


@pytest.fixture(scope="module")
def toy():
    model = load_model("toy:llava")
    return model, tokenize(model, ["<image> Is it <red>?"], images=_red())


def test_maps_over_the_image_grid(toy):
    from interp.vlm.plots import attention_map, grid_map, recovery_map

    model, batch = toy
    fig = grid_map(np.arange(16.0))
    assert np.array_equal(np.asarray(fig.data[0].z), np.arange(16.0).reshape(4, 4))   # raster order: row-major
    patches = F.fcct(model, batch, ["Y"], groups=F.patch_groups(batch),
                     config=F.FcctConfig(components=("resid",), layers=(0,)), name="patches")
    rmap = recovery_map(patches)
    want = patches.table.set_index("group").recovery[[f"patch:{k}" for k in range(16)]].to_numpy()
    assert np.allclose(np.asarray(rmap.data[0].z).ravel(), want)
    att = attention_map(model, batch, 1, 0)
    assert [type(d).__name__ for d in att.data] == ["Image", "Heatmap"]
    share = float(np.asarray(att.data[1].z).sum())
    assert 0 < share <= 1 + 1e-6                                          # part of one attention distribution
    assert patches.figure().data                                           # Result.figure() dispatches to vlm


def test_token_strings_are_escaped_in_titles(toy):
    from interp.vlm.plots import attention_map

    model, batch = toy
    texts = [model.tokenizer.decode([int(t)]) for t in batch.tokens[0, :int(batch.lengths[0])]]
    q = texts.index("<")                                                   # the '<' of "<red>"
    assert "'&lt;'" in attention_map(model, batch, 0, 0, query=q).layout.title.text


def test_visual_groups_are_graph_nodes(toy, tmp_path):
    from interp.graph import CircuitGraph, load_graph
    from interp.vlm.vhd import vhd

    model, batch = toy
    grid = F.fcct(model, batch, ["Y"], box=(8, 8, 16, 16))
    scores = vhd(model, batch)
    g = CircuitGraph().add_result(grid).add_result(scores)
    assert set(g.nodes_of("visual")) == {f"VIS.{x}" for x in ("image", "text", "last", "object", "early", "late")}
    best = grid.table[grid.table.group == "object"].recovery.max()
    assert g.node("VIS.object")["score"] == pytest.approx(best) and g.node("VIS.object")["layer"] == -1
    out = [(s, d) for s, d in g.edges if s == "VIS.object"]
    assert out and all(d.endswith((".MLP", ".RESID")) for _, d in out)
    flagged = {n for n in g.nodes if "vision-aware" in g.node(n)["flags"]}
    assert flagged == set(scores.table[scores.table.selected].node)
    g.to_json(tmp_path / "g.json")
    assert load_graph(tmp_path / "g.json").node("VIS.object")["kind"] == "visual"
    assert (tmp_path / "g.html").exists() is False and g.to_html(tmp_path / "g.html").stat().st_size > 0


@pytest.mark.slow
def test_cli_fcct_and_errors(tmp_path, capsys):
    from PIL import Image

    img = tmp_path / "red.png"
    Image.fromarray(_red()).save(img)
    out = tmp_path / "out"
    code = invoke(["vlm", "fcct", "toy:llava", "--prompt", "<image> Is it red?", "--image", str(img), "--answer", "Y",
                   "--box", "8,8,16,16", "--out", str(out)])
    text = capsys.readouterr()
    assert code == 0, text.err
    assert "object patches recover" in text.out
    assert {"vlm.fcct.parquet", "vlm.fcct-patches.parquet", "vlm.fcct-object.parquet", "vlm.iri.parquet",
            "vlm_fcct.svg"} <= {p.name for p in out.iterdir()}
    bad = [(["vlm", "fcct", "toy:llama", "--prompt", "<image> x", "--image", str(img), "--answer", "Y"], "text-only"),
           (["vlm", "fcct", "toy:llava", "--prompt", "<image> x", "--image", str(tmp_path / "no.png"), "--answer", "Y"],
            "--image 0: no image file"),
           (["vlm", "fcct", "toy:llava", "--prompt", "<image> x", "--image", str(img), "--answer", "Y", "--box", "1,2"],
            "--box"),
           (["vlm", "notice", "toy:llava", "--prompt", "<image> x", "--image", str(img), "--answer", "Y",
             "--counterfactual", "N"], "exactly one corruption"),
           (["vlm", "sinks", "toy:llava", "--prompt", "<image> x", "--prompt", "<image> y", "--image", str(img),
             "--answer", "Y", "--answer", "N", "--answer", "Y"], "--answer: 3 values for 2 prompts")]
    for args, words in bad:
        dest = tmp_path / f"bad{len(words)}"
        code = invoke([*args, "--out", str(dest)])
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("interp: error: ")]
        assert code == 2 and len(lines) == 1 and words in lines[0], err
        assert "Traceback" not in err and not dest.exists()                 # nothing half-written


@pytest.mark.slow
def test_vlm_notebook_runs_on_the_trained_vlm():
    import nbformat
    from nbclient import NotebookClient

    root = Path(__file__).resolve().parents[1]
    nb = nbformat.read(root / "notebooks" / "vlm_analyses.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(root)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors == [] and all(c.execution_count for c in nb.cells if c.cell_type == "code")
