"""Benchmark: attribution graphs of short factual prompts through the trained SmolLM2 transcoders (CPU).

Train the transcoders first (one command, resumable per layer; see README "Transcoders")::

    OMP_NUM_THREADS=1 nice -n 10 interp --threads 1 transcoders train smollm2 --tokens 60000 --steps 70 \\
        --d-sae 2048 --k 16 --batch-size 1024 --lr 3e-3 --eval-rows 16

then, for each prompt (in the order given, the report rewritten after each one, so a run cut
short keeps what it finished):

1. build its attribution graph (:func:`interp.transcoders.attribute`), timed, with the peak
   resident memory *during* the graph (``/proc/self/status`` VmRSS sampled every 20 ms, minus
   the resident memory before it) and the load average;
2. its replacement and completeness scores (circuit-tracer's definitions), node counts before
   and after pruning, the top logits;
3. for the first ``--agreement-prompts`` prompts: ablate each of the graph's ``--top`` most
   influential features in the replacement model (frozen attention/norms, downstream features
   recomputed) and compare the top logit's change with the graph's prediction
   (:func:`interp.transcoders.interventions.intervention_agreement`).

The transcoders' held-out evaluation (``transcoders.eval`` Result saved by the train command under
``<transcoders>/eval``) is copied into the report.

Usage::

    python benchmarks/bench_attribution.py --threads 1 --report benchmarks/out/attribution.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PROMPTS = [
    "The capital of Germany is",
    "The currency of Japan is the",
    "Michael Jordan played the sport of",
    "The Great Wall is located in",
    "The Eiffel Tower is located in the city of",
    # the 12-token timing prompt of the check (graph time and memory); scores reported too
    "Fact: The Eiffel Tower is located in the city of",
]


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakRSS:
    """Peak resident memory (MB) while the block runs, sampled every ``every`` seconds."""

    def __init__(self, every: float = 0.02) -> None:
        self.every, self.peak, self.start = every, 0.0, 0.0
        self._stop = threading.Event()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            self._stop.wait(self.every)

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = _rss_mb()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--transcoders", type=Path, default=None, help="default: the model's cache folder")
    ap.add_argument("--prompts", type=int, default=len(PROMPTS), help="how many of PROMPTS (in order; the 6th is "
                    "the 12-token timing prompt)")
    ap.add_argument("--batch-size", type=int, default=64, help="backward-pass targets per batch")
    ap.add_argument("--top", type=int, default=10, help="features ablated for the intervention agreement")
    ap.add_argument("--agreement-prompts", type=int, default=1)
    ap.add_argument("--modes", default="frozen", help="intervention modes: frozen and/or open")
    ap.add_argument("--report", type=Path, default=Path(__file__).parent / "out" / "attribution.json")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from interp.models import load_model, tokenize
    from interp.results import load_results
    from interp.transcoders import load_transcoders, transcoder_home
    from interp.transcoders.attribution import AttributionConfig, attribute
    from interp.transcoders.interventions import intervention_agreement

    m = load_model(args.model)
    root = args.transcoders or transcoder_home(m)
    tcs = load_transcoders(m, root)
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": args.threads,
                    "transcoders": str(root), "batch_size": args.batch_size, "prompts": []}
    if (root / "eval").is_dir():
        for res in load_results(root / "eval").values():
            report["eval"] = {"layers": res.table.to_dict(orient="records"), **res.meta.extra}
    args.report.parent.mkdir(parents=True, exist_ok=True)
    cfg = AttributionConfig(batch_size=args.batch_size)
    for i, prompt in enumerate(PROMPTS[: args.prompts]):
        n_tok = int(tokenize(m, [prompt]).lengths[0])
        load0 = os.getloadavg()
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            g = attribute(m, prompt, tcs, cfg)
            seconds = time.perf_counter() - t0
        row = {"prompt": prompt, "tokens": n_tok, "features": g.n_features, "nodes": int(g.adjacency.shape[0]),
               "pruned_nodes": len(g.to_graph()), **g.scores(), "seconds": seconds,
               "rss_mb_before": mem.start, "rss_mb_peak": mem.peak, "rss_mb_added": mem.peak - mem.start,
               "adjacency_mb": g.adjacency.numel() * 4 / 2**20,
               "top_logits": g.logit_strs, "top_probs": [round(float(p), 4) for p in g.logit_probs],
               "load_avg_before": load0, "load_avg_after": os.getloadavg()}
        if i < args.agreement_prompts:
            row["interventions"] = {}
            for mode in [s.strip() for s in args.modes.split(",") if s.strip()]:
                t1 = time.perf_counter()
                rep = intervention_agreement(m, g, tcs, top=args.top, factor=0.0, mode=mode)
                rep["seconds"] = time.perf_counter() - t1
                row["interventions"][mode] = rep
        report["prompts"].append(row)
        args.report.write_text(json.dumps(report, indent=1, default=str))
        print(json.dumps({k: v for k, v in row.items() if k != "interventions"}, default=str), flush=True)
        for mode, rep in row.get("interventions", {}).items():
            print(mode, {k: v for k, v in rep.items() if k != "rows"}, flush=True)
    print(f"-> {args.report}")


if __name__ == "__main__":
    main()
