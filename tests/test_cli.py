"""The command line as a user runs it (subprocess)."""

import subprocess
import sys

import pytest


def _interp(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "interp.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_commands_and_examples():
    out = _interp("--help")
    assert out.returncode == 0, out.stderr
    assert "models" in out.stdout and "Examples" in out.stdout


def test_models_lists_offline_options():
    out = _interp("models")
    assert out.returncode == 0, out.stderr
    assert "toy:llama" in out.stdout and "smollm2" in out.stdout


@pytest.mark.parametrize("args", [["models", "--bogus"], ["no-such-command"]])
def test_usage_errors_exit_nonzero(args):
    out = _interp(*args)
    assert out.returncode == 2 and "Usage" in out.stderr
