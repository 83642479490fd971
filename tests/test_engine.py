"""interp.engine: every intervention type against a hand-computed oracle on a toy model; rows entering
at a layer equal rows run from the tokens; column unembedding equals the full logits at those columns."""

from __future__ import annotations

import pytest
import torch

from interp.engine import Counter, Intervention, World, intervening, run
from interp.errors import ConfigError, ShapeError
from interp.hooks import capturing, hooked
from interp.sites import Site

TOKENS = torch.tensor([[256, 72, 105, 33, 40], [256, 60, 61, 62, 0]])
LAST = torch.tensor([4, 3])


@pytest.fixture(scope="module")
def model():
    from interp.models import load_model

    return load_model("toy:llama")


def _plain(model, hooks, tokens=TOKENS, site=Site("z", 1)):
    """Oracle: one ordinary forward with plain hooks; returns (z at ``site``, logits at LAST)."""
    with torch.inference_mode(), hooked(model, hooks), capturing(model, [site]) as acts:
        logits = model(tokens)
    return acts[site], logits[torch.arange(len(tokens)), LAST]


def test_each_intervention_type_against_hand_oracle(model):
    z_site = Site("z", 1)
    with torch.inference_mode(), capturing(model, [z_site]) as acts:
        model(TOKENS)
    clean = acts[z_site]                                           # [2, 5, 4, 16]
    other = clean.flip(0)                                          # a "recorded" activation of other prompts
    d_head, n_heads = clean.shape[-1], clean.shape[2]
    vec = torch.arange(d_head, dtype=clean.dtype) / 10
    gates = torch.tensor([0.0, 0.5, 1.0, 2.0])
    cases = []
    want = clean.clone(); want[:, 2, 1] = vec
    cases.append((Intervention("set", Site("z", 1, head=1), vec, positions=2), want))
    want = clean.clone(); want[:, :, 0] = clean[:, :, 0] + vec
    cases.append((Intervention("add", Site("z", 1, head=0), vec), want))
    want = clean.clone(); want[:, (1, 3), 3] = clean[:, (1, 3), 3] * -2.0
    cases.append((Intervention("scale", Site("z", 1, head=3), -2.0, positions=(1, 3)), want))
    want = clean.clone(); want[:, :, 2] = 0.0
    cases.append((Intervention("ablate", Site("z", 1, head=2)), want))
    want = clean * gates[None, None, :, None]
    cases.append((Intervention("gate", z_site, gates), want))
    want = clean.clone(); want[torch.arange(2), LAST, 1] = other[torch.arange(2), LAST, 1]
    cases.append((Intervention("restore", Site("z", 1, head=1), other, positions=LAST), want))
    want = clean.clone(); want[:, 1, 3] = other[0, 1, 3]                # one recorded prompt for every row
    cases.append((Intervention("restore", Site("z", 1, head=3), other[0], positions=1), want))
    rows = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 3.0]])
    want = clean * rows[:, None, :, None]                               # per-row gates
    cases.append((Intervention("gate", z_site, rows), want))
    worlds = [World((iv,)) for iv, _ in cases]
    out = run(model, TOKENS, worlds, positions=LAST, record=[z_site])
    for k, (iv, want_z) in enumerate(cases):
        got_z = out.recorded[k][z_site]
        torch.testing.assert_close(got_z, want_z, atol=1e-6, rtol=0)
        _, want_logits = _plain(model, [(z_site, lambda a, s, _w=want_z: _w.clone())])
        torch.testing.assert_close(out.worlds[k], want_logits, atol=1e-4, rtol=1e-4)
    assert n_heads == 4


def test_entering_at_layer_equals_running_from_tokens(model):
    iv = (Intervention("ablate", Site("z", 1, head=2)), Intervention("add", Site("mlp_out", 1), 0.3, positions=2))
    with torch.inference_mode(), capturing(model, [Site("resid_pre", 1)]) as acts:
        model(TOKENS)
    resid = acts[Site("resid_pre", 1)]
    worlds = [World(iv), World(iv, enter=1), World(iv, enter=1, entry=resid), World(iv, enter=0)]
    for kw in ({}, {"with_base": True}):
        out = run(model, TOKENS, worlds, positions=LAST, **kw).worlds
        for k in (1, 2, 3):
            torch.testing.assert_close(out[k], out[0], atol=1e-5, rtol=1e-5)
    # stub start: every world enters from recorded residuals (no base rows at all)
    counter = Counter()
    stub = run(model, TOKENS, [World(iv, enter=1, entry=resid)], positions=LAST, counter=counter).worlds
    torch.testing.assert_close(stub[0], out[0], atol=1e-5, rtol=1e-5)
    assert counter.forward == 1 and counter.rows == 2


