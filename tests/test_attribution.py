"""Attribution graphs on toy:llama with toy transcoders: exact direct effects, influence, pruning, JSON."""

from __future__ import annotations

import json

import pytest
import torch

from interp.errors import ConfigError, DataError

PROMPT = "the lazy dog jumps"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tcs(toy_llama, tmp_path_factory):
    from interp.cache import collect
    from interp.transcoders import TranscoderTrainConfig, load_transcoders, train_transcoders

    texts = [f"the quick brown fox {i} jumps over the lazy dog number {i * 7}" for i in range(30)]
    store = collect(toy_llama, texts, "mlp_in,mlp_out", progress=False)
    root = tmp_path_factory.mktemp("tc")
    train_transcoders(toy_llama, store, TranscoderTrainConfig(d_sae=64, k=4, steps=100, batch_size=128, lr=3e-3),
                      folder=root)
    return load_transcoders(toy_llama, root)


@pytest.fixture(scope="module")
def graph(toy_llama, tcs):
    from interp.transcoders.attribution import attribute

    return attribute(toy_llama, PROMPT, tcs)


def _all_targets(model, tcs, graph, rec, vals, errs, emb):
    """Every target (feature pre-activations, then demeaned logits) of each row of the frozen model."""
    from interp.transcoders.attribution import _salient_logits, frozen_targets

    seen, h = frozen_targets(model, rec, tcs, feature_vals=vals, errors=errs, embed=emb)
    cols = []
    for x, p, f in graph.features.tolist():
        cols.append(seen[x][:, p] @ tcs[x].W_enc[:, f])
    _, _, vecs = _salient_logits(model, rec.logits[-1], graph.config)
    return torch.cat([torch.stack(cols, 1), h[:, -1] @ vecs.T], 1)          # [rows, n_f + n_logits]


def test_every_edge_equals_the_finite_difference_in_the_frozen_model(toy_llama, tcs, graph):
    """Zeroing source s (one feature, one error vector, one embedding) changes target t by exactly A[t, s]."""
    _check_finite_differences(toy_llama, tcs, graph)


@pytest.mark.slow
def test_finite_differences_on_a_layernorm_model(toy_gpt2, tmp_path):
    """The same on GPT-2 style (LayerNorm, absolute positions): frozen LayerNorm scales, linear centring."""
    from interp.cache import collect
    from interp.transcoders import TranscoderTrainConfig, load_transcoders, train_transcoders
    from interp.transcoders.attribution import attribute

    texts = [f"the quick brown fox {i} jumps over the lazy dog number {i * 7}" for i in range(20)]
    store = collect(toy_gpt2, texts, "mlp_in,mlp_out", progress=False)
    train_transcoders(toy_gpt2, store, TranscoderTrainConfig(d_sae=64, k=4, steps=50, batch_size=128, lr=3e-3),
                      folder=tmp_path)
    tcs2 = load_transcoders(toy_gpt2, tmp_path)
    _check_finite_differences(toy_gpt2, tcs2, attribute(toy_gpt2, "the lazy dog", tcs2))


def _check_finite_differences(toy_llama, tcs, graph):
    from interp.transcoders.attribution import record_prompt

    rec = record_prompt(toy_llama, torch.tensor(graph.tokens), tcs)
    n_layers, n_pos, n_f = graph.n_layers, graph.n_pos, graph.n_features
    n_src = graph.logit_start                                 # features, errors, tokens
    rows = n_src + 1                                          # row 0: nothing zeroed
    vals = {x: rec.feature_val[x][None].repeat(rows, 1) for x in range(n_layers)}
    errs = {x: rec.error[x][None].repeat(rows, 1, 1) for x in range(n_layers)}
    emb = rec.embed[None].repeat(rows, 1, 1)
    offsets = [0]
    for x in range(n_layers):
        offsets.append(offsets[-1] + len(rec.feature_val[x]))
    for s in range(n_src):
        r = s + 1
        if s < n_f:
            x = max(i for i in range(n_layers) if offsets[i] <= s)
            vals[x][r, s - offsets[x]] = 0
        elif s < graph.token_start:
            x, p = divmod(s - n_f, n_pos)
            errs[x][r, p] = 0
        else:
            emb[r, s - graph.token_start] = 0
    with torch.no_grad():
        t = _all_targets(toy_llama, tcs, graph, rec, vals, errs, emb)
    fd = (t[0][None] - t[1:]).T                               # [targets, sources]
    target_rows = list(range(n_f)) + list(range(graph.logit_start, graph.adjacency.shape[0]))
    got = graph.adjacency[target_rows][:, :n_src]
    assert got.abs().max() > 1e-2                             # a real graph, not all zeros
    assert torch.allclose(got, fd, atol=1e-4, rtol=1e-4), float((got - fd).abs().max())
    # errors and tokens are sources only; nothing feeds a feature from its own or a later layer
    assert not graph.adjacency[n_f:graph.logit_start].any()
    for i, (x, _, _) in enumerate(graph.features.tolist()):
        later = [j for j, (y, _, _) in enumerate(graph.features.tolist()) if y >= x]
        assert not graph.adjacency[i, later].any()


