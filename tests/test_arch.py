"""Per-architecture facts (issue 14 item 9): toy GPT-2, Llama, Gemma-2, Gemma-3 and GPT-NeoX.

For each toy: it loads through the bridge with plain transformers' logits; its facts
in the table match both its config (planted) and what the bridge shows (hooks, cfg);
exact head patching equals a naive single-head patch done with TransformerLens' own
``run_with_hooks`` (an independent oracle); AtP's estimated change of each head equals
the directional derivative of the metric; EAP runs where its assumptions hold and
refuses, naming the fact, where they do not - and the blocking fact is shown to be real.
"""

from __future__ import annotations

import pytest
import torch

from interp.arch import FAMILIES, Family, arch_facts, require_arch
from interp.datasets import TaskDataset
from interp.errors import ConfigError
from interp.sites import Site

ARCHS = ("gpt2", "llama", "gemma2", "gemma3", "neox")

#: planted: what each toy config sets (interp/toy.py)
EXPECTED = {
    "gpt2": dict(family="gpt2", parallel_attn_mlp=False, post_attn_norm=False, positional="absolute", gqa=False,
                 norm="layernorm", final_softcap=None, sliding_window=None),
    "llama": dict(family="llama", parallel_attn_mlp=False, post_attn_norm=False, positional="rope", gqa=True,
                  norm="rmsnorm", final_softcap=None, sliding_window=None),
    "gemma2": dict(family="gemma2", parallel_attn_mlp=False, post_attn_norm=True, post_mlp_norm=True, positional="rope",
                   gqa=True, norm="rmsnorm", final_softcap=30.0, attn_softcap=50.0, sliding_window=4),
    "gemma3": dict(family="gemma3_text", parallel_attn_mlp=False, post_attn_norm=True, post_mlp_norm=True,
                   qk_norm=True, positional="rope", gqa=True, final_softcap=None, sliding_window=4),
    "neox": dict(family="gpt_neox", parallel_attn_mlp=True, post_attn_norm=False, positional="rope", gqa=False,
                 norm="layernorm"),
}
PATH_BLOCKED: dict[str, str] = {}  # sliding windows are kept by the engine's per-layer-type masks
EAP_BLOCKED = {"gemma2": "a norm after attention", "gemma3": "a norm after attention",
               "neox": "parallel attention/MLP"}


@pytest.fixture(scope="module", params=ARCHS)
def toy(request):
    from interp.models import load_model

    return request.param, load_model(f"toy:{request.param}")


def _ds() -> TaskDataset:
    # prompts longer than the Gemma toys' sliding window (4) so local attention matters
    return TaskDataset("toy", ("cat on the mat", "a dog to me ok", "Al in a big box"),
                       ("cow on the mat", "a dog at me ok", "Ed in a big box"), ("x", "y", "z"), ("q", "w", "e"), ())


def _batch(model):
    tb = _ds().tokenize(model)
    return tb.clean.tokens, tb.corrupted.tokens, tb.clean.last, tb.answer_ids, tb.counter_ids


def _ld(logits, last, ans, cf):
    rows = torch.arange(logits.shape[0])
    lg = logits[rows, last]
    return (lg[rows, ans] - lg[rows, cf]).mean()


def test_toy_loads_through_the_bridge_with_plain_transformers_logits(toy):
    from transformers import AutoModelForCausalLM

    from interp.models import tokenize

    _, model = toy
    batch = tokenize(model, ["Hello there, general", "abc"])
    hf = AutoModelForCausalLM.from_pretrained(model.interp_info.path, dtype=torch.float32,
                                              attn_implementation="eager").eval()
    with torch.inference_mode():
        torch.testing.assert_close(model(batch.tokens), hf(batch.tokens).logits, atol=1e-5, rtol=1e-5)


def test_facts_match_the_config_and_the_bridge(toy):
    from interp.arch import _derived, _hf_config

    arch, model = toy
    facts = arch_facts(model)
    for k, v in EXPECTED[arch].items():
        assert getattr(facts, k) == v, (arch, k)
    assert facts.known
    # the table row agrees with what the bridge shows (hook points, its own config)
    derived = _derived(model, _hf_config(model))
    row = FAMILIES[facts.family]
    for k in ("norm", "positional", "post_attn_norm", "post_mlp_norm", "qk_norm", "causal"):
        assert getattr(row, k) == getattr(derived, k), (arch, k)
    assert derived.parallel_attn_mlp == facts.parallel_attn_mlp


