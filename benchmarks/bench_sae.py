"""Benchmark: SAE training throughput from our on-disk activation stores vs SAE-Lens's own
``ActivationsStore`` with the model in the loop (bundled SmolLM2, CPU).

All variants train the same SAE-Lens top-k SAE with SAE-Lens's ``SAETrainer`` (through
``interp.sae.train.train_sae``; activation normalisation off so no extra batches are drawn)
for the same number of steps; only the data provider differs:

* ``flat_shards``  ``interp.sae.data.ActivationBatches.from_shards``: flat ``[n, d_in]``
                   safetensors shards written once by ``cache_activations``;
* ``interp_cache`` ``ActivationBatches.from_store`` over an ``interp.cache`` store on disk
                   (``collect(..., out=)``: padded per-prompt shards, masked by lengths);
* ``saelens``      SAE-Lens ``ActivationsStore.from_config`` with the model in the loop
                   (``interp.sae.train.train_streaming``), forward pass stopped at the layer.

Repeats are interleaved (order rotated) with torch threads pinned. The one-time caching cost
is reported separately (tokens/s of the capture), with the number of epochs after which the
cache pays off.

Usage::

    python benchmarks/bench_sae.py --threads 1 --steps 4 --batch 2048 --reps 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--site", default="resid_post.15")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--json", default="", help="also write the numbers to this file")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from interp.models import load_model
    from interp.sae.corpus import CorpusConfig, build_corpus, tokenize_corpus
    from interp.sae.train import SAETrainConfig
    from interp.sites import Site

    model = load_model(args.model)
    site = Site.parse(args.site)
    split = tokenize_corpus(model, build_corpus(CorpusConfig(sources=("stdlib",), max_chars=2_000_000)),
                            context_size=args.context)
    tokens_needed = args.steps * args.batch
    rows = -(-2 * tokens_needed // (args.context - 1)) + 2          # 2 epochs' worth of headroom for the mixing buffer
    toks = split.train[:rows]
    cfg = SAETrainConfig(architecture="topk", k=32, expansion=args.expansion, batch_size=args.batch,
                         training_tokens=tokens_needed, normalize_activations="none", log_every=10**6)
    tmp = Path(tempfile.mkdtemp(prefix="bench-sae-"))
    try:
        report = _bench(args, model, site, toks, cfg, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


def _bench(args, model, site, toks, cfg, tmp: Path) -> dict:
    from interp.cache import collect
    from interp.sae.data import ActivationBatches, ActivationShards, cache_activations
    from interp.sae.train import train_sae, train_streaming

    tokens_needed = args.steps * args.batch
    t0 = time.perf_counter()
    cache_activations(model, toks, [site], tmp / "flat", batch_size=8)
    cache_s = time.perf_counter() - t0
    shards = ActivationShards(tmp / "flat", site)
    # the same rows as text prompts for interp.cache (re-tokenized by collect; lengths may differ slightly)
    texts = [model.tokenizer.decode(r) for r in toks.tolist()]
    t0 = time.perf_counter()
    store = collect(model, texts, [site], batch_size=8, out=tmp / "store", progress=False)
    collect_s = time.perf_counter() - t0

    def run(name: str) -> float:
        if name == "flat_shards":
            out = train_sae(ActivationBatches.from_shards(shards, batch_size=args.batch), cfg, site=site, model=model)
        elif name == "interp_cache":
            out = train_sae(ActivationBatches.from_store(store, site, batch_size=args.batch), cfg, site=site,
                            model=model)
        else:
            out = train_streaming(model, toks, cfg, site=site)
        return tokens_needed / out.seconds

    names = ["flat_shards", "interp_cache", "saelens"]
    results: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(args.reps):
        for n in names[rep % 3:] + names[: rep % 3]:
            results[n].append(run(n))
    med = {n: statistics.median(v) for n, v in results.items()}
    cached_tokens = shards.n_tokens
    report = {
        "model": args.model, "site": str(site), "threads": args.threads, "steps": args.steps, "batch": args.batch,
        "d_sae": args.expansion * shards.d_in, "reps": args.reps,
        "train_tok_per_s": {n: round(v, 1) for n, v in med.items()},
        "ratio_flat_vs_saelens": round(med["flat_shards"] / med["saelens"], 2),
        "ratio_interp_cache_vs_saelens": round(med["interp_cache"] / med["saelens"], 2),
        "cache_once_tok_per_s": round(cached_tokens / cache_s, 1),
        "collect_once_tok_per_s": round(int(store.lengths.sum()) / collect_s, 1),
        "all_runs": {n: [round(x, 1) for x in v] for n, v in results.items()},
    }
    return report


if __name__ == "__main__":
    main()
