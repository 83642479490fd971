"""Result round trips and output-folder manifests."""

import json

import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest

from interp.errors import StoreError
from interp.results import Result, RunMeta, load_result, load_results, run_meta


def _result(name=""):
    table = pd.DataFrame({"layer": [0, 0, 1], "head": [0, 1, 0], "metric": ["ld"] * 3,
                          "value": np.array([0.5, -1.25, np.nan]), "node": ["L0.H0", "L0.H1", "L1.H0"]})
    return Result("patching.nodes", table, RunMeta(model="toy:llama", seed=3, config={"n": 4}), name)


def test_round_trip_identical(tmp_path):
    r = _result()
    r.save(tmp_path)
    back = load_result(tmp_path, r.id)
    pdt.assert_frame_equal(back.table, r.table)
    assert back.meta == r.meta and back.kind == r.kind


def test_manifest_lists_results(tmp_path):
    _result("a").save(tmp_path)
    _result("b").save(tmp_path)
    _result("a").save(tmp_path)  # re-saving replaces, does not duplicate
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [e["id"] for e in manifest["results"]] == ["patching.nodes-b", "patching.nodes-a"]
    assert set(load_results(tmp_path)) == {"patching.nodes-a", "patching.nodes-b"}


def test_unknown_id_suggests(tmp_path):
    _result("a").save(tmp_path)
    with pytest.raises(StoreError, match="Did you mean"):
        load_result(tmp_path, "patching.nodes-x")


def test_run_meta_from_model(toy_llama):
    meta = run_meta(toy_llama, dataset="demo", data=["a", "b"], seed=1, config={"k": 2})
    assert meta.model == "toy:llama" and meta.model_revision == toy_llama.interp_info.revision
    assert meta.dataset_hash == run_meta(toy_llama, data=["a", "b"]).dataset_hash
    assert meta.dataset_hash != run_meta(toy_llama, data=["a", "c"]).dataset_hash
    assert "torch" in meta.versions
