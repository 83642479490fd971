"""Per-layer cost of an ACDC run from its progress lines, and a projection of the rest of the run.

``interp circuit acdc ... 2> LOG`` prints one line per tested receiver (``acdc: L23.H0.v: 15/231 edges kept,
250 circuits, 1543s``). This reads LOG and prints, per layer, the receivers tested, edges tested, edges
kept, circuits run, seconds and seconds per circuit; then it projects the layers not reached: the mean
number of tested receivers per complete layer, times ``10 l + 1`` edges per receiver (SmolLM2's senders
below layer l: 9 heads and 1 MLP per layer, and the embedding), times a linear fit of the seconds per
circuit against the layer. An estimate: lower layers with more connected heads take longer.

    python benchmarks/acdc_progress.py LOG
"""

from __future__ import annotations

import re
import sys

import numpy as np

LINE = re.compile(r"acdc: (\S+)\.(\w+): (\d+)/(\d+) edges kept, (\d+) circuits, (\d+)s")


def main(path: str) -> None:
    rows, prev = [], 0
    with open(path) as fh:
        for line in fh:
            m = LINE.match(line)
            if m:
                rec, _, kept, total, circuits, t = m.groups()
                layer = 10**6 if rec == "LOGITS" else int(rec.split(".")[0][1:])
                rows.append((layer, int(total), int(kept), int(circuits), int(t) - prev))
                prev = int(t)
    if not rows:
        sys.exit(f"acdc_progress: no progress lines in {path}")
    print("| layer | receivers tested | edges tested | kept | circuits | seconds | s per circuit |")
    print("|---|---|---|---|---|---|---|")
    for layer in sorted({r[0] for r in rows}, reverse=True):
        rs = [r for r in rows if r[0] == layer]
        e, k, c, s = (sum(r[i] for r in rs) for i in (1, 2, 3, 4))
        name = "LOGITS" if layer == 10**6 else f"L{layer}"
        print(f"| {name} | {len(rs)} | {e:,} | {k} | {c:,} | {s:,} | {s / c:.3f} |")
    last = min(r[0] for r in rows)
    done = [r for r in rows if last < r[0] < 10**6]        # complete layers (the last one may be partial)
    t_done = sum(r[4] for r in rows if r[0] > last)
    print(f"total: {len(rows)} receivers, {sum(r[1] for r in rows):,} edges tested, {sum(r[3] for r in rows):,} "
          f"circuits, {prev:,} s")
    if len({r[0] for r in done}) < 2:
        return
    per_layer = len(done) / len({r[0] for r in done})
    a, b = np.polyfit([r[0] for r in done], [r[4] / r[3] for r in done], 1)
    rest = sum(per_layer * (10 * l + 1) * (a * l + b) for l in range(last + 1))
    print(f"complete layers: {t_done:,} s, {per_layer:.2f} receivers per layer; s per circuit {b:.2f} (layer 0) to "
          f"{a * (max(r[0] for r in done)) + b:.2f} (layer {max(r[0] for r in done)})")
    print(f"projected: layers {last}..0 {rest:,.0f} s; whole run {(t_done + rest) / 3600:.2f} h")


if __name__ == "__main__":
    main(sys.argv[1])
