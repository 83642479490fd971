"""CLI: interp transcoders train / interp attribute on toy:llama, and their one-line errors."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_train_then_attribute(tmp_path, capsys):
    from interp.cli import invoke

    tc = tmp_path / "tc"
    rc = invoke(["--threads", "1", "transcoders", "train", "toy:llama", "--tokens", "3000", "--steps", "30",
                 "--d-sae", "64", "--k", "4", "--batch-size", "128", "--context-size", "32", "--max-chars", "100000",
                 "--out", str(tc), "--eval-rows", "2"])
    assert rc == 0, capsys.readouterr().err
    assert (tc / "L0" / "cfg.json").is_file() and (tc / "L1" / "cfg.json").is_file()
    from interp.results import load_result

    ev = load_result(tc / "eval", "transcoders.eval-held-out")
    assert sorted(ev.table["layer"]) == [0, 1] and ev.meta.extra["loss_replacement"] > 0
    rc = invoke(["--threads", "1", "transcoders", "train", "toy:llama", "--tokens", "3000", "--steps", "30",
                 "--d-sae", "64", "--k", "4", "--batch-size", "128", "--context-size", "32", "--max-chars", "100000",
                 "--out", str(tc), "--eval-rows", "0"])
    assert rc == 0 and "skipped 2 finished" in capsys.readouterr().out
    out = tmp_path / "graph"
    rc = invoke(["--threads", "1", "attribute", "toy:llama", "--prompt", "the lazy dog", "--transcoders", str(tc),
                 "--out", str(out), "--slug", "dog"])
    assert rc == 0, capsys.readouterr().err
    from interp.graph import load_graph
    from interp.transcoders.graph_json import from_neuronpedia

    ours = load_graph(out / "circuit_graph.json")
    back = from_neuronpedia(json.loads((out / "dog.json").read_text()))
    assert sorted(ours.nodes) == sorted(back.nodes) and sorted(ours.edges) == sorted(back.edges)
    scores = json.loads((out / "scores.json").read_text())
    assert 0 <= scores["replacement"] <= 1 and 0 <= scores["completeness"] <= 1
    page = (out / "graph.html").read_text()                   # the explorer page holds every pruned node
    assert all(json.dumps(n)[1:-1] in page for n in ours.nodes)
    capsys.readouterr()
    rc = invoke(["attribute", "toy:llama", "--prompt", "a " * 40, "--transcoders", str(tc), "--out", str(out)])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]                       # (above it: the weight-loading progress bar)
    assert rc == 2 and last.startswith("interp: error:") and "limited to 64 tokens" in last
    rc = invoke(["attribute", "toy:gpt2", "--prompt", "abc", "--transcoders", str(tc), "--out", str(out)])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith("interp: error:") and "model_identity" in last


def test_bad_arguments_exit_2(tmp_path, capsys):
    from interp.cli import invoke

    rc = invoke(["attribute", "toy:llama", "--prompt", "x", "--transcoders", str(tmp_path / "none"),
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "no transcoder for layer(s) 0, 1" in err
    rc = invoke(["attribute", "toy:llama", "--prompt", "x", "--out", str(tmp_path / "o"), "--slug", "a/b"])
    assert rc == 2 and "--slug" in capsys.readouterr().err
    rc = invoke(["transcoders", "train", "toy:llama", "--layers", "5", "--out", str(tmp_path / "t")])
    assert rc == 2 and "--layers" in capsys.readouterr().err
