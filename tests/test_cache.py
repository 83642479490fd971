"""Activation store on toy models: values against a hand-written forward, padding, shards, resume, reducers."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from interp.cache import ActivationStore, FnReducer, Mean, MeanNorm, TopK, collect
from interp.errors import ConfigError, DataError, SiteError, StoreError
from interp.hooks import hooked
from interp.sites import Site

PROMPTS = ["The cat sat on the mat.", "Hi", "A somewhat longer prompt, with punctuation!", "ok then", "x"]


def _done(out):
    """Shard files recorded as complete in the store's completed.jsonl, in record order."""
    rec = out / "completed.jsonl"
    return [json.loads(line)["file"] for line in rec.read_text().splitlines()] if rec.exists() else []


def _collect_module():
    import importlib

    return importlib.import_module("interp.cache.collector")


# ---------------------------------------------------------------- values
def _hand_layer0(folder, ids):
    """Layer 0 of the toy Llama written out from the safetensors weights: (resid_post, pattern)."""
    from safetensors.torch import load_file

    W = load_file(os.path.join(folder, "model.safetensors"))
    cfg = json.load(open(os.path.join(folder, "config.json")))
    eps, theta = cfg["rms_norm_eps"], cfg["rope_parameters"]["rope_theta"]
    H, KV, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
    dh = d // H
    L = "model.layers.0."

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    x = W["model.embed_tokens.weight"][torch.tensor(ids)]                 # [T, d]
    T = x.shape[0]
    h = rms(x, W[L + "input_layernorm.weight"])
    q = (h @ W[L + "self_attn.q_proj.weight"].T).view(T, H, dh)
    k = (h @ W[L + "self_attn.k_proj.weight"].T).view(T, KV, dh)
    v = (h @ W[L + "self_attn.v_proj.weight"].T).view(T, KV, dh)
    inv = 1.0 / theta ** (torch.arange(0, dh, 2).float() / dh)
    ang = torch.arange(T).float()[:, None] * inv[None]                    # [T, dh/2]
    cos, sin = torch.cat([ang.cos()] * 2, -1)[:, None], torch.cat([ang.sin()] * 2, -1)[:, None]

    def rot(t):
        return torch.cat([-t[..., dh // 2:], t[..., : dh // 2]], -1)

    q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
    k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(dh)
    scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    pattern = scores.softmax(-1)                                          # [H, q, k]
    z = torch.einsum("hqk,khd->qhd", pattern, v).reshape(T, d)
    resid_mid = x + z @ W[L + "self_attn.o_proj.weight"].T
    m = rms(resid_mid, W[L + "post_attention_layernorm.weight"])
    mlp = (torch.nn.functional.silu(m @ W[L + "mlp.gate_proj.weight"].T) * (m @ W[L + "mlp.up_proj.weight"].T)) \
        @ W[L + "mlp.down_proj.weight"].T
    return resid_mid + mlp, pattern


def test_cached_activations_equal_hand_written_forward(toy_llama):
    store = collect(toy_llama, PROMPTS, ["resid_post.0", "pattern.0"], batch_size=3, progress=False)
    for i, row in enumerate(store.tokens):
        n = int(store.lengths[i])
        resid, pattern = _hand_layer0(toy_llama.interp_info.path, row[:n].tolist())
        assert torch.allclose(store[Site("resid_post", 0), i, :n], resid, atol=1e-5)
        assert torch.allclose(store[Site("pattern", 0), i][:, :n, :n], pattern, atol=1e-6)


def test_padded_batch_equals_single_runs_and_padding_is_zero(toy_llama):
    sites = "resid_post,pattern,z.1.2"
    batched = collect(toy_llama, PROMPTS, sites, batch_size=2, progress=False)  # 3 batches of different widths
    assert batched.tokens.shape[0] == len(PROMPTS)
    for i, p in enumerate(PROMPTS):
        single = collect(toy_llama, [p], sites, progress=False)
        n = int(batched.lengths[i])
        assert single.texts == (p,) and int(single.lengths[0]) == n
        for s in batched.sites:
            got, want = batched[s, i], single[s, 0]
            if s.component == "pattern":
                assert torch.allclose(got[:, :n, :n], want, atol=1e-6)
                assert got[:, n:].abs().sum() == 0 and got[:, :, n:].abs().sum() == 0
            else:
                assert torch.allclose(got[:n], want, atol=1e-5)
                assert got[n:].abs().sum() == 0
    assert batched["z.1.2"].shape == (len(PROMPTS), batched.tokens.shape[1], toy_llama.cfg.d_head)


def test_keeps_only_requested_sites_and_stops_early(toy_llama):
    later = []
    with hooked(toy_llama, {Site("resid_pre", 1): lambda a, s: later.append(s)}):
        store = collect(toy_llama, PROMPTS, ["resid_post.0"], progress=False)
    assert later == [] and store.sites == (Site("resid_post", 0),)
    with pytest.raises(SiteError, match="resid_post.0"):
        store[Site("resid_post", 1)]


def test_dtype_and_head_selection(toy_llama):
    full = collect(toy_llama, PROMPTS, "z.1", progress=False)
    half = collect(toy_llama, PROMPTS, "z.1", dtype="float16", progress=False)
    assert half.dtype == torch.float16 and half["z.1"].dtype == torch.float16
    assert torch.allclose(half["z.1"].float(), full["z.1"], atol=2e-3)
    assert torch.equal(full[Site("z", 1, 3)], full["z.1"][:, :, 3])


# ---------------------------------------------------------------- disk
def test_disk_store_equals_ram_manifest_and_lazy_loading(toy_llama, tmp_path):
    out = tmp_path / "store"
    disk = collect(toy_llama, PROMPTS * 4, "resid_post,pattern.1", batch_size=4, out=out, max_memory="600kB",
                   progress=False)
    ram = collect(toy_llama, PROMPTS * 4, "resid_post,pattern.1", batch_size=4, progress=False)
    shards = sorted(p.name for p in out.glob("shard-*.safetensors"))
    man = json.loads((out / "manifest.json").read_text())
    assert len(shards) > 1 and shards == _done(out) == [s["file"] for s in man["shards"]]
    assert man["model"]["spec"] == "toy:llama" and man["model"]["revision"] == toy_llama.interp_info.revision
    assert man["sites"] == ["resid_post.0", "resid_post.1", "pattern.1"] and man["dtype"] == "float32"
    assert disk.texts == ram.texts == tuple(PROMPTS * 4) and torch.equal(disk.tokens, ram.tokens)
    assert man["n_prompts"] == 20 and man["n_tokens"] == int(ram.lengths.sum()) and "prompts" not in man
    assert "torch" in man["versions"] and man["site_info"]["pattern.1"]["dims"][1] == "head"
    assert not list(out.glob("*.tmp"))
    assert all((out / f).stat().st_size <= 300_000 + 8192 for f in shards)  # <= max_memory / 2 (+ header)
    for s in ram.sites:
        assert torch.equal(disk[s], ram[s])
    assert torch.equal(disk[Site("resid_post", 1), [7, 2], 1:4], ram[Site("resid_post", 1)][[7, 2], 1:4])
    # lazy: opening reads the manifest only; a deleted shard only breaks the prompts it held
    reopened = ActivationStore.open(out)
    victim = man["shards"][0]
    from safetensors.torch import load_file

    order = load_file(str(out / "tokens.safetensors"))["order"].tolist()
    held = set(order[victim["first"]: victim["last"] + 1])
    (out / victim["file"]).unlink()
    other = next(i for i in range(len(reopened)) if i not in held)
    assert torch.equal(reopened[Site("resid_post", 0), other], ram[Site("resid_post", 0), other])
    with pytest.raises(StoreError, match="missing"):
        reopened[Site("resid_post", 0), sorted(held)[0]]


def test_pattern_slices_by_prompt_and_query_positions(toy_llama, tmp_path):
    disk = collect(toy_llama, PROMPTS, "pattern.0", out=tmp_path / "s", max_memory="200kB", batch_size=2,
                   progress=False)
    full = disk[Site("pattern", 0)]
    part = disk[Site("pattern", 0), 2:4, 1:3]
    n = int(disk.lengths[2:4].max())
    assert torch.equal(part, full[2:4, :, 1:3, :n])


def test_shard_write_is_atomic(toy_llama, tmp_path, monkeypatch):
    import safetensors.torch as st

    real = st.save_file
    calls = []

    def half_then_die(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            with open(filename, "wb") as f:
                f.write(b"partial")
            raise OSError("disk full")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(st, "save_file", half_then_die)
    out = tmp_path / "s"
    with pytest.raises(StoreError, match=r"cannot write shard shard-\d{8}-\d{8}\.safetensors in .*: disk full"):
        collect(toy_llama, PROMPTS * 4, "resid_post", batch_size=4, out=out, max_memory="400kB", progress=False)
    files = sorted(p.name for p in out.iterdir())
    assert [f for f in files if f.startswith("shard-")] == _done(out) and len(_done(out)) == 1
    assert not [f for f in files if f.endswith(".tmp")]


def _shard_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.safetensors"))}


def test_interrupted_run_resumes_with_identical_shards(toy_llama, tmp_path, monkeypatch):
    prompts = [f"prompt number {i} " + "ab" * (i % 7) for i in range(32)]
    kw = dict(batch_size=4, max_memory="1MB", progress=False)
    ref = tmp_path / "ref"
    collect(toy_llama, prompts, "resid_post,pattern", out=ref, **kw)
    assert len(_shard_bytes(ref)) > 2

    mod = _collect_module()
    real = mod._write_shard
    written = []

    def die_after_two(out, shard, tensors):
        if len(written) == 2:
            raise KeyboardInterrupt("simulated kill")
        real(out, shard, tensors)
        written.append(shard.name)

    monkeypatch.setattr(mod, "_write_shard", die_after_two)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        collect(toy_llama, prompts, "resid_post,pattern", out=out, **kw)
    monkeypatch.setattr(mod, "_write_shard", real)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.safetensors")}
    assert sorted(before) == sorted(written)
    with pytest.raises(StoreError, match="incomplete"):
        ActivationStore.open(out)[Site("resid_post", 0)]

    store = collect(toy_llama, prompts, "resid_post,pattern", out=out, **kw)
    assert _shard_bytes(out) == _shard_bytes(ref)
    assert {n: (out / n).stat().st_mtime_ns for n in before} == before      # done shards not recomputed
    from safetensors.torch import load_file

    ids = torch.cat([t for p in sorted(out.glob("shard-*.safetensors"))
                     for k, t in sorted(load_file(str(p)).items()) if k.startswith("prompt_ids@")])
    assert sorted(ids.tolist()) == list(range(len(prompts)))                # every prompt exactly once
    assert store.complete and torch.equal(store[Site("pattern", 1)], ActivationStore.open(ref)[Site("pattern", 1)])


@pytest.mark.slow
def test_killed_process_resumes_with_identical_shards(toy_llama, tmp_path):
    """SIGKILL a real `collect` mid-run (shard writes slowed down), rerun it: same shards as an uninterrupted run."""
    prompts = [f"line {i} " + "xy" * (i % 5) for i in range(40)]
    kw = dict(batch_size=4, max_memory="300kB", progress=False)
    ref = tmp_path / "ref"
    collect(toy_llama, prompts, "resid_post,pattern", out=ref, **kw)
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    out = tmp_path / "run"
    script = textwrap.dedent(f"""
        import json, time
        import interp.cache.collector as mod
        from interp import load_model
        real = mod._write_shard
        def slow(*a):
            real(*a); time.sleep(0.5)
        mod._write_shard = slow
        prompts = json.load(open({str(tmp_path / 'prompts.json')!r}))
        mod.collect(load_model("toy:llama"), prompts, "resid_post,pattern", out={str(out)!r}, **{kw!r})
    """)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=repo)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            if len(_done(out)) >= 2:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    n_done = len(_done(out))
    assert 2 <= n_done < len(_shard_bytes(ref))
    collect(toy_llama, prompts, "resid_post,pattern", out=out, **kw)
    assert _shard_bytes(out) == _shard_bytes(ref)
    assert not list(out.glob("*.tmp")) or all(p.name.startswith(".shard-") for p in out.glob("*.tmp"))


# ---------------------------------------------------------------- reducers
def test_reducers_equal_full_computation(toy_llama):
    s0, z1 = Site("resid_post", 0), Site("z", 1)
    prompts = PROMPTS * 3
    full = collect(toy_llama, prompts, [s0, z1], batch_size=4, progress=False)
    mask = full.mask
    tok0, tokz = full[s0][mask].double(), full[z1][mask].double()      # [n_tokens, ...]
    reds = {"mean": Mean([s0, z1]), "norm": MeanNorm([s0, z1]), "top": TopK([s0], k=5),
            "top507": TopK(s0, k=3, score=lambda x: x[:, 7]),
            "count": FnReducer([s0], lambda st, x, s: st + int((x > 0).sum()), init=0)}
    only = collect(toy_llama, prompts, None, batch_size=4, reducers=reds, progress=False)
    assert only.sites == () and set(only.reductions) == set(reds)
    r = only.reductions
    assert torch.allclose(r["mean"][s0], tok0.mean(0), atol=1e-6)
    assert torch.allclose(r["mean"][z1], tokz.mean(0), atol=1e-6)
    assert torch.allclose(r["norm"][s0], tok0.norm(dim=-1).mean(), atol=1e-6)
    assert torch.allclose(r["norm"][z1], tokz.norm(dim=-1).mean(0), atol=1e-6)
    # top-k: the true k largest values, and each (prompt, pos) index points at its value
    full_norm = full[s0].double().norm(dim=-1)                          # [batch, pos]
    top = r["top"][s0]
    assert torch.allclose(top.values, tok0.norm(dim=-1).topk(5).values, atol=1e-6)
    assert torch.allclose(full_norm[top.prompt, top.pos], top.values, atol=1e-6)
    assert bool(mask[top.prompt, top.pos].all())
    t7 = r["top507"][s0]
    assert torch.allclose(t7.values, tok0[:, 7].topk(3).values, atol=1e-6)
    assert torch.allclose(full[s0].double()[t7.prompt, t7.pos, 7], t7.values, atol=1e-6)
    assert r["count"][s0] == int((tok0 > 0).sum())


def test_reducer_errors(toy_llama):
    with pytest.raises(ConfigError, match="pos"):
        Mean(["pattern.0"])
    with pytest.raises(ConfigError, match="Reducer protocol"):
        collect(toy_llama, PROMPTS, None, reducers={"bad": object()}, progress=False)
    with pytest.raises(ConfigError, match="nothing to collect"):
        collect(toy_llama, PROMPTS, None, progress=False)


# ---------------------------------------------------------------- bad input
def test_bad_inputs_are_clear_and_write_nothing(toy_llama, tmp_path):
    out = tmp_path / "s"
    with pytest.raises(DataError, match="no prompts"):
        collect(toy_llama, [], "resid_post", out=out, progress=False)
    with pytest.raises(DataError, match="prompt 1 has .* tokens, more than"):
        collect(toy_llama, ["ok", "y" * 400], "resid_post", out=out, progress=False)
    with pytest.raises(SiteError, match="resid_post"):
        collect(toy_llama, ["ok"], "resid_psot", out=out, progress=False)
    with pytest.raises(SiteError, match="out of range"):
        collect(toy_llama, ["ok"], "resid_post.9", out=out, progress=False)
    assert not out.exists()
    with pytest.raises(StoreError, match="pass out="):
        collect(toy_llama, PROMPTS, "resid_post,pattern", max_memory="1kB", progress=False)
    with pytest.raises(StoreError, match="lower batch_size"):
        collect(toy_llama, PROMPTS, "resid_post", out=out, max_memory="2kB", progress=False)
    with pytest.raises(StoreError, match="memory size"):
        collect(toy_llama, PROMPTS, "resid_post", max_memory="lots", progress=False)
    assert not out.exists()


def test_different_manifest_refused_unless_overwrite(toy_llama, tmp_path):
    out = tmp_path / "s"
    collect(toy_llama, PROMPTS, "resid_post.0", out=out, progress=False)
    with pytest.raises(StoreError, match="differs in: sites"):
        collect(toy_llama, PROMPTS, "resid_post.1", out=out, progress=False)
    with pytest.raises(StoreError, match="differs in: tokens"):
        collect(toy_llama, PROMPTS[:2], "resid_post.0", out=out, progress=False)
    store = collect(toy_llama, PROMPTS[:2], "resid_post.1", out=out, overwrite=True, progress=False)
    assert store.sites == (Site("resid_post", 1),) and len(store) == 2
    assert len(list(out.glob("shard-*.safetensors"))) == 1
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "manifest.json").write_text(json.dumps({"format": "interp.results/1", "results": []}))
    with pytest.raises(StoreError, match="not an activation store"):
        collect(toy_llama, PROMPTS, "resid_post.0", out=tmp_path / "r", progress=False)


# ---------------------------------------------------------------- CLI
def _cli(args):
    from typer.testing import CliRunner

    from interp import cli

    if not any(c.name == "cache" for c in cli.app.registered_commands):
        cli._register_all()
    return CliRunner().invoke(cli.app, args)


def test_cli_cache_writes_store_equal_to_collect(toy_llama, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    res = _cli(["cache", "toy:llama", "--prompts", str(f), "--sites", "resid_post,pattern", "--out",
                str(tmp_path / "s"), "--batch-size", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "cached 5 prompts" in res.output
    disk = ActivationStore.open(tmp_path / "s")
    ram = collect(toy_llama, PROMPTS, "resid_post,pattern", batch_size=2, progress=False)
    for s in ram.sites:
        assert torch.equal(disk[s], ram[s])


@pytest.mark.parametrize("content", [b"", b"\n\n", b"caf\xe9 au lait\n"])
def test_cli_bad_prompt_files_write_nothing(tmp_path, content):
    f = tmp_path / "p.txt"
    f.write_bytes(content)
    res = _cli(["cache", "toy:llama", "--prompts", str(f), "--out", str(tmp_path / "s"), "--no-progress"])
    assert res.exit_code != 0
    assert isinstance(res.exception, DataError) and ("UTF-8" in str(res.exception) or "no prompts" in str(res.exception))
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------- non-finite activations
def _spoiled(name, index):
    """A private toy Llama with one weight element set to NaN (the session fixture stays clean)."""
    from interp.models import load_model

    model = load_model("toy:llama")
    with torch.no_grad():
        dict(model.named_parameters())[name][index] = float("nan")
    return model


def test_nan_weight_is_refused_naming_site_prompt_and_position(tmp_path):
    prompts = ["abc", "hello", "xyz", "a zebra", "zz top"]
    z = 122                                                              # the byte tokenizer's id of "z"
    model = _spoiled("model.embed_tokens._original_component.weight", (z, 5))
    assert model.tokenizer("z", add_special_tokens=False).input_ids == [z]
    toks = [model.tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    first = min(i for i, t in enumerate(toks) if z in t)                  # prompt 2
    pos = toks[first].index(z) + int(model.cfg.default_prepend_bos)      # the embedding is NaN exactly there
    out = tmp_path / "s"
    with pytest.raises(DataError, match=rf"resid_pre.0 \(blocks.0.hook_resid_pre\) has NaN activations at prompt "
                                        rf"{first}, position {pos} \('xyz'\).*allow_nonfinite=True"):
        collect(model, prompts, "resid_pre.0,resid_post", out=out, progress=False)
    assert not list(out.glob("shard-*"))                                  # nothing stored
    with pytest.raises(DataError, match="resid_pre.0 .* at prompt 2"):
        collect(model, prompts, "resid_pre.0", progress=False)           # in RAM too
    store = collect(model, prompts, "resid_pre.0", out=out, overwrite=True, allow_nonfinite=True, progress=False)
    kept = store["resid_pre.0", first]
    assert torch.isnan(kept[pos, 5]) and int(torch.isnan(kept).sum()) == 1 and torch.isfinite(store["resid_pre.0", 0]).all()


def test_nan_in_a_later_layer_names_that_layer(tmp_path):
    model = _spoiled("model.layers.1._original_component.mlp._original_component.down_proj._original_component.weight",
                     (7, 3))
    with pytest.raises(DataError, match=r"collect: resid_post.1 .* NaN activations at prompt 0, position 0"):
        collect(model, PROMPTS, "resid_post", batch_size=8, progress=False)   # resid_post.0 is finite
    red = {"m": Mean(["resid_post.1"])}
    with pytest.raises(DataError, match="resid_post.1"):
        collect(model, PROMPTS, None, reducers=red, progress=False)           # reducer inputs are checked too


def test_float16_overflow_is_refused():
    model = _spoiled("model.norm._original_component.weight", 0)
    with torch.no_grad():
        dict(model.named_parameters())["model.norm._original_component.weight"][0] = 1e9   # finite in fp32
    assert torch.isfinite(collect(model, PROMPTS, "ln_final", progress=False)["ln_final"]).all()
    with pytest.raises(DataError, match=r"ln_final .* inf activations .*overflow in float16"):
        collect(model, PROMPTS, "ln_final", dtype="float16", progress=False)
