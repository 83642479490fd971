"""Model loading: toy, local folders, bundled, hub names offline; tokenization."""

import time

import pytest
import torch

from interp.errors import DataError, ModelNotFoundError
from interp.models import load_model, tokenize


def _hf(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()


@pytest.mark.parametrize("fixture", ["toy_llama", "toy_gpt2"])
def test_toy_logits_equal_plain_transformers(fixture, request):
    model = request.getfixturevalue(fixture)
    batch = tokenize(model, ["Hello there", "abc"])
    with torch.inference_mode():
        ours = model(batch.tokens)
        ref = _hf(model.interp_info.path)(batch.tokens).logits
    assert torch.allclose(ours, ref, atol=1e-5)


def test_local_folder_path_loads_same_model(toy_llama):
    again = load_model(toy_llama.interp_info.path)
    assert again.interp_info.revision == toy_llama.interp_info.revision
    tokens = tokenize(toy_llama, ["same weights"]).tokens
    with torch.inference_mode():
        assert torch.equal(again(tokens), toy_llama(tokens))


def test_toy_seed_changes_weights():
    a, b = load_model("toy:llama,seed=1"), load_model("toy:llama,seed=2")
    tokens = tokenize(a, ["x"]).tokens
    with torch.inference_mode():
        assert not torch.allclose(a(tokens), b(tokens))


def test_padded_batch_equals_single_runs(toy_llama):
    prompts = ["short", "a much longer prompt here"]
    batch = tokenize(toy_llama, prompts)
    assert batch.lengths.tolist() == [len("short") + 1, len(prompts[1]) + 1]  # byte tokens + BOS
    with torch.inference_mode():
        full = toy_llama(batch.tokens)
        for i, p in enumerate(prompts):
            alone = toy_llama(tokenize(toy_llama, [p]).tokens)[0]
            n = int(batch.lengths[i])
            assert torch.allclose(full[i, :n], alone, atol=1e-5)


def test_bos_is_explicit(toy_llama):
    assert tokenize(toy_llama, ["a"]).tokens[0, 0].item() == toy_llama.tokenizer.bos_token_id
    assert tokenize(toy_llama, ["a"], prepend_bos=False).tokens.tolist() == [[ord("a")]]


def test_bad_specs_are_clear():
    with pytest.raises(ModelNotFoundError, match="smollm2"):
        load_model("smolm2")
    with pytest.raises(ModelNotFoundError, match="no model folder"):
        load_model("./does/not/exist")
    with pytest.raises(ModelNotFoundError, match="unknown toy option"):
        load_model("toy:llama,layers=3")


def test_hub_name_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="offline"):
        load_model("EleutherAI/pythia-70m")
    assert time.perf_counter() - t0 < 5


def test_tokenize_errors(toy_llama):
    with pytest.raises(DataError, match="no prompts"):
        tokenize(toy_llama, [])
    with pytest.raises(DataError, match="prompt 1 has"):
        tokenize(toy_llama, ["ok", "x" * 400])  # toy context is 256


def test_processing_changes_logits_by_constant_only(toy_gpt2):
    processed = load_model("toy:gpt2", processing=True)
    tokens = tokenize(toy_gpt2, ["fold the norms"]).tokens
    with torch.inference_mode():
        a = toy_gpt2(tokens).log_softmax(-1)
        b = processed(tokens).log_softmax(-1)
    assert torch.allclose(a, b, atol=1e-4)


@pytest.mark.bundled
def test_smollm2_logits_equal_plain_transformers(smollm2, smollm2_hf):
    assert smollm2.interp_info.prepend_bos is False  # SmolLM2's tokenizer adds no BOS
    batch = tokenize(smollm2, ["The Eiffel Tower is located in the city of"])
    with torch.inference_mode():
        ours = smollm2(batch.tokens)
        ref = smollm2_hf(batch.tokens).logits
    assert torch.equal(ours, ref)
    assert smollm2.tokenizer.decode(ours[0, -1].argmax()) == " Paris"
