"""Unit tests of interp.patching on tiny models: planted truth, batched == naive, sanity, bad input."""

from __future__ import annotations

import pytest
import torch

from interp.datasets import TaskDataset
from interp.errors import ConfigError, DataError
from interp.hooks import patched
from interp.patching import (AttributionConfig, PatchConfig, activation_patching, attribution_patching,
                             edge_attribution_patching)
from interp.patching.attribution import node_sums
from interp.sites import Site

PLANTED = "L1.H2"


@pytest.fixture(scope="module")
def planted():
    """A toy Llama in which exactly head L1.H2 carries the answer (hooks-defined construction).

    Every other head's output ``z`` and every MLP output are pinned to constants (their
    means on a reference batch) by hooks registered before any analysis hook, so the
    last position's residual stream depends on the prompt only through the token
    embedding (identical in clean and corrupted) and head L1.H2.
    """
    from interp.hooks import capturing, hooked
    from interp.models import load_model, tokenize

    model = load_model("toy:llama,seed=3")
    n_layers = model.cfg.n_layers
    sites = [Site("z", l) for l in range(n_layers)] + [Site("mlp_out", l) for l in range(n_layers)]
    with torch.inference_mode(), capturing(model, sites) as ref:
        model(tokenize(model, ["some reference text here", "and another one, a bit longer"]).tokens)
    means = {s: a.mean(dim=(0, 1)) for s, a in ref.items()}

    def pin(act, site):
        out = act.clone()
        if site.component == "mlp_out":
            out[...] = means[site]
        else:
            keep = out[:, :, 2].clone() if site.layer == 1 else None
            out[...] = means[site]
            if keep is not None:
                out[:, :, 2] = keep
        return out

    ds = TaskDataset("planted", clean=("xAyzw", "qqA bc", "hello A there"),
                     corrupted=("xByzw", "qqB bc", "hello B there"),
                     answers=("a", "c", "e"), counterfactuals=("b", "d", "f"))
    with hooked(model, [(s, pin) for s in sites]):
        yield model, ds


def _heads(result, metric="logit_diff_norm"):
    t = result.table
    t = t[(t["metric"] == metric) & (t["component"] == "head")]
    return dict(zip(t["node"], t["value"]))


def test_planted_exact_patching_singles_out_the_head(planted):
    model, ds = planted
    for direction, full in (("denoising", 1.0), ("noising", 0.0)):
        vals = _heads(activation_patching(model, ds, PatchConfig(component="z", direction=direction)))
        assert vals[PLANTED] == pytest.approx(full, abs=1e-4)
        others = {k: v for k, v in vals.items() if k != PLANTED}
        assert max(abs(v - (1 - full)) for v in others.values()) < 1e-5


def test_planted_atp_and_eap_single_out_the_head(planted):
    model, ds = planted
    for method_cfg in (AttributionConfig(components=("z",)), AttributionConfig(components=("z",), ig_steps=5)):
        vals = _heads(attribution_patching(model, ds, method_cfg))
        assert max(vals, key=lambda k: abs(vals[k])) == PLANTED
        assert vals[PLANTED] > 0.3
        assert max(abs(v) for k, v in vals.items() if k != PLANTED) < 1e-4 * abs(vals[PLANTED])
    edges = edge_attribution_patching(model, ds, AttributionConfig(ig_steps=5)).table
    heads = edges[edges["src"].str.contains(".H") | edges["dst"].str.contains(".H")]
    big = heads[(heads["value"].abs() > 1e-6) & heads["first_in_group"]]  # GQA k/v copies: L1.H3 shares H2's KV
    assert set(big["src"]) | set(big["dst"]) <= {PLANTED, "EMBED", "LOGITS"}
    assert ((big["src"] == PLANTED) & (big["dst"] == "LOGITS")).any()


# ---------------------------------------------------------------- batched sweep == naive loop

def _toy_ds(model, named=False):
    clean = ("cat on", "a dog to", "Al in a")
    corrupted = ("cow on", "a dog at", "Ed in a")
    meta = tuple({"k": i + 1} for i in range(3)) if named else ()
    return TaskDataset("toy", clean, corrupted, ("x", "y", "z"), ("q", "w", "e"), meta)


