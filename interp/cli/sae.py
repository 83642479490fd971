"""``interp sae``: train, evaluate and inspect sparse autoencoders (SAE-Lens, offline).

Examples:

  interp sae train smollm2 --site resid_post.15 --tokens 2000000 --cache-tokens 500000 --out out/sae/resid15
  interp sae eval smollm2 --sae out/sae/resid15/sae --out out/sae/resid15
  interp sae dashboard smollm2 --sae out/sae/z15/sae --out out/sae/z15
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from interp.cli._common import DEVICE_HELP, DTYPE_HELP, model_options

sae_app = typer.Typer(help="Sparse autoencoders: train (SAE-Lens), evaluate, dashboards.", no_args_is_help=True,
                      add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False)


def _corpus(model, context_size: int, sources: str, max_chars: Optional[int]):
    from interp.sae.corpus import CorpusConfig, build_corpus, tokenize_corpus

    cfg = CorpusConfig(sources=tuple(s.strip() for s in sources.split(",") if s.strip()), max_chars=max_chars)
    return tokenize_corpus(model, build_corpus(cfg), context_size=context_size)


def _site_of(sae, site: str):
    from interp.errors import ConfigError
    from interp.sites import Site

    if site:
        return Site.parse(site)
    meta = sae.cfg.metadata
    name = meta.get("interp_site") or meta.get("hook_name")
    if not name:
        raise ConfigError("the SAE's cfg.json names no hook; pass --site")
    return Site.parse(name)


def _check_out(out: Path, overwrite: bool, names: tuple[str, ...]) -> None:
    from interp.cli._common import check_out_dir
    from interp.errors import StoreError

    clash = [n for n in names if (out / n).exists()]
    if clash and not overwrite:
        raise StoreError(f"{out} already holds {', '.join(clash)}; pass --overwrite or choose another --out")
    check_out_dir(out, "--out")


@sae_app.command("train")
def train(
    model: str = typer.Argument(..., help="model spec: smollm2, a local HF folder, toy:llama ..."),
    site: str = typer.Option(..., "--site", help="resid_post.L, mlp_out.L, z.L (heads concatenated) ..."),
    tokens: int = typer.Option(..., "--tokens", min=1, help="training tokens (several epochs over the cache allowed)"),
    out: Path = typer.Option(..., "--out", help="output folder: sae/ (SAE-Lens format), Results, figures"),
    cache_tokens: int = typer.Option(0, "--cache-tokens", min=0,
                                     help="activation tokens to cache once (default: min(--tokens, corpus))"),
    acts: Optional[Path] = typer.Option(None, "--acts", help="activation cache folder to reuse or create "
                                        "(default OUT/acts)"),
    architecture: str = typer.Option("topk", "--arch", help="standard, topk, batchtopk or jumprelu"),
    k: int = typer.Option(32, "--k", help="active latents (topk / batchtopk)"),
    l1: float = typer.Option(5.0, "--l1", help="L1 coefficient (standard)"),
    l0: float = typer.Option(1.0, "--l0", help="L0 coefficient (jumprelu)"),
    expansion: int = typer.Option(8, "--expansion", help="d_sae / d_in"),
    batch_size: int = typer.Option(4096, "--batch-size", help="tokens per training step"),
    lr: float = typer.Option(4e-4, "--lr"),
    context_size: int = typer.Option(128, "--context-size", help="tokens per corpus row"),
    sources: str = typer.Option("stdlib,numpy,pandas", "--sources", help="corpus sources (installed docstrings)"),
    max_chars: Optional[int] = typer.Option(None, "--max-chars", help="cap on corpus characters"),
    streaming: bool = typer.Option(False, "--streaming", help="SAE-Lens ActivationsStore, model in the loop"),
    eval_rows: int = typer.Option(32, "--eval-rows", help="held-out rows for the evaluation (0: skip)"),
    fwd_batch: int = typer.Option(8, "--fwd-batch", help="rows per model forward pass"),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing SAE/results in --out"),
    device: str = typer.Option("", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("", "--dtype", help=DTYPE_HELP),
) -> None:
    """Train an SAE at SITE on the offline docstring corpus; save it in SAE-Lens's format.

    Activations are cached once (forward pass stopped at the SAE's layer) and trained on for
    several epochs if --tokens exceeds the cache. On a GPU the same command scales unchanged.

    Example: interp sae train smollm2 --site z.15 --tokens 2000000 --cache-tokens 500000 --out out/sae/z15
    """
    import math
    import time

    from interp.errors import DataError
    from interp.models import load_model
    from interp.sae.data import ActivationBatches, ActivationShards, cache_activations, check_sae_site, site_width
    from interp.sae.io import save_sae
    from interp.sae.train import SAETrainConfig, train_sae, train_streaming

    cfg = SAETrainConfig(architecture=architecture, k=k, l1_coefficient=l1, l0_coefficient=l0, expansion=expansion,
                         batch_size=batch_size, training_tokens=tokens, lr=lr, seed=seed)
    opts = model_options(device, dtype)   # before any model work
    _check_out(out, overwrite, ("sae",))
    m = load_model(model, **opts)
    s = check_sae_site(m, site, site_width(m, site))
    split = _corpus(m, context_size, sources, max_chars)
    per_row = context_size - 1
    want = cache_tokens or min(tokens, split.n_train_tokens)
    rows = min(split.train.shape[0], math.ceil(want / per_row))
    if rows * per_row < batch_size:
        raise DataError(f"the corpus gives {rows * per_row} training tokens at {s}, fewer than one batch of "
                        f"{batch_size}; lower --batch-size or add --sources")
    t0 = time.perf_counter()
    if streaming:
        trained = train_streaming(m, split.train[:rows], cfg, site=s, store_batch_size_prompts=fwd_batch)
        data_note = f"streamed {rows} rows through the model (SAE-Lens ActivationsStore)"
    else:
        acts_dir = acts or out / "acts"
        if not ((acts_dir / "manifest.json").exists() and str(s) in ActivationShards(acts_dir, s).manifest["sites"]):
            if acts_dir.exists() and not overwrite:
                from interp.errors import StoreError

                raise StoreError(f"{acts_dir} exists but has no cache of {s}; pass --overwrite or another --acts")
            cache_activations(m, split.train[:rows], [s], acts_dir, batch_size=fwd_batch, overwrite=overwrite,
                              meta=split.meta)
        shards = ActivationShards(acts_dir, s)
        provider = ActivationBatches.from_shards(shards, batch_size=batch_size, seed=seed)
        trained = train_sae(provider, cfg, site=s, model=m, context_size=context_size,
                            data_desc={"dataset": "docstring corpus", "corpus": split.meta,
                                       "cache_tokens": shards.n_tokens})
        data_note = f"{shards.n_tokens} cached tokens in {acts_dir}, {provider.epoch} full epochs"
    save_sae(trained.sae, out / "sae", overwrite=overwrite)
    trained.history.save(out)
    last = trained.history.table.iloc[-1]
    typer.echo(f"trained {cfg.architecture} SAE d_sae={trained.sae.cfg.d_sae} at {s} on {int(last.tokens)} tokens "
               f"({data_note}) in {time.perf_counter() - t0:.0f} s: loss {last.loss:.4g}, L0 {last.l0:.1f}, "
               f"explained variance {last.explained_variance:.3f}; saved {out / 'sae'}")
    if eval_rows:
        from interp.sae.evaluate import SAEEvalConfig, evaluate_sae

        res = evaluate_sae(m, trained.sae, s, split.held_out, SAEEvalConfig(max_rows=eval_rows, batch_size=fwd_batch))
        res.save(out)
        _echo_eval(res)


def _echo_eval(res) -> None:
    v = res.table.set_index("metric")["value"]
    typer.echo(f"held-out ({int(v.n_tokens)} tokens): L0 {v.l0:.1f}, explained variance {v.explained_variance:.3f}, "
               f"CE clean {v.ce_clean:.3f} / SAE {v.ce_with_sae:.3f} / zero {v.ce_zero_ablation:.3f} -> CE loss "
               f"recovered {v.ce_loss_recovered:.1%}, KL {v.kl_with_sae:.3f}, dead {int(v.dead_features)}, "
               f"dense {int(v.dense_features)}")


@sae_app.command("eval")
def evaluate(
    model: str = typer.Argument(..., help="model spec"),
    sae: Path = typer.Option(..., "--sae", help="SAE folder (cfg.json + sae_weights.safetensors)"),
    out: Path = typer.Option(..., "--out", help="results folder"),
    site: str = typer.Option("", "--site", help="site (default: from the SAE's cfg.json)"),
    rows: int = typer.Option(64, "--rows", min=1, help="held-out rows"),
    context_size: int = typer.Option(128, "--context-size"),
    sources: str = typer.Option("stdlib,numpy,pandas", "--sources"),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    device: str = typer.Option("", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("", "--dtype", help=DTYPE_HELP),
) -> None:
    """Held-out L0, explained variance, MSE, CE loss recovered, KL, dead/dense features (Result sae.eval).

    Example: interp sae eval smollm2 --sae out/sae/resid15/sae --out out/sae/resid15
    """
    from interp.cli._common import check_out_dir
    from interp.models import load_model
    from interp.sae.evaluate import SAEEvalConfig, evaluate_sae
    from interp.sae.io import load_sae

    model_sae = load_sae(sae)
    opts = model_options(device, dtype)   # before any model work
    check_out_dir(out, "--out")
    m = load_model(model, **opts)
    s = _site_of(model_sae, site)
    split = _corpus(m, context_size, sources, None)
    res = evaluate_sae(m, model_sae, s, split.held_out, SAEEvalConfig(max_rows=rows, batch_size=batch_size))
    res.save(out)
    _echo_eval(res)


@sae_app.command("dashboard")
def dashboard(
    model: str = typer.Argument(..., help="model spec"),
    sae: Path = typer.Option(..., "--sae", help="SAE folder"),
    out: Path = typer.Option(..., "--out", help="folder for dashboard.html, Results and figures"),
    site: str = typer.Option("", "--site", help="site (default: from the SAE's cfg.json)"),
    rows: int = typer.Option(64, "--rows", min=1, help="held-out rows to scan"),
    features: int = typer.Option(200, "--features", min=1, help="features shown (densest first)"),
    dfa_features: int = typer.Option(32, "--dfa-features", min=0, help="z SAEs: features attributed to heads"),
    context_size: int = typer.Option(128, "--context-size"),
    sources: str = typer.Option("stdlib,numpy,pandas", "--sources"),
    device: str = typer.Option("", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("", "--dtype", help=DTYPE_HELP),
) -> None:
    """A self-contained HTML page per SAE (no CDN) + Results sae.features/examples/histogram/logits (+ sae.dfa).

    Example: interp sae dashboard smollm2 --sae out/sae/z15/sae --out out/sae/z15
    """
    from interp.cli._common import check_out_dir
    from interp.models import load_model
    from interp.results import load_results
    from interp.sae.dashboard import write_dashboard
    from interp.sae.features import FeatureConfig, analyze_features, direct_feature_attribution
    from interp.sae.io import load_sae

    model_sae = load_sae(sae)
    opts = model_options(device, dtype)   # before any model work
    check_out_dir(out, "--out")
    m = load_model(model, **opts)
    s = _site_of(model_sae, site)
    split = _corpus(m, context_size, sources, None)
    held = split.held_out[:rows]
    fa = analyze_features(m, model_sae, s, held, FeatureConfig())
    for r in fa.results():
        r.save(out)
    if s.component == "z" and s.head is None and dfa_features:
        top = fa.features.table.sort_values("density", ascending=False).feature.head(dfa_features).tolist()
        direct_feature_attribution(m, model_sae, s, held, features=top).save(out)
    existing = load_results(out) if (out / "manifest.json").exists() else {}
    ev = next((r for r in existing.values() if r.kind == "sae.eval"), None)
    tr = next((r for r in existing.values() if r.kind == "sae.training"), None)
    path = write_dashboard(out / "dashboard.html", fa, eval_result=ev, training=tr, title=f"SAE at {s} ({model})",
                           max_features=features)
    typer.echo(f"dashboard of {int((fa.features.table.density > 0).sum())} live features -> {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(sae_app, name="sae")
