"""Result round trips, schemas on save and load, and results folders that refuse hostile or broken files."""

import errno
import json

import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest

from interp.errors import SchemaError, StoreError
from interp.results import Result, RunMeta, load_result, load_results, run_meta


def _result(name="", model="toy:llama", revision="abc"):
    table = pd.DataFrame({"layer": [0, 1, 2], "sink_rate": [0.5, 0.25, 1.0],
                          "sink_rate_std": np.array([0.1, np.nan, 0.0]), "n_prompts": [4, 4, 4]})
    return Result("sinks.layers", table, RunMeta(model=model, model_revision=revision, seed=3, config={"n": 4}), name)


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
    assert [e["id"] for e in manifest["results"]] == ["sinks.layers-b", "sinks.layers-a"]
    assert set(load_results(tmp_path)) == {"sinks.layers-a", "sinks.layers-b"}


def test_unknown_id_suggests(tmp_path):
    _result("a").save(tmp_path)
    with pytest.raises(StoreError, match="Did you mean"):
        load_result(tmp_path, "sinks.layers-x")


def test_run_meta_from_model(toy_llama):
    meta = run_meta(toy_llama, dataset="demo", data=["a", "b"], seed=1, config={"k": 2})
    assert meta.model == "toy:llama" and meta.model_revision == toy_llama.interp_info.revision
    assert meta.dataset_hash == run_meta(toy_llama, data=["a", "b"]).dataset_hash
    assert meta.dataset_hash != run_meta(toy_llama, data=["a", "c"]).dataset_hash
    assert "torch" in meta.versions


# ----------------------------------------------------------------------------- schemas
def test_save_refuses_missing_and_extra_columns(tmp_path):
    r = _result()
    bad = Result(r.kind, r.table.drop(columns=["n_prompts"]).assign(junk=1), r.meta)
    with pytest.raises(SchemaError, match=r"missing column\(s\) \['n_prompts'\]; extra column\(s\) \['junk'\]"):
        bad.save(tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written


def test_load_refuses_a_file_whose_columns_do_not_match(tmp_path):
    r = _result()
    r.save(tmp_path)
    # rewrite the table behind the manifest's back (checksum updated, so only the schema can catch it)
    import hashlib
    import io

    buf = io.BytesIO()
    r.table.drop(columns=["sink_rate"]).to_parquet(buf, index=False)
    (tmp_path / f"{r.id}.parquet").write_bytes(buf.getvalue())
    head = json.loads((tmp_path / f"{r.id}.json").read_text())
    head["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    (tmp_path / f"{r.id}.json").write_text(json.dumps(head))
    with pytest.raises(SchemaError, match=r"missing column\(s\) \['sink_rate'\]"):
        load_results(tmp_path)


def test_nan_where_the_schema_allows_none_is_refused_naming_column_and_row(tmp_path):
    r = _result()
    t = r.table.copy()
    t.loc[1, "sink_rate"] = np.nan
    bad = Result(r.kind, t, r.meta)
    with pytest.raises(SchemaError, match=r"column 'sink_rate' holds 1 non-finite value\(s\) .* row 1 \(layer=1"):
        bad.save(tmp_path)
    bad.save(tmp_path, allow_nonfinite=True)  # the explicit opt-out
    with pytest.raises(SchemaError, match="non-finite"):
        load_results(tmp_path)
    assert load_results(tmp_path, allow_nonfinite=True)[bad.id].table.sink_rate.isna().sum() == 1


def test_unknown_kind_is_refused_with_nearest_names(tmp_path):
    r = _result()
    with pytest.raises(SchemaError, match="Did you mean 'sinks.layers'"):
        Result("sinks.layer", r.table, r.meta).save(tmp_path)


# ----------------------------------------------------------------------------- hostile and broken folders
@pytest.mark.parametrize("evil", ["../outside/x", "/etc/passwd", "..", "a/b"])
def test_manifest_ids_cannot_leave_the_folder(tmp_path, evil):
    folder = tmp_path / "res"
    _result().save(folder)
    (tmp_path / "outside").mkdir()
    _result().save(tmp_path / "outside")  # a valid Result the evil id points at
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["results"].append({"id": evil, "kind": "sinks.layers"})
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="never a path|no Result"):
        load_results(folder)


def test_symlinked_result_file_is_refused(tmp_path):
    folder = tmp_path / "res"
    r = _result()
    r.save(folder)
    r.save(tmp_path / "elsewhere")
    (folder / f"{r.id}.parquet").unlink()
    (folder / f"{r.id}.parquet").symlink_to(tmp_path / "elsewhere" / f"{r.id}.parquet")
    with pytest.raises(StoreError, match="symbolic link"):
        load_results(folder)


def test_truncated_table_is_refused_naming_it(tmp_path):
    r = _result()
    r.save(tmp_path)
    path = tmp_path / f"{r.id}.parquet"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(StoreError, match=f"{path.name} does not match the checksum"):
        load_results(tmp_path)


def test_full_disk_during_save_keeps_nothing_and_loses_nothing(tmp_path, monkeypatch):
    import interp.results as results

    _result("old").save(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    real = results.atomic_write_json

    def full(path, obj):
        if path.name == "manifest.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, obj)

    monkeypatch.setattr(results, "atomic_write_json", full)
    with pytest.raises(StoreError, match="No space left on device; nothing of it was kept"):
        _result("new").save(tmp_path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == \
        sorted(p for p in before if not p.startswith("."))
    assert set(load_results(tmp_path)) == {"sinks.layers-old"}


def test_a_folder_holds_one_model_identity(tmp_path):
    _result("a", model="toy:llama", revision="rev1").save(tmp_path)
    with pytest.raises(StoreError, match=r"'toy:llama' \(identity rev1\).*'toy:gpt2' \(identity rev2\)"):
        _result("b", model="toy:gpt2", revision="rev2").save(tmp_path)


def test_not_a_results_folder(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        load_results(tmp_path / "nope")
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(StoreError, match="not an interp results manifest"):
        load_results(tmp_path)


def test_cache_overwrite_never_replaces_a_results_manifest(toy_llama, tmp_path):
    """`interp cache --overwrite --out <a results folder>` used to replace its manifest (load_results then failed)."""
    from interp.cache import collect

    _result("a", model="toy:llama", revision=toy_llama.interp_info.revision).save(tmp_path)
    with pytest.raises(StoreError, match="is not an activation store"):
        collect(toy_llama, ["ab", "cd"], "resid_post", out=tmp_path, progress=False, overwrite=True)
    assert set(load_results(tmp_path)) == {"sinks.layers-a"}