def _naive(model, ds, component, direction, patches):
    """One forward per patch with interp.hooks.patched; metrics computed from full logits."""
    tb = ds.tokenize(model)
    clean, corr = tb.clean.tokens, tb.corrupted.tokens
    last, ans, cf = tb.clean.last, tb.answer_ids, tb.counter_ids
    rows = torch.arange(len(ds))
    with torch.inference_mode():
        sites = [Site(component, l) for l in range(model.cfg.n_layers)]
        from interp.hooks import capturing

        with capturing(model, sites) as src_clean:
            lc = model(clean)[rows, last]
        with capturing(model, sites) as src_corr:
            lk = model(corr)[rows, last]
        ld_c, ld_k = (lc[rows, ans] - lc[rows, cf]).mean(), (lk[rows, ans] - lk[rows, cf]).mean()
        recv, src = (corr, src_clean) if direction == "denoising" else (clean, src_corr)
        out = []
        for layer, head, pos in patches:
            site = Site(component, layer, head)
            value = src[Site(component, layer)]

            def fn(act, s, value=value, head=head, pos=pos):
                new = act.clone()
                if pos is None:
                    sel = (slice(None), slice(None)) + ((head,) if head is not None else ())
                    new[sel] = value[sel]
                elif isinstance(pos, int):
                    sel = (slice(None), pos) + ((head,) if head is not None else ())
                    new[sel] = value[sel]
                else:
                    p = torch.tensor([m[pos] for m in ds.meta])
                    sel = (rows, p) + ((head,) if head is not None else ())
                    new[sel] = value[sel]
                return new

            with patched(model, {Site(component, layer): fn}):
                lg = model(recv)[rows, last]
            ld = (lg[rows, ans] - lg[rows, cf]).mean()
            logp, logp_c = torch.log_softmax(lg, -1), torch.log_softmax(lc, -1)
            out.append({"logit_diff": float(ld), "logit_diff_norm": float((ld - ld_k) / (ld_c - ld_k)),
                        "prob": float(logp[rows, ans].exp().mean()),
                        "kl": float((logp_c.exp() * (logp_c - logp)).sum(-1).mean())})
    return out


@pytest.mark.parametrize("component,positions", [("z", "all"), ("z", "each"), ("resid_pre", "each"),
                                                 ("mlp_out", "each"), ("attn_out", "all"), ("resid_post", "each"),
                                                 ("z", ("k",))])
def test_batched_sweep_equals_naive_loop(toy_llama, component, positions):
    ds = _toy_ds(toy_llama, named=not isinstance(positions, str))
    for direction in ("denoising", "noising"):
        ref = None
        for grow in (True, False):  # rows appended at each patch's layer, or replicated from the start
            cfg = PatchConfig(component=component, positions=positions, direction=direction, grow_batch=grow,
                              max_rows=10, layers=(1,) if positions == "each" and component == "z" else None)
            res = activation_patching(toy_llama, ds, cfg).table
            first = res[res["metric"] == "logit_diff"]
            patches = [(int(r.layer), None if r.head < 0 else int(r.head),
                        None if r.pos < 0 else (positions[r.pos] if not isinstance(positions, str) else int(r.pos)))
                       for r in first.itertuples()]
            ref = ref or _naive(toy_llama, ds, component, direction, patches)
            for metric in ("logit_diff", "logit_diff_norm", "prob", "kl"):
                got = res[res["metric"] == metric]["value"].to_numpy()
                want = [r[metric] for r in ref]
                assert max(abs(a - b) for a, b in zip(got, want)) <= 1e-5, (component, direction, grow, metric)


