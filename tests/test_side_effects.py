"""No global side effects (issue 14 item 7).

Importing interp and running its analyses must leave the process as it found it: the
environment, torch's thread count, the global RNGs of torch, numpy and ``random``, and
the model (its config and attributes). Each check states what would change if the code
were wrong; violations in files owned elsewhere are strict xfails naming the file.
"""

from __future__ import annotations

import copy
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from interp.datasets import TaskDataset

ROOT = Path(__file__).resolve().parents[1]


_THIRD_PARTY = ("transformers", "transformer_lens", "sae_lens", "plotly", "networkx", "pandas", "datasets", "sklearn",
                "sklearn.linear_model", "sklearn.model_selection", "sklearn.decomposition", "typer", "rich.style",
                "safetensors", "huggingface_hub", "torch._dynamo")


def _import_third_party() -> None:
    """Import the libraries interp builds on first: their import-time effects are theirs, not interp's.

    (scikit-learn, imported lazily by the steering axes, sets ``KMP_DUPLICATE_LIB_OK`` and
    ``KMP_INIT_AT_FORK`` in ``os.environ`` when first imported; ``rich.style`` draws from
    ``random``'s global RNG at import; ``torch._dynamo``, imported lazily by transformers
    when a model is built, sets ``TORCHINDUCTOR_CACHE_DIR``.)
    """
    import importlib

    for lib in _THIRD_PARTY:
        try:
            importlib.import_module(lib)
        except ImportError:
            pass


def _process_state() -> dict:
    return {"environ": dict(os.environ), "threads": torch.get_num_threads(),
            "torch_rng": torch.random.get_rng_state().clone(), "numpy_rng": np.random.get_state(),
            "random_rng": random.getstate()}


def _assert_same_state(before: dict, after: dict) -> None:
    env_b, env_a = before["environ"], after["environ"]
    changed = sorted(k for k in set(env_b) | set(env_a) if env_b.get(k) != env_a.get(k))
    assert not changed, f"environment variables changed: {[(k, env_b.get(k), env_a.get(k)) for k in changed]}"
    assert after["threads"] == before["threads"], "torch thread count changed"
    assert torch.equal(after["torch_rng"], before["torch_rng"]), "torch's global RNG state changed"
    nb, na = before["numpy_rng"], after["numpy_rng"]
    assert nb[0] == na[0] and np.array_equal(nb[1], na[1]) and nb[2:] == na[2:], "numpy's global RNG state changed"
    assert after["random_rng"] == before["random_rng"], "random's global state changed"


_IMPORT_ALL = r"""
import importlib, os, pkgutil, random, sys
import numpy as np, torch
# third-party libraries interp builds on, imported first: their own import-time effects are not interp's
for lib in LIBS:
    try:
        importlib.import_module(lib)
    except ImportError:
        pass
env, threads = dict(os.environ), torch.get_num_threads()
trng, nrng, rrng = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
import interp
names = [m.name for m in pkgutil.walk_packages(interp.__path__, "interp.")
         if not m.name.endswith(".__main__")]  # `python -m` entry points run the CLI by design
for name in names:
    importlib.import_module(name)
changed = sorted(k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k))
assert not changed, f"import changed environment variables {changed}"
assert torch.get_num_threads() == threads, "import changed torch's thread count"
assert torch.equal(torch.random.get_rng_state(), trng), "import changed torch's RNG"
n2 = np.random.get_state()
assert n2[0] == nrng[0] and (n2[1] == nrng[1]).all() and n2[2:] == nrng[2:], "import changed numpy's RNG"
assert random.getstate() == rrng, "import changed random's RNG"
print(len(names), "modules")
"""


