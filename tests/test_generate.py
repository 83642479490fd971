"""interp.generate: KV-cache generation with engine interventions, checked against recomputation.

Oracles: (1) the cache against recomputing the whole sequence at every step (use_cache=False);
(2) both against a hand-written greedy loop over full forward passes inside the engine's own
``intervening`` context (no position translation, no cache); (3) captures against one forward
pass over the final sequence; (4) steering: an added unembedding direction raises that token's
logit at every step, and the alpha the steering sweep finds decisive makes it the continuation.
"""

from __future__ import annotations

import pytest
import torch

from interp.engine import Intervention, intervening
from interp.errors import ConfigError, ShapeError, SiteError
from interp.generation import generate
from interp.hooks import capturing
from interp.sites import Site

PROMPTS = ["ab", "hello", "xy"]         # two of one length (a batch), one alone


def _greedy_oracle(model, prompt_tokens, n, interventions=()):
    """Greedy loop: full forward of the whole sequence each step under ``intervening`` (all positions)."""
    seq = prompt_tokens[None].clone()
    logits = []
    with torch.inference_mode(), intervening(model, interventions):
        for _ in range(n):
            last = model(seq)[0, -1].float()
            logits.append(last)
            seq = torch.cat([seq, last.argmax()[None, None]], dim=1)
    return seq[0, prompt_tokens.shape[0]:], torch.stack(logits)


@pytest.mark.parametrize("fixture", ["toy_llama", "toy_gpt2"])
def test_cache_equals_recompute_and_oracle(fixture, request):
    model = request.getfixturevalue(fixture)
    ivs = [Intervention("add", Site("resid_post", 0), torch.randn(64, generator=torch.Generator().manual_seed(1))),
           Intervention("ablate", Site("z", 1, head=1)), Intervention("scale", Site("mlp_out", 0), 0.5)]
    for interventions in ((), ivs):
        cached = generate(model, PROMPTS, max_new_tokens=5, interventions=interventions)
        again = generate(model, PROMPTS, max_new_tokens=5, interventions=interventions, use_cache=False)
        assert torch.equal(cached.new_tokens, again.new_tokens)
        assert (cached.logits - again.logits).abs().max() < 1e-4
        for i in (0, 1):
            toks, logits = _greedy_oracle(model, cached.prompt_tokens[i], 5, interventions)
            assert torch.equal(cached.new_tokens[i], toks)
            assert (cached.logits[i] - logits).abs().max() < 1e-4
    # interventions change the continuation (the oracle above is not vacuous)
    assert not torch.equal(generate(model, PROMPTS, max_new_tokens=5).logits, cached.logits)


@pytest.mark.parametrize("spec", ["toy:gemma2", "toy:neox"])
def test_cache_equals_recompute_other_families(spec):
    """Sliding-window attention (Gemma-2 toy: window 4, exceeded by 5 + 7 positions) and parallel blocks (NeoX)."""
    from interp.models import load_model

    model = load_model(spec)
    iv = [Intervention("add", Site("resid_post", 0), torch.randn(64, generator=torch.Generator().manual_seed(0)))]
    a = generate(model, ["hello"], max_new_tokens=8, interventions=iv)
    b = generate(model, ["hello"], max_new_tokens=8, interventions=iv, use_cache=False)
    assert torch.equal(a.new_tokens, b.new_tokens)
    assert (a.logits - b.logits).abs().max() < 1e-4


def test_at_steps_and_positions_cache_equals_recompute(toy_llama):
    v = torch.randn(64, generator=torch.Generator().manual_seed(2)) * 3
    ivs = [Intervention("add", Site("resid_post", 0), v, positions=slice(-1, None)),
           Intervention("ablate", Site("z", 1, head=0), positions=(1, 6, 7))]
    outs = {}
    for steps in (None, [0], [2, 3]):
        a = generate(toy_llama, PROMPTS, max_new_tokens=5, interventions=ivs, at_steps=steps)
        b = generate(toy_llama, PROMPTS, max_new_tokens=5, interventions=ivs, at_steps=steps, use_cache=False)
        assert torch.equal(a.new_tokens, b.new_tokens)
        assert (a.logits - b.logits).abs().max() < 1e-4
        outs[str(steps)] = a
    plain = generate(toy_llama, PROMPTS, max_new_tokens=5)
    # steps before the first intervened step are untouched; step 2 differs
    assert torch.allclose(outs["[2, 3]"].logits[:, :2], plain.logits[:, :2], atol=1e-5)
    assert not torch.allclose(outs["[2, 3]"].logits[:, 2], plain.logits[:, 2], atol=1e-3)
    # at_steps=[0] on slice(-1, None): only the prompt's last position is steered -> first logits equal the
    # all-steps run, later ones differ
    assert torch.allclose(outs["[0]"].logits[:, 0], outs["None"].logits[:, 0], atol=1e-5)


