"""SAD on SmolLM2 IOI: signals into the name-mover-like heads of path patching, compared with its sender L20.H0.

Run: PYTHONPATH=. python analyses/sad_ioi.py [n_prompts] [out_folder]
Prints, per head, the strongest signals (END query position, f = 1.0, depth 1) and L20.H0's rank.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HEADS = ("L23.H3", "L29.H1", "L23.H0")
PATH_SENDER = "L20.H0"


def main(n: int = 32, out: str | None = None) -> None:
    from interp.datasets.registry import build_task
    from interp.models import load_model, tokenize
    from interp.sad import SADConfig, trace

    t0 = time.perf_counter()
    m = load_model("smollm2")
    ds = build_task("ioi", model=m, n=n, seed=0)
    batch = tokenize(m, ds.clean)
    toks = [batch.tokens[i, : int(batch.lengths[i])] for i in range(len(ds))]
    ends = [[len(t) - 1] for t in toks]
    from interp.hooks import run_capture
    from interp.nodes import parse_node_id
    from interp.sites import Site

    layers = sorted({int(parse_node_id(h)["layer"]) for h in HEADS})
    store = run_capture(m, batch.tokens, [Site("pattern", l) for l in layers])
    for head in HEADS:
        nid = parse_node_id(head)
        pat = store[Site("pattern", int(nid["layer"]))][:, int(nid["head"])]
        where = {"io": 0, "s1": 0, "s2": 0, "other": 0}
        for b, meta in enumerate(ds.meta):
            row = pat[b, len(toks[b]) - 1]
            fired = [k for k in range(1, len(toks[b])) if row[k] >= 0.5]
            for k in fired:
                key = {meta["io_pos"]: "io", meta["s1_pos"]: "s1", meta["s2_pos"]: "s2"}.get(k, "other")
                where[key] += 1
        print(f"{head}: END firings by key (attention >= 0.5): {where}")
    for head in HEADS:
        res = trace(m, toks, head, query_positions=ends, config=SADConfig(depth=1), dataset="ioi")
        if out:
            res.save(Path(out))
        t = res.table
        if t.empty:
            print(f"{head}: no firing at END (attention >= 0.5 to a key other than 0)")
            continue
        t = t.assign(_a=t["signal"].abs()).sort_values("_a", ascending=False).reset_index(drop=True)
        heads_only = t[t["src"].str.contains(r"\.H")].reset_index(drop=True)
        r0 = t.iloc[0]
        print(f"\n{head}: {int(r0.n_firings)} firings in {int(r0.n_prompts)}/{len(toks)} prompts, mean score "
              f"{r0.dst_score:.2f}, {r0.dst_terms:.1f} kept terms of {m.cfg.d_head}")
        print(t.head(8)[["src", "dst_input", "signal", "share"]].to_string())
        for side in ("q", "k"):
            s = heads_only[heads_only["dst_input"] == side].reset_index(drop=True)
            hit = s.index[s["src"] == PATH_SENDER]
            rank = int(hit[0]) + 1 if len(hit) else None
            val = float(s.loc[hit[0], "signal"]) if len(hit) else float("nan")
            print(f"  {PATH_SENDER} via {side}: rank {rank} of {len(s)} heads by |signal|, signal {val:+.3f}")
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 32, sys.argv[2] if len(sys.argv) > 2 else None)
