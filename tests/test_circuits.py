"""Edge-level circuit evaluation, circuit selection and faithfulness curves (interp.circuits)."""

from __future__ import annotations

import random

import pandas as pd
import pytest
import torch

from interp import load_model
from interp.circuits import (CurveConfig, EdgeEvalConfig, Evaluator, above_threshold, canonical, edge_scores,
                             evaluate_circuits, faithfulness_curve, greedy, model_edges, smallest_circuit, top_n)
from interp.circuits.curves import curve_auc, curve_figure
from interp.datasets import TaskDataset
from interp.errors import ConfigError, DataError
from interp.hooks import capturing, hooked
from interp.patching.attribution import split_qkv
from interp.sites import Site


@pytest.fixture(scope="module")
def llama3():
    return load_model("toy:llama,n_layers=3")


def _ds():
    return TaskDataset("toy", ("cat on", "dog at", "Ali in"), ("cow on", "dog to", "Eda in"),
                       ("x", "y", "z"), ("q", "w", "e"))


# ---------------------------------------------------------------- the naive oracle: one edge at a time, plain hooks

def _tokens(model, texts):
    enc = [model.tokenizer(t)["input_ids"] for t in texts]
    assert len({len(e) for e in enc}) == 1, "oracle prompts must share one length"
    return torch.tensor(enc)


def _ld(model, tokens, answers, counters, hooks=()):
    with torch.inference_mode(), hooked(model, list(hooks)):
        logits = model(tokens)[:, -1].float()
    rows = torch.arange(len(tokens))
    return float((logits[rows, answers] - logits[rows, counters]).mean())


def _naive(model, ds, circuit):
    """Mean LD of the clean run with every edge outside ``circuit`` patched, one edge at a time.

    Written without interp.engine / interp.circuits: a corrupted run captured with ``capturing``,
    then one clean forward whose hooks keep each sender's output (``z[:, :, h] @ W_O[h]``, ``mlp_out``,
    ``embed``) and subtract, for each receiver input and each edge into it that is not in the circuit,
    ``out_u - out_u,corrupted``.
    """
    L, H = model.cfg.n_layers, model.cfg.n_heads
    rep = H // (getattr(model.cfg, "n_key_value_heads", None) or H)
    clean, corr = _tokens(model, ds.clean), _tokens(model, ds.corrupted)
    ans = torch.tensor([model.tokenizer(a, add_special_tokens=False)["input_ids"][0] for a in ds.answers])
    cf = torch.tensor([model.tokenizer(a, add_special_tokens=False)["input_ids"][0] for a in ds.counterfactuals])
    sites = [Site("embed")] + [Site(c, l) for l in range(L) for c in ("z", "mlp_out")]
    with torch.inference_mode(), capturing(model, sites) as acts:
        model(corr)
    w_o = [model.blocks[l].attn.W_O.detach() for l in range(L)]

    def outs(get):
        o = {"EMBED": get(Site("embed"))}
        for l in range(L):
            for h in range(H):
                o[f"L{l}.H{h}"] = get(Site("z", l))[:, :, h] @ w_o[l][h]
            o[f"L{l}.MLP"] = get(Site("mlp_out", l))
        return o

    out_c = outs(lambda s: acts[s])
    world: dict[str, torch.Tensor] = {}
    keep = set(circuit)

    def record_z(a, site):
        for h in range(H):
            world[f"L{site.layer}.H{h}"] = a[:, :, h] @ w_o[site.layer][h]

    def senders_of(layer, inp):
        names = ["EMBED"] + [f"L{l}.H{h}" for l in range(layer) for h in range(H)] + \
            [f"L{l}.MLP" for l in range(layer)]
        return names + ([f"L{layer}.H{h}" for h in range(H)] if inp == "mlp" else [])

    def receive(inp):
        def fn(a, site):
            a = a.clone()
            layer = site.layer if site.layer is not None else L
            cols = range(a.shape[2]) if inp in ("q", "k", "v") else [None]
            for c in cols:
                dst = {"q": f"L{layer}.H{c}", "mlp": f"L{layer}.MLP", "logits": "LOGITS"}.get(inp) or \
                    f"L{layer}.H{c * rep}"
                for u in senders_of(layer, inp):
                    if (u, dst, inp) not in keep:
                        delta = world[u] - out_c[u]
                        if c is None:
                            a -= delta
                        else:
                            a[:, :, c] -= delta
            return a
        return fn

    hooks = [(Site("embed"), lambda a, s: world.__setitem__("EMBED", a.clone()))]
    for l in range(L):
        hooks += [(Site("q_input", l), receive("q")), (Site("k_input", l), receive("k")),
                  (Site("v_input", l), receive("v")), (Site("z", l), record_z),
                  (Site("mlp_in", l), receive("mlp")),
                  (Site("mlp_out", l), lambda a, s: world.__setitem__(f"L{s.layer}.MLP", a.clone()))]
    hooks.append((Site("final_resid"), receive("logits")))
    with split_qkv(model):
        ld = _ld(model, clean, ans, cf, hooks)
    return ld, _ld(model, clean, ans, cf), _ld(model, corr, ans, cf)


