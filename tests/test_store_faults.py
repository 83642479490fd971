"""Activation stores under faults: concurrent writers, kills at each step of a shard write, hostile manifests."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = [f"prompt number {i} " + "ab" * (i % 7) for i in range(24)]


def _py(script, *args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ---------------------------------------------------------------- concurrency
_CLI_RUN = """
    import os, sys, time
    import interp.cache.collector as mod
    mod._fault = lambda point, path: time.sleep(0.2)       # slow shard writes: the runs overlap
    go = sys.argv[1]
    while not os.path.exists(go):
        time.sleep(0.001)
    sys.argv = ["interp", *sys.argv[2:]]
    from interp.cli import main
    main()
"""


@pytest.mark.slow
def test_two_cli_cache_runs_into_one_folder_cannot_both_succeed(toy_llama, tmp_path):
    """Issue 15, item 4: two `interp cache` runs with different --sites into the same --out."""
    f = tmp_path / "p.txt"
    f.write_text("\n".join(PROMPTS) + "\n")
    out, go = tmp_path / "s", tmp_path / "go"
    common = ["cache", "toy:llama", "--prompts", f, "--out", out, "--batch-size", "2", "--max-memory", "100kB",
              "--no-progress"]
    procs = [_py(_CLI_RUN, go, *common, "--sites", sites) for sites in ("resid_post.0", "resid_post.1")]
    time.sleep(1.0)
    go.write_text("")
    res = [(p.wait(timeout=240), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in res)
    assert codes == [0, 2], res
    ok = next(r for r in res if r[0] == 0)
    bad = next(r for r in res if r[0] == 2)
    assert "cached 24 prompts" in ok[1] and "cached" not in bad[1]
    assert "being written by another process (pid" in bad[2] or "differs in: sites" in bad[2], bad[2]
    from interp.cache import ActivationStore

    store = ActivationStore.open(out)
    assert store.complete and len(store.sites) == 1 and not (out / ".lock").exists()


# ---------------------------------------------------------------- kills at each step of a shard write
KW = dict(batch_size=4, max_memory="300kB", progress=False)
SITES = "resid_post,pattern.1"


def _files(folder):
    """Every file of a store folder (no lock, no temp files) -> bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from interp.cache import collect
    from interp.models import load_model

    ref = tmp_path_factory.mktemp("ref") / "store"
    collect(load_model("toy:llama"), PROMPTS, SITES, out=ref, **KW)
    files = _files(ref)
    assert sum(n.startswith("shard-") for n in files) >= 4
    return ref, files


_KILL = """
    import json, os, sys
    from pathlib import Path
    import interp.cache.layout as layout
    from interp.cache import collect
    from interp.models import load_model
    point, how, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    seen = []

    def fault(p, path):
        if p != point:
            return
        seen.append(p)
        if len(seen) < 3:                      # die while writing the third shard
            return
        if how == "truncate":                  # a half-written temporary file
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        if how == "torn":                      # the record line cut short
            rec = out / "completed.jsonl"
            data = rec.read_bytes()
            rec.write_bytes(data[: len(data) - 20])
        os._exit(9)

    layout._fault = fault
    collect(load_model("toy:llama"), json.loads(sys.argv[4]), sys.argv[5], out=out, **json.loads(sys.argv[6]))
    print("finished without dying")
"""


@pytest.mark.parametrize("point, how", [("shard_written", "exit"), ("shard_written", "truncate"),
                                        ("recorded", "exit"), ("recorded", "torn"), ("renamed", "exit")])
def test_kill_at_each_step_of_a_shard_write_then_resume_equals_uninterrupted_run(reference, tmp_path, point, how):
    from interp.cache import ActivationStore, collect
    from interp.models import load_model

    ref, ref_files = reference
    out = tmp_path / "store"
    p = _py(_KILL, point, how, out, json.dumps(PROMPTS), SITES, json.dumps(KW))
    stdout, stderr = p.communicate(timeout=180)
    assert p.returncode == 9, (stdout, stderr[-2000:])
    left = {q.name for q in out.iterdir()}
    assert (point != "renamed") == any(n.endswith(".tmp") for n in left), left   # killed: nothing cleaned up
    assert len([n for n in left if n.startswith("shard-")]) == (3 if point == "renamed" else 2)
    with pytest.raises(Exception, match="incomplete|missing"):
        ActivationStore.open(out)["resid_post.0"]
    before = {q.name: q.stat().st_mtime_ns for q in out.glob("shard-*.safetensors")}
    store = collect(load_model("toy:llama"), PROMPTS, SITES, out=out, **KW)
    assert _files(out) == ref_files                                   # bit for bit, manifest and record included
    assert not list(out.glob("*.tmp")) and not (out / ".lock").exists()
    kept = {n for n, t in before.items() if (out / n).stat().st_mtime_ns == t}
    assert len(kept) == len(before)                                   # finished shards were not recomputed
    assert store.complete and torch_equal(store["pattern.1"], ActivationStore.open(ref)["pattern.1"])


def torch_equal(a, b):
    import torch

    return torch.equal(a, b)


# ---------------------------------------------------------------- damaged and hostile stores
def _copy(ref, tmp_path):
    import shutil

    out = tmp_path / "store"
    shutil.copytree(ref, out)
    return out


