"""The engine options without a Ray cluster: defaults, bad combinations, Ray missing (no Ray needed)."""

from __future__ import annotations

import sys

import pytest

from interp.cli import invoke
from interp.distributed import EngineConfig
from interp.errors import ConfigError
from interp.pipeline_config import PipelineConfig, load_config


def _prompts(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("a b\nc d e\n")
    return str(p)


def test_local_default_unchanged(tmp_path):
    assert invoke(["cache", "toy:llama", "--prompts", _prompts(tmp_path), "--out", str(tmp_path / "A"),
                   "--no-progress"]) == 0
    assert invoke(["cache", "toy:llama", "--prompts", _prompts(tmp_path), "--out", str(tmp_path / "B"),
                   "--no-progress", "--engine", "local"]) == 0
    assert (tmp_path / "A" / "manifest.json").read_bytes() == (tmp_path / "B" / "manifest.json").read_bytes()


@pytest.mark.parametrize("extra,needle", [(["--engine", "rya"], "'ray'"),
                                          (["--workers", "2"], "need --engine ray"),
                                          (["--address", "auto"], "need --engine ray")])
def test_bad_engine_options_one_line(tmp_path, capsys, extra, needle):
    out = tmp_path / "A"
    assert invoke(["cache", "toy:llama", "--prompts", _prompts(tmp_path), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and not out.exists()


@pytest.mark.parametrize("cmd", [["cache", "toy:llama", "--prompts", "P"],
                                 ["patch", "toy:llama", "--task", "ioi", "--method", "exact"],
                                 ["trace", "toy:llama"], ["gate", "toy:llama", "--task", "ioi"]])
def test_ray_not_installed(tmp_path, capsys, monkeypatch, cmd):
    monkeypatch.setitem(sys.modules, "ray", None)          # `import ray` raises ImportError
    cmd = [c if c != "P" else _prompts(tmp_path) for c in cmd]
    out = tmp_path / "A"
    assert invoke([*cmd, "--out", str(out), "--engine", "ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "interp: error: Ray is not installed: pip install 'interp[ray]' (or run with --engine local)"
    assert not out.exists()


def test_pipeline_engine_table(tmp_path):
    assert PipelineConfig().engine == EngineConfig()           # default: local
    cfg = tmp_path / "c.toml"
    cfg.write_text('model = "toy:llama"\n[engine]\nkind = "ray"\nworkers = 2\naddress = "auto"\n')
    assert load_config(cfg).engine == EngineConfig(kind="ray", workers=2, address="auto")
    cfg.write_text('[engine]\nkind = "local"\nworkers = 2\n')
    with pytest.raises(ConfigError, match="need kind='ray'"):
        load_config(cfg)
    cfg.write_text('[engine]\nkinds = "ray"\n')
    with pytest.raises(ConfigError, match="kind"):
        load_config(cfg)
