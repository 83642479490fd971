"""Per-layer transcoders on toy:llama: training, resumable storage, checks on load, evaluation."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from interp.errors import ConfigError, SiteError, StoreError
from interp.sites import Site

TEXTS = [f"the quick brown fox {i} jumps over the lazy dog number {i * 7}" for i in range(40)]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # tiny matmuls on a shared 2-core machine: one thread is ~100x faster than two contended ones
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def store(toy_llama):
    from interp.cache import collect

    return collect(toy_llama, TEXTS, "mlp_in,mlp_out", progress=False)


@pytest.fixture(scope="module")
def trained(toy_llama, store, tmp_path_factory):
    from interp.transcoders import TranscoderTrainConfig, train_transcoders

    root = tmp_path_factory.mktemp("tc")
    cfg = TranscoderTrainConfig(d_sae=128, k=8, steps=300, batch_size=128, lr=3e-3)
    return root, train_transcoders(toy_llama, store, cfg, folder=root)


def test_trains_every_layer_in_sae_lens_format(toy_llama, trained):
    from sae_lens import SAE
    from sae_lens.saes.transcoder import JumpReLUTranscoder

    root, recs = trained
    assert [(r.layer, r.skipped) for r in recs] == [(0, False), (1, False)]
    for layer in (0, 1):
        tc = SAE.load_from_disk(str(root / f"L{layer}"))      # SAE-Lens's own loader reads it
        assert isinstance(tc, JumpReLUTranscoder)
        assert (tc.cfg.d_in, tc.cfg.d_out, tc.cfg.d_sae) == (64, 64, 128)
        assert tc.cfg.metadata.hook_name == Site("mlp_in", layer).hook_name
        assert tc.cfg.metadata.hook_name_out == Site("mlp_out", layer).hook_name


def test_transcoders_reconstruct_mlp_out_sparsely(toy_llama, trained):
    from interp import tokenize
    from interp.schemas import schema_for
    from interp.transcoders import evaluate_transcoders, load_transcoders

    root, _ = trained
    tcs = load_transcoders(toy_llama, root)
    held = tokenize(toy_llama, [f"a lazy dog {i} and the brown fox {i + 3}" for i in range(6)])
    ev = evaluate_transcoders(toy_llama, tcs, held.tokens, lengths=held.lengths)
    assert ev.kind == "transcoders.eval" and list(ev.table.columns) == list(schema_for("transcoders.eval").names())
    ev.validate()
    rows = ev.table.set_index("layer")
    for layer in (0, 1):
        # a broken trainer (unfolded data scales, dead features) gives EV <= 0 and/or L0 0
        assert rows.loc[layer, "explained_variance"] > 0.5   # held-out text of another form
        assert 1.0 <= rows.loc[layer, "l0"] <= 16.0           # top-k with k=8
        assert rows.loc[layer, "n_sink_tokens"] == 6           # position 0 of each of the 6 rows
    assert ev.meta.extra["loss_original"] > 0 and ev.meta.extra["loss_replacement"] > 0


def test_inference_l0_equals_k_on_the_calibration_tokens(toy_llama, store, trained):
    """The JumpReLU thresholds are calibrated per feature so that, on the training tokens (all of
    them are the calibration set on this toy), each feature fires exactly as often as under top-k:
    mean L0 = k (the old global mean-of-batch-minima threshold let ~16 per position through on
    SmolLM2 with k = 4)."""
    from interp.sae.data import flatten_store
    from interp.transcoders import load_transcoders
    from interp.transcoders.train import calibrate_thresholds, encode_tokens

    root, _ = trained
    tcs = load_transcoders(toy_llama, root)
    for layer, tc in tcs.items():
        x = flatten_store(store, Site("mlp_in", layer), start_pos=1).float()
        pre = (x @ tc.W_enc + tc.b_enc)[x.norm(dim=1) <= tc.cfg.metadata.interp_max_in_norm]
        assert int((torch.relu(pre).topk(8, dim=-1).values > 0).sum(1).min()) == 8   # k positive everywhere
        x = x[x.norm(dim=1) <= tc.cfg.metadata.interp_max_in_norm]           # training leaves sink tokens out
        l0 = float((encode_tokens(tc, x[:, None, :].expand(-1, 2, -1))[:, 1] != 0).sum(1).float().mean())
        # exact but for ties: every toy text opens with the same 4 tokens, and a threshold cannot
        # split identical activations, so a tied group at a feature's boundary drops out together
        assert l0 == pytest.approx(8.0, abs=0.25)
    gen = torch.Generator().manual_seed(0)
    pre = torch.randn(500, 40, generator=gen) + torch.linspace(-1, 1, 40)
    thr = calibrate_thresholds(pre, 3)
    _, idx = torch.relu(pre).topk(3, dim=-1)
    want = torch.bincount(idx.flatten(), minlength=40)
    assert torch.equal(((pre > thr) & (pre > 0)).sum(0), want)           # per feature, not just on average


def test_sink_positions_keep_the_real_mlp(toy_llama, trained):
    """Position 0 and tokens with a massive MLP input norm are not encoded; the replacement keeps the real MLP there."""
    from interp.hooks import capturing
    from interp.transcoders import load_transcoders, replaced_mlps
    from interp.transcoders.train import SINK_NORM_RATIO, encode_tokens, sink_positions

    root, _ = trained
    tcs = load_transcoders(toy_llama, root)
    tc = tcs[0]
    cap = tc.cfg.metadata.interp_max_in_norm
    assert tc.cfg.metadata.interp_start_pos == 1 and cap > 0
    x = torch.randn(2, 5, 64)
    x = x / x.norm(dim=-1, keepdim=True) * cap / SINK_NORM_RATIO             # median-sized tokens
    x[1, 3] *= SINK_NORM_RATIO * 2                                           # a massive one
    want = torch.zeros(2, 5, dtype=torch.bool)
    want[:, 0] = True
    want[1, 3] = True
    assert torch.equal(sink_positions(tc, x), want)
    acts = encode_tokens(tc, x)
    assert not acts[want].any() and acts[~want].any()
    tokens = torch.tensor([[256, 72, 105, 99, 98, 101]])
    with torch.no_grad(), capturing(toy_llama, [Site("mlp_out", 0)]) as real:
        toy_llama(tokens)
    with torch.no_grad(), replaced_mlps(toy_llama, tcs), capturing(toy_llama, [Site("mlp_out", 0)]) as rep:
        toy_llama(tokens)
    a, b = real[Site("mlp_out", 0)][0], rep[Site("mlp_out", 0)][0]
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1:], b[1:])


def test_second_run_skips_finished_layers(toy_llama, store, trained):
    from interp.transcoders import train_transcoders

    root, _ = trained
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    again = train_transcoders(toy_llama, store, folder=root)
    assert [r.skipped for r in again] == [True, True]
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before


def test_replacement_with_zero_transcoders_is_mlp_ablation(toy_llama, trained):
    """Oracle for replaced_mlps: transcoders that output 0 give exactly the all-MLP zero-ablated model."""
    from interp.engine import Intervention, intervening
    from interp.metrics import next_token_loss
    from interp.transcoders import evaluate_transcoders, load_transcoders, replaced_mlps

    root, _ = trained
    tcs = load_transcoders(toy_llama, root)
    for tc in tcs.values():
        tc.W_dec.zero_()
        tc.b_dec.zero_()
    tokens = torch.tensor([[256, 72, 105, 99, 98, 101]])
    with torch.no_grad(), replaced_mlps(toy_llama, tcs):
        got = toy_llama(tokens)
    # position 0 is a sink position (real MLP kept); every other one is zero-ablated
    ablate = [Intervention("ablate", Site("mlp_out", x), positions=slice(1, None)) for x in (0, 1)]
    with torch.no_grad(), intervening(toy_llama, ablate):
        want = toy_llama(tokens)
    assert torch.allclose(got, want, atol=1e-5)
    ev = evaluate_transcoders(toy_llama, tcs, tokens)
    mask = torch.ones(1, 5, dtype=torch.bool) & (torch.arange(5) >= 1)
    assert ev.meta.extra["loss_replacement"] == pytest.approx(float(next_token_loss(want, tokens, mask)), rel=1e-5)
    assert ev.meta.extra["loss_zero_mlps"] == pytest.approx(ev.meta.extra["loss_replacement"], rel=1e-6)
    rows = ev.table.set_index("layer")
    assert rows.loc[0, "l0"] > 0                       # the encoder still runs
    with torch.no_grad():                                  # EV of a zero output, computed independently
        from interp.hooks import capturing
        with capturing(toy_llama, [Site("mlp_out", 0)]) as acts:
            toy_llama(tokens)
        y = acts[Site("mlp_out", 0)][0, 1:]
        want_ev = 1 - float(y.pow(2).sum()) / float((y - y.mean(0)).pow(2).sum())
    assert rows.loc[0, "explained_variance"] == pytest.approx(want_ev, rel=1e-4)


def test_refuses_other_identity_layout_and_names_missing_layers(toy_llama, trained, tmp_path):
    from interp.transcoders import load_transcoders

    root, _ = trained
    for key, value, word in (("interp_model_identity", "0000.raw.float32.bos", "model_identity"),
                             ("interp_n_layers", 12, "n_layers"), ("interp_layer", 0, "layer")):
        copy = tmp_path / key
        shutil.copytree(root, copy)
        cfg_path = copy / "L1" / "cfg.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["metadata"][key] = value
        cfg_path.write_text(json.dumps(cfg))
        with pytest.raises(ConfigError, match=word):
            load_transcoders(toy_llama, copy)
    partial = tmp_path / "partial"
    shutil.copytree(root, partial)
    shutil.rmtree(partial / "L1")
    with pytest.raises(StoreError, match=r"layer\(s\) 1 "):
        load_transcoders(toy_llama, partial)
    assert list(load_transcoders(toy_llama, partial, layers=[0])) == [0]


def test_refuses_store_from_other_model_or_without_sites(toy_llama, store, tmp_path):
    from interp.cache import collect
    from interp.transcoders import train_transcoders

    class Foreign:
        model = {"revision": "ffff.raw.float32.bos"}
        sites = store.sites

        def __getitem__(self, site):
            return store[site]

    with pytest.raises(ConfigError, match="ffff"):
        train_transcoders(toy_llama, Foreign(), folder=tmp_path)
    only_in = collect(toy_llama, TEXTS[:4], "mlp_in", progress=False)
    with pytest.raises(SiteError, match="mlp_out.0"):
        train_transcoders(toy_llama, only_in, folder=tmp_path)


def test_jumprelu_trainer_runs(toy_llama, store, tmp_path):
    from interp.transcoders import TranscoderTrainConfig, train_transcoders

    recs = train_transcoders(toy_llama, store, TranscoderTrainConfig(architecture="jumprelu", d_sae=64, steps=20,
                                                                     batch_size=64), layers=[1], folder=tmp_path)
    assert recs[0].layer == 1 and (tmp_path / "L1" / "cfg.json").is_file() and not (tmp_path / "L0").exists()
    assert recs[0].final_l0 > 0