def test_edge_evaluation_equals_naive_one_edge_at_a_time(llama3):
    ds = _ds()
    edges = model_edges(llama3)
    rng = random.Random(0)
    circuits = {f"r{k}": rng.sample(edges, k) for k in (5, 40, 120, len(edges) - 3)}
    into_logits = [e for e in edges if e[2] == "logits"]
    circuits["logits_only"] = into_logits
    circuits["chain"] = [("EMBED", "L0.H1", "v"), ("L0.H1", "L2.H0", "q"), ("L0.MLP", "L2.H2", "k"),
                         ("L2.H0", "LOGITS", "logits"), ("L2.H2", "LOGITS", "logits"), ("L1.MLP", "LOGITS", "logits")]
    # circuits changed only from layer 1 / layer 2 / the logits on: they enter the pass there (config.enter)
    late = {1: "from_L1", 2: "from_L2", 3: "logits_cut"}
    for layer, name in late.items():
        above = [e for e in edges if (3 if e[1] == "LOGITS" else int(e[1][1:].split(".")[0])) >= layer]
        cut = set(rng.sample(above, len(above) // 3))
        circuits[name] = [e for e in edges if e not in cut]
    ev = Evaluator(llama3, ds, EdgeEvalConfig(max_rows=6))
    for layer, name in late.items():    # the worlds do enter late (else this test checks nothing new)
        assert ev._world(ev.mask(circuits[name])).enter == min(layer, 2), name
    for enter in (True, False):
        cfg = EdgeEvalConfig(max_rows=6, enter=enter)
        res = evaluate_circuits(llama3, ds, circuits, cfg).table.set_index("circuit")
        for name, c in circuits.items():
            ld, ld_clean, ld_corr = _naive(llama3, ds, canonical(llama3, c))
            assert res.loc[name, "ld"] == pytest.approx(ld, abs=1e-5), (name, enter)
            assert res.loc[name, "ld_clean"] == pytest.approx(ld_clean, abs=1e-5)
            assert res.loc[name, "ld_corrupted"] == pytest.approx(ld_corr, abs=1e-5)
            f = (ld - ld_corr) / (ld_clean - ld_corr)
            assert res.loc[name, "faithfulness"] == pytest.approx(f, abs=1e-3), name
        # circuits that differ change the result (the oracle comparison is not vacuous)
        assert res["ld"].round(6).nunique() >= 7


def test_edges_of_gqa_group_are_one_receiver(llama3):
    # heads 2 and 3 read KV head 1: an edge into L1.H3's k is the edge into L1.H2's k
    assert canonical(llama3, [("L0.H1", "L1.H3", "k"), ("L0.H1", "L1.H2", "k")]) == [("L0.H1", "L1.H2", "k")]
    base = [("L1.H2", "LOGITS", "logits"), ("L1.H3", "LOGITS", "logits")]
    r = evaluate_circuits(llama3, _ds(), {"a": base + [("L0.H1", "L1.H3", "k")],
                                          "b": base + [("L0.H1", "L1.H2", "k")]}).table
    assert r["ld"].iloc[0] == r["ld"].iloc[1]
    assert r["n_edges"].tolist() == [3, 3]


def test_empty_and_full_circuits_are_exact(llama3):
    edges = model_edges(llama3)
    r = evaluate_circuits(llama3, _ds(), {"empty": [], "full": edges}).table.set_index("circuit")
    assert r.loc["empty", "faithfulness"] == 0.0
    assert r.loc["full", "faithfulness"] == 1.0
    # by hand: layer l has 8 q/k/v receivers (4 q, 2 KV groups x k, v) fed by 1 + 5l senders and an MLP fed by
    # 5 + 5l; LOGITS by all 16: sum_l (13 + 45 l) + 16 = 190
    assert r.loc["full", "n_edges"] == len(edges) == len(set(edges)) == 190
    # the same circuits in mean ablation: the full model is still exactly 1
    m = evaluate_circuits(llama3, _ds(), {"full": edges}, EdgeEvalConfig(ablation="mean")).table
    assert m["faithfulness"].iloc[0] == 1.0


@pytest.mark.parametrize("edge, fragment", [
    (("L1.H0", "L0.H1", "q"), "does not come after"),
    (("L1.H0", "L1.H1", "q"), "does not come after"),
    (("L0.MLP", "L0.MLP", "mlp"), "does not come after"),
    (("L0.H7", "L1.H0", "q"), "head out of range"),
    (("L0.H0", "L9.H0", "q"), "layer out of range"),
    (("L0.H0", "L1.H0", "o"), "unknown dst_input"),
    (("L0.H0", "L1.MLP", "q"), "belongs to a head"),
    (("LOGITS", "L1.H0", "q"), "is not EMBED"),
])
def test_edges_outside_the_graph_are_refused_by_name(llama3, edge, fragment):
    with pytest.raises(DataError) as e:
        evaluate_circuits(llama3, _ds(), {"bad": [("EMBED", "LOGITS", "logits"), edge]})
    assert str(edge) in str(e.value) and fragment in str(e.value)


@pytest.mark.parametrize("spec, fact", [("toy:neox", "parallel"), ("toy:gemma2", "norm")])
def test_architectures_without_additive_senders_are_refused(spec, fact):
    with pytest.raises(ConfigError, match=fact):
        evaluate_circuits(load_model(spec), _ds(), [])


def test_bridge_honours_split_qkv_hooks(llama3):
    """The substrate: rewriting one KV head's k input changes the pattern of that group's heads only."""
    toks = _tokens(llama3, ["cat on"])
    with torch.inference_mode(), split_qkv(llama3), capturing(llama3, [Site("pattern", 1)]) as a:
        llama3(toks)
    ref = a[Site("pattern", 1)]

    def zero_kv1(x, site):
        x = x.clone()
        x[:, :, 1] = 0
        return x
    with torch.inference_mode(), split_qkv(llama3), hooked(llama3, [(Site("k_input", 1), zero_kv1)]), \
            capturing(llama3, [Site("pattern", 1)]) as b:
        llama3(toks)
    diff = (b[Site("pattern", 1)] - ref).abs().amax(dim=(0, 2, 3))
    assert diff[:2].max() == 0 and diff[2:].min() > 1e-4


# ---------------------------------------------------------------- selection

def _scores_table(model, seed=0):
    edges = model_edges(model)
    g = torch.Generator().manual_seed(seed)
    eff = torch.randn(len(edges), generator=g).tolist()
    return pd.DataFrame({"method": "eap", "metric": "logit_diff", "src": [e[0] for e in edges],
                         "dst": [e[1] for e in edges], "dst_input": [e[2] for e in edges], "effect": eff})


def test_top_n_threshold_and_greedy_on_a_planted_table(llama3):
    t = pd.DataFrame({"src": ["L0.H0", "L1.H0", "EMBED", "L0.MLP", "L1.MLP"],
                      "dst": ["L1.H0", "LOGITS", "L0.H0", "L1.H0", "LOGITS"],
                      "dst_input": ["q", "logits", "v", "k", "logits"],
                      "effect": [-9.0, 1.0, 5.0, 0.5, 0.2]})
    s = edge_scores(llama3, t)
    assert top_n(s, 2) == [("L0.H0", "L1.H0", "q"), ("EMBED", "L0.H0", "v")]
    assert above_threshold(s, 1.0) == [("L0.H0", "L1.H0", "q"), ("EMBED", "L0.H0", "v"), ("L1.H0", "LOGITS", "logits")]
    # greedy: only edges into LOGITS first; L1.H0 joins, which opens L0.H0 -> L1.H0 (|-9|), then L0.H0 opens EMBED
    assert greedy(s, 1) == [("L1.H0", "LOGITS", "logits")]
    assert greedy(s, 4) == [("L1.H0", "LOGITS", "logits"), ("L0.H0", "L1.H0", "q"), ("EMBED", "L0.H0", "v"),
                            ("L0.MLP", "L1.H0", "k")]
    assert len(greedy(s, 99)) == 5


def test_edge_scores_need_one_metric_and_valid_edges(llama3):
    t = _scores_table(llama3)
    both = pd.concat([t, t.assign(metric="prob")])
    with pytest.raises(DataError, match="several metrics"):
        edge_scores(llama3, both)
    assert len(edge_scores(llama3, both, metric="prob")) == len(t)
    with pytest.raises(DataError, match="L5.H0"):
        edge_scores(llama3, t.assign(dst=t["dst"].where(t.index > 0, "L5.H0")))


# ---------------------------------------------------------------- curves

def test_faithfulness_curve_matches_direct_evaluation(llama3, tmp_path):
    from interp.results import load_result

    ds, t = _ds(), _scores_table(llama3)
    n_all = len(model_edges(llama3))
    cfg = CurveConfig(sizes=(0, 3, 20, n_all), n_random=3, seed=1)
    r = faithfulness_curve(llama3, ds, t, cfg)
    tab = r.table.set_index("n_edges")
    assert list(tab.index) == [0, 3, 20, n_all]
    assert tab.loc[0, "faithfulness"] == 0.0 and tab.loc[n_all, "faithfulness"] == 1.0
    assert tab.loc[0, "complement"] == 1.0 and tab.loc[n_all, "complement"] == 0.0
    assert tab.loc[n_all, "random_mean"] == 1.0 and tab.loc[n_all, "random_std"] == 0.0
    assert tab.loc[0, "random_mean"] == 0.0
    s = edge_scores(llama3, t)
    direct = evaluate_circuits(llama3, ds, {"c": top_n(s, 20), "rest": [e for e in model_edges(llama3)
                                                                      if e not in set(top_n(s, 20))]}).table
    assert tab.loc[20, "faithfulness"] == pytest.approx(direct["faithfulness"].iloc[0], abs=1e-9)
    assert tab.loc[20, "complement"] == pytest.approx(direct["faithfulness"].iloc[1], abs=1e-9)
    assert tab.loc[20, "random_std"] > 0        # three different draws
    assert r.meta.extra["auc"] == pytest.approx(curve_auc(r.table))
    path = r.save(tmp_path / "curve")
    assert load_result(tmp_path / "curve", path.stem).table.equals(r.table)
    assert len(curve_figure(r).data) == 4


def test_smallest_circuit_reaching_target(llama3):
    ds, t = _ds(), _scores_table(llama3)
    n_all = len(model_edges(llama3))
    cfg = CurveConfig(sizes=(0, 10, 50, 100, n_all), n_random=0, complement=False, selection="greedy")
    choice = smallest_circuit(llama3, ds, t, target=0.9, config=cfg)
    assert choice.reached and choice.faithfulness >= 0.9
    curve = choice.curve.table
    assert (curve.loc[curve["n_edges"] < choice.n_edges, "faithfulness"] < 0.9).all()
    again = evaluate_circuits(llama3, ds, {"c": choice.edges}).table
    assert again["faithfulness"].iloc[0] == pytest.approx(choice.faithfulness, abs=1e-9)


# ---------------------------------------------------------------- the engine's apply op (added for this module)

def test_engine_apply_equals_scale_and_refuses_non_callables(llama3):
    from interp.engine import Intervention, World, run

    toks = _tokens(llama3, ["cat on", "dog at"])
    seen = []

    def double(region):
        seen.append(tuple(region.shape))
        return region * 2
    a = run(llama3, toks, [World((Intervention("apply", Site("z", 1, head=2), double),)),
                           World((Intervention("scale", Site("z", 1, head=2), 2.0),))], with_base=True)
    assert seen == [(2, 7, 16)]                     # the world's own rows, the head's slice
    assert torch.allclose(a.worlds[0], a.worlds[1], atol=1e-6) and not torch.allclose(a.worlds[0], a.base)
    with pytest.raises(ConfigError, match="callable"):
        Intervention("apply", Site("z", 1), 2.0)


def test_circuits_entering_from_a_recorded_circuit_equal_full_runs(llama3):
    """run_masks(ref=record(c0)): circuits equal to c0 below layer e start at e from c0's run; same values as
    running them from the tokens (enter=False) and as the naive oracle."""
    ds = _ds()
    edges = model_edges(llama3)
    rng = random.Random(1)
    c0 = rng.sample(edges, int(0.6 * len(edges)))
    ev = Evaluator(llama3, ds, EdgeEvalConfig(max_rows=6))
    ref = ev.record(ev.mask(c0))
    assert float(ev.run_masks([ev.mask(c0)], ref=ref)[0]) == pytest.approx(float(ev.run_masks([ev.mask(c0)])[0]),
                                                                           abs=1e-5)
    circuits = {}
    for layer in (1, 2, 3):      # toggle a third of the edges into receivers of layer >= `layer` (3: LOGITS)
        above = [e for e in edges if (3 if e[1] == "LOGITS" else int(e[1][1:].split(".")[0])) >= layer]
        flip = set(rng.sample(above, len(above) // 3))
        circuits[layer] = (set(c0) - flip) | (flip - set(c0))
    masks = [ev.mask(c) for c in circuits.values()]
    assert [ev._world(m, ref).enter for m in masks] == [1, 2, 2]
    got = ev.run_masks(masks, ref=ref)
    plain = plain_ev(llama3, ds).run_masks(masks)
    for (layer, c), g, p in zip(circuits.items(), got.tolist(), plain.tolist()):
        assert g == pytest.approx(p, abs=1e-5), layer
    ld, _, _ = _naive(llama3, ds, canonical(llama3, circuits[1]))
    assert got[0] == pytest.approx(ld, abs=1e-5)
    assert len({round(v, 5) for v in got.tolist()}) == 3
    # c0 plus every edge into receivers of layer 2 and LOGITS: no rewrite left there, still c0's run below
    top = ev.mask(set(c0) | {e for e in edges if e[1] == "LOGITS" or int(e[1][1:].split(".")[0]) == 2})
    assert ev._world(top, ref).enter == 2
    assert float(ev.run_masks([top], ref=ref)[0]) == pytest.approx(float(plain_ev(llama3, ds).run_masks([top])[0]),
                                                                   abs=1e-5)


def plain_ev(model, ds):
    return Evaluator(model, ds, EdgeEvalConfig(max_rows=6, enter=False))


@pytest.mark.parametrize("spec", ["toy:llama,n_layers=3", "toy:llama,n_layers=2,n_heads=2,n_kv_heads=1", "toy:gpt2"])
def test_evaluator_graph_equals_model_edges(spec):
    model = load_model(spec)
    ev = Evaluator(model, _ds())
    want = torch.zeros_like(ev.valid)
    for s, d, inp in model_edges(model):
        want[ev._s_index[s], ev._r_index[(d, inp)]] = True
    assert torch.equal(ev.valid, want) and ev.n_edges == len(ev.edges) == len(model_edges(model))
