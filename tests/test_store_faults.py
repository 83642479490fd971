"""Activation stores under faults: concurrent writers, kills at each step of a shard write, hostile manifests."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = [f"prompt number {i} " + "ab" * (i % 7) for i in range(24)]


def _py(script, *args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ---------------------------------------------------------------- concurrency
_CLI_RUN = """
    import os, sys, time
    import interp.cache.collector as mod
    mod._fault = lambda point, path: time.sleep(0.2)       # slow shard writes: the runs overlap
    go = sys.argv[1]
    while not os.path.exists(go):
        time.sleep(0.001)
    sys.argv = ["interp", *sys.argv[2:]]
    from interp.cli import main
    main()
"""


@pytest.mark.slow
def test_two_cli_cache_runs_into_one_folder_cannot_both_succeed(toy_llama, tmp_path):
    """Issue 15, item 4: two `interp cache` runs with different --sites into the same --out."""
    f = tmp_path / "p.txt"
    f.write_text("\n".join(PROMPTS) + "\n")
    out, go = tmp_path / "s", tmp_path / "go"
    common = ["cache", "toy:llama", "--prompts", f, "--out", out, "--batch-size", "2", "--max-memory", "100kB",
              "--no-progress"]
    procs = [_py(_CLI_RUN, go, *common, "--sites", sites) for sites in ("resid_post.0", "resid_post.1")]
    time.sleep(1.0)
    go.write_text("")
    res = [(p.wait(timeout=240), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in res)
    assert codes == [0, 2], res
    ok = next(r for r in res if r[0] == 0)
    bad = next(r for r in res if r[0] == 2)
    assert "cached 24 prompts" in ok[1] and "cached" not in bad[1]
    assert "being written by another process (pid" in bad[2] or "differs in: sites" in bad[2], bad[2]
    from interp.cache import ActivationStore

    store = ActivationStore.open(out)
    assert store.complete and len(store.sites) == 1 and not (out / ".lock").exists()
