"""The explorer on attribution graphs (toy:llama + toy transcoders): payload, layout, panel data, supernodes,
hostile token strings, and the Neuronpedia JSON round trip back into the explorer."""

from __future__ import annotations

import functools
import json
from dataclasses import replace

import pytest
import torch

from interp.errors import DataError, StoreError

PROMPT = "the lazy dog"
XSS = ['<script>window.__xss = 1</script>', '<img src=x onerror="window.__xss = 2">',
       '</script><script>window.__xss = 3</script>', "<svg onload=window.__xss=4>", "a & b <b>bold</b>"]


@functools.lru_cache(maxsize=1)
def toy_attribution():
    """(model, transcoders, Attribution) of PROMPT: transcoders trained for a few steps (seconds), shared by the
    explorer test modules of one pytest process."""
    import tempfile

    from interp import load_model
    from interp.cache import collect
    from interp.transcoders import TranscoderTrainConfig, load_transcoders, train_transcoders
    from interp.transcoders.attribution import AttributionConfig, attribute

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = load_model("toy:llama")
        texts = [f"the quick brown fox {i} jumps over the lazy dog" for i in range(12)]
        store = collect(model, texts, "mlp_in,mlp_out", progress=False)
        root = tempfile.mkdtemp(prefix="tcx-")
        train_transcoders(model, store, TranscoderTrainConfig(d_sae=32, k=4, steps=30, batch_size=64, lr=3e-3),
                          folder=root)
        tcs = load_transcoders(model, root)
        # a 0.99 node threshold keeps features of the toy (its MLPs carry little of the influence)
        attr = attribute(model, PROMPT, tcs, AttributionConfig(node_threshold=0.99))
    finally:
        torch.set_num_threads(n)
    return model, tcs, attr


@pytest.fixture(scope="module")
def toy():
    return toy_attribution()


def _payload(attr, **kw):
    from interp.explorer import page_data
    from interp.explorer.features import attribution_context

    graph = attr.to_graph()
    return graph, page_data(graph, features=attribution_context(attr, graph), **kw)


def test_payload_of_an_attribution_graph(toy):
    _, _, attr = toy
    graph, data = _payload(attr)
    kinds = {n["kind"] for n in data["nodes"]}
    assert kinds == {"tc", "mlp", "embed", "logits"} and data["grid"]["tokens"] == attr.token_strs
    assert data["grid"]["n_layers"] == attr.n_layers and data["grid"]["n_pos"] == attr.n_pos
    ctx, ids = data["attribution"], attr.node_ids()
    assert set(ctx["nodes"]) == {n for n in graph.nodes if not n.startswith("LOGITS")}
    assert [lg["id"] for lg in ctx["logits"]] == ids[attr.logit_start:]
    # logit effects are the unpruned adjacency's logit rows; prompt activations are the active features
    for i, nid in enumerate(ids[:attr.logit_start]):
        if nid in ctx["nodes"]:
            want = attr.adjacency[attr.logit_start:, i].tolist()
            assert ctx["nodes"][nid]["logit_effects"] == pytest.approx(want, abs=0)
    feat = next(n for n in ctx["nodes"] if ".TC." in n)
    layer, f = int(feat[1:feat.index(".")]), int(feat.split(".")[2].split("@")[0])
    want = sorted((p, v) for (x, p, ff), v in zip(attr.features.tolist(), attr.activations.tolist()) if (x, ff) == (layer, f))
    assert sorted(map(tuple, ctx["nodes"][feat]["prompt_acts"])) == want
    assert ctx["examples"] == {} and ctx["effects_from"] == "adjacency"


def test_layout_follows_layer_and_position(toy):
    _, _, attr = toy
    _, data = _payload(attr)
    n_layers = attr.n_layers
    seen = set()
    for n in data["nodes"]:
        x, y = n["xy"]
        if n["kind"] != "logits":
            assert n["pos"] <= x < n["pos"] + 1, n["id"]
        want_row = {"embed": 0, "logits": n_layers + 1}.get(n["kind"], n["layer"] + 1)
        assert y == want_row, n["id"]
        assert (x, y) not in seen
        seen.add((x, y))
    # the logits (all at the last position) spread along the top row, most probable first
    logits = sorted((n for n in data["nodes"] if n["kind"] == "logits"), key=lambda n: n["xy"][0])
    assert len(logits) == len(attr.logit_tokens) and len({n["xy"][0] for n in logits}) == len(logits)
    assert [n["score"] for n in logits] == sorted(attr.logit_probs.tolist(), reverse=True)
    assert all(0 <= n["xy"][0] < attr.n_pos for n in logits)
    # inside a (layer, pos) cell features come first by index, the error node last
    cell = [n for n in data["nodes"] if n["xy"][1] == 1 and n["pos"] == attr.n_pos - 1]
    cell.sort(key=lambda n: n["xy"][0])
    assert cell[-1]["kind"] == "mlp" and len(cell) >= 2
    assert [n["feature"] for n in cell[:-1]] == sorted(n["feature"] for n in cell[:-1])


