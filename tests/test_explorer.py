"""The explorer's payload (Python side): the chosen circuit, the widening order, method agreement, the curve,
escaping and refusals. The page itself runs in tests/test_explorer_browser.py and its pure JS in
tests/test_explorer_js.py."""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest

from interp.errors import DataError, InterpError
from interp.explorer import page_data, render_html
from interp.graph import CircuitGraph

XSS = ["</script><script>window.__xss = 3</script>", '<img src=x onerror="window.__xss = 2">']

# sender -> receiver, weight (method "eap"); several inputs of a pair are one graph edge
EDGES = [("EMBED", "L0.H1", 0.9), ("L0.H1", "L1.H0", 0.5), ("L1.H0", "LOGITS", 1.2), ("L0.H0", "L1.H0", -0.8),
         ("L0.MLP", "LOGITS", 0.05), ("L0.H0", "L1.MLP", -0.3), ("L1.MLP", "LOGITS", 0.7), ("EMBED", "L0.H0", 0.01)]
CIRCUIT = [("EMBED", "L0.H1", "q"), ("L0.H1", "L1.H0", "q"), ("L0.H1", "L1.H0", "k"), ("L0.H1", "L1.H0", "v"),
           ("L1.H0", "LOGITS", "logits"), ("L0.MLP", "LOGITS", "logits")]
CURVE = pd.DataFrame({"method": ["eap"] * 4, "selection": ["top_n"] * 4, "n_edges": [0, 6, 3, 12],
                      "n_nodes": [0, 3, 2, 5], "faithfulness": [0.0, 0.9, 0.4, 1.0],
                      "random_mean": [0.0, 0.1, math.nan, 1.0], "random_std": [0.0, 0.05, math.nan, 0.0],
                      "complement": [1.0, 0.1, 0.6, 0.0]})


def _graph(name: str = "demo") -> CircuitGraph:
    g = CircuitGraph(model="toy:llama", name=name)
    for src, dst, w in EDGES:
        g.add_edge(src, dst, weight=w, method="eap")
    return g


def test_payload_flags_circuit_edges_and_holds_curve_rows():
    d = page_data(_graph(), circuit=CIRCUIT, curve=CURVE)
    flagged = {(e["source"], e["target"]): e["inputs"] for e in d["edges"] if e["in_circuit"]}
    assert flagged == {("EMBED", "L0.H1"): ["q"], ("L0.H1", "L1.H0"): ["q", "k", "v"],
                       ("L1.H0", "LOGITS"): ["logits"], ("L0.MLP", "LOGITS"): ["logits"]}
    assert d["circuit"]["n_edges"] == 4 and d["circuit"]["n_model_edges"] == len(CIRCUIT) == 6
    assert d["circuit"]["nodes"] == ["EMBED", "L0.H1", "L0.MLP", "L1.H0", "LOGITS"]
    assert (d["circuit"]["n_heads"], d["circuit"]["n_mlps"]) == (2, 1)
    assert {n["id"] for n in d["nodes"] if n["in_circuit"]} == set(d["circuit"]["nodes"])
    # the curve: every row, sorted by size, NaN as null, and the marker at the circuit's model-edge count
    rows = d["curve"]["rows"]
    assert [r["n_edges"] for r in rows] == [0, 3, 6, 12]
    assert [r["faithfulness"] for r in rows] == [0.0, 0.4, 0.9, 1.0]
    assert rows[1]["random_mean"] is None and rows[2]["complement"] == 0.1
    assert d["curve"]["chosen"] == 6


def test_default_view_is_the_circuit_and_widening_adds_the_strongest_edges():
    d = page_data(_graph(), circuit=CIRCUIT)
    assert d["view"] == {"min": 4, "max": len(EDGES), "default": 4}
    by_rank = sorted(d["edges"], key=lambda e: e["rank"])
    assert [e["rank"] for e in by_rank] == list(range(len(EDGES)))
    # the first `default` ranks are exactly the circuit; then the others by |weight|, largest first
    assert all(e["in_circuit"] for e in by_rank[:4]) and not any(e["in_circuit"] for e in by_rank[4:])
    rest = [(s, t) for s, t, w in sorted(EDGES, key=lambda e: -abs(e[2])) if (s, t) not in
            {(a, b) for a, b, _ in CIRCUIT}]
    assert [(e["source"], e["target"]) for e in by_rank[4:]] == rest == [
        ("L0.H0", "L1.H0"), ("L1.MLP", "LOGITS"), ("L0.H0", "L1.MLP"), ("EMBED", "L0.H0")]


def test_without_circuit_the_page_is_the_full_graph():
    d = page_data(_graph())
    assert d["circuit"] is None and d["curve"] is None
    assert d["view"] == {"min": len(EDGES), "max": len(EDGES), "default": len(EDGES)}
    assert not any(e["in_circuit"] for e in d["edges"]) and not any(n["in_circuit"] for n in d["nodes"])
    empty = page_data(_graph(), circuit=[])                               # a valid circuit: nothing in it
    assert empty["view"] == {"min": 0, "max": len(EDGES), "default": 0} and empty["circuit"]["nodes"] == []


