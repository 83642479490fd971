"""One writer per output folder (folder_lock), files with the process umask, paths confined to a folder."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from interp._fs import (LOCK_NAME, atomic_dir, atomic_write_bytes, atomic_write_json, confined_path, folder_lock,
                        process_umask)
from interp.errors import StoreError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _py(script, *args, **kw):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


# ---------------------------------------------------------------- umask
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert process_umask() == umask
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        atomic_write_json(tmp_path / "b.json", {"a": 1})
        with atomic_dir(tmp_path / "d") as d:
            (d / "f").write_text("y")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == mode
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == mode
    assert (tmp_path / "d").stat().st_mode & 0o777 == mode | 0o111 & ~umask   # a folder: x where r
    assert (tmp_path / "d" / "f").read_text() == "y"


def test_reading_the_umask_leaves_it_unchanged():
    old = os.umask(0o027)
    try:
        for _ in range(3):
            assert process_umask() == 0o027
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(old)


# ---------------------------------------------------------------- folder_lock
def test_second_writer_in_the_same_process_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    with folder_lock(out, what="activation store"):
        record = json.loads((out / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["what"] == "activation store"
        with pytest.raises(StoreError, match=rf"{out}.*being written by another process \(pid {os.getpid()} on host"):
            with folder_lock(out, what="activation store"):
                pass
    assert not (out / LOCK_NAME).exists()          # removed on release
    with folder_lock(out):                          # and free again
        pass


def test_lock_refuses_a_file_and_releases_on_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(StoreError, match="not a folder"):
        with folder_lock(tmp_path / "f"):
            pass
    with pytest.raises(ZeroDivisionError):
        with folder_lock(tmp_path / "o"):
            1 / 0
    with folder_lock(tmp_path / "o"):
        pass


def test_leftover_lock_file_of_a_dead_process_does_not_block(tmp_path):
    dead = _py("import os; print(os.getpid())")
    pid = int(dead.communicate()[0])
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": "h", "since": "then"}))
    with folder_lock(out):
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_lock_of_a_killed_holder_is_released_by_the_kernel(tmp_path):
    out = tmp_path / "out"
    holder = _py("""
        import sys, time
        from interp._fs import folder_lock
        with folder_lock(sys.argv[1]):
            print("held", flush=True)
            time.sleep(60)
    """, out)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreError, match=f"pid {holder.pid} "):
            with folder_lock(out):
                pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        assert (out / LOCK_NAME).exists()          # the file is left behind ...
        with folder_lock(out):                     # ... and does not block
            pass
    finally:
        holder.kill()
        holder.wait()


def test_two_concurrent_processes_exactly_one_wins(tmp_path):
    out, go = tmp_path / "out", tmp_path / "go"
    script = """
        import os, sys, time
        from interp._fs import folder_lock
        from interp.errors import StoreError
        print("ready", flush=True)
        while not os.path.exists(sys.argv[2]):
            time.sleep(0.001)
        try:
            with folder_lock(sys.argv[1], what="store"):
                print("won", os.getpid(), flush=True)
                time.sleep(1.5)
        except StoreError as e:
            print("refused", e, flush=True)
    """
    procs = [_py(script, out, go) for _ in range(2)]
    assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]   # both started and waiting
    go.write_text("")
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(o.split()[0] for o in outs) == ["refused", "won"], outs
    winner = next(o for o in outs if o.startswith("won")).split()[1]
    assert f"pid {winner} " in next(o for o in outs if o.startswith("refused"))


# ---------------------------------------------------------------- confined_path
def test_confined_path_refuses_escapes_and_allows_inside_links(tmp_path):
    folder = tmp_path / "store"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a").write_text("a")
    (tmp_path / "secret").write_text("s")
    (folder / "out_link").symlink_to(tmp_path / "secret")
    (folder / "in_link").symlink_to(folder / "sub" / "a")
    (folder / "dir_link").symlink_to(tmp_path)
    src = folder / "manifest.json"
    assert confined_path(folder, "sub/a", source=src) == folder / "sub" / "a"
    assert confined_path(folder, "in_link", source=src).read_text() == "a"
    for bad, why in [("../secret", r"'\.\.'"), ("sub/../../secret", r"'\.\.'"), (str(tmp_path / "secret"), "absolute"),
                     ("C:\\x", "absolute"), ("out_link", "symbolic link"), ("dir_link/secret", "symbolic link"),
                     ("", "relative file name"), (3, "relative file name")]:
        with pytest.raises(StoreError, match=rf"{src} \(shards\[2\]\): .*{why}"):
            confined_path(folder, bad, source=src, entry="shards[2]")


def test_unwritable_destinations_are_store_errors_naming_the_path(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match=rf"cannot write {tmp_path}/file/x: "):
        atomic_write_bytes(tmp_path / "file" / "x", b"data")
    with pytest.raises(StoreError, match=rf"cannot create out folder {tmp_path}/file/store: "):
        with folder_lock(tmp_path / "file" / "store", what="out"):
            pass

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StoreError, match=rf"cannot write {tmp_path}/a.json: No space left on device"):
        atomic_write_json(tmp_path / "a.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]          # no temp file left behind
