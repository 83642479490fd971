"""features.js's pure functions (``FEATURES``: supernode grouping, the supernode file, the grid) under node,
on the payload of a toy attribution graph (tests/test_explorer_features.py)."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from importlib import resources

import pytest

from test_explorer_features import toy_attribution  # tests/ is on sys.path under pytest
from test_explorer_js import run_node

NODE = shutil.which("node") or shutil.which("nodejs")
pytestmark = pytest.mark.skipif(NODE is None, reason="node (nodejs) not installed")
JS = str(resources.files("interp.explorer").joinpath("features.js"))


def _run(script: str, data: object) -> object:
    return run_node(script, data, js=JS, name="FEATURES")


@pytest.fixture(scope="module")
def payload():
    from interp.explorer import page_data
    from interp.explorer.features import attribution_context

    _, _, attr = toy_attribution()
    graph = attr.to_graph()
    return page_data(graph, features=attribution_context(attr, graph))


def _groups(data):
    feats = [n["id"] for n in data["nodes"] if n["kind"] == "tc"]
    errs = [n["id"] for n in data["nodes"] if n["kind"] == "mlp"]
    # two groups: features of two layers, and a feature with error nodes (edges inside a group are dropped)
    return [{"name": "A <b>", "members": feats[:3]}, {"name": "B", "members": feats[-2:] + errs[:2]}]


def test_grouping_sums_the_member_edges(payload):
    sns = _groups(payload)
    got = _run("console.log(JSON.stringify(FEATURES.groupGraph(DATA.nodes, DATA.edges, DATA.sns)))",
               {"nodes": payload["nodes"], "edges": payload["edges"], "sns": sns})
    owner = {m: "SN:" + sn["name"] for sn in sns for m in sn["members"]}
    want: dict[tuple[str, str], float] = defaultdict(float)
    for e in payload["edges"]:
        s, t = owner.get(e["source"], e["source"]), owner.get(e["target"], e["target"])
        if s != t or s == e["source"]:
            want[(s, t)] += e["weight"]
    edges = {(e["source"], e["target"]): e["weight"] for e in got["edges"]}
    assert edges.keys() == want.keys()
    for k, w in want.items():
        assert edges[k] == pytest.approx(w, rel=1e-9, abs=1e-12), k
    assert len(got["nodes"]) == len(payload["nodes"]) - sum(len(sn["members"]) for sn in sns) + len(sns)
    byid = {n["id"]: n for n in payload["nodes"]}
    for sn in sns:
        node = next(n for n in got["nodes"] if n["id"] == "SN:" + sn["name"])
        assert node["kind"] == "supernode" and node["members"] == sn["members"]
        for axis in (0, 1):
            mean = sum(byid[m]["xy"][axis] for m in sn["members"]) / len(sn["members"])
            assert node["xy"][axis] == pytest.approx(mean)
    assert not any(m in {n["id"] for n in got["nodes"]} for m in owner)


def test_adding_a_supernode_checks_its_name_and_members(payload):
    ids = {n["id"]: True for n in payload["nodes"]}
    a, b, c = [n["id"] for n in payload["nodes"] if n["kind"] == "tc"][:3]
    got = _run("""
      const S = [{name: "x", members: [DATA.a, DATA.b]}];
      const r = (name, picked) => FEATURES.addSupernode(S, name, picked, DATA.ids);
      console.log(JSON.stringify([r("y", [DATA.c, DATA.a]), r(" ", [DATA.c, "L0.MLP@0"]), r("x", [DATA.c, "L0.MLP@0"]),
                                  r("y", [DATA.c]), r("y", [DATA.c, "nope"]), r(" z ", [DATA.c, "L0.MLP@0"])]));""",
               {"ids": ids, "a": a, "b": b, "c": c})
    assert [r["ok"] for r in got] == [False, False, False, False, False, True]
    assert "already in supernode x" in got[0]["error"] and "name" in got[1]["error"]
    assert "already used" in got[2]["error"] and "at least two" in got[3]["error"] and "at least two" in got[4]["error"]
    assert got[5]["supernodes"][-1] == {"name": "z", "members": [c, "L0.MLP@0"]}


def test_the_page_file_and_the_python_file_are_one_format(payload, tmp_path):
    """What the download button writes, load_supernodes reads; what save_supernodes writes, the page loads."""
    from interp.explorer.supernodes import load_supernodes, save_supernodes

    graph = toy_attribution()[2].to_graph()
    sns = _groups(payload)
    ids = {n["id"]: True for n in payload["nodes"]}
    page_file = _run("console.log(JSON.stringify(FEATURES.supernodeFile(DATA.meta, DATA.sns)))",
                     {"meta": payload["meta"], "sns": sns})
    (tmp_path / "page.json").write_text(json.dumps(page_file))
    assert load_supernodes(tmp_path / "page.json", graph) == sns
    py_file = json.loads(save_supernodes(tmp_path / "py.json", sns, graph).read_text())
    assert py_file == page_file
    bad_member = {**py_file, "supernodes": [{"name": "q", "members": ["L9.TC.1@0"]}]}
    twice = {**py_file, "supernodes": [sns[0], {"name": "r", "members": sns[0]["members"][:1]}]}
    other = {**py_file, "model": "smollm2"}
    got = _run("""
      const out = [];
      for (const f of DATA.files) {
        try { out.push({ok: FEATURES.parseSupernodeFile(f, DATA.ids, DATA.meta)}); }
        catch (e) { out.push({error: e.message}); }
      }
      console.log(JSON.stringify(out));""",
               {"files": [py_file, bad_member, twice, other, {"format": "x"}], "ids": ids, "meta": payload["meta"]})
    assert got[0] == {"ok": sns}
    assert "L9.TC.1@0 is not a node" in got[1]["error"] and "already in supernode A <b>" in got[2]["error"]
    assert "model smollm2" in got[3]["error"] and "not a supernode file" in got[4]["error"]


def test_grid_positions_follow_columns_and_layers(payload):
    grid, box = payload["grid"], {"left": 60, "top": 20, "cw": 50, "dy": 30}
    got = _run("console.log(JSON.stringify(DATA.nodes.map(n => FEATURES.gridXY(n.xy, DATA.grid, DATA.box))))",
               {"nodes": payload["nodes"], "grid": grid, "box": box})
    for n, (px, py) in zip(payload["nodes"], got):
        assert px == pytest.approx(60 + 50 * n["xy"][0])
        assert py == pytest.approx(20 + (grid["n_layers"] + 1 - n["xy"][1]) * 30 + 15)    # higher layer = higher up