def test_a_graph_without_positions_has_no_grid():
    from interp.explorer import page_data
    from interp.graph import CircuitGraph

    g = CircuitGraph(name="heads")
    g.add_edge("L0.H1", "L1.H0", weight=0.5, method="eap")
    data = page_data(g)
    assert data["grid"] is None and data["attribution"] is None and data["supernodes"] == []
    with pytest.raises(DataError, match="no transcoder feature nodes"):
        page_data(g, features={"tokens": [], "nodes": {}, "logits": []})


def test_supernodes_save_load_round_trip(toy, tmp_path):
    from interp.explorer import page_data
    from interp.explorer.supernodes import load_supernodes, save_supernodes, sidecar_path

    _, _, attr = toy
    graph = attr.to_graph()
    feats = [n for n in graph.nodes if ".TC." in n]
    sns = [{"name": "first <b>", "members": feats[:2]}, {"name": "rest", "members": feats[2:4]}]
    path = save_supernodes(sidecar_path(tmp_path / "circuit_graph.json"), sns, graph)
    assert path.name == "circuit_graph.supernodes.json"
    assert load_supernodes(path, graph) == sns
    assert page_data(graph, supernodes=path)["supernodes"] == sns
    data = json.loads(path.read_text())
    assert data["format"] == "interp.supernodes/1" and data["model"] == graph.meta["model"]
    for bad, match in ([{"name": "x", "members": ["L9.TC.1@0"]}], "not in graph"),\
                      ([{"name": "a", "members": feats[:2]}, {"name": "b", "members": feats[1:3]}], "already in"),\
                      ([{"name": " ", "members": feats[:1]}], "empty name"),\
                      ([{"name": "a", "members": feats[:1]}, {"name": "a", "members": feats[1:2]}], "used twice"):
        with pytest.raises(DataError, match=match):
            save_supernodes(tmp_path / "bad.json", bad, graph)
    other = dict(data, model="smollm2")
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(DataError, match="model"):
        load_supernodes(tmp_path / "other.json", graph)
    with pytest.raises(StoreError, match="no supernode file"):
        load_supernodes(tmp_path / "missing.json")


def test_hostile_token_strings_are_escaped(toy):
    from interp.explorer import render_html
    from interp.explorer.features import attribution_context

    _, _, attr = toy
    hostile = replace(attr, token_strs=[XSS[i % len(XSS)] for i in range(attr.n_pos)],
                      logit_strs=[XSS[i % len(XSS)] for i in range(len(attr.logit_tokens))], prompt=XSS[2])
    graph = hostile.to_graph(name=XSS[0])
    page = render_html(graph, features=attribution_context(hostile, graph),
                       supernodes=[{"name": XSS[1], "members": [n for n in graph.nodes if ".TC." in n][:2]}])
    assert page.lower().count("</script") == 2           # only the page's own two script elements close
    for x in XSS:
        assert x not in page
    assert "\\u003cscript\\u003ewindow.__xss = 1\\u003c/script\\u003e" in page


def test_examples_are_the_transcoder_activations(toy):
    """feature_examples (the SAE dashboard's analysis on mlp_in) lists each graph feature's top activations:
    every value equals the transcoder's activation at that token of the corpus."""
    from interp import tokenize
    from interp.explorer.features import feature_examples
    from interp.hooks import run_capture
    from interp.sites import Site

    model, tcs, attr = toy
    graph = attr.to_graph()
    batch = tokenize(model, [f"a lazy dog {i} and the brown fox" for i in range(4)])
    ex, source = feature_examples(model, tcs, graph, batch.tokens, n_examples=3, context=4)
    assert "4 rows" in source and "analyze_features" in source
    feats = {n.split("@")[0] for n in graph.nodes if ".TC." in n}
    assert set(ex) <= feats and ex
    acts = {x: tcs[x].encode(run_capture(model, batch.tokens, [Site("mlp_in", x)])[Site("mlp_in", x)])
            for x in range(attr.n_layers)}
    for key, rows in ex.items():
        layer, f = int(key[1:key.index(".")]), int(key.rsplit(".", 1)[1])
        col = acts[layer][..., f]
        top = col[:, 1:].flatten().topk(len(rows)).values.tolist()       # start_pos 1: BOS excluded
        assert [r["value"] for r in rows] == pytest.approx(top, rel=1e-5)
        assert len(rows) <= 3 and all(len(r["left"]) <= 4 for r in rows)