def test_importing_every_module_has_no_side_effects():
    """A fresh interpreter imports every interp module (pkgutil.walk_packages); nothing global changes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = f"LIBS = {_THIRD_PARTY!r}\n" + _IMPORT_ALL
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.split()[0]) > 40  # really walked the package


def _ds() -> TaskDataset:
    return TaskDataset("toy", ("cat on", "a dog to", "Al in a"), ("cow on", "a dog at", "Ed in a"),
                       ("x", "y", "z"), ("q", "w", "e"), ())


@pytest.fixture(scope="module")
def fresh_model():
    """A toy model no other test has touched (state stored on the model by earlier tests would hide a write)."""
    from interp.models import load_model

    _import_third_party()
    return load_model("toy:llama,seed=7")


def _analyses(model, tmp_path: Path) -> None:
    """A small run of each analysis family on the toy model."""
    from interp.cache import collect
    from interp.patching import AttributionConfig, PatchConfig, activation_patching, attribution_patching
    from interp.sinks import SinkConfig, sink_scores
    from interp.sites import Site
    from interp.steering import fit_axis
    from interp.steering.axes import residual_activations

    ds = _ds()
    collect(model, ["hello there", "abc"], "resid_post", progress=False)
    collect(model, ["hello there", "abc"], "resid_post,pattern", out=tmp_path / "store", progress=False)
    activation_patching(model, ds, PatchConfig(component="z"))
    attribution_patching(model, ds, AttributionConfig(components=("z", "mlp_out")))
    attribution_patching(model, ds, AttributionConfig(components=("z",), ig_steps=2))
    sink_scores(model, ["abcdefghijkl", "the cat sat on the mat"], SinkConfig(batch_size=2))
    prompts = [f"{w} {i}" for i, w in enumerate(["good", "bad"] * 6)]
    acts = residual_activations(model, prompts, [1])
    labels = [i % 2 for i in range(len(prompts))]
    for method in ("contrast", "pca", "probe"):
        fit_axis(method, acts[1], labels, site=Site("resid_post", 1), seed=0)


def test_analyses_leave_process_state_unchanged(fresh_model, tmp_path):
    before = _process_state()
    _analyses(fresh_model, tmp_path)
    _assert_same_state(before, _process_state())


def test_analyses_do_not_mutate_the_model_config(fresh_model, tmp_path):
    before = copy.deepcopy(vars(fresh_model.cfg))
    _analyses(fresh_model, tmp_path)
    after = vars(fresh_model.cfg)
    changed = sorted(k for k in set(before) | set(after) if repr(before.get(k)) != repr(after.get(k)))
    assert not changed, f"model.cfg changed: {changed}"


def test_analyses_store_no_state_on_the_model(tmp_path):
    from interp.models import load_model

    _import_third_party()
    model = load_model("toy:llama,seed=8")
    before = set(vars(model))
    _analyses(model, tmp_path)
    assert set(vars(model)) == before, f"attributes added to the model: {sorted(set(vars(model)) - before)}"


def test_sae_training_setup_does_not_leave_the_hub_offline(monkeypatch):
    """sae/train.py used to setdefault HF_HUB_OFFLINE etc. for the rest of the process."""
    from interp.sae.train import SAETrainConfig, make_training_sae

    _import_third_party()
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "WANDB_MODE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    import huggingface_hub.constants as hc

    hub_offline = hc.HF_HUB_OFFLINE
    before = _process_state()
    make_training_sae(SAETrainConfig(d_sae=16, training_tokens=64, batch_size=16), site="resid_post.0", d_in=8)
    _assert_same_state(before, _process_state())
    assert hc.HF_HUB_OFFLINE == hub_offline


def test_offline_env_restores_exactly(monkeypatch):
    from interp.models import offline_env

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    before = dict(os.environ)
    with pytest.raises(RuntimeError):
        with offline_env(WANDB_MODE="disabled"):
            assert os.environ["HF_HUB_OFFLINE"] == os.environ["TRANSFORMERS_OFFLINE"] == "1"
            assert os.environ["WANDB_MODE"] == "disabled"
            raise RuntimeError("restored even on error")
    assert dict(os.environ) == before


def test_pipeline_leaves_thread_count_unchanged(tmp_path):
    from interp.pipeline import (CacheStage, GatingStage, GraphStage, PatchingStage, PipelineConfig, SinksStage,
                                 run_pipeline)

    threads = torch.get_num_threads()
    cfg = PipelineConfig(model="toy:llama", out=str(tmp_path / "out"),
                         cache=CacheStage(enabled=False), patching=PatchingStage(enabled=False),
                         gating=GatingStage(enabled=False), sinks=SinksStage(enabled=False),
                         graph=GraphStage(enabled=False))
    try:
        run_pipeline(cfg, base=tmp_path, log=lambda s: None)
        assert torch.get_num_threads() == threads, "the pipeline changed torch's thread count"
    finally:
        torch.set_num_threads(threads)


def test_building_a_toy_leaves_every_rng_alone(tmp_path, monkeypatch):
    """The toy's weights come from a forked CPU generator; CUDA generators (on GPU machines) are not reseeded."""
    from interp.toy import build_toy_folder, parse_toy_spec

    _import_third_party()
    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: calls.append(seed))
    before = _process_state()
    a = build_toy_folder(parse_toy_spec("toy:gpt2,d_model=32,d_mlp=32,seed=5"), tmp_path / "a")
    b = build_toy_folder(parse_toy_spec("toy:gpt2,d_model=32,d_mlp=32,seed=5"), tmp_path / "b")
    _assert_same_state(before, _process_state())
    assert calls == []
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()  # still seeded