def test_pruning_keeps_the_circuit_edges_first():
    d = page_data(_graph(), circuit=CIRCUIT, max_edges=5)
    kept = {(e["source"], e["target"]) for e in d["edges"]}
    assert len(kept) == 5 and ("L0.MLP", "LOGITS") in kept          # weakest but in the circuit
    assert ("L0.H0", "L1.H0") in kept and ("L1.MLP", "LOGITS") not in kept
    assert "5 strongest of 8 edges" in d["notice"] and "circuit edges first" in d["notice"]
    d = page_data(_graph(), circuit=CIRCUIT, max_edges=2)               # never drops circuit edges
    assert sum(e["in_circuit"] for e in d["edges"]) == 4 == len(d["edges"])


def test_circuit_of_node_ids_keeps_edges_between_them():
    d = page_data(_graph(), circuit=["L0.H0", "L1.H0", "L1.MLP"])
    flagged = {(e["source"], e["target"]) for e in d["edges"] if e["in_circuit"]}
    assert flagged == {("L0.H0", "L1.H0"), ("L1.H0", "LOGITS"), ("L0.H0", "L1.MLP"), ("L1.MLP", "LOGITS"),
                       ("EMBED", "L0.H0")}
    assert d["circuit"]["given"] == "nodes" and d["view"]["default"] == 5


@pytest.mark.parametrize("bad, named", [
    ([("L0.H1", "L1.H0", "q"), ("L0.H2", "L1.H0", "q")], "L0.H2"),          # a sender the graph lacks
    ([("L0.H1", "LOGITS", "logits")], "no edge L0.H1 -> LOGITS"),           # both nodes exist, no edge
    ([("L0.H1", "L1.H0", "z")], "unknown dst_input 'z'"),
    (["L0.H1", "L7.H0"], "node 'L7.H0' not in the graph"),
    ([("L0.H1", "L1.H0")], "not a (src, dst, dst_input) triple"),
])
def test_unknown_circuit_items_are_refused_by_name(bad, named):
    with pytest.raises(DataError) as e:
        page_data(_graph(), circuit=bad)
    assert isinstance(e.value, InterpError) and named in str(e.value) and "circuit=" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match=re.escape(named)):
        _graph().to_html("/nonexistent-dir/never-written.html", circuit=bad)


def test_curve_without_its_columns_is_refused():
    with pytest.raises(DataError, match=r"lacks column\(s\) \['faithfulness'\]"):
        page_data(_graph(), curve=pd.DataFrame({"n_edges": [1]}))
    with pytest.raises(DataError, match="expected a circuits.curve Result"):
        page_data(_graph(), curve=[1, 2])


def test_method_agreement_oracle():
    g = _graph()
    # A: exact denoising +0.6 and AtP noising -0.5 both support the clean behaviour -> agree (0.6, 0.5)
    g.add_node("L0.H1", score=0.6, source="exact/denoising/logit_diff")
    g.add_node("L0.H1", score=-0.5, source="atp/noising/logit_diff")
    # B: the same direction with opposite signs -> disagree; gated facilitating, majority (2 of 3) negative
    g.add_node("L1.H0", score=0.2, source="exact/denoising/logit_diff", roles=["facilitating"])
    g.add_node("L1.H0", score=-0.9, source="atp/denoising/logit_diff")
    g.add_node("L1.H0", score=0.3, source="eap/denoising/kl")                # KL: lower is cleaner -> -0.3
    g.add_node("L1.H0", score=5.0, source="odd/denoising/my_metric")         # unknown metric: not a method
    g.node("L1.H0")["scores"]["chg.facilitation"] = 0.8                       # gating score: not a method
    # C: interfering and every method negative -> no conflict
    g.add_node("L0.H0", score=-0.1, source="exact/denoising/logit_diff", roles=["interfering"])
    d = page_data(g, top_k=1)
    ag = {n["id"]: n["agreement"] for n in d["nodes"]}
    a, b, c = ag["L0.H1"], ag["L1.H0"], ag["L0.H0"]
    assert a["sign"] == "agree" and [m["value"] for m in a["methods"]] == [0.6, 0.5] and not a["role_conflict"]
    # ranks are per source: exact/denoising 0.6 > 0.2 > 0.1; atp/noising scores only this node
    assert [m["rank"] for m in a["methods"]] == [1, 1] and a["n_top"] == 2 and a["n_methods"] == 2
    assert b["sign"] == "disagree" and [m["source"] for m in b["methods"]] == [
        "exact/denoising/logit_diff", "atp/denoising/logit_diff", "eap/denoising/kl"]
    assert [m["value"] for m in b["methods"]] == [0.2, -0.9, -0.3] and b["majority"] == -1
    assert [m["rank"] for m in b["methods"]] == [2, 1, 1]       # exact: 0.6 first; atp/denoising, kl: only node
    assert b["role_conflict"] and b["n_top"] == 2
    assert c["sign"] == "single" and c["majority"] == -1 and not c["role_conflict"]
    assert ag["L1.MLP"]["sign"] == "none" and ag["L1.MLP"]["n_methods"] == 0
    # the node's effect is its primary score, oriented (positive = supports the clean behaviour)
    eff = {n["id"]: n["effect"] for n in d["nodes"]}
    assert (eff["L0.H1"], eff["L1.H0"], eff["L0.H0"]) == (0.6, 0.2, -0.1)
    g.nx.nodes["L1.MLP"]["scores"]["chg.facilitation"] = 0.9                 # gating only: no effect to show
    g.add_node("L0.MLP", score=-2.0)                                          # an unnamed score: shown as is
    src = {n["id"]: (n["effect_source"], n["effect"]) for n in page_data(g)["nodes"]}
    assert src["L1.MLP"] == ("", 0.0) and src["L0.MLP"] == ("score", -2.0)
    # default top_k: the circuit's heads and MLPs
    assert page_data(g, circuit=CIRCUIT)["top_k"] == 3


