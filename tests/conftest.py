"""Shared fixtures: tiny random models (unit tests) and the bundled SmolLM2 (integration).

Toy models are built from a config with a private seed (see ``interp.toy``); the
bundled model must have been installed by ``./setup.sh`` (CI does it). Tests that
need it are marked ``bundled``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def toy_llama():
    """2-layer Llama-style toy (4 heads, 2 KV heads, d_model 64, RoPE, RMSNorm)."""
    from interp.models import load_model

    return load_model("toy:llama")


@pytest.fixture(scope="session")
def toy_gpt2():
    """2-layer GPT-2-style toy (4 heads, d_model 64, absolute positions, LayerNorm)."""
    from interp.models import load_model

    return load_model("toy:gpt2")


@pytest.fixture(scope="session")
def smollm2():
    """The bundled SmolLM2-135M-Instruct (fp32, unprocessed weights, no BOS)."""
    from interp.models import load_model

    return load_model("smollm2")


@pytest.fixture(scope="session")
def smollm2_hf():
    """Plain transformers SmolLM2 (eager attention) from the same cached folder: the independent reference."""
    import torch
    from transformers import AutoModelForCausalLM

    from interp.models import smollm2_folder

    return AutoModelForCausalLM.from_pretrained(str(smollm2_folder()), dtype=torch.float32,
                                                attn_implementation="eager").eval()


def pytest_collection_modifyitems(config, items):
    # bundled tests are integration tests: run them after the unit tests.
    items.sort(key=lambda it: 1 if it.get_closest_marker("bundled") else 0)
