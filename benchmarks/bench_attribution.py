"""Benchmark: transcoders + one attribution graph on the bundled SmolLM2 (CPU).

1. Train per-layer transcoders (all 30 layers) with a few-minute budget: ``--tokens`` activation
   tokens of the offline docstring corpus collected to disk (``interp.cache.collect``, mlp_in and
   mlp_out of every layer), ``--steps`` batch-top-k steps per layer. Skipped when the folder
   already holds them (resumable), so a rerun times the graph only.
2. Evaluate on held-out rows: per-layer L0 / explained variance, next-token loss of the model
   with every MLP replaced vs the original.
3. Build the attribution graph of a 12-token prompt (``interp.transcoders.attribute``), timed,
   with the process's peak RSS (``ru_maxrss``) before and after.
4. Ablate each of the graph's 10 most influential features in the replacement model (frozen and
   open attention/norms, downstream features recomputed) and compare the top logit's change with
   the graph's prediction (:func:`interp.transcoders.interventions.intervention_agreement`).
5. For each of ``--prompts`` prompts: replacement and completeness scores.

Usage::

    python benchmarks/bench_attribution.py --threads 2 --tokens 8000 --steps 150
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PROMPTS = [
    "The Eiffel Tower is located in the city of",
    "The capital of Germany is the city of",
    "def add(a, b):\n    return a",
    "Michael Jordan played the sport of",
    "The opposite of hot is",
]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=8000)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--d-sae", type=int, default=1024)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--prompts", type=int, default=5)
    ap.add_argument("--work", type=Path, default=None, help="activations + transcoders (default: "
                    "INTERP_HOME/bench/attribution; large, kept out of the repository)")
    ap.add_argument("--report", type=Path, default=Path(__file__).parent / "out" / "attribution.json")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from interp.cache import collect
    from interp.models import TokenBatch, load_model, tokenize
    from interp.sae.corpus import CorpusConfig, build_corpus, tokenize_corpus
    from interp.transcoders import (TranscoderTrainConfig, evaluate_transcoders, load_transcoders,
                                    train_transcoders)
    from interp.transcoders.attribution import AttributionConfig, attribute

    from interp._fs import interp_home

    out = args.work or interp_home() / "bench" / "attribution"
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"threads": args.threads, "load_avg_start": os.getloadavg()}
    m = load_model("smollm2")
    n_layers = int(m.cfg.n_layers)
    cfg = TranscoderTrainConfig(d_sae=args.d_sae, k=args.k, steps=args.steps, batch_size=args.batch_size, lr=1e-3)
    split = tokenize_corpus(m, build_corpus(CorpusConfig(max_chars=2_000_000)), context_size=64)
    rows = min(split.train.shape[0], -(-args.tokens // 63))
    t0 = time.perf_counter()
    batch = TokenBatch(tokens=split.train[:rows], lengths=torch.full((rows,), 64), texts=("",) * rows)
    store = collect(m, batch, "mlp_in,mlp_out", out=out / "acts", progress=False)
    t1 = time.perf_counter()
    recs = train_transcoders(m, store, cfg, folder=out / "tc", progress=True)
    t2 = time.perf_counter()
    report["training"] = {"config": cfg.__dict__, "rows": rows, "tokens": rows * 63, "collect_s": t1 - t0,
                          "train_s": t2 - t1, "trained_layers": sum(not r.skipped for r in recs),
                          "final_nmse": {r.layer: r.final_mse for r in recs if not r.skipped}}
    tcs = load_transcoders(m, out / "tc")
    ev = evaluate_transcoders(m, tcs, split.held_out[:8])
    report["eval"] = ev
    print(f"eval: loss original {ev['loss_original']:.3f}, replaced {ev['loss_replacement']:.3f}; "
          f"EV mean {sum(v['explained_variance'] for v in ev['layers'].values()) / n_layers:.3f}, "
          f"L0 mean {sum(v['l0'] for v in ev['layers'].values()) / n_layers:.1f}", flush=True)
    # one 12-token graph, timed
    twelve = "Fact: The Eiffel Tower is located in the city of"      # 12 tokens (SmolLM2, no BOS)
    n_tok = int(tokenize(m, [twelve]).lengths[0])
    rss0 = _rss_mb()
    t3 = time.perf_counter()
    g = attribute(m, twelve, tcs, AttributionConfig(batch_size=32))
    t4 = time.perf_counter()
    report["graph"] = {"prompt": twelve, "tokens": n_tok, "features": g.n_features, "nodes": g.adjacency.shape[0],
                       "seconds": t4 - t3, "peak_rss_mb_before": rss0, "peak_rss_mb_after": _rss_mb(),
                       "adjacency_mb": g.adjacency.numel() * 4 / 2**20, **g.scores(),
                       "top_logits": [m.tokenizer.decode([t]) for t in g.logit_tokens.tolist()],
                       "top_probs": g.logit_probs.tolist(),
                       "pruned_nodes": len(g.to_graph()), "load_avg": os.getloadavg()}
    print(json.dumps(report["graph"], indent=1), flush=True)
    from interp.transcoders.interventions import intervention_agreement

    report["interventions"] = {}
    for mode in ("frozen", "open"):
        t6 = time.perf_counter()
        rep = intervention_agreement(m, g, tcs, top=10, factor=0.0, mode=mode)
        rep["seconds"] = time.perf_counter() - t6
        report["interventions"][mode] = rep
        print(mode, {k: v for k, v in rep.items() if k != "rows"}, flush=True)
    report["prompts"] = []
    for p in PROMPTS[1:args.prompts]:
        t5 = time.perf_counter()
        gp = attribute(m, p, tcs)
        report["prompts"].append({"prompt": p, "tokens": gp.n_pos, "features": gp.n_features, **gp.scores(),
                                  "seconds": time.perf_counter() - t5})
        print(report["prompts"][-1], flush=True)
    report["prompts"].insert(0, {"prompt": twelve, "tokens": n_tok, "features": g.n_features, **g.scores(),
                                 "seconds": t4 - t3})
    args.report.write_text(json.dumps(report, indent=1, default=str))
    print(f"-> {args.report}")


if __name__ == "__main__":
    main()