@pytest.mark.parametrize("grow", [True, False])
def test_exact_head_patching_equals_a_naive_single_head_patch(toy, grow, request):
    """Oracle: TransformerLens run_with_cache / run_with_hooks, one forward per (direction, head)."""
    from interp.patching import PatchConfig, activation_patching

    arch, model = toy
    got = {d: activation_patching(model, _ds(), PatchConfig(component="z", direction=d, grow_batch=grow)).table
           for d in ("denoising", "noising")}
    for direction, want in _naive_head_patches(arch, model).items():
        t = got[direction]
        t = t[t["metric"] == "logit_diff"].set_index(["layer", "head"])["value"]
        for (l, h), w in want.items():
            assert t[(l, h)] == pytest.approx(w, abs=1e-5), (direction, l, h)


_NAIVE: dict[str, dict] = {}


def _naive_head_patches(arch: str, model) -> dict[str, dict[tuple[int, int], float]]:
    """{direction: {(layer, head): logit_diff}} of one forward per head patch (computed once per toy)."""
    if arch in _NAIVE:
        return _NAIVE[arch]
    clean, corr, last, ans, cf = _batch(model)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    names = [Site("z", l).hook_name for l in range(L)]
    out: dict[str, dict[tuple[int, int], float]] = {}
    with torch.inference_mode():
        lc, cache_c = model.run_with_cache(clean, names_filter=lambda n: n in names)
        lk, cache_k = model.run_with_cache(corr, names_filter=lambda n: n in names)
        assert abs(float(_ld(lc, last, ans, cf)) - float(_ld(lk, last, ans, cf))) > 1e-4  # task not degenerate
        for direction, recv, src in (("denoising", corr, cache_c), ("noising", clean, cache_k)):
            out[direction] = {}
            for l in range(L):
                for h in range(H):
                    def put(act, hook, h=h, value=src[names[l]]):
                        act = act.clone()
                        act[:, :, h] = value[:, :, h]
                        return act

                    logits = model.run_with_hooks(recv, fwd_hooks=[(names[l], put)])
                    out[direction][(l, h)] = float(_ld(logits, last, ans, cf))
    _NAIVE[arch] = out
    return out


def test_atp_head_scores_are_directional_derivatives(toy):
    """AtP (denoising, logit_diff) of head (l, h) = LD(corrupted) + d/de LD(corrupted, z_h += e * (z_clean - z_corr))."""
    from interp.patching import AttributionConfig, attribution_patching

    _, model = toy
    clean, corr, last, ans, cf = _batch(model)
    res = attribution_patching(model, _ds(), AttributionConfig(components=("z",), metric="logit_diff"))
    atp = res.table.set_index(["layer", "head"])["value"]
    base = res.meta.extra["ld_corr"]
    names = [Site("z", l).hook_name for l in range(model.cfg.n_layers)]
    with torch.inference_mode():
        _, cache_c = model.run_with_cache(clean, names_filter=lambda n: n in names)
        _, cache_k = model.run_with_cache(corr, names_filter=lambda n: n in names)
    for l, h in ((0, 1), (model.cfg.n_layers - 1, 2)):
        delta = (cache_c[names[l]][:, :, h] - cache_k[names[l]][:, :, h]).clone()
        eps = torch.zeros((), requires_grad=True)

        def add(act, hook, h=h, delta=delta):
            act = act.clone()
            act[:, :, h] = act[:, :, h] + eps * delta
            return act

        ld = _ld(model.run_with_hooks(corr, fwd_hooks=[(names[l], add)]), last, ans, cf)
        (deriv,) = torch.autograd.grad(ld, eps)
        assert atp[(l, h)] - base == pytest.approx(float(deriv), rel=1e-3, abs=1e-6), (l, h)


def test_eap_runs_or_refuses_naming_the_fact(toy):
    from interp.patching import AttributionConfig, edge_attribution_patching

    arch, model = toy
    if arch in EAP_BLOCKED:
        with pytest.raises(ConfigError, match=f"^EAP edges: {EAP_BLOCKED[arch]}.* is not supported: "):
            edge_attribution_patching(model, _ds(), AttributionConfig())
    else:
        table = edge_attribution_patching(model, _ds(), AttributionConfig()).table
        assert len(table) and table["effect"].abs().max() > 0


