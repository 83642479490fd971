"""``device_map`` through the bridge's own multi-device loading (issue 18 item 2).

On this CPU machine: ``device_map={"": "cpu"}`` (and the JSON form on the CLI) loads the model and gives
the same logits and the same identity as a plain load; every map that cannot apply here is one
ConfigError line naming the alternatives, raised before any weights are read (the CLI exits 2 and
writes nothing). With CUDA devices present, ``auto`` loads and matches the CPU logits.
"""

from __future__ import annotations

import json

import pytest
import torch

from interp.cli import invoke
from interp.devices import resolve_device_map
from interp.errors import ConfigError
from interp.models import load_model

NO_CUDA = not torch.cuda.is_available()
TOKENS = torch.tensor([[1, 5, 9, 3, 7, 2], [4, 4, 8, 1, 0, 6]])


def test_cpu_device_map_loads_and_gives_the_same_logits(toy_llama):
    mapped = load_model("toy:llama", device_map={"": "cpu"})
    assert mapped.interp_info.device_map == {"": "cpu"}
    assert mapped.interp_info.revision == toy_llama.interp_info.revision     # placement is not identity
    assert {p.device.type for p in mapped.parameters()} == {"cpu"}
    with torch.inference_mode():
        assert torch.equal(mapped(TOKENS), toy_llama(TOKENS))


def test_per_module_map_covering_the_model_loads(toy_llama):
    dm = {"model.embed_tokens": "cpu", "model.layers": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu",
          "lm_head": "cpu"}
    mapped = load_model("toy:llama", device_map=json.dumps(dm))
    with torch.inference_mode():
        assert torch.equal(mapped(TOKENS), toy_llama(TOKENS))


BAD = [
    pytest.param("auto", "no CUDA|none here", marks=pytest.mark.skipif(not NO_CUDA, reason="CUDA present")),
    pytest.param('{"": "cuda:7"}', "available here", marks=pytest.mark.skipif(torch.cuda.device_count() > 7,
                                                                             reason="8 GPUs")),
    ('{"": "disk"}', "disk/meta offload"),
    ('{"": "tpu"}', "not a device name"),
    ("balancd", "Did you mean 'balanced'"),
    ('{"": cpu}', "not valid JSON"),
    ('{"model.layerz.0": "cpu"}', "is not a module of .*Did you mean 'model.layers.0'"),
    ('{"model.embed_tokens": "cpu"}', "places no device for model.layers.0"),
]


@pytest.mark.parametrize("dm, text", BAD)
def test_bad_device_map_is_one_line(dm, text):
    with pytest.raises(ConfigError, match=text) as e:
        load_model("toy:llama", device_map=dm)
    assert "\n" not in str(e.value)


def test_device_and_device_map_are_exclusive():
    with pytest.raises(ConfigError, match="exclusive"):
        resolve_device_map({"": "cpu"}, device="cpu")


def test_cli_device_map(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a b c\nd e\n")
    args = ["cache", "toy:llama", "--prompts", str(prompts), "--no-progress"]
    assert invoke([*args, "--out", str(tmp_path / "A"), "--device", "cpu"]) == 0
    assert invoke([*args, "--out", str(tmp_path / "B"), "--device-map", '{"": "cpu"}']) == 0
    files = sorted(p.name for p in (tmp_path / "A").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "B").iterdir())
    assert all((tmp_path / "A" / f).read_bytes() == (tmp_path / "B" / f).read_bytes()
               for f in files if f != "manifest.json")                  # the activations, byte for byte
    a, b = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in "AB")
    assert "device_map" not in a["model"] and b["model"].pop("device_map") == {"": "cpu"}
    assert a == b                                                       # the placement is the one difference
    capsys.readouterr()
    out = tmp_path / "C"
    assert invoke([*args, "--out", str(out), "--device-map", '{"": "disk"}']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device-map" in err and "disk" in err and not out.exists()


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA device")
def test_auto_device_map_on_cuda_matches_cpu(toy_llama):
    mapped = load_model("toy:llama", device_map="auto")
    assert any(p.device.type == "cuda" for p in mapped.parameters())
    with torch.inference_mode():
        got = mapped(TOKENS.to(next(mapped.parameters()).device)).cpu()
        assert torch.allclose(got, toy_llama(TOKENS), atol=1e-4, rtol=1e-4)


def test_pipeline_config_device_map(tmp_path, capsys):
    from interp.pipeline_config import load_config

    cfg = tmp_path / "c.toml"
    cfg.write_text('model = "toy:llama"\ndevice_map = \'{"": "cpu"}\'\n')
    assert load_config(cfg).device_map == '{"": "cpu"}'
    cfg.write_text(f'model = "toy:llama"\nout = "{tmp_path / "job"}"\ndevice_map = \'{{"": "disk"}}\'\n')
    assert invoke(["run", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{cfg}: device_map" in err and not (tmp_path / "job").exists()