def test_columns_and_hidden_readouts_equal_full_logits(model):
    cols = torch.tensor([[5, 7, 9], [1, 2, 200]])
    with torch.inference_mode():
        full = model(TOKENS)[torch.arange(2), LAST]
    got = run(model, TOKENS, [World()], positions=LAST, columns=cols).worlds[0]
    torch.testing.assert_close(got, full.gather(-1, cols), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(run(model, TOKENS, [World()], positions=LAST).worlds[0], full, atol=1e-4, rtol=1e-4)
    slow = run(model, TOKENS, [World()], positions=LAST, stop_early=False).worlds[0]
    torch.testing.assert_close(slow, full, atol=1e-6, rtol=1e-6)
    hid = run(model, TOKENS, [World()], positions=LAST, readout="hidden").worlds[0]
    assert hid.shape == (2, model.cfg.d_model)


def test_chunking_base_and_order(model):
    worlds = [World((Intervention("ablate", Site("z", l, head=h)),), enter=l) for l in (1, 0) for h in range(4)]
    one = run(model, TOKENS, worlds, positions=LAST, with_base=True)
    counter = Counter()
    many = run(model, TOKENS, worlds, positions=LAST, with_base=True, max_rows=6, counter=counter)
    assert counter.forward == 4                      # 8 worlds, 2 per pass beside the base block
    torch.testing.assert_close(many.worlds, one.worlds, atol=1e-5, rtol=1e-5)
    _, plain = _plain(model, [])
    torch.testing.assert_close(one.base, plain, atol=1e-4, rtol=1e-4)
    _, head = _plain(model, [(Site("z", 0), lambda a, s: torch.cat([a[:, :, :1] * 0, a[:, :, 1:]], 2))])
    torch.testing.assert_close(one.worlds[4], head, atol=1e-4, rtol=1e-4)    # world 4: L0.H0, given after layer 1


def test_base_interventions_apply_to_every_block(model):
    noise = torch.randn(2, 2, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    base = [Intervention("add", Site("embed"), noise, positions=(1, 2))]
    out = run(model, TOKENS, [World(), World(enter=1)], positions=LAST, base=base, with_base=True)

    def add(a, s):
        a = a.clone(); a[:, 1:3] += noise
        return a
    _, want = _plain(model, [(Site("embed"), add)])
    for got in (out.base, out.worlds[0], out.worlds[1]):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_intervening_context_equals_patched_hook(model):
    vec = torch.ones(16)
    with torch.inference_mode(), intervening(model, [Intervention("set", "z.0.1", vec)]):
        got = model(TOKENS)
    _, want = _plain(model, [(Site("z", 0), lambda a, s: torch.cat([a[:, :, :1], vec.expand_as(a[:, :, 1:2]),
                                                                    a[:, :, 2:]], 2))])
    torch.testing.assert_close(got[torch.arange(2), LAST], want)


def test_bad_interventions_and_worlds(model):
    with pytest.raises(ConfigError, match="Did you mean 'set'"):
        Intervention("sett", Site("z", 0))
    with pytest.raises(ConfigError, match="gate"):
        Intervention("gate", Site("z", 0, head=1), torch.ones(4))
    with pytest.raises(ConfigError, match="before it"):
        run(model, TOKENS, [World((Intervention("ablate", Site("z", 0, head=0)),), enter=1)])
    with pytest.raises(ConfigError, match="out of range"):
        run(model, TOKENS, [World(enter=7)])
    with pytest.raises(ConfigError, match="Did you mean 'logits'"):
        run(model, TOKENS, [World()], readout="logit")
    with pytest.raises(ShapeError, match="position 9 out of range"):
        run(model, TOKENS, [World((Intervention("ablate", Site("z", 0), positions=9),))])
    with pytest.raises(ShapeError, match="does not fit"):
        run(model, TOKENS, [World((Intervention("set", Site("z", 0, head=0), torch.ones(3)),))])


def test_no_state_on_the_model(model):
    from interp.engine import _TAIL_OK, tail_ok

    assert tail_ok(model) is True
    assert model in _TAIL_OK and not hasattr(model, "_interp_tail_ok")


def test_slice_positions_add_from_a_position_on(model):
    vec = torch.full((model.cfg.d_model,), 0.5)
    out = run(model, TOKENS, [World((Intervention("add", Site("resid_pre", 1), vec, positions=slice(2, None)),))],
              positions=LAST, record=[Site("resid_pre", 1)])
    with torch.inference_mode(), capturing(model, [Site("resid_pre", 1)]) as acts:
        model(TOKENS)
    want = acts[Site("resid_pre", 1)].clone()
    want[:, 2:] += vec
    torch.testing.assert_close(out.recorded[0][Site("resid_pre", 1)], want)


def test_gate_tiles_and_live_values_against_hand_oracle(model):
    """[tile, head] gates split the rows into equal consecutive tiles; a callable value is read per pass."""
    from interp.engine import intervening_worlds

    z_site = Site("z", 1)
    tokens = TOKENS.repeat(2, 1)                                    # 2 tiles of the 2 prompts
    with torch.inference_mode(), capturing(model, [z_site]) as acts:
        model(tokens)
    clean = acts[z_site]
    tiles = torch.tensor([[0.0, 1.0, 2.0, 1.0], [1.0, 0.5, 1.0, 0.0]])
    oracle = clean * tiles.repeat_interleave(2, 0)[:, None, :, None]
    box = {"g": tiles}
    with torch.inference_mode(), intervening(model, [Intervention("gate", z_site, lambda: box["g"])]), \
            capturing(model, [z_site]) as got:
        model(tokens)
        assert torch.allclose(got[z_site], oracle, atol=1e-6)
        box["g"] = None                                             # a live gate that is off
        model(tokens)
        assert torch.allclose(got[z_site], clean, atol=1e-6)
    with pytest.raises(ShapeError, match="tile"), intervening(model, [Intervention("gate", z_site, tiles)]):
        model(tokens[:3])                                           # 3 rows do not split into 2 tiles
    # intervening_worlds: one block of rows per world, any pass the caller runs
    worlds = [World((Intervention("gate", z_site, tiles[k]),)) for k in range(2)]
    with torch.inference_mode(), intervening_worlds(model, worlds, 2, record=[z_site]) as rec, \
            capturing(model, [z_site]) as got:
        model(tokens)
    assert torch.allclose(got[z_site], oracle, atol=1e-6)
    assert torch.allclose(rec[1][z_site], oracle[2:], atol=1e-6)
    with pytest.raises(ShapeError, match="rows in the pass"), intervening_worlds(model, worlds, 2):
        model(TOKENS)
    with pytest.raises(ConfigError, match="entering"), intervening_worlds(model, [World(enter=1)], 2):
        pass