@pytest.mark.parametrize("damage", ["truncate", "alter", "delete"])
def test_damaged_shard_is_refused_on_read_and_recomputed_on_resume(reference, tmp_path, damage):
    from interp.cache import ActivationStore, collect
    from interp.errors import StoreError
    from interp.models import load_model

    ref, ref_files = reference
    out = _copy(ref, tmp_path)
    victim = sorted(out.glob("shard-*.safetensors"))[1]
    data = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(data[: len(data) - 100])
    elif damage == "alter":                                   # same size, one bit of one float flipped
        mid = len(data) // 2
        victim.write_bytes(data[:mid] + bytes([data[mid] ^ 1]) + data[mid + 1:])
    else:
        victim.unlink()
    store = ActivationStore.open(out)
    assert not store.complete or damage == "alter"            # size is checked cheaply; the checksum on read
    want = {"truncate": "truncated", "alter": "altered", "delete": "missing"}[damage]
    with pytest.raises(StoreError, match=rf"{victim.name}.*{want}"):
        store["resid_post.1"]
    other = sorted(out.glob("shard-*.safetensors"))[0]
    before = other.stat().st_mtime_ns
    collect(load_model("toy:llama"), PROMPTS, SITES, out=out, **KW)     # resume: recomputes the victim only
    assert _files(out) == ref_files and other.stat().st_mtime_ns == before


def test_tampered_tokens_and_texts_are_detected(reference, tmp_path):
    from safetensors.torch import load_file, save_file

    from interp.cache import ActivationStore, collect
    from interp.errors import StoreError
    from interp.models import load_model

    ref, ref_files = reference
    out = _copy(ref, tmp_path)
    t = load_file(str(out / "tokens.safetensors"))
    t["ids"][3] += 1
    save_file(t, str(out / "tokens.safetensors"), metadata={"format": "pt"})
    with pytest.raises(StoreError, match=r"tokens.safetensors does not match its checksum in .*manifest.json"):
        ActivationStore.open(out)
    collect(load_model("toy:llama"), PROMPTS, SITES, out=out, **KW)     # resume rewrites it from the prompts
    assert _files(out) == ref_files
    # the checksum itself edited in the manifest: refused too
    man = json.loads((out / "manifest.json").read_text())
    man["tokens"]["sha256"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(StoreError, match="tokens.safetensors does not match its checksum"):
        ActivationStore.open(out)
    man["tokens"]["sha256"] = json.loads(ref_files["manifest.json"])["tokens"]["sha256"]
    (out / "texts.jsonl").write_text((out / "texts.jsonl").read_text().replace("prompt number 3", "prompt number 4"))
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(StoreError, match="texts.jsonl does not match its checksum"):
        ActivationStore.open(out)


@pytest.mark.parametrize("where, value, message", [
    ("shard", "../outside.safetensors", r"manifest.json \(shards\[0\].file\).*'\.\.'"),
    ("shard", "/etc/hostname", r"manifest.json \(shards\[0\].file\).*absolute"),
    ("tokens", "../tokens.safetensors", r"manifest.json \(tokens.file\).*'\.\.'"),
    ("record", "../../x.safetensors", r"completed.jsonl \(line 1\).*'\.\.'"),
])
def test_hostile_manifest_paths_are_refused(reference, tmp_path, where, value, message):
    from interp.cache import ActivationStore
    from interp.errors import StoreError

    ref, _ = reference
    out = _copy(ref, tmp_path)
    if where == "record":
        rec = (out / "completed.jsonl").read_text().splitlines()
        first = json.loads(rec[0])
        first["file"] = value
        (out / "completed.jsonl").write_text("\n".join([json.dumps(first), *rec[1:]]) + "\n")
    else:
        man = json.loads((out / "manifest.json").read_text())
        if where == "shard":
            man["shards"][0]["file"] = value
        else:
            man["tokens"]["file"] = value
        (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(StoreError, match=message):
        ActivationStore.open(out)["resid_post.0"]


def test_symlinked_shard_leaving_the_folder_is_refused(reference, tmp_path):
    from interp.cache import ActivationStore
    from interp.errors import StoreError

    ref, _ = reference
    out = _copy(ref, tmp_path)
    victim = sorted(out.glob("shard-*.safetensors"))[0]
    outside = tmp_path / "elsewhere.safetensors"
    victim.rename(outside)
    victim.symlink_to(outside)                                # same bytes, but outside the folder
    with pytest.raises(StoreError, match=rf"{victim.name}.*symbolic link that leaves"):
        ActivationStore.open(out)["resid_post.0"]


def test_old_format_is_read_but_not_resumed(reference, tmp_path):
    """A format-1 store (tokens and prompts in the manifest) is still readable; collect into it is refused."""
    from interp.cache import ActivationStore, collect
    from interp.errors import StoreError
    from interp.models import load_model

    ref, _ = reference
    out = _copy(ref, tmp_path)
    new = ActivationStore.open(ref)
    man = json.loads((out / "manifest.json").read_text())
    from safetensors.torch import load_file

    order = load_file(str(out / "tokens.safetensors"))["order"].tolist()
    lengths = new.lengths.tolist()
    v1 = {**{k: v for k, v in man.items() if k not in ("tokens", "texts", "n_tokens")},
          "format": "interp.activation_store/1", "prompts": list(new.texts), "order": order, "lengths": lengths,
          "tokens": [new.tokens[i, :n].tolist() for i, n in enumerate(lengths)],
          "completed": [s["file"] for s in man["shards"]]}
    for name in ("tokens.safetensors", "texts.jsonl", "completed.jsonl"):
        (out / name).unlink()
    (out / "manifest.json").write_text(json.dumps(v1))
    old = ActivationStore.open(out)
    assert torch_equal(old["resid_post.1"], new["resid_post.1"]) and old.texts == new.texts
    with pytest.raises(StoreError, match="older format"):
        collect(load_model("toy:llama"), PROMPTS, SITES, out=out, **KW)


def test_rerun_of_a_complete_store_rewrites_nothing(reference, tmp_path):
    from interp.cache import collect
    from interp.models import load_model

    ref, ref_files = reference
    out = _copy(ref, tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    store = collect(load_model("toy:llama"), PROMPTS, SITES, out=out, **KW)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before and store.complete
