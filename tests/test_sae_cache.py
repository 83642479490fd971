"""SAE activation cache on disk: checksums, confined paths, one writer, atomic replacement, NaN refused."""

import json
import os

import pytest
import torch

from interp._fs import folder_lock
from interp.errors import DataError, StoreError
from interp.sae.data import ActivationShards, cache_activations, capture_activations
from interp.sites import Site

SITE = Site("resid_post", 1)


@pytest.fixture(scope="module")
def rows(toy_llama):
    g = torch.Generator().manual_seed(0)
    return torch.randint(3, 250, (12, 16), generator=g)


@pytest.fixture()
def cache(toy_llama, rows, tmp_path):
    return cache_activations(toy_llama, rows, [SITE], tmp_path / "acts", batch_size=4, shard_tokens=50)


def test_cache_round_trips_with_checksums_and_umask_modes(toy_llama, rows, cache):
    sh = ActivationShards(cache, SITE)
    want = capture_activations(toy_llama, rows, [SITE], batch_size=4)[SITE]
    got = torch.cat([sh.load(i) for i in range(len(sh))])
    assert len(sh) == 4 and sh.n_tokens == want.shape[0] == 12 * 15 and torch.equal(got, want)
    man = json.loads((cache / "manifest.json").read_text())
    entry = man["sites"]["resid_post.1"]["shards"][0]
    assert man["format"] == "interp.sae.acts/2" and entry["shape"] == [50, 64] and len(entry["sha256"]) == 64
    assert entry["bytes"] == (cache / entry["file"]).stat().st_size
    assert sorted(p.name for p in cache.iterdir()) == ["manifest.json", "resid_post.1"]   # no lock, no staging
    umask = os.umask(0o022)
    os.umask(umask)
    assert (cache / "manifest.json").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("damage, message", [("truncate", "truncated or altered"), ("alter", "truncated or altered"),
                                             ("delete", "missing")])
def test_damaged_shard_is_refused_naming_it(cache, damage, message):
    sh = ActivationShards(cache, SITE)
    p = sh.shards[2]
    data = p.read_bytes()
    if damage == "truncate":
        p.write_bytes(data[:-8])
    elif damage == "alter":
        p.write_bytes(data[:-8] + bytes(b ^ 0xFF for b in data[-8:]))
    else:
        p.unlink()
    assert torch.equal(sh.load(0), ActivationShards(cache, SITE).load(0))     # others still load
    with pytest.raises(StoreError, match=rf"{p.name} is {message}"):
        sh.load(2)


@pytest.mark.parametrize("value, message", [("../../etc/passwd", r"'\.\.'"), ("/etc/passwd", "absolute"),
                                            ("link.safetensors", "symbolic link")])
def test_hostile_manifest_paths_are_refused(cache, tmp_path, value, message):
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    (cache / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    man = json.loads((cache / "manifest.json").read_text())
    man["sites"]["resid_post.1"]["shards"][1]["file"] = value
    (cache / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(StoreError, match=rf"manifest.json \(sites\['resid_post.1'\].shards\[1\].file\).*{message}"):
        ActivationShards(cache, SITE)


def test_old_format_is_refused_with_a_hint(cache):
    man = json.loads((cache / "manifest.json").read_text())
    man["format"] = "interp.sae.acts/1"
    (cache / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(StoreError, match="older cache without checksums"):
        ActivationShards(cache, SITE)


def test_one_writer_and_existing_cache_untouched_on_error(toy_llama, rows, cache):
    with folder_lock(cache, what="SAE activation cache"):
        with pytest.raises(StoreError, match=rf"{cache} is being written by another process \(pid {os.getpid()}"):
            cache_activations(toy_llama, rows, [SITE], cache, overwrite=True)
    before = {p: p.read_bytes() for p in sorted(cache.rglob("*")) if p.is_file()}
    with pytest.raises(StoreError, match="exists; pass overwrite"):
        cache_activations(toy_llama, rows, [SITE], cache)
    bad = rows.clone()
    bad[0, 0] = 10**6                                                  # out of vocabulary: fails mid-run
    with pytest.raises(Exception):
        cache_activations(toy_llama, bad, [SITE], cache, overwrite=True)
    assert {p: p.read_bytes() for p in sorted(cache.rglob("*")) if p.is_file()} == before


def test_nan_weight_is_refused_naming_site_row_and_position(rows, tmp_path):
    from interp.models import load_model

    model = load_model("toy:llama")                                    # a private copy: the weight is spoiled
    tok = int(rows[5, 7])
    with torch.no_grad():
        dict(model.named_parameters())["model.embed_tokens._original_component.weight"][tok, 3] = float("nan")
    # the embedding is NaN exactly where the token is; after attention (a NaN value times a zero
    # weight is NaN) the whole row is. Positions < start_pos=1 are not cached.
    hits = [(r, int(p)) for r in range(len(rows)) for p in (rows[r] == tok).nonzero().flatten() if p >= 1]
    row, pos = min(hits)
    with pytest.raises(DataError, match=rf"resid_pre.0 .*NaN activations at row {row} .*position {pos}:"):
        cache_activations(model, rows, [Site("resid_pre", 0)], tmp_path / "nan", batch_size=4)
    row = min(r for r in range(len(rows)) if (rows[r] == tok).any())
    with pytest.raises(DataError, match=rf"resid_post.1 .*NaN activations at row {row} .*position 1:"):
        cache_activations(model, rows, [SITE], tmp_path / "nan", batch_size=4)
    assert not (tmp_path / "nan").exists()                             # a new folder is removed on error
    out = cache_activations(model, rows, [SITE], tmp_path / "nan", batch_size=4, allow_nonfinite=True)
    assert torch.isnan(ActivationShards(out, SITE).load(0)).any()
