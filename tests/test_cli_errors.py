"""The one CLI error boundary (issue 15 item 1): every expected failure is one line, exit 2.

The CLI runs in-process (``interp.cli.run``); where a case must fail before any model
work, ``load_model`` (or the fit / sweep) is replaced by a function that fails the test.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from interp.cli import invoke
from interp.errors import DataError, SiteError


def _cli(capsys, *args: str) -> tuple[int, str]:
    code = invoke([str(a) for a in args])
    err = capsys.readouterr().err
    return code, err


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("interp: error: ")]
    assert len(errors) == 1, err
    assert "Traceback" not in err, err
    return errors[0]


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if any command loads a model."""
    import interp.models

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(interp.models, "load_model", refuse)


@pytest.fixture
def prompts(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("The cat sat on the mat\nA dog ran\n", encoding="utf-8")
    return p


# ----------------------------------------------------------------- task JSONL files
@pytest.mark.parametrize("text, line, words", [
    ('{"corrupted": "a b", "answer": " c"}\n', 1, ["no 'clean' key"]),
    ('{"clean": "a b"}\n{"clean": 7}\n', 2, ["'clean' = 7"]),
    ('{"clean": "a b", "answer": 5}\n', 1, ["'answer'", "int 5"]),
    ('["When Mary and John", " Mary"]\n', 1, ["got list"]),
    ('{"clean": "a b"}\n{"clean": "c d",\n', 2, ["not valid JSON"]),
], ids=["no-clean", "number-clean", "number-answer", "row-is-list", "invalid-json"])
@pytest.mark.parametrize("command", ["gate", "patch"])
def test_bad_task_jsonl_is_one_line_naming_file_and_line(capsys, tmp_path, no_model, command, text, line, words):
    task = tmp_path / "task.jsonl"
    task.write_text(text, encoding="utf-8")
    code, err = _cli(capsys, command, "toy:llama", "--task", task, "--out", tmp_path / "out")
    msg = _one_line_error(err)
    assert code == 2
    assert f"{task}:{line}:" in msg
    for w in words:
        assert w in msg


def test_prompts_pointing_to_a_folder(capsys, tmp_path, no_model):
    code, err = _cli(capsys, "cache", "toy:llama", "--prompts", tmp_path, "--out", tmp_path / "o")
    msg = _one_line_error(err)
    assert code == 2 and str(tmp_path) in msg and "folder" in msg


# ----------------------------------------------------------------- output folders
def test_out_under_a_file(capsys, tmp_path, prompts, no_model):
    f = tmp_path / "afile"
    f.write_text("x")
    code, err = _cli(capsys, "cache", "toy:llama", "--prompts", prompts, "--out", f / "x")
    msg = _one_line_error(err)
    assert code == 2 and "--out" in msg and str(f) in msg and "not a folder" in msg
    assert f.read_text() == "x"


def test_check_out_dir_leaves_nothing_behind(tmp_path):
    from interp.cli._common import check_out_dir

    assert check_out_dir(tmp_path / "a" / "b", "--out") == tmp_path / "a" / "b"
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    check_out_dir(tmp_path / "kept", "--out")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and list((tmp_path / "kept").iterdir()) == []


def test_out_in_a_read_only_folder(capsys, tmp_path, prompts, no_model, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):  # root ignores the mode: make the file system refuse instead
        real_open = os.open

        def read_only(path, *a, **k):
            if str(path).startswith(str(ro)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_open(path, *a, **k)

        monkeypatch.setattr(os, "open", read_only)
    try:
        code, err = _cli(capsys, "cache", "toy:llama", "--prompts", prompts, "--out", ro / "store")
    finally:
        ro.chmod(0o755)
    msg = _one_line_error(err)
    assert code == 2 and "--out" in msg and str(ro / "store") in msg and "cannot write" in msg


def test_full_disk_during_a_write_names_the_out_folder(capsys, tmp_path, prompts, monkeypatch):
    """ENOSPC from the shard writer (how a full disk shows up): one line naming --out, exit 2."""
    import safetensors.torch

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "store"
    code, err = _cli(capsys, "cache", "toy:llama", "--prompts", prompts, "--out", out, "--no-progress")
    msg = _one_line_error(err)
    # the store names the shard it could not write, inside --out
    assert code == 2 and "no space left" in msg.lower() and str(out) in msg


def test_full_disk_as_safetensors_reports_it(capsys, tmp_path, prompts, monkeypatch):
    """A real full disk reaches the CLI as safetensors' SafetensorError('... (os error 28)'), not an OSError."""
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*a, **k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "store"
    code, err = _cli(capsys, "cache", "toy:llama", "--prompts", prompts, "--out", out, "--no-progress")
    msg = _one_line_error(err)
    assert code == 2 and "no space left" in msg.lower() and str(out) in msg


def test_oserror_with_a_file_name_names_that_file(capsys, tmp_path, prompts, monkeypatch):
    import safetensors.torch

    def denied(tensors, filename, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), filename)

    monkeypatch.setattr(safetensors.torch, "save_file", denied)
    code, err = _cli(capsys, "cache", "toy:llama", "--prompts", prompts, "--out", tmp_path / "s", "--no-progress")
    msg = _one_line_error(err)
    assert code == 2 and str(tmp_path / "s") in msg and "permission denied" in msg.lower()


# ----------------------------------------------------------------- checked before model work
@pytest.mark.parametrize("args, words", [
    (["patch", "toy:llama", "--method", "exat"], ["--method", "'exact'"]),
    (["patch", "toy:llama", "--figures", "jpg"], ["--figures", "'jpg'"]),
    (["patch", "toy:llama", "--direction", "nosing"], ["--direction", "'noising'"]),
    (["patch", "toy:llama", "--task", "iio"], ["--task", "'ioi'"]),
    (["patch", "toy:llama", "--n", "0"], ["--n", "got 0"]),
    (["gate", "toy:llama", "--n", "-3"], ["--n", "got -3"]),
    (["gate", "toy:llama", "--figures", "gif"], ["--figures"]),
    (["gate", "toy:llama", "--task", "fatcs"], ["--task", "'facts'"]),
    (["cache", "toy:llama", "--sites", "resid_pots"], ["--sites", "'resid_post'"]),
    (["sinks", "toy:llama", "--formats", "pdf,jpeg"], ["--formats", "'jpeg'"]),
])
def test_arguments_are_checked_before_the_model_loads(capsys, tmp_path, prompts, no_model, args, words):
    extra = ["--prompts", str(prompts)] if args[0] in ("cache", "sinks") else []
    code, err = _cli(capsys, *args, *extra, "--out", tmp_path / "out")
    msg = _one_line_error(err)
    assert code == 2
    for w in words:
        assert w in msg


@pytest.mark.parametrize("command", ["patch", "gate", "trace", "sinks", "run"])
def test_out_is_checked_before_the_model_loads(capsys, tmp_path, prompts, no_model, command):
    f = tmp_path / "afile"
    f.write_text("x")
    if command == "run":
        cfg = tmp_path / "job.toml"
        cfg.write_text(f'model = "toy:llama"\nout = "{f / "o"}"\n')
        args = ["run", cfg]
    else:
        args = [command, "toy:llama", "--out", f / "o"] + (["--prompts", prompts] if command == "sinks" else [])
    code, err = _cli(capsys, *args)
    msg = _one_line_error(err)
    assert code == 2 and str(f) in msg and "not a folder" in msg


def _pairs_file(tmp_path, clean, corrupted) -> Path:
    import json

    p = tmp_path / "pairs.jsonl"
    p.write_text("".join(json.dumps({"clean": a, "corrupted": b, "answer": " x", "counterfactual": " y"}) + "\n"
                         for a, b in zip(clean, corrupted)), encoding="utf-8")
    return p


@pytest.mark.parametrize("corrupted, words", [
    (["The cat sat on the mat", "A bird flew"], ["identical"]),
    (["The dog sat on the mat!!", "A bird flew home"], ["differ in token length"]),
], ids=["identical", "lengths-differ"])
def test_gate_checks_pairs_before_fitting(capsys, tmp_path, monkeypatch, corrupted, words):
    import interp.gating

    def no_fit(*a, **k):
        raise AssertionError("the gates were fitted before the dataset was checked")

    monkeypatch.setattr(interp.gating, "causal_head_gating", no_fit)
    task = _pairs_file(tmp_path, ["The cat sat on the mat", "A bird flew"], corrupted)
    out = tmp_path / "out"
    code, err = _cli(capsys, "gate", "toy:llama", "--task", task, "--out", out, "--figures", "none")
    msg = _one_line_error(err)
    assert code == 2 and "pairs" in msg
    for w in words:
        assert w in msg
    assert not out.exists(), "nothing may be written before the check"


def test_patch_refuses_identical_pairs_before_the_sweep(capsys, tmp_path, monkeypatch):
    import interp.patching

    def no_sweep(*a, **k):
        raise AssertionError("the sweep ran before the dataset was checked")

    monkeypatch.setattr(interp.patching, "activation_patching", no_sweep)
    task = _pairs_file(tmp_path, ["The cat sat", "A bird flew"], ["The cat sat", "A bird flew"])
    code, err = _cli(capsys, "patch", "toy:llama", "--task", task, "--out", tmp_path / "o", "--figures", "none")
    msg = _one_line_error(err)
    assert code == 2 and "identical" in msg


# ----------------------------------------------------------------- library-level cases
def test_site_with_a_string_layer():
    with pytest.raises(SiteError, match=r"layer must be an int or None, got str '3'"):
        from interp.sites import Site

        Site("resid_post", "3")


def test_collect_with_a_non_string_site_entry(toy_llama):
    from interp.cache import collect

    with pytest.raises(SiteError, match=r"site list entry 1 is int 5"):
        collect(toy_llama, ["Hello there"], ["resid_post", 5], progress=False)


def test_lone_surrogate_in_a_prompt_names_its_index(toy_llama):
    from interp.models import tokenize

    with pytest.raises(DataError, match=r"prompt 1 is not valid Unicode text.*character 4"):
        tokenize(toy_llama, ["fine", "bad \ud800 text"])


# ----------------------------------------------------------------- the boundary itself
def test_unexpected_errors_keep_their_traceback(tmp_path, prompts):
    """A bug (here a RuntimeError planted in the loader) exits 1 with its traceback, by subprocess."""
    code = ("import sys, interp.models\n"
            "def boom(*a, **k): raise RuntimeError('planted bug')\n"
            "interp.models.load_model = boom\n"
            "from interp.cli import main\n"
            f"sys.argv = ['interp', 'cache', 'toy:llama', '--prompts', {str(prompts)!r}, '--out', "
            f"{str(tmp_path / 'o')!r}]\n"
            "main()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "Traceback" in out.stderr and "RuntimeError: planted bug" in out.stderr
    assert "interp: error:" not in out.stderr


def test_expected_error_by_subprocess_exits_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "interp.cli", "cache", "toy:llama", "--prompts", str(tmp_path),
                          "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == f"interp: error: {tmp_path} is a folder; expected a file"


def test_multi_line_messages_are_joined_on_one_line():
    from interp.cli._common import error_line

    line = error_line(DataError("3 pairs differ:\n  #0: a\n  #1: b"))
    assert line == "interp: error: 3 pairs differ: #0: a; #1: b"


def test_threads_flag_is_applied_by_the_entry_point(capsys):
    import torch

    before = torch.get_num_threads()
    try:
        assert invoke(["--threads", "1", "models"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    capsys.readouterr()