def test_frozen_model_reproduces_the_real_logits(toy_llama, tcs, graph):
    from interp.transcoders.attribution import frozen_targets, record_prompt

    rec = record_prompt(toy_llama, torch.tensor(graph.tokens), tcs)
    with torch.no_grad():
        _, h = frozen_targets(toy_llama, rec, tcs, feature_vals={x: v[None] for x, v in rec.feature_val.items()},
                              errors={x: e[None] for x, e in rec.error.items()}, embed=rec.embed[None])
        logits = h[0] @ toy_llama.W_U + toy_llama.b_U
    assert torch.allclose(logits, rec.logits, atol=1e-4)


def test_node_influence_is_the_series_and_is_conserved(graph):
    from interp.transcoders.attribution import normalize_matrix

    w = graph.logit_weights()
    infl = graph.node_influence()
    a = normalize_matrix(graph.adjacency).double()
    closed = w.double() @ (torch.linalg.inv(torch.eye(a.shape[0], dtype=a.dtype) - a) - torch.eye(a.shape[0]))
    assert torch.allclose(infl.double(), closed, atol=1e-6)
    # every feature and logit row sums to 1 after normalisation, errors/tokens are sinks: the logit
    # probability mass ends, in full, on error and token nodes
    sinks = infl[graph.error_start:graph.logit_start].sum()
    assert float(sinks) == pytest.approx(float(graph.logit_probs.sum()), rel=1e-5)


@pytest.mark.parametrize("node_t", [0.8, 0.99])
def test_pruning_keeps_the_stated_fraction(graph, node_t):
    from interp.transcoders.attribution import edge_influence, keep_fraction

    infl = graph.node_influence()
    for t in (0.5, 0.8, 0.95):
        keep = keep_fraction(infl, t)
        total = float(infl.sum())
        assert float(infl[keep].sum()) >= t * total - 1e-6
        smallest = float(infl[keep].min())                       # minimal: without the smallest, below t
        assert float(infl[keep].sum()) - smallest < t * total + 1e-6
    res = graph.prune(node_t, 0.98)
    n_f, n_tok, n_log = graph.n_features, graph.n_pos, len(graph.logit_tokens)
    by_influence = keep_fraction(infl, node_t)
    assert not (res.node_mask[:-n_tok - n_log] & ~by_influence[:-n_tok - n_log]).any()
    assert res.node_mask[-n_tok - n_log:].all()                  # tokens and logits always kept
    kept_nodes = by_influence.clone()
    kept_nodes[-n_tok - n_log:] = True
    pruned = graph.adjacency.clone()
    pruned[~kept_nodes] = 0
    pruned[:, ~kept_nodes] = 0
    escore = edge_influence(pruned, graph.logit_weights())
    assert not (res.edge_mask & ~keep_fraction(escore, 0.98)).any()
    e_keep = keep_fraction(escore, 0.98)
    assert float(escore[e_keep].sum()) >= 0.98 * float(escore.sum()) - 1e-6
    for i in res.node_mask[:n_f].nonzero().flatten().tolist():   # kept features: edges in and out
        assert res.edge_mask[i].any() and res.edge_mask[:, i].any()
    assert res.node_mask[:n_f].sum() < n_f                       # something was pruned
    if node_t == 0.99:                                           # this toy's MLPs matter little: 0.99 keeps some
        assert res.node_mask[:n_f].any()


def test_scores_are_one_without_error_influence(graph):
    from dataclasses import replace

    s = graph.scores()
    assert 0.0 <= s["replacement"] <= 1.0 and 0.0 <= s["completeness"] <= 1.0
    adj = graph.adjacency.clone()
    adj[:, graph.error_start:graph.token_start] = 0                # perfect transcoders: no error edges
    perfect = replace(graph, adjacency=adj).scores()
    assert perfect["replacement"] == pytest.approx(1.0) and perfect["completeness"] == pytest.approx(1.0)
    adj = graph.adjacency.clone()
    adj[:, graph.token_start:graph.logit_start] = 0                # nothing from tokens: replacement 0
    assert replace(graph, adjacency=adj).scores()["replacement"] == pytest.approx(0.0)


