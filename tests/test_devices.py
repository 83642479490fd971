"""Devices and precision (issue 18 item 2): --device / --dtype everywhere, bad ones refused up front.

A device that does not exist here or a dtype that is unknown or fails on the device is one ConfigError
line naming the alternatives; in the CLI it exits 2 before any model is loaded and leaves no output folder.
The models run in bfloat16 / float16 on the CPU through the engine, generation and captures (nothing assumes
float32 or CPU beyond what the device gives).
"""

from __future__ import annotations

import pytest
import torch

from interp.cli import invoke
from interp.devices import DTYPES, available_devices, check_dtype, resolve_device, resolve_dtype
from interp.errors import ConfigError

NO_CUDA = not torch.cuda.is_available()


def test_resolve_device_present_and_auto():
    assert str(resolve_device("cpu")) == "cpu"
    assert resolve_device(None) == resolve_device("auto") == resolve_device("")
    assert str(resolve_device(None)) == ("cpu" if NO_CUDA else "cuda:0")
    assert available_devices()[0] == "cpu"


@pytest.mark.parametrize("spec, text", [
    pytest.param("cuda", "no CUDA device here", marks=pytest.mark.skipif(not NO_CUDA, reason="a GPU is present")),
    pytest.param("cuda:7", "cuda", marks=pytest.mark.skipif(torch.cuda.device_count() > 7, reason="8 GPUs")),
    ("tpu", "not a device name"),
    ("xla", "not available here"),
])
def test_missing_device_names_the_available_ones(spec, text):
    with pytest.raises(ConfigError, match=text) as e:
        resolve_device(spec)
    msg = str(e.value)
    assert "\n" not in msg and f"available here: {', '.join(available_devices())}" in msg


def test_resolve_dtype():
    assert [resolve_dtype(n) for n in DTYPES] == [torch.float32, torch.bfloat16, torch.float16, torch.float64]
    assert resolve_dtype("double") is torch.float64
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("half") is torch.float16
    assert resolve_dtype(None) is torch.float32 and resolve_dtype(torch.bfloat16) is torch.bfloat16
    for bad in ("float8", "int8", torch.int64):
        with pytest.raises(ConfigError, match="expected one of float32, bfloat16, float16, float64"):
            resolve_dtype(bad)


@pytest.fixture
def half_fails(monkeypatch):
    """Make float16 fail one operation on the CPU, as it does with older torch builds ("not implemented for 'Half'")."""
    import interp.devices as dev

    def matmul(x):
        if x.dtype == torch.float16:
            raise RuntimeError('"addmm_impl_cpu_" not implemented for \'Half\'')
        return x @ x.T

    monkeypatch.setattr(dev, "OPS", [("matmul", matmul)])
    dev._failure.cache_clear()
    yield
    dev._failure.cache_clear()


def test_unsupported_dtype_names_the_working_ones(half_fails):
    check_dtype("bfloat16", "cpu")
    with pytest.raises(ConfigError) as e:
        check_dtype("float16", "cpu")
    msg = str(e.value)
    assert "float16 is not supported on cpu" in msg and "matmul" in msg and "use one of float32, bfloat16" in msg


def test_real_dtypes_pass_the_check_here():
    for name in DTYPES:          # torch >= 2.1 runs all three on the CPU; a failure would name the op
        check_dtype(name, "cpu")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_model_runs_engine_generation_and_captures(dtype):
    from interp.engine import Intervention, World, run
    from interp.generation import generate
    from interp.models import load_model
    from interp.sites import Site

    m32 = load_model("toy:llama")
    m = load_model("toy:llama", dtype=dtype)
    assert next(m.parameters()).dtype == resolve_dtype(dtype) and m.interp_info.dtype == dtype
    tokens = torch.tensor([[256, 72, 105, 33], [256, 99, 98, 97]])
    worlds = [World(), World((Intervention("ablate", Site("z", 1, head=0)),), enter=1)]
    out, ref = run(m, tokens, worlds, with_base=True), run(m32, tokens, worlds, with_base=True)
    assert out.worlds.dtype == resolve_dtype(dtype)
    tol = 0.05 if dtype == "bfloat16" else 0.01                       # a few ulps of the logits' scale
    assert (out.worlds.float() - ref.worlds).abs().max() < tol
    g = generate(m, ["ab", "hello"], max_new_tokens=3, capture=[Site("resid_post", 0)],
                 interventions=[Intervention("add", Site("resid_post", 0), torch.ones(64))])
    assert g.new_tokens.shape == (2, 3) and torch.isfinite(g.logits).all()
    assert g.captures[Site("resid_post", 0)][0].shape == (5, 64)


