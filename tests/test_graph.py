"""CircuitGraph: schema, builders on hand-made Results, prune, compare, merge, exports, faithfulness."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from interp.errors import ConfigError, DataError
from interp.graph import (CircuitGraph, FaithfulnessConfig, compare, faithfulness, graphs_equal, load_graph, merge,
                          prune, random_baseline, random_circuit)
from interp.results import Result, RunMeta

META = RunMeta(model="toy:llama", model_revision="rev1", tokenizer="bytes")


def _evidence(rows, **fill):
    """Hand-made effect rows in the evidence vocabulary: ``value`` given, reference 0 (so effect = value)."""
    from interp.schemas import reference_of

    out = []
    for r in rows:
        r = {**fill, **r}
        r.setdefault("direction", "denoising")
        r.setdefault("metric", "logit_diff")
        out.append({**r, "reference": reference_of(r["direction"]), "reference_value": 0.0, "effect": r["value"]})
    return pd.DataFrame(out)


def _nodes_result(meta=META):
    rows = [dict(method="atp", direction="denoising", metric="logit_diff", component="head", layer=1, head=0, pos=-1,
                 node="L1.H0", value=0.7),
            dict(method="atp", direction="denoising", metric="logit_diff", component="head", layer=1, head=0, pos=2,
                 node="L1.H0", value=0.4),
            dict(method="exact", direction="noising", metric="logit_diff", component="head", layer=0, head=3, pos=1,
                 node="L0.H3", value=-0.2),
            dict(method="exact", direction="noising", metric="logit_diff", component="head", layer=0, head=3, pos=2,
                 node="L0.H3", value=-0.9),
            dict(method="atp", direction="denoising", metric="logit_diff", component="mlp", layer=0, head=-1, pos=-1,
                 node="L0.MLP", value=0.1)]
    for r in rows:
        r.update(site={"head": "z", "mlp": "mlp_out"}[r["component"]], pos_label=str(r["pos"]))
    return Result("patching.nodes", _evidence(rows), meta)


def _edges_result(meta=META):
    rows = [dict(method="eap", src="L0.H3", dst="L1.H0", dst_input=i, value=v) for i, v in (("q", .1), ("k", .2), ("v", .3))]
    rows += [dict(method="eap", src="L1.H0", dst="LOGITS", dst_input="logits", value=1.5),
             dict(method="eap", src="EMBED", dst="L0.H3", dst_input="v", value=0.05)]
    return Result("patching.edges", _evidence(rows), meta)


def _full_graph():
    g = CircuitGraph(name="t")
    g.add_result(_nodes_result()).add_result(_edges_result())
    g.add_result(Result("gating.chg", pd.DataFrame([dict(layer=1, head=0, node="L1.H0", g_plus=0.9, g_minus=0.8,
                                                          facilitation=0.8, interference=0.1, irrelevance=0.1,
                                                          role="facilitating")]), META))
    g.add_result(Result("sinks.heads", pd.DataFrame([dict(layer=0, head=3, node="L0.H3", alpha_first=0.8, is_sink=True,
                                                           top_pos=0, top_alpha=0.8, alpha_first_std=0.1, sink_mass=0.8),
                                                      dict(layer=1, head=0, node="L1.H0", alpha_first=0.1,
                                                           is_sink=False, top_pos=3, top_alpha=0.4, alpha_first_std=0.1,
                                                           sink_mass=0.1)]), META))
    g.add_result(Result("sinks.dormancy", pd.DataFrame([dict(layer=0, head=3, node="L0.H3", domain=d, sink_mass=m,
                                                              out_norm=1.0, dormancy=m, switches=True)
                                                         for d, m in (("prose", .9), ("code", .2))]), META))
    g.add_result(Result("massive.layers", pd.DataFrame([dict(prompt=0, layer=1, rank=0, value=900.0, abs_value=900.0, pos=0,
                                                              token="<s>", dim=5, median=0.5, ratio=1800.0,
                                                              is_massive=True),
                                                         dict(prompt=0, layer=0, rank=0, value=3.0, abs_value=3.0, pos=0,
                                                              token="<s>", dim=5, median=0.5, ratio=6.0,
                                                              is_massive=False)]), META))
    g.add_result(Result("sae.dfa", pd.DataFrame([dict(feature=12, layer=1, head=0, node="L1.H0", value=0.25,
                                                       src="L1.H0", dst="L1.SAE.12", share=1.0, n_active=3)]), META))
    g.add_result(Result("sae.features", pd.DataFrame([dict(feature=12, layer=1, density=0.01, max_act=4.0,
                                                            site="resid_post.1", mean_act=1.0,
                                                            top_tokens=["<b>", " Mary"])]), META))
    g.add_result(Result("steering.axes", pd.DataFrame([dict(name="sentiment", method="contrast", layer=1,
                                                             site="resid_post", node="L1.RESID", norm=2.0,
                                                             accuracy=0.9)]), META))
    return g


def test_schema_and_builders():
    g = _full_graph()
    assert g.meta["model"] == "toy:llama" and g.meta["tokenizer"] == "bytes"
    h = g.node("L1.H0")
    assert (h["kind"], h["layer"], h["head"], h["feature"]) == ("head", 1, 0, -1)
    # pos == -1 row wins over per-position rows; the first scoring source is the primary score
    assert h["score"] == 0.7 and h["scores"]["atp/denoising/logit_diff"] == 0.7
    # without a pos=-1 row: the position with the largest |value|
    assert g.node("L0.H3")["score"] == -0.9
    assert h["roles"] == ["facilitating"] and h["scores"]["chg.facilitation"] == 0.8
    assert "sink" in g.node("L0.H3")["flags"] and "dormant" in g.node("L0.H3")["flags"]
    assert "sink" not in h["flags"]
    # EAP weights are summed over q/k/v inputs; evidence keeps the three rows
    e = g.edge("L0.H3", "L1.H0")
    assert e["weight"] == pytest.approx(0.6) and e["method"] == "eap" and len(e["evidence"]) == 3
    assert {r["row"]["dst_input"] for r in e["evidence"]} == {"q", "k", "v"}
    assert g.node("L1.SAE.12")["kind"] == "sae" and g.edge("L1.H0", "L1.SAE.12")["weight"] == 0.25
    feat_ev = [x for x in g.node("L1.SAE.12")["evidence"] if x["kind"] == "sae.features"]
    assert feat_ev[0]["row"]["top_tokens"] == ["<b>", " Mary"]
    assert g.layers["1"]["flags"] == ["massive", "steering"] and "0" not in g.layers
    kinds = {x["kind"] for x in h["evidence"]}
    assert kinds == {"patching.nodes", "gating.chg", "sinks.heads"}   # DFA rows sit on the feature and its edge
    assert [r["kind"] for r in g.results][:2] == ["patching.nodes", "patching.edges"]


def test_missing_columns_named():
    bad = Result("gating.chg", pd.DataFrame({"layer": [0], "head": [1]}), META)
    with pytest.raises(DataError, match=r"\['node', 'role'\]"):
        CircuitGraph().add_result(bad)
    with pytest.raises(ConfigError, match="no graph builder"):
        CircuitGraph().add_result(Result("patching.nodez", pd.DataFrame(), META))


def test_refuses_other_model_or_tokenizer():
    g = CircuitGraph().add_result(_nodes_result())
    other = RunMeta(model="toy:gpt2", model_revision="rev1", tokenizer="bytes")
    with pytest.raises(DataError, match="different model.*model: graph has 'toy:llama', Result has 'toy:gpt2'"):
        g.add_result(_edges_result(other))
    with pytest.raises(DataError, match="tokenizer"):
        g.add_result(_edges_result(RunMeta(model="toy:llama", model_revision="rev1", tokenizer="other")))
    h = CircuitGraph(name="h").add_result(_edges_result(other))
    with pytest.raises(DataError, match="different models"):
        merge(g, h)


def test_prune_returns_new_graph():
    g = _full_graph()
    n0, e0 = len(g), g.nx.number_of_edges()
    p = prune(g, top_k_edges=2)
    assert set(p.edges) == {("L1.H0", "LOGITS"), ("L0.H3", "L1.H0")}
    assert set(p.nodes) == {"L1.H0", "LOGITS", "L0.H3"}
    assert len(g) == n0 and g.nx.number_of_edges() == e0             # input untouched
    p.node("L1.H0")["roles"].append("x")
    assert g.node("L1.H0")["roles"] == ["facilitating"]               # deep copy
    q = prune(g, node_threshold=0.5, kinds=["head"])
    assert set(q.nodes_of("head")) == {"L1.H0", "L0.H3"} and "L0.MLP" in q
    r = prune(g, top_k_nodes=1, kinds=["head", "mlp"])
    assert r.nodes_of("head") == ["L0.H3"] and r.nodes_of("mlp") == []


def test_compare_hand_computed():
    a, b = CircuitGraph(name="a"), CircuitGraph(name="b")
    for n in ["L0.H0", "L0.H1", "L1.H0", "L2.MLP"]:
        a.add_node(n)
    for n in ["L0.H1", "L1.H0", "L1.H3", "L3.H2", "L5.H5", "L2.MLP", "L3.MLP"]:
        b.add_node(n)
    a.add_edge("L0.H1", "L1.H0", weight=1, method="eap"); a.add_edge("L1.H0", "LOGITS", weight=1, method="eap")
    b.add_edge("L0.H1", "L1.H0", weight=1, method="eap"); b.add_edge("L1.H3", "L3.H2", weight=1, method="eap")
    b.add_edge("L1.H0", "LOGITS", weight=1, method="eap")
    t = compare(a, b).table.set_index(["what", "cls"])
    heads = t.loc[("nodes", "head")]       # A={00,01,10} B={01,10,13,32,55}: 2 shared, 6 in union
    assert (heads.intersection, heads.union) == (2, 6)
    assert heads.jaccard == pytest.approx(2 / 6) and heads.overlap == pytest.approx(2 / 3)
    mlps = t.loc[("nodes", "mlp")]
    assert mlps.jaccard == pytest.approx(1 / 2) and mlps.overlap == pytest.approx(1.0)
    alln = t.loc[("nodes", "all")]
    assert alln.jaccard == pytest.approx(3 / 8) and alln.overlap == pytest.approx(3 / 4)
    edges = t.loc[("edges", "all")]        # LOGITS edges ignored: {01->10} vs {01->10, 13->32}
    assert edges.jaccard == pytest.approx(1 / 2) and edges.overlap == pytest.approx(1.0)
    assert t.loc[("edges", "with_embed_logits")].jaccard == pytest.approx(2 / 3)
    empty = compare(CircuitGraph(), CircuitGraph()).table
    assert math.isnan(empty.jaccard.iloc[0])


def test_merge_unions_evidence():
    a = CircuitGraph(name="a").add_result(_nodes_result())
    b = CircuitGraph(name="b").add_result(_edges_result())
    b.add_node("L1.H0", score=5.0, source="other", roles=["facilitating"])
    m = merge(a, b)
    assert set(m.nodes) == set(a.nodes) | set(b.nodes) and set(m.edges) == set(b.edges)
    n = m.node("L1.H0")
    assert n["score"] == 0.7 and n["scores"]["other"] == 5.0 and n["roles"] == ["facilitating"]
    assert len(n["evidence"]) == len(a.node("L1.H0")["evidence"]) + len(b.node("L1.H0")["evidence"])
    assert "roles" in a.node("L1.H0") and a.node("L1.H0")["roles"] == []   # inputs untouched


@pytest.mark.parametrize("suffix", [".json", ".graphml"])
def test_round_trip_identical(tmp_path, suffix):
    g = _full_graph()
    path = getattr(g, "to_" + suffix.strip("."))(tmp_path / f"g{suffix}")
    h = load_graph(path)
    assert graphs_equal(g, h)
    assert dict(g.nx.nodes(data=True)) == dict(h.nx.nodes(data=True))
    assert h.node("L0.H3")["evidence"] == g.node("L0.H3")["evidence"]
    assert type(h.node("L0.H3")["layer"]) is int and type(h.node("L1.H0")["score"]) is float
    # independent check: plain networkx reads our GraphML (evidence stored as JSON strings)
    if suffix == ".graphml":
        import networkx as nx

        raw = nx.read_graphml(path)
        assert set(raw.nodes) == set(g.nodes) and set(raw.edges) == set(g.edges)


def test_gexf_keeps_nodes_and_edges(tmp_path):
    g = _full_graph()
    h = load_graph(g.to_gexf(tmp_path / "g.gexf"))
    assert dict(h.nx.nodes(data=True)) == dict(g.nx.nodes(data=True))
    assert set(h.edges) == set(g.edges)


# ----------------------------------------------------------------- faithfulness on the toy model
def _toy_dataset():
    from interp.datasets.base import TaskDataset

    return TaskDataset("toy", clean=("When Mary and John went, John gave it to", "Then Anna and Bob sat, Bob gave to"),
                       corrupted=("When Kate and Paul went, Luke gave it to", "Then Ruth and Carl sat, Dave gave to"),
                       answers=("M", "A"), counterfactuals=("J", "B"))


def _manual_ablated_ld(model, ds):
    """Independent oracle: every head (z) and MLP (mlp_out) set to its per-position mean over the corrupted prompts,
    each computed from single-prompt runs (no padding), applied with interp.hooks.ablated per head site."""
    from interp.hooks import ablated, run_capture
    from interp.models import tokenize
    from interp.sites import Site

    L, H = model.cfg.n_layers, model.cfg.n_heads
    sites = [Site("z", l) for l in range(L)] + [Site("mlp_out", l) for l in range(L)]
    per = [run_capture(model, tokenize(model, p).tokens, sites, stop_early=False) for p in ds.corrupted]
    lds = []
    for p, ans, cf in zip(ds.clean, ds.answers, ds.counterfactuals):
        toks = tokenize(model, p).tokens
        T = toks.shape[1]
        values = {}
        for s in sites:
            stack = [a[s][0] for a in per]                      # each [pos_i, ...]
            mean = torch.stack([torch.stack([x[t] for x in stack if x.shape[0] > t]).mean(0) for t in range(T)])
            if s.component == "z":
                for h in range(H):
                    values[Site("z", s.layer, head=h)] = mean[:, h]
            else:
                values[s] = mean
        with torch.inference_mode(), ablated(model, list(values), values=values):
            logits = model(toks)[0, -1]
        a, c = model.tokenizer([ans, cf], add_special_tokens=False).input_ids
        lds.append(float(logits[a[0]] - logits[c[0]]))
    return sum(lds) / len(lds)


def test_faithfulness_full_empty_and_oracle(toy_llama):
    ds = _toy_dataset()
    L, H = toy_llama.cfg.n_layers, toy_llama.cfg.n_heads
    full = [f"L{l}.H{h}" for l in range(L) for h in range(H)] + [f"L{l}.MLP" for l in range(L)]
    t = faithfulness(toy_llama, {"full": full, "empty": [], "some": full[:3]}, ds).table.set_index("circuit")
    assert t.loc["full", "faithfulness"] == pytest.approx(1.0, abs=1e-6)
    assert t.loc["empty", "ld_circuit"] == pytest.approx(t.loc["empty", "ld_ablated"], abs=1e-6)
    assert t.loc["empty", "normalized"] == pytest.approx(0.0, abs=1e-6)
    assert t.loc["full", "ld_full"] != pytest.approx(t.loc["full", "ld_ablated"], abs=1e-4)  # ablation does something
    # the all-ablated value equals an independent implementation
    assert t.loc["empty", "ld_ablated"] == pytest.approx(_manual_ablated_ld(toy_llama, ds), rel=1e-4, abs=1e-5)
    assert t.loc["some", "n_heads"] == 3


def test_faithfulness_self_reference_is_identity(toy_llama):
    """Ablating with each clean prompt's own activations changes nothing: paired ablation against the clean
    prompts, and template-wise means where every prompt is its own template; a shared template does change it."""
    import dataclasses

    ds = _toy_dataset()
    own = dataclasses.replace(ds, meta=({"template": 0}, {"template": 1}))
    same = dataclasses.replace(ds, meta=({"template": 0}, {"template": 0}))
    for data, cfg in ((ds, FaithfulnessConfig(reference="clean", ablation="paired")),
                      (own, FaithfulnessConfig(reference="clean"))):
        t = faithfulness(toy_llama, {"empty": []}, data, config=cfg).table
        assert t.ld_circuit.item() == pytest.approx(t.ld_full.item(), rel=1e-5, abs=1e-5)
    t = faithfulness(toy_llama, {"empty": []}, same, config=FaithfulnessConfig(reference="clean")).table
    assert t.ld_circuit.item() != pytest.approx(t.ld_full.item(), rel=1e-3, abs=1e-4)


def test_random_circuit_and_baseline(toy_llama):
    a = random_circuit(toy_llama, n_heads=3, n_mlps=1, seed=4)
    b = random_circuit(toy_llama, n_heads=3, n_mlps=1, seed=4)
    assert a.nodes == b.nodes and len(a.nodes_of("head")) == 3 and len(a.nodes_of("mlp")) == 1
    with pytest.raises(ConfigError):
        random_circuit(toy_llama, n_heads=99)
    r = random_baseline(toy_llama, ["L0.H1", "L1.H2"], _toy_dataset(), n_samples=2)
    assert list(r.table.circuit) == ["circuit", "random0", "random1"] and set(r.table.n_heads) == {2}


def test_figures_export(tmp_path):
    from interp.plots import export

    g = _full_graph()
    fig = g.figure()
    xs = {tr.name: list(tr.x) for tr in fig.data if tr.mode and "markers" in tr.mode}
    assert xs["facilitating"] == [0.0]                  # L1.H0 at head column 0, coloured by role
    for suffix in (".svg", ".pdf"):
        p = export(fig, tmp_path / f"g{suffix}")
        assert p.stat().st_size > 1000
    assert compare(g, prune(g, top_k_edges=1)).figure() is not None


def test_html_escapes_payload(tmp_path):
    from interp.explorer import escape_json

    g = CircuitGraph(name="</script><script>alert(1)</script>")
    g.add_node("L0.H0", roles=["<img src=x onerror=alert(1)>"])
    html = g.to_html(tmp_path / "p.html").read_text()
    assert "</script><script>alert" not in html and "<img src=x" not in html
    assert "\\u003c/script\\u003e" in html
    assert escape_json({"a": "<&>"}) == '{"a": "\\u003c\\u0026\\u003e"}'
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html