def test_neuronpedia_json_validates_and_loads_back(graph, tmp_path):
    from interp.nodes import parse_node_id
    from dataclasses import replace

    from interp.transcoders.attribution import AttributionConfig
    from interp.transcoders.graph_json import from_neuronpedia, to_neuronpedia, validate_neuronpedia

    # the toy's MLPs carry little of the influence: a 0.99 node threshold keeps some features
    graph = replace(graph, config=AttributionConfig(node_threshold=0.99))
    obj = json.loads(json.dumps(to_neuronpedia(graph, slug="toy")))
    validate_neuronpedia(obj)
    assert set(obj) == {"metadata", "qParams", "nodes", "links"}
    assert {n["feature_type"] for n in obj["nodes"]} >= {"embedding", "logit", "cross layer transcoder"}
    ours = graph.to_graph(pruned=True)
    back = from_neuronpedia(obj)
    assert sorted(back.nodes) == sorted(ours.nodes)
    assert sorted(back.edges) == sorted(ours.edges)
    for e in ours.edges:
        assert back.edge(*e)["weight"] == pytest.approx(ours.edge(*e)["weight"], rel=1e-6)
    feat = next(n for n in ours.nodes if parse_node_id(n)["kind"] == "tc")
    assert "@" in feat and ".TC." in feat
    bad = json.loads(json.dumps(obj))
    del bad["nodes"][0]["ctx_idx"]
    with pytest.raises(DataError, match="ctx_idx"):
        validate_neuronpedia(bad)
    bad = json.loads(json.dumps(obj))
    bad["links"][0]["target"] = "nope"
    with pytest.raises(DataError, match="nope"):
        from_neuronpedia(bad)


def test_refuses_long_prompts_and_missing_layers(toy_llama, tcs):
    from interp.transcoders.attribution import AttributionConfig, attribute

    with pytest.raises(ConfigError, match=r"limited to 8 tokens.*backward-pass target"):
        attribute(toy_llama, "a b c d e f g h i j k", tcs, AttributionConfig(max_tokens=8))
    with pytest.raises(ConfigError, match=r"layer\(s\) 1"):
        attribute(toy_llama, PROMPT, {0: tcs[0]})


def test_node_ids_round_trip():
    from interp.nodes import node_id, parse_node_id

    assert node_id("tc", layer=7, feature=1234, pos=3) == "L7.TC.1234@3"
    assert parse_node_id("L7.TC.1234@3") == {"kind": "tc", "layer": 7, "head": None, "feature": 1234, "pos": 3}
    assert parse_node_id("L2.MLP@0")["kind"] == "mlp" and parse_node_id("EMBED@4")["pos"] == 4
    assert parse_node_id("LOGITS.791@11") == {"kind": "logits", "layer": None, "head": None, "feature": 791, "pos": 11}
    assert parse_node_id("L3.MLP") == {"kind": "mlp", "layer": 3, "head": None, "feature": None}


def test_feature_interventions_match_the_graph_where_no_feature_switches(toy_llama, tcs, graph):
    """Ablating a feature in the frozen replacement model (downstream features recomputed) changes the
    logits exactly as the graph's paths predict, unless some feature crosses its threshold."""
    from interp.transcoders.attribution import record_prompt
    from interp.transcoders.interventions import (intervention_agreement, observed_logit_change,
                                                  predicted_logit_change)

    rec = record_prompt(toy_llama, torch.tensor(graph.tokens), tcs)
    exact = 0
    for i in range(0, graph.n_features, 7):
        pred = predicted_logit_change(graph, i, 0.0)
        obs, switched = observed_logit_change(toy_llama, graph, tcs, i, 0.0, rec=rec)
        if not switched:
            assert torch.allclose(pred, obs, atol=1e-5), (i, pred, obs)
            exact += int(pred.abs().max() > 1e-4)
    assert exact >= 2                                        # the check was not vacuous
    half = predicted_logit_change(graph, 3, 0.5)             # linear in the factor
    assert torch.allclose(half, 0.5 * predicted_logit_change(graph, 3, 0.0), atol=1e-7)
    rep = intervention_agreement(toy_llama, graph, tcs, top=4, mode="open")
    assert len(rep["rows"]) == 4 and rep["rows"][0]["influence"] >= rep["rows"][-1]["influence"]
    assert rep["rows"][0]["node"].startswith("L") and "@" in rep["rows"][0]["node"]
