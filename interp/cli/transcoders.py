"""``interp transcoders``: train and evaluate per-layer transcoders (mlp_in -> mlp_out).

Example:

  interp transcoders train smollm2 --tokens 200000 --steps 2000 --d-sae 2048 --k 16
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from interp.cli._common import parse_layers

tc_app = typer.Typer(help="Per-layer transcoders (MLP input -> MLP output): train, evaluate.", no_args_is_help=True,
                     add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False)


@tc_app.command("train")
def train(
    model: str = typer.Argument(..., help="model spec: smollm2, a local HF folder, toy:llama ..."),
    tokens: int = typer.Option(100_000, "--tokens", min=1, help="activation tokens collected (mlp_in + mlp_out)"),
    out: Optional[Path] = typer.Option(None, "--out", help="transcoder folder (default: the cache, "
                                       "INTERP_HOME/transcoders/<model identity>); L<layer>/ per layer"),
    store: Optional[Path] = typer.Option(None, "--store", help="activation store folder to reuse or create "
                                         "(default OUT/acts)"),
    layers: str = typer.Option("", "--layers", help="comma-separated layers (default: all)"),
    architecture: str = typer.Option("topk", "--arch", help="topk (per-token top-k, saved as JumpReLU) or jumprelu"),
    d_sae: int = typer.Option(2048, "--d-sae", min=1, help="features per layer"),
    k: int = typer.Option(16, "--k", min=1, help="active features per token (topk)"),
    steps: int = typer.Option(1000, "--steps", min=1, help="optimiser steps per layer"),
    batch_size: int = typer.Option(1024, "--batch-size", min=1, help="tokens per step"),
    lr: float = typer.Option(1e-3, "--lr"),
    context_size: int = typer.Option(64, "--context-size", min=2, help="tokens per corpus row"),
    sources: str = typer.Option("stdlib,numpy,pandas", "--sources", help="corpus sources (installed docstrings)"),
    max_chars: Optional[int] = typer.Option(None, "--max-chars", help="cap on corpus characters"),
    eval_rows: int = typer.Option(16, "--eval-rows", min=0, help="held-out rows for the evaluation (0: skip)"),
    init: str = typer.Option("data", "--init", help="data (each feature starts as one training token) or random"),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", min=0, help="training wall-time budget: no "
                                                "new layer starts once spent; a rerun resumes"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train one transcoder per layer (resumable: finished layers are skipped), then evaluate on held-out rows.

    Example: interp transcoders train smollm2 --tokens 200000 --steps 2000
    """
    import time


    from interp.cli._common import check_out_dir
    from interp.models import load_model
    from interp.sae.corpus import CorpusConfig, build_corpus, tokenize_corpus
    from interp.transcoders import (TranscoderTrainConfig, evaluate_transcoders, load_transcoders,
                                    train_transcoders, transcoder_home)
    from interp.transcoders.train import collect_training_store, training_rows

    cfg = TranscoderTrainConfig(architecture=architecture, d_sae=d_sae, k=k, steps=steps, batch_size=batch_size,
                                lr=lr, seed=seed, init=init)
    m = load_model(model)
    root = out or transcoder_home(m)
    check_out_dir(root, "--out")
    chosen = parse_layers(layers, int(m.cfg.n_layers))
    split = tokenize_corpus(m, build_corpus(CorpusConfig(sources=tuple(s.strip() for s in sources.split(",") if s.strip()),
                                                           max_chars=max_chars)), context_size=context_size)
    train_rows = training_rows(split.train, tokens)
    rows = int(train_rows.shape[0])
    t0 = time.perf_counter()
    acts = collect_training_store(m, train_rows, chosen, store or root / "acts")
    t1 = time.perf_counter()
    recs = train_transcoders(m, acts, cfg, layers=chosen, folder=root, progress=True,
                             max_seconds=None if max_minutes is None else max_minutes * 60)
    t2 = time.perf_counter()
    trained = [r for r in recs if not r.skipped]
    typer.echo(f"collected {rows} rows x {context_size} tokens in {t1 - t0:.0f} s; trained {len(trained)} layer(s), "
               f"skipped {len(recs) - len(trained)} finished, in {t2 - t1:.0f} s -> {root}")
    if eval_rows:
        done = [x for x in chosen if (root / f"L{x}").is_dir()]
        if len(done) < len(chosen):
            typer.echo(f"evaluation skipped: {len(chosen) - len(done)} layer(s) not trained yet; rerun to resume")
            return
        held = split.held_out[:eval_rows]
        res = evaluate_transcoders(m, load_transcoders(m, root, layers=chosen), held, name="held-out")
        res.meta.extra.update({"training_config": cfg.__dict__, "tokens": int(rows * (context_size - 1)),
                               "collect_s": t1 - t0, "train_s": t2 - t1})
        res.save(root / "eval")
        ex = res.meta.extra
        for r in res.table.itertuples():
            typer.echo(f"L{r.layer}: L0 {r.l0:.1f}, explained variance {r.explained_variance:.3f}")
        typer.echo(f"next-token loss: original {ex['loss_original']:.3f}, all MLPs replaced {ex['loss_replacement']:.3f}, "
                   f"all MLPs zeroed {ex['loss_zero_mlps']:.3f} ({ex['n_predictions']} held-out predictions); "
                   f"median explained variance {res.table['explained_variance'].median():.3f}; {root / 'eval'}")


def register(app: typer.Typer) -> None:
    app.add_typer(tc_app, name="transcoders")