def test_path_patching_equals_a_naive_three_step_loop_or_refuses(toy):
    """Noising, sender L0.H1 -> receivers q/k/v of L1.H0: Wang et al.'s three steps with run_with_hooks."""
    from interp.patching import PathConfig, path_patching

    arch, model = toy
    cfg = PathConfig(receivers=("L1.H0.q", "L1.H0.k", "L1.H0.v"), senders=("L0.H1",), metric="logit_diff",
                     joint=False)
    if arch in PATH_BLOCKED:
        with pytest.raises(ConfigError, match=f"^path patching: {PATH_BLOCKED[arch]}.* is not supported: "):
            path_patching(model, _ds(), cfg)
        return
    got = path_patching(model, _ds(), cfg).table.set_index("dst_input")["value"]
    clean, corr, last, ans, cf = _batch(model)
    L = model.cfg.n_layers
    zn = [Site("z", l).hook_name for l in range(L)]
    with torch.inference_mode():
        _, cc = model.run_with_cache(clean, names_filter=lambda n: n in zn)
        _, ck = model.run_with_cache(corr, names_filter=lambda n: n in zn)

        def freeze(act, hook, l):  # step 2: every head at its clean value, the sender from corrupted
            out = cc[zn[l]].clone()
            if l == 0:
                out[:, :, 1] = ck[zn[0]][:, :, 1]
            return out

        for inp in ("q", "k", "v"):
            name, rec = Site(inp, 1).hook_name, {}
            model.run_with_hooks(clean, fwd_hooks=[(zn[l], lambda a, hook, l=l: freeze(a, hook, l)) for l in range(L)]
                                 + [(name, lambda a, hook: rec.setdefault("x", a.clone()))])

            def put(act, hook):  # step 3: only the receiver's input (head 0 / its KV head 0) replaced
                act = act.clone()
                act[:, :, 0] = rec["x"][:, :, 0]
                return act

            want = float(_ld(model.run_with_hooks(clean, fwd_hooks=[(name, put)]), last, ans, cf))
            assert got[inp] == pytest.approx(want, abs=1e-5), (arch, inp)


def test_parallel_residual_mlp_input_ignores_this_layers_attention():
    """Why EAP refuses NeoX: patching a layer-0 head leaves layer 0's MLP input unchanged (EAP would score that edge)."""
    from interp.models import load_model

    for arch, same in (("neox", True), ("llama", False)):
        model = load_model(f"toy:{arch}")
        clean, corr, *_ = _batch(model)
        z, mlp_in = Site("z", 0).hook_name, Site("mlp_in", 0).hook_name
        with torch.inference_mode():
            _, cc = model.run_with_cache(clean, names_filter=lambda n: n == z)
            seen = {}

            def put(act, hook):
                act = act.clone()
                act[:, :, 0] = cc[z][:, :, 0]
                return act

            def grab(act, hook, key="x"):
                seen[key] = act.clone()

            model.run_with_hooks(corr, fwd_hooks=[(mlp_in, lambda a, hook: grab(a, hook, "base"))])
            model.run_with_hooks(corr, fwd_hooks=[(z, put), (mlp_in, lambda a, hook: grab(a, hook, "patched"))])
        assert torch.equal(seen["base"], seen["patched"]) is same, arch


def test_post_norm_attention_output_is_not_z_w_o():
    """Why EAP refuses Gemma: the residual receives norm(sum_h z_h W_O[h]), not the sum itself."""
    from interp.models import load_model

    for arch, linear in (("gemma2", False), ("llama", True)):
        model = load_model(f"toy:{arch}")
        clean, *_ = _batch(model)
        names = {Site("z", 0).hook_name, Site("resid_pre", 0).hook_name, Site("resid_mid", 0).hook_name}
        with torch.inference_mode():
            _, c = model.run_with_cache(clean, names_filter=lambda n: n in names)
            w_o = model.blocks[0].attn.W_O.detach()  # [head, d_head, d_model]
            heads = torch.einsum("bphk,hkd->bpd", c[Site("z", 0).hook_name], w_o)
            added = c[Site("resid_mid", 0).hook_name] - c[Site("resid_pre", 0).hook_name]
        assert torch.allclose(heads, added, atol=1e-5) is linear, arch


def test_faithfulness_consults_the_table(toy_llama, monkeypatch):
    from interp.graph.ops import faithfulness

    row = FAMILIES["llama"]
    monkeypatch.setitem(FAMILIES, "llama", Family(name=row.name, norm=row.norm, positional=row.positional,
                                                  causal=False))
    with pytest.raises(ConfigError, match="faithfulness.*bidirectional attention is not supported: right-padded"):
        faithfulness(toy_llama, ["L0.H1"], _ds())


def test_require_arch_names_unknown_facts_and_accepts_choices(toy_llama):
    facts = require_arch(toy_llama, method="m", positional=("rope", "absolute"), gqa=True)
    assert facts.family == "llama"
    with pytest.raises(ConfigError, match="unknown fact 'paralel_attn_mlp'.*'parallel_attn_mlp'"):
        require_arch(toy_llama, method="m", paralel_attn_mlp=False)
    with pytest.raises(ConfigError, match=r"^m: grouped-query attention is not supported: .*toy:llama"):
        require_arch(toy_llama, method="m", gqa=False)
