"""explorer.js's pure functions (``CORE``) under node, on payloads made by :func:`interp.explorer.page_data`."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from importlib import resources

import pandas as pd
import pytest

from interp.explorer import page_data
from test_explorer import CIRCUIT, CURVE  # the payload tests' toy graph (tests/ is on sys.path under pytest)
from test_explorer import _graph as graph

NODE = shutil.which("node") or shutil.which("nodejs")
pytestmark = pytest.mark.skipif(NODE is None, reason="node (nodejs) not installed")
JS = str(resources.files("interp.explorer").joinpath("explorer.js"))


def run_node(script: str, data: object, *, js: str = JS, name: str = "CORE") -> object:
    """Run ``script`` under node with ``name`` (the module ``js``, default explorer.js as ``CORE``) and ``DATA``
    bound; it prints one JSON value."""
    prog = f"const {name} = require({json.dumps(js)});\nconst DATA = {json.dumps(data)};\n{script}"
    out = subprocess.run([NODE, "-"], input=prog, capture_output=True, text=True, timeout=60)   # stdin: no argv limit
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


_run = run_node


def test_default_view_shows_exactly_the_circuit():
    data = page_data(graph(), circuit=CIRCUIT)
    got = _run("""
      const k = DATA.view.default;
      const edges = DATA.edges.filter(e => CORE.edgeShown(e, k)).map(e => [e.source, e.target]);
      const nodes = Object.keys(CORE.shownNodeIds(DATA, k, false)).sort();
      const wide = DATA.edges.filter(e => CORE.edgeShown(e, k + 2)).length;
      const all = Object.keys(CORE.shownNodeIds(DATA, DATA.view.max, true)).length;
      console.log(JSON.stringify({edges, nodes, wide, all, clampLo: CORE.clampK(DATA.view, 0),
                                  clampHi: CORE.clampK(DATA.view, 1e9)}));""", data)
    assert sorted(map(tuple, got["edges"])) == sorted({(s, t) for s, t, _ in CIRCUIT})
    assert got["nodes"] == data["circuit"]["nodes"]
    assert got["wide"] == data["view"]["default"] + 2 and got["all"] == len(data["nodes"])
    assert (got["clampLo"], got["clampHi"]) == (data["view"]["min"], data["view"]["max"])


def test_without_a_circuit_every_node_is_shown():
    data = page_data(graph())
    got = _run("console.log(JSON.stringify(Object.keys(CORE.shownNodeIds(DATA, DATA.view.default, true)).length))",
               data)
    assert got == len(data["nodes"])


def test_curve_geometry():
    box = {"w": 300, "h": 200, "l": 40, "r": 10, "t": 10, "b": 30}
    curve = page_data(graph(), circuit=CIRCUIT, curve=CURVE)["curve"]
    g = _run(f"console.log(JSON.stringify(CORE.curveGeometry(DATA, {json.dumps(box)})))", curve)
    x0, x1, ybot, ytop = 40, 290, 170, 10
    assert (g["x0"], g["x1"], g["y0px"], g["y1px"]) == (x0, x1, ybot, ytop)
    y_lo, y_hi = g["domain"]["y0"], g["domain"]["y1"]
    assert y_lo == 0 and y_hi == 1 and g["domain"]["maxN"] == 12      # every value of CURVE lies in [0, 1]

    def px(n, v):
        return round(x0 + (x1 - x0) * math.log1p(n) / math.log1p(12), 2), round(ybot + (ytop - ybot) * v, 2)

    series = {s["kind"]: s for s in g["series"]}
    # faithfulness: every row in order of size; the random mean skips its NaN row (a new pen stroke)
    pts = [px(n, f) for n, f in sorted(zip(CURVE["n_edges"], CURVE["faithfulness"]))]
    d = series["faithfulness"]["d"]
    assert d[0] == "M" and d.count("M") == 1 and d.count("L") == 3
    got = [float(v) for p in d[1:].split(" L") for v in p.split(",")]
    assert got == pytest.approx([v for p in pts for v in p], abs=0.01)
    assert series["faithfulness"]["points"] == 4 and series["random"]["points"] == 3
    assert series["random"]["d"].count("M") == 2
    assert series["complement"]["points"] == 4 and series["band"]["points"] == 3
    # the marker at the chosen circuit (6 model edges), on its faithfulness
    m = g["marker"]
    assert (m["n"], m["faithfulness"]) == (6, 0.9) and (m["px"], m["py"]) == pytest.approx(px(6, 0.9), abs=0.01)
    assert [t["label"] for t in g["xTicks"]] == ["0", "1", "10"]
    assert [t["v"] for t in g["yTicks"]] == [0, 0.25, 0.5, 0.75, 1]
    assert g["yOne"] == ytop and g["yZero"] == ybot


def test_curve_geometry_grows_its_axes_and_groups_methods():
    table = pd.DataFrame({"method": ["eap", "eap", "acdc", "acdc"], "selection": ["top_n"] * 4,
                          "n_edges": [0, 2000, 0, 2000], "faithfulness": [-0.5, 1.0, 0.0, 2.5]})
    curve = page_data(graph(), curve=table)["curve"]
    g = _run("console.log(JSON.stringify(CORE.curveGeometry(DATA, {w: 300, h: 200, l: 40, r: 10, t: 10, b: 30})))",
             curve)
    assert g["domain"]["y0"] == -0.5 and g["domain"]["y1"] == 2.5 and g["marker"] is None
    assert [t["label"] for t in g["xTicks"]] == ["0", "1", "10", "100", "1k"]
    assert sorted(s["name"] for s in g["series"]) == ["acdc / top_n", "eap / top_n"]


def test_colours_and_badges():
    got = _run("""console.log(JSON.stringify([CORE.divergingColor(2, 1), CORE.divergingColor(-1, 1),
      CORE.divergingColor(0, 1), CORE.divergingColor(0.5, 0), CORE.badge({n_methods: 1}),
      CORE.badge({n_methods: 3, n_top: 2, sign: "agree"}), CORE.badge({n_methods: 2, n_top: 0, sign: "disagree"})]))""",
               None)
    assert got[:4] == ["rgb(33,102,172)", "rgb(178,24,43)", "rgb(255,255,255)", "rgb(255,255,255)"]
    assert got[4] is None and got[5] == {"text": "2/3", "cls": "agree"} and got[6] == {"text": "0/2", "cls": "disagree"}
