"""Activation store on the bundled SmolLM2 against plain transformers (eager attention).

Tolerance: ``|ours - hf| <= 1e-4 + 1e-4 * |hf|``. The relative part matters: the residual
stream reaches ~25,000 at position 0 from layer 11 on (dim 507), where one float32 ulp
is ~0.002, so a pure absolute 1e-4 bound would demand bit-equality there.
"""

import json

import pytest
import torch

from interp.cache import ActivationStore, collect
from interp.sites import Site

pytestmark = pytest.mark.bundled

PROMPTS = ["The Eiffel Tower is located in the city of",
           "When Mary and John went to the store, John gave a drink to",
           "Hello"]


def _close(a, b):
    return torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def _hf(hf, model, prompt):
    ids = model.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids  # no BOS, as interp
    with torch.inference_mode():
        return hf(ids, output_hidden_states=True, output_attentions=True), ids


def test_collect_matches_plain_transformers(smollm2, smollm2_hf):
    n_layers = smollm2.cfg.n_layers
    store = collect(smollm2, PROMPTS, "resid_post,pattern,ln_final", batch_size=2, progress=False)
    assert store.sites[-1] == Site("ln_final")
    assert (store[Site("resid_post", 12)][:, 0].abs().max() > 1e4)  # the massive activation the tolerance is for
    norm = smollm2_hf.model.norm
    for i, p in enumerate(PROMPTS):
        out, ids = _hf(smollm2_hf, smollm2, p)
        n = ids.shape[1]
        assert store.tokens[i, :n].tolist() == ids[0].tolist() and int(store.lengths[i]) == n
        for layer in range(n_layers):
            resid = store[Site("resid_post", layer), i, :n]
            if layer < n_layers - 1:  # hidden_states[l + 1] is the output of block l ...
                assert _close(resid, out.hidden_states[layer + 1][0]), (p, layer)
            else:                     # ... except the last, which HF returns after the final norm
                with torch.inference_mode():
                    assert _close(norm(resid[None])[0], out.hidden_states[-1][0]), (p, layer)
            pattern = store[Site("pattern", layer), i][:, :n, :n]
            assert _close(pattern, out.attentions[layer][0]), (p, layer)
        assert _close(store[Site("ln_final"), i, :n], out.hidden_states[-1][0])


def test_cli_cache_end_to_end_matches_plain_transformers(smollm2, smollm2_hf, tmp_path):
    from typer.testing import CliRunner

    from interp import cli

    if not any(c.name == "cache" for c in cli.app.registered_commands):
        cli._register_all()
    f = tmp_path / "prompts.txt"
    prompts = PROMPTS[:2]
    f.write_text("\n".join(prompts) + "\n")
    out = tmp_path / "store"
    args = ["cache", "smollm2", "--prompts", str(f), "--sites", "resid_post.5,pattern.5,resid_post.20", "--out",
            str(out), "--no-progress"]
    res = CliRunner().invoke(cli.app, args)
    assert res.exit_code == 0, res.output
    store = ActivationStore.open(out)
    man = json.loads((out / "manifest.json").read_text())
    assert man["model"]["spec"] == "smollm2" and store.texts == tuple(prompts) and man["n_prompts"] == 2
    for i, p in enumerate(prompts):
        hf, ids = _hf(smollm2_hf, smollm2, p)
        n = ids.shape[1]
        assert _close(store[Site("resid_post", 5), i, :n], hf.hidden_states[6][0])
        assert _close(store[Site("resid_post", 20), i, :n], hf.hidden_states[21][0])
        assert _close(store[Site("pattern", 5), i][:, :n, :n], hf.attentions[5][0])
    # the same command again resumes a complete store: nothing recomputed, same files
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    res = CliRunner().invoke(cli.app, args)
    assert res.exit_code == 0, res.output
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before   # no file rewritten, not even metadata