def test_edge_effect_is_oriented_by_its_evidence():
    g = CircuitGraph()
    g.add_edge("L0.H0", "L1.H0", weight=0.4, method="path",
               evidence=[{"result_id": "r", "kind": "patching.edges",
                          "row": {"method": "path", "direction": "noising", "metric": "logit_diff"}}])
    g.add_edge("L0.H1", "L1.H0", weight=0.4, method="eap")
    e = {(x["source"], x["target"]): x["effect"] for x in page_data(g)["edges"]}
    assert e == {("L0.H0", "L1.H0"): -0.4, ("L0.H1", "L1.H0"): 0.4}


def test_page_has_no_unescaped_token_strings():
    g = CircuitGraph(model="toy:llama", name=XSS[0])
    g.add_edge("L0.H1", "L1.H0", weight=0.5, method=XSS[1],
               evidence=[{"result_id": XSS[0], "kind": "demo", "row": {"token": XSS[1], "value": 1.0}}])
    g.add_node("L1.H0", score=0.3, source=XSS[0], roles=[XSS[1]], flags=[XSS[0]])
    curve = CURVE.assign(method=XSS[0], selection=XSS[1])
    html = render_html(g, circuit=[("L0.H1", "L1.H0", "q")], curve=curve)
    assert html.count("</script>") == 2 and html.lower().count("<script") == 2
    assert "<img" not in html and "window.__xss" in html                      # present, but only escaped
    # the payload parses back to exactly page_data
    m = re.search(r'<script id="graph-data" type="application/json">(.*?)</script>', html, re.S)
    assert json.loads(m.group(1)) == json.loads(json.dumps(page_data(g, circuit=[("L0.H1", "L1.H0", "q")],
                                                                     curve=curve)))


def test_to_html_passes_circuit_and_curve_result(tmp_path):
    from interp.results import Result, RunMeta

    table = CURVE.assign(ld=CURVE["faithfulness"] * 2)
    curve = Result("circuits.curve", table, RunMeta(model="toy:llama", extra={"auc": 0.62}))
    page = _graph().to_html(tmp_path / "c.html", circuit=CIRCUIT, curve=curve).read_text()
    data = json.loads(re.search(r'type="application/json">(.*?)</script>', page, re.S).group(1))
    assert data["curve"]["auc"] == 0.62 and data["curve"]["chosen"] == 6 and data["view"]["default"] == 4
    assert _graph().show(circuit=CIRCUIT).data.count("circuit only") == 1


@pytest.mark.slow   # ~25 s on 2 shared cores: loads a toy model and runs EAP-IG and a curve
def test_circuit_from_a_real_edge_result_and_curve():
    """A toy model end to end: EAP-IG edges -> graph; top-10 circuit and its edge-level curve -> payload."""
    from interp import load_model
    from interp.circuits.curves import CurveConfig, faithfulness_curve
    from interp.circuits.edges import edge_scores, top_n
    from interp.datasets import TaskDataset
    from interp.patching.attribution import AttributionConfig
    from interp.patching.edges import edge_attribution_patching

    model = load_model("toy:llama,n_layers=2")
    ds = TaskDataset("demo", clean=("ab cd x", "ef gh y"), corrupted=("ab ce x", "ef gi y"),
                     answers=("y", "z"), counterfactuals=("z", "y"))
    eap = edge_attribution_patching(model, ds, AttributionConfig(ig_steps=3))
    circuit = top_n(edge_scores(model, eap), 10)
    curve = faithfulness_curve(model, ds, eap, CurveConfig(sizes=(0, 10), n_random=1, complement=False))
    g = CircuitGraph().add_result(eap)
    d = page_data(g, circuit=circuit, curve=curve)
    pairs = {(s, t) for s, t, _ in circuit}
    assert {(e["source"], e["target"]) for e in d["edges"] if e["in_circuit"]} == pairs
    assert d["view"]["default"] == len(pairs) and d["circuit"]["n_model_edges"] == 10
    assert d["curve"]["chosen"] == 10 and [r["n_edges"] for r in d["curve"]["rows"]] == [0, 10]
    # GQA: a k/v edge into the group's second query head is the group's edge; it maps onto the graph too
    kv = [e for e in circuit if e[2] in ("k", "v")]
    assert all(g.nx.has_edge(s, t) for s, t, _ in kv)