def test_restore_patching_during_generation(toy_llama):
    """Patching the clean run's recorded embeddings into a corrupted prompt = generating from the clean prompt
    (every prompt position replaced at the embedding, so every layer's cached keys/values are the clean ones;
    a site deeper in the model would not do: the generated positions attend to the corrupted earlier layers)."""
    clean = torch.tensor([[256, 104, 101, 108, 108]])
    corrupt = torch.tensor([[256, 120, 121, 122, 119]])
    site = Site("embed")
    with capturing(toy_llama, [site]) as acts, torch.inference_mode():
        toy_llama(clean)
    patched = generate(toy_llama, corrupt, max_new_tokens=5,
                       interventions=[Intervention("restore", site, acts[site])])
    ref = generate(toy_llama, clean, max_new_tokens=5)
    assert torch.equal(patched.new_tokens, ref.new_tokens)
    assert (patched.logits - ref.logits).abs().max() < 1e-4
    # one head restored from a recorded [batch, pos, head, d_head] z: step 0 equals the engine's own restore on
    # the prompt; the cache equals recomputation afterwards (the value has no generated positions)
    z = Site("z", 1, head=2)
    with capturing(toy_llama, [z.layer_site]) as acts, torch.inference_mode():
        toy_llama(clean)
    iv = Intervention("restore", z, acts[z.layer_site])
    g = generate(toy_llama, corrupt, max_new_tokens=4, interventions=[iv])
    with torch.inference_mode(), intervening(toy_llama, [iv]):
        want = toy_llama(corrupt)[0, -1]
    assert (g.logits[0, 0] - want).abs().max() < 1e-5
    assert torch.equal(g.new_tokens, generate(toy_llama, corrupt, max_new_tokens=4, interventions=[iv],
                                              use_cache=False).new_tokens)


def test_captures_equal_one_forward_of_the_final_sequence(toy_llama):
    sites = [Site("resid_post", 0), Site("z", 1, head=2), Site("mlp_out", 1)]
    iv = [Intervention("add", Site("resid_pre", 1), 0.3)]
    out = generate(toy_llama, PROMPTS, max_new_tokens=5, capture=sites, interventions=iv)
    for i, seq in enumerate(out.sequences()):
        with torch.inference_mode(), intervening(toy_llama, iv), capturing(toy_llama, sites) as acts:
            toy_llama(seq[None, :-1])
        for s in sites:
            assert out.captures[s][i].shape == acts[s][0].shape
            assert (out.captures[s][i] - acts[s][0]).abs().max() < 1e-5
    step2 = out.at_step(sites[0], 2)
    assert step2.shape == (len(PROMPTS), 64)
    assert torch.equal(step2[1], out.captures[sites[0]][1][out.prompt_lengths[1] + 1])


def test_steering_raises_the_direction_logit_every_step(toy_llama):
    """Add a token's unembedding direction: its logit (relative to the mean logit) rises at every step vs the
    baseline, and the first step's target probability is exactly the steering sweep's ``target_prob``."""
    from interp.steering import Axis, sweep

    target = 65                                           # "A"
    direction = toy_llama.W_U[:, target].detach().float()
    direction = direction / direction.norm()
    site = Site("resid_post", 1)
    base = generate(toy_llama, PROMPTS, max_new_tokens=4)
    steered = generate(toy_llama, PROMPTS, max_new_tokens=4, interventions=[Intervention("add", site, 3.0 * direction)])
    rel = lambda g: g.logits[..., target] - g.logits.mean(-1)  # noqa: E731
    assert (rel(steered) > rel(base)).all()
    ax = Axis(name="A", vector=direction, site=site, method="contrast")
    res = sweep(toy_llama, [ax], [0.0, 3.0], PROMPTS, ["A"], ["hello world"], progress=False)
    p0, p3 = res.table.target_prob
    assert p3 > p0
    assert float(base.logits[:, 0].softmax(-1)[:, target].mean()) == pytest.approx(p0, abs=1e-6)
    assert float(steered.logits[:, 0].softmax(-1)[:, target].mean()) == pytest.approx(p3, abs=1e-6)


