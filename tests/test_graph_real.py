"""The circuit graph built from the REAL outputs of every analysis on a toy model (no hand-made rows).

Every Result kind that has a graph builder is produced by its analysis on the tiny Llama toy,
saved and loaded back (schemas checked both ways), and added to one graph. The evidence
vocabulary is checked against an independent oracle: a noising sweep pruned to one node keeps
the head whose patch changes the metric most, measured one head at a time with plain hooks.
"""

from __future__ import annotations

import pytest
import torch

from interp.datasets import TaskDataset
from interp.graph import CircuitGraph, prune
from interp.results import load_results


def _ds():
    return TaskDataset("toy", ("cat on", "a dog to", "Al in a"), ("cow on", "a dog at", "Ed in a"),
                       ("x", "y", "z"), ("q", "w", "e"))


def _naive_head_effects(model, ds, direction):
    """Per head: mean logit difference with that head's z (all positions) taken from the other run, minus the
    receiver's own, one forward per head, with interp.hooks (independent of the patching engine)."""
    from interp.hooks import capturing, patched
    from interp.sites import Site

    tb = ds.tokenize(model, same_length=True)
    rows = torch.arange(len(ds))
    src, rec = (tb.clean.tokens, tb.corrupted.tokens) if direction == "denoising" else \
        (tb.corrupted.tokens, tb.clean.tokens)

    def ld(tokens, patches=None):
        with torch.inference_mode(), patched(model, patches or {}):
            lg = model(tokens)[rows, tb.clean.last]
        return float((lg[rows, tb.answer_ids] - lg[rows, tb.counter_ids]).mean())

    sites = [Site("z", l) for l in range(model.cfg.n_layers)]
    with torch.inference_mode(), capturing(model, sites) as acts:
        model(src)
    ref = ld(rec)
    out = {}
    for l in range(model.cfg.n_layers):
        for h in range(model.cfg.n_heads):
            out[f"L{l}.H{h}"] = ld(rec, {Site("z", l, head=h): acts[Site("z", l)][:, :, h]}) - ref
    return out


@pytest.mark.parametrize("direction", ["noising", "denoising"])
def test_pruned_to_one_node_keeps_the_head_that_changes_the_metric_most(toy_llama, direction):
    from interp.patching import PatchConfig, activation_patching

    ds = _ds()
    oracle = _naive_head_effects(toy_llama, ds, direction)
    res = activation_patching(toy_llama, ds, PatchConfig(component="z", direction=direction, metrics=("logit_diff",)))
    got = dict(zip(res.table["node"], res.table["effect"]))
    for node, eff in oracle.items():
        assert got[node] == pytest.approx(eff, abs=1e-4)
    g = CircuitGraph().add_result(res)
    kept = [n for n in prune(g, top_k_nodes=1).nodes if n not in ("EMBED", "LOGITS")]
    assert kept == [max(oracle, key=lambda n: abs(oracle[n]))]
    # the normalised metric ranks heads the same way (effect, not the level 1.0 - x, is the score)
    res_n = activation_patching(toy_llama, ds, PatchConfig(component="z", direction=direction,
                                                            metrics=("logit_diff_norm",)))
    kept_n = [n for n in prune(CircuitGraph().add_result(res_n), top_k_nodes=1).nodes if n not in ("EMBED", "LOGITS")]
    assert kept_n == kept


def test_every_analysis_feeds_one_graph_through_saved_results(toy_llama, tmp_path):
    from interp.gating import CHGConfig, causal_head_gating
    from interp.patching import (AttributionConfig, PatchConfig, PathConfig, activation_patching,
                                 attribution_patching, edge_attribution_patching, path_patching)
    from interp.sinks import AnalysisConfig, analyze

    from interp.cache import collect
    from interp.sites import Site
    from interp.steering.axes import axes_result, contrast_axis

    ds = _ds()
    site = Site("resid_post", 1)
    store = collect(toy_llama, ["good day", "nice one", "bad day", "awful one"], [site])
    acts = store[site][:, -1]
    axis = contrast_axis(acts[:2], acts[2:], site=site, name="toy", model="toy:llama")
    results = [
        activation_patching(toy_llama, ds, PatchConfig(component="z", direction="noising")),
        activation_patching(toy_llama, ds, PatchConfig(component="mlp_out", positions="all")),
        attribution_patching(toy_llama, ds, AttributionConfig(components=("z", "mlp_out"), direction="noising")),
        edge_attribution_patching(toy_llama, ds, AttributionConfig(components=("z", "mlp_out"))),
        edge_attribution_patching(toy_llama, ds, AttributionConfig(components=("z", "mlp_out"), ig_steps=2)),
        path_patching(toy_llama, ds, PathConfig(receivers=("L1.H0.q", "L1.H1.q", "logits"))),
        causal_head_gating(toy_llama, ds, config=CHGConfig(steps=5, n_masks=1, progress=False)),
        axes_result([axis], meta=store_meta(toy_llama)),
        *analyze(toy_llama, ["the cat sat on the mat", "a b c d e f g"], AnalysisConfig(run_interventions=False)),
    ]
    for r in results:
        r.save(tmp_path)
    loaded = load_results(tmp_path)
    assert len(loaded) == len({r.id for r in results})
    g = CircuitGraph(name="toy")
    for r in loaded.values():
        if r.kind in ("patching.nodes", "patching.edges", "gating.chg", "sinks.heads", "sinks.dormancy",
                      "massive.layers", "steering.axes"):
            g.add_result(r)
    heads = [n for n in g.nodes if g.node(n)["kind"] == "head"]
    assert len(heads) == toy_llama.cfg.n_layers * toy_llama.cfg.n_heads
    # every effect Result left its scores under its own method/direction/metric
    sources = {s for n in heads for s in g.node(n)["scores"]}
    assert {"exact/noising/logit_diff_norm", "atp/noising/logit_diff_norm"} <= sources
    assert {"eap", "eap-ig", "path"} <= {m for u, v in g.edges for m in g.edge(u, v)["weights"]}
    # path patching's joint receiver rows are evidence on the sender, not an edge
    assert not any("+" in v for _, v in g.edges)
    assert all(g.node(n)["roles"] for n in heads)  # CHG roles on every head
    assert "steering" in g.layers["1"]["flags"]


def store_meta(model):
    from interp.results import run_meta

    return run_meta(model, dataset="toy-contrast")