@pytest.mark.parametrize("fixture", ["toy_llama", "toy_gpt2"])
def test_last_hidden_one_position_tail_mlp_is_exact(fixture, request):
    from interp.patching._run import _tail_ok, last_hidden

    model = request.getfixturevalue(fixture)
    assert _tail_ok(model)  # the shortcut is in use on both architectures
    tokens = torch.tensor([[5, 72, 105, 33, 40], [5, 60, 61, 0, 0]])
    last = torch.tensor([4, 2])
    with torch.inference_mode():
        got = last_hidden(model, tokens, last, [], grow=False)
        # a hook on the last resid_post turns the shortcut off: the plain forward
        want = last_hidden(model, tokens, last, [(Site("resid_post", model.cfg.n_layers - 1), lambda a, s: a)],
                           grow=False)
        full = model(tokens)
        from interp.patching.metrics import final_logits
        logits = final_logits(model, got)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, full[torch.arange(2), last], atol=1e-4, rtol=1e-4)


def test_batched_sweep_equals_naive_loop_gpt2(toy_gpt2):
    ds = _toy_ds(toy_gpt2)
    res = activation_patching(toy_gpt2, ds, PatchConfig(component="z", max_rows=7)).table
    res = res[res["metric"] == "logit_diff_norm"]
    ref = _naive(toy_gpt2, ds, "z", "denoising", [(int(r.layer), int(r.head), None) for r in res.itertuples()])
    assert max(abs(a - r["logit_diff_norm"]) for a, r in zip(res["value"], ref)) <= 1e-5


# ---------------------------------------------------------------- metric sanity

def test_normalized_metric_everything_is_one_nothing_is_zero(toy_llama):
    # tolerance 1e-5: the patched passes and the baselines batch rows differently (float32 summation order)
    ds = _toy_ds(toy_llama)
    res = activation_patching(toy_llama, ds, PatchConfig(component="resid_pre", positions="all", layers=(0,)))
    assert res.table.query("metric == 'logit_diff_norm'")["value"].item() == pytest.approx(1.0, abs=1e-5)
    assert res.table.query("metric == 'kl'")["value"].item() == pytest.approx(0.0, abs=1e-5)
    noise = activation_patching(toy_llama, ds, PatchConfig(component="resid_pre", positions="all", layers=(0,),
                                                            direction="noising"))
    assert noise.table.query("metric == 'logit_diff_norm'")["value"].item() == pytest.approx(0.0, abs=1e-5)
    # position 0 (BOS) and the first tokens are identical in clean and corrupted: patching them changes nothing
    each = activation_patching(toy_llama, ds, PatchConfig(component="resid_pre", layers=(1,))).table
    v0 = each.query("metric == 'logit_diff_norm' and pos == 0")["value"].item()
    assert v0 == pytest.approx(0.0, abs=1e-5)
    assert res.meta.extra["ld_clean"] != res.meta.extra["ld_corr"]


# ---------------------------------------------------------------- attribution plumbing

def test_atp_passes_and_agreement(toy_llama):
    ds = _toy_ds(toy_llama)
    exact = activation_patching(toy_llama, ds, PatchConfig(component="z"))
    atp = attribution_patching(toy_llama, ds, AttributionConfig(components=("z", "mlp_out")), exact=exact)
    assert atp.meta.extra["forward_passes"] == 1 and atp.meta.extra["backward_passes"] == 1
    agree = atp.meta.extra["agreement"]["head"]
    assert agree["n"] == toy_llama.cfg.n_layers * toy_llama.cfg.n_heads and -1 <= agree["spearman"] <= 1


def test_edge_scores_sum_to_node_scores(toy_llama):
    ds = _toy_ds(toy_llama)
    for steps in (0, 3):
        for direction, reference in (("denoising", 0.0), ("noising", 1.0)):
            cfg = AttributionConfig(components=("z", "mlp_out"), ig_steps=steps, direction=direction)
            edges = node_sums(edge_attribution_patching(toy_llama, ds, cfg).table)
            nodes = attribution_patching(toy_llama, ds, cfg).table
            j = edges.merge(nodes, on=["component", "layer", "head"], suffixes=("_e", ""))
            assert len(j) == toy_llama.cfg.n_layers * (toy_llama.cfg.n_heads + 1)
            # one vocabulary: both estimate effect = metric(patched) - metric(reference run)
            assert (j["effect_e"] - j["effect"]).abs().max() < 1e-5
            assert (j["reference_value"] == reference).all() and (j["value"] - j["effect"] - reference).abs().max() < 1e-9