def test_examples_from_saved_dashboards(toy, tmp_path):
    """The sae.examples Results an SAE dashboard run saves for a transcoder give the same panel rows; examples of
    another site (an SAE's features) or another model are refused."""
    from interp import tokenize
    from interp.explorer.features import dashboard_examples, examples_from_table
    from interp.results import Result
    from interp.sae.features import FeatureConfig, analyze_features
    from interp.sites import Site

    model, tcs, _ = toy
    tokens = tokenize(model, [f"a lazy dog {i} and the brown fox" for i in range(4)]).tokens
    fa = analyze_features(model, tcs[1], Site("mlp_in", 1), tokens, FeatureConfig(n_examples=3, context=4))
    fa.examples.save(tmp_path / "L1")
    fa.features.save(tmp_path / "L1")
    ex, source = dashboard_examples(model, [tmp_path / "L1"], n_examples=3)
    assert ex == examples_from_table(fa.examples, n_examples=3) and ex and "mlp_in.1" in source
    assert all(k.startswith("L1.TC.") for k in ex)
    t = fa.examples
    Result(t.kind, t.table, replace(t.meta, extra={**t.meta.extra, "site": "resid_post.1"}), "resid_post.1").save(tmp_path / "sae")
    with pytest.raises(DataError, match="not of a transcoder input"):
        dashboard_examples(model, [tmp_path / "sae"])
    Result(t.kind, t.table, replace(t.meta, model_revision="other"), t.name).save(tmp_path / "other")
    with pytest.raises(DataError, match="model revision 'other'"):
        dashboard_examples(model, [tmp_path / "other"])
    with pytest.raises(DataError, match="no sae.examples"):
        fa.features.save(tmp_path / "none")
        dashboard_examples(model, [tmp_path / "none"])


def test_neuronpedia_json_reopens_in_the_explorer(toy):
    """Attribution -> Neuronpedia JSON (file text) -> CircuitGraph + context: the same page nodes, layout and
    edges as the graph built directly, and supernodes travel in qParams.supernodes."""
    from interp.explorer import page_data
    from interp.explorer.features import context_from_neuronpedia
    from interp.explorer.supernodes import from_neuronpedia_supernodes, to_neuronpedia_supernodes
    from interp.transcoders.graph_json import from_neuronpedia, to_neuronpedia, validate_neuronpedia

    _, _, attr = toy
    _, direct = _payload(attr)
    obj = json.loads(json.dumps(to_neuronpedia(attr, slug="toy")))
    graph = from_neuronpedia(obj)
    back = page_data(graph, features=context_from_neuronpedia(obj, graph))
    assert {n["id"]: n["xy"] for n in back["nodes"]} == {n["id"]: n["xy"] for n in direct["nodes"]}
    assert {(e["source"], e["target"]): e["weight"] for e in back["edges"]} == pytest.approx(
        {(e["source"], e["target"]): e["weight"] for e in direct["edges"]}, rel=1e-6)
    ctx, want = back["attribution"], direct["attribution"]
    shown = str.maketrans({"\n": "⏎", "\t": "→", "\r": "↵"})        # circuit-tracer's process_token
    assert ctx["tokens"] == [t.translate(shown) for t in want["tokens"]] and ctx["n_layers"] == want["n_layers"]
    assert [(lg["id"], lg["token"]) for lg in ctx["logits"]] == [(lg["id"], lg["token"].translate(shown))
                                                                for lg in want["logits"]]
    # links kept in the file carry the same logit effects as the adjacency
    for e in direct["edges"]:
        if e["target"].startswith("LOGITS"):
            j = [lg["id"] for lg in ctx["logits"]].index(e["target"])
            assert ctx["nodes"][e["source"]]["logit_effects"][j] == pytest.approx(e["weight"], rel=1e-6)
    sns = [{"name": "pair", "members": [n for n in graph.nodes if ".TC." in n][:2] + ["EMBED@0"]}]
    with_sn = to_neuronpedia_supernodes(obj, sns)
    validate_neuronpedia(with_sn)
    assert with_sn["qParams"]["supernodes"][0][0] == "pair" and obj["qParams"]["supernodes"] == []
    assert from_neuronpedia_supernodes(json.loads(json.dumps(with_sn))) == sns
    with pytest.raises(DataError, match="not in the graph"):
        from_neuronpedia_supernodes({**obj, "qParams": {**obj["qParams"], "supernodes": [["x", "9_9_9"]]}})