def _cli(capsys, *args):
    code = invoke([str(a) for a in args])
    return code, capsys.readouterr().err


def _no_model(monkeypatch):
    import interp.models

    def refuse(*a, **k):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr(interp.models, "load_model", refuse)


@pytest.mark.parametrize("extra, text", [
    pytest.param(["--device", "cuda"], "no CUDA device here",
                 marks=pytest.mark.skipif(not NO_CUDA, reason="a GPU is present")),
    (["--device", "cuda:7"], "--device 'cuda:7'"),
    (["--device", "tpu"], "--device 'tpu'"),
    (["--dtype", "float8"], "--dtype 'float8' is not supported; expected one of float32, bfloat16, float16"),
])
def test_cli_bad_device_or_dtype_exits_2_and_writes_nothing(tmp_path, capsys, monkeypatch, extra, text):
    _no_model(monkeypatch)
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    cases = [["trace", "toy:llama", "--out", tmp_path / "trace"],
             ["sinks", "toy:llama", "--out", tmp_path / "sinks"]]
    for args in cases:
        code, err = _cli(capsys, *args, *extra)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and text in lines[0], (args, err)
        assert not (tmp_path / args[-1].name).exists()
    cache_extra = ["--model-dtype", *extra[1:]] if extra[0] == "--dtype" else extra
    code, err = _cli(capsys, "cache", "toy:llama", "--prompts", prompts, "--out", tmp_path / "store", *cache_extra)
    assert code == 2 and "interp: error:" in err and not (tmp_path / "store").exists()


def test_cli_unsupported_dtype_for_an_op_exits_2(tmp_path, capsys, monkeypatch, half_fails):
    _no_model(monkeypatch)
    code, err = _cli(capsys, "trace", "toy:llama", "--out", tmp_path / "t", "--dtype", "float16")
    assert code == 2 and "float16 is not supported on cpu" in err and "float32, bfloat16" in err
    assert not (tmp_path / "t").exists()


def test_run_config_device_and_dtype(tmp_path, capsys, monkeypatch):
    from interp.pipeline import load_config

    _no_model(monkeypatch)
    cfg = tmp_path / "job.toml"
    cfg.write_text(f'model = "toy:llama"\nout = "{tmp_path / "out"}"\ndevice = "tpu"\n')
    assert load_config(cfg).device == "tpu" and load_config(cfg).dtype == "float32"
    code, err = _cli(capsys, "run", cfg)
    assert code == 2 and "job.toml: device 'tpu'" in err and not (tmp_path / "out").exists()
    code, err = _cli(capsys, "run", cfg, "--device", "cpu", "--dtype", "fp8")
    assert code == 2 and "--dtype 'fp8'" in err and not (tmp_path / "out").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "toy:llama"\ndtype = "float8"\n')
    with pytest.raises(ConfigError, match="dtype 'float8'"):
        load_config(bad)


@pytest.mark.skipif(not NO_CUDA, reason="with a GPU the script runs the whole job")
def test_gpu_run_script_skips_without_cuda(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_run.sh"
    r = subprocess.run(["bash", str(script), str(tmp_path / "gpu")], capture_output=True, text=True,
                       env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}, timeout=120)
    assert r.returncode == 0 and "skipped: no CUDA device" in r.stdout
    assert not (tmp_path / "gpu").exists()