def test_eap_edge_equals_directional_derivative(toy_llama):
    """score(u -> q of head v) == d/de M(corrupted run with e * delta_u added to v's query input only)."""
    from interp.hooks import capturing, hooked
    from interp.patching.attribution import split_qkv

    ds = _toy_ds(toy_llama)
    edges = edge_attribution_patching(toy_llama, ds, AttributionConfig(metric="logit_diff")).table
    tb = ds.tokenize(toy_llama)
    rows = torch.arange(len(ds))
    with torch.inference_mode(), capturing(toy_llama, [Site("z", 0)]) as zc:
        toy_llama(tb.clean.tokens)
    with torch.inference_mode(), capturing(toy_llama, [Site("z", 0)]) as zk:
        toy_llama(tb.corrupted.tokens)
    w_o = toy_llama.blocks[0].attn.W_O.detach()
    for src_head, dst_head, inp in ((1, 2, "q"), (3, 0, "k"), (0, 1, "v")):
        delta = ((zc[Site("z", 0)] - zk[Site("z", 0)])[:, :, src_head] @ w_o[src_head]).clone()
        eps = torch.zeros((), requires_grad=True)
        idx = dst_head if inp == "q" else dst_head // (toy_llama.cfg.n_heads // toy_llama.cfg.n_key_value_heads)

        def add(act, site):
            new = act.clone()
            new[:, :, idx] = new[:, :, idx] + eps * delta
            return new

        with split_qkv(toy_llama), hooked(toy_llama, {Site(f"{inp}_input", 1): add}):
            lg = toy_llama(tb.corrupted.tokens)[rows, tb.clean.last]
            ld = (lg[rows, tb.answer_ids] - lg[rows, tb.counter_ids]).mean()
            (deriv,) = torch.autograd.grad(ld, eps)
        got = edges.query(f"src == 'L0.H{src_head}' and dst == 'L1.H{dst_head}' and dst_input == '{inp}'")["effect"]
        assert got.iloc[0] == pytest.approx(float(deriv), rel=1e-4, abs=1e-6)


# ---------------------------------------------------------------- bad input

def test_bad_inputs_raise_data_errors(toy_llama):
    with pytest.raises(DataError, match="differ in token length"):
        activation_patching(toy_llama, TaskDataset("bad", ("ab c",), ("abcd e",), ("x",), ("y",)))
    with pytest.raises(DataError, match="not single tokens"):
        activation_patching(toy_llama, TaskDataset("bad", ("ab c",), ("ab d",), ("xy",), ("y",)))
    with pytest.raises(DataError, match="identical clean and corrupted") as e:
        activation_patching(toy_llama, TaskDataset("bad", ("ab c", "same"), ("ab d", "same"), ("x", "x"), ("y", "y")))
    assert "'same'" in str(e.value) and "#1" in str(e.value)
    with pytest.raises(DataError, match="identical"):
        attribution_patching(toy_llama, TaskDataset("bad", ("same",), ("same",), ("x",), ("y",)))
    with pytest.raises(DataError, match="no corrupted"):
        activation_patching(toy_llama, TaskDataset("bad", ("ab c",), (), ("x",), ("y",)))
    with pytest.raises(ConfigError, match="Did you mean"):
        PatchConfig(component="mlp_outt")
    with pytest.raises(ConfigError):
        AttributionConfig(metric="kl")


# ---------------------------------------------------------------- path patching

@pytest.fixture(scope="module")
def toy3():
    from interp.models import load_model

    return load_model("toy:llama,n_layers=3")


