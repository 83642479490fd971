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


# ---------------------------------------------------------------- identity (issue 14 item 6)

def _copy_with_one_weight_changed(src, dst):
    """Copy a model folder; change one float of the weights in place: same files, same sizes, other content."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    (path,) = sorted(dst.glob("*.safetensors"))
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1.0
    save_file(tensors, str(path), metadata={"format": "pt"})
    return dst


def test_identity_is_content_not_sizes(toy_llama, tmp_path):
    from pathlib import Path

    src = Path(toy_llama.interp_info.path)
    same = tmp_path / "same"
    import shutil

    shutil.copytree(src, same)
    other = _copy_with_one_weight_changed(src, tmp_path / "other")
    sizes = lambda d: sorted((p.name, p.stat().st_size) for p in d.iterdir())  # noqa: E731
    assert sizes(other) == sizes(src)  # what the old name+size revision hashed: identical
    a, b, c = (load_model(str(d)) for d in (src, same, other))
    assert a.interp_info.revision == b.interp_info.revision == toy_llama.interp_info.revision
    assert c.interp_info.revision != a.interp_info.revision
    assert c.interp_info.weights != a.interp_info.weights


def test_identity_includes_dtype_processing_and_bos(toy_gpt2):
    path = toy_gpt2.interp_info.path
    base = toy_gpt2.interp_info
    variants = [load_model(path, dtype=torch.float64), load_model(path, processing=True),
                load_model(path, prepend_bos=not base.prepend_bos)]
    ids = {v.interp_info.revision for v in variants} | {base.revision}
    assert len(ids) == 4
    assert all(v.interp_info.weights == base.weights for v in variants)
    assert variants[0].interp_info.revision.endswith(".float64." + ("bos" if base.prepend_bos else "nobos"))


def test_file_hashes_are_cached_by_path_size_mtime(toy_llama, tmp_path, monkeypatch):
    import os
    import shutil
    from pathlib import Path

    import interp.models as m

    monkeypatch.setenv("INTERP_HOME", str(tmp_path / "home"))
    folder = tmp_path / "model"
    shutil.copytree(Path(toy_llama.interp_info.path), folder)
    calls = []
    real = m._file_sha256
    monkeypatch.setattr(m, "_file_sha256", lambda p, *a, **k: calls.append(Path(p).name) or real(p, *a, **k))
    first = m.folder_digest(folder)
    n_files = len(calls)
    assert n_files >= 3 and "model.safetensors" in calls  # weights, config, tokenizer
    assert m.folder_digest(folder) == first and len(calls) == n_files  # second time: nothing rehashed
    weights = folder / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: only that file is rehashed
    assert m.folder_digest(folder) == first and calls[n_files:] == ["model.safetensors"]
    again = load_model(str(folder))  # the load itself goes through the cache
    assert again.interp_info.weights == first and calls[n_files + 1:] == []


def test_graph_refuses_another_identity_naming_both(toy_llama, tmp_path):
    from types import SimpleNamespace

    from interp.graph import CircuitGraph
    from interp.results import run_meta

    other = load_model(toy_llama.interp_info.path, dtype=torch.float64)
    g = CircuitGraph(model=toy_llama.interp_info.spec, model_revision=toy_llama.interp_info.revision)
    res = SimpleNamespace(meta=run_meta(other), id="r1", kind="patching.nodes")
    with pytest.raises(DataError) as e:
        g.check_result(res)
    assert toy_llama.interp_info.revision in str(e.value) and other.interp_info.revision in str(e.value)


def test_store_refuses_another_identity_naming_both(toy_llama, tmp_path):
    from interp.cache import collect
    from interp.errors import StoreError

    other = load_model(str(_copy_with_one_weight_changed(__import__("pathlib").Path(toy_llama.interp_info.path),
                                                           tmp_path / "other")))
    collect(toy_llama, ["ab", "cd"], "resid_post", out=tmp_path / "store", progress=False)
    with pytest.raises(StoreError) as e:
        collect(other, ["ab", "cd"], "resid_post", out=tmp_path / "store", progress=False)
    assert toy_llama.interp_info.revision in str(e.value) and other.interp_info.revision in str(e.value)