def test_steering_generate_uses_the_cache(toy_llama):
    """interp.steering.generate with a steer factory equals interp.generate with the same add intervention."""
    from interp.steering import Axis, steer_factory
    from interp.steering import generate as steer_generate

    v = toy_llama.W_U[:, 66].detach().float()
    ax = Axis(name="B", vector=v, site=Site("resid_post", 0), method="contrast")
    for positions, where in (("last", slice(-1, None)), (2, slice(2, None))):
        texts = steer_generate(toy_llama, PROMPTS, max_new_tokens=3,
                               steer=steer_factory(toy_llama, ax, 3.0, positions=positions))
        ref = generate(toy_llama, PROMPTS, max_new_tokens=3,
                       interventions=[Intervention("add", ax.site, 3.0 * v, positions=where)])
        assert texts == ref.texts


def test_sampling_is_seeded_and_respects_top_k_top_p(toy_llama):
    opts = {"max_new_tokens": 4, "do_sample": True}
    a = generate(toy_llama, PROMPTS, **opts, temperature=2.0, seed=3)
    b = generate(toy_llama, PROMPTS, **opts, temperature=2.0, seed=3)
    c = generate(toy_llama, PROMPTS, **opts, temperature=2.0, seed=4)
    assert torch.equal(a.new_tokens, b.new_tokens) and not torch.equal(a.new_tokens, c.new_tokens)
    top3 = generate(toy_llama, PROMPTS, **opts, top_k=3, temperature=5.0, seed=6)
    ranks = (top3.logits > top3.logits.gather(-1, top3.new_tokens[..., None])).sum(-1)
    assert ranks.max() < 3 and ranks.max() > 0          # sampled, and only among the top 3
    tiny_p = generate(toy_llama, PROMPTS, **opts, top_p=1e-6, seed=7)
    assert torch.equal(tiny_p.new_tokens, tiny_p.logits.argmax(-1))


@pytest.mark.parametrize("kwargs, err, text", [
    ({"max_new_tokens": 0}, ConfigError, "max_new_tokens"),
    ({"do_sample": True, "temperature": 0.0}, ConfigError, "temperature"),
    ({"do_sample": True, "top_p": 1.5}, ConfigError, "top_p"),
    ({"do_sample": True, "top_k": 0}, ConfigError, "top_k"),
    ({"at_steps": [9]}, ConfigError, "at_steps"),
    ({"at_steps": "some"}, ConfigError, "at_steps"),
    ({"capture": ["pattern.0"]}, SiteError, "pattern"),
    ({"capture": ["resid_post.9"]}, SiteError, "resid_post"),
    ({"interventions": [Intervention("add", "resid_post.0", torch.zeros(64), positions=torch.tensor([1, 1, 1]))]},
     ConfigError, "per-row"),
    ({"interventions": [Intervention("add", "resid_post.0", torch.zeros(2, 2, 64))]}, ShapeError, "2 rows"),
    ({"max_new_tokens": 10_000}, ConfigError, "context"),
])
def test_bad_input(toy_llama, kwargs, err, text):
    args = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(err, match=text):
        generate(toy_llama, PROMPTS, **args)


@pytest.mark.bundled
def test_bundled_cache_equals_recompute_32_tokens(smollm2):
    prompts = ["The capital of France is", "Once upon a time, in a small village,"]
    a = generate(smollm2, prompts, max_new_tokens=32)
    b = generate(smollm2, prompts, max_new_tokens=32, use_cache=False)
    assert torch.equal(a.new_tokens, b.new_tokens)
    # measured 2026-11-30: at most 6.5e-5 over the 32 steps of the first prompt (float32 logits of size ~20);
    # the bound leaves room for other BLAS builds
    assert (a.logits - b.logits).abs().max() < 1e-3
    # the first token of greedy generation is the full forward's argmax
    assert (a.logits[:, 0] - b.logits[:, 0]).abs().max() < 1e-4