def test_path_patching_equals_naive_three_step_loop(toy3):
    """Wang et al.'s three steps, one forward each, with interp.hooks.patched, for a few edges."""
    from interp.hooks import capturing
    from interp.patching import PathConfig, path_patching

    model, ds = toy3, _toy_ds(toy3)
    res = path_patching(model, ds, PathConfig(receivers=("L2.H1.q", "L2.H3.v", "logits"), max_rows=12)).table
    tb = ds.tokenize(model)
    rows = torch.arange(len(ds))
    zs = [Site("z", l) for l in range(3)]
    with torch.inference_mode():
        with capturing(model, zs) as zc:
            lc = model(tb.clean.tokens)[rows, tb.clean.last]
        with capturing(model, zs) as zk:
            lk = model(tb.corrupted.tokens)[rows, tb.clean.last]
    ld_c = (lc[rows, tb.answer_ids] - lc[rows, tb.counter_ids]).mean()
    ld_k = (lk[rows, tb.answer_ids] - lk[rows, tb.counter_ids]).mean()
    rep = model.cfg.n_heads // model.cfg.n_key_value_heads

    def norm(logits):
        lg = logits[rows, tb.clean.last]
        return float(((lg[rows, tb.answer_ids] - lg[rows, tb.counter_ids]).mean() - ld_k) / (ld_c - ld_k))

    for (sl, sh), (rl, rh, inp) in (((0, 2), (2, 3, "v")), ((1, 0), (2, 1, "q")), ((1, 3), (None, None, "logits"))):
        def frozen(layer):  # every head at its clean value, except the sender from corrupted
            def fn(act, site):
                new = zc[Site("z", layer)].clone()
                if layer == sl:
                    new[:, :, sh] = zk[Site("z", layer)][:, :, sh]
                return new
            return fn
        with torch.inference_mode():
            rec_site = Site(inp, rl) if inp != "logits" else Site("ln_final")
            with patched(model, {Site("z", l): frozen(l) for l in range(3)}), capturing(model, [rec_site]) as rec:
                step2 = model(tb.clean.tokens)
            if inp == "logits":
                want = norm(step2)
                dst = "LOGITS"
            else:
                idx = rh if inp == "q" else rh // rep
                with patched(model, {Site(inp, rl, idx): rec[rec_site][:, :, idx]}):
                    want = norm(model(tb.clean.tokens))
                dst = f"L{rl}.H{rh}"
        got = res.query(f"src == 'L{sl}.H{sh}' and dst == '{dst}'")["value"].item()
        assert got == pytest.approx(want, abs=1e-5)


def test_path_to_logits_from_last_layer_equals_activation_patching(toy3):
    from interp.patching import PathConfig, path_patching

    ds = _toy_ds(toy3)
    path = path_patching(toy3, ds, PathConfig(receivers=("logits",))).table.query("src_layer == 2")
    exact = activation_patching(toy3, ds, PatchConfig(component="z", direction="noising", layers=(2,))).table
    exact = exact.query("metric == 'logit_diff_norm'")
    assert path["value"].to_numpy() == pytest.approx(exact["value"].to_numpy(), abs=1e-5)


def test_nan_weight_fails_loudly_through_the_public_api(tmp_path):
    """One NaN weight: patching refuses at the baselines (naming the prompt) instead of returning NaN Results,
    and a NaN-filled Result cannot be saved or graphed without an explicit opt-out."""
    import interp
    from interp.errors import SchemaError
    from interp.graph import CircuitGraph

    model = interp.load_model("toy:llama")
    ds = _toy_ds(model)
    good = interp.activation_patching(model, ds, PatchConfig(component="z"))
    original = float(model.blocks[1].attn.W_O[0, 0, 0])
    with torch.no_grad():
        model.blocks[1].attn.W_O[0, 0, 0] = float("nan")
    try:
        with pytest.raises(DataError, match=r"logit difference is nan on 3 prompt\(s\), first #0 'cat on'"):
            interp.activation_patching(model, ds, PatchConfig(component="z"))
        with pytest.raises(DataError, match="NaN/inf"):
            interp.attribution_patching(model, ds)
    finally:
        with torch.no_grad():
            model.blocks[1].attn.W_O[0, 0, 0] = original
    t = good.table.copy()
    t.loc[3, "effect"] = float("nan")
    bad = interp.Result(good.kind, t, good.meta, good.name)
    with pytest.raises(SchemaError, match=r"column 'effect' holds 1 non-finite value\(s\) .* row 3 \(node="):
        bad.save(tmp_path)
    with pytest.raises(SchemaError, match="non-finite"):
        CircuitGraph().add_result(bad)
