"""``interp axes fit`` and ``interp steer``: fit steering axes, then sweep steering strength.

Examples:
  interp axes fit smollm2 --concept sentiment --method probe --out out/axes
  interp axes fit smollm2 --concept antonyms --method fv --fit-pairs 45 --fv-layer 13 --alpha 2 --out out/fv
  interp steer smollm2 --axis out/axes/axis --alphas -4,-2,0,2,4 --out out/steer
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from interp.cli._common import DEVICE_HELP, DTYPE_HELP, model_options, parse_layers


def _floats(text: str) -> list[float]:
    from interp.errors import ConfigError

    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise ConfigError(f"--alphas: expected comma-separated numbers, got {text!r}") from e
    if not vals:
        raise ConfigError("--alphas: no values")
    return vals


def _save_fig(result, out: Path, stem: str) -> None:
    from interp.plots import export

    try:
        export(result.figure(), out / f"{stem}.html")
    except Exception as e:  # figures are a convenience: never lose the Results for them
        typer.echo(f"warning: figure {stem} not written ({e})", err=True)


def register(app: typer.Typer) -> None:
    axes_app = typer.Typer(help="Fit steering axes (contrast, PCA, ICA, probe, function vectors).",
                           no_args_is_help=True)
    app.add_typer(axes_app, name="axes")

    @axes_app.command("fit")
    def fit(model: str = typer.Argument(..., help="model spec, e.g. smollm2"),
            concept: str = typer.Option("sentiment", help="contrast set (sentiment, formality, language, or a TSV) "
                                                          "or, for --method fv, an ICL task (antonyms, ...)"),
            method: str = typer.Option("contrast", help="contrast | pca | ica | probe | fv"),
            layers: Optional[str] = typer.Option(None, help="comma-separated layers (default: all)"),
            seed: int = typer.Option(0),
            top_k: int = typer.Option(10, help="fv: heads summed into the function vector"),
            fv_layer: Optional[int] = typer.Option(None, help="fv: layer receiving the FV (default n_layers//3)"),
            n_prompts: int = typer.Option(50, help="fv: clean and shuffled-label ICL prompts (10 demonstrations each)"),
            fit_pairs: Optional[int] = typer.Option(None, help="fv: pairs used for fitting (default: half); the "
                                                              "rest are held out for the zero-shot accuracy"),
            alpha: float = typer.Option(1.0, help="fv: scale of the function vector in the accuracy sweep"),
            out: Path = typer.Option(..., help="output folder"),
            device: str = typer.Option("", "--device", help=DEVICE_HELP),
            dtype: str = typer.Option("", "--dtype", help=DTYPE_HELP)) -> None:
        """Fit an axis per layer; save the best at OUT/axis and every layer's at OUT/axes/L<l>.

        Example: interp axes fit smollm2 --concept sentiment --method probe --out out/axes
        """
        import numpy as np

        from interp.errors import ConfigError, nearest
        from interp.models import load_model
        from interp.results import run_meta
        from interp.sites import Site
        from interp.steering import axes as A

        methods = ("contrast", "pca", "ica", "probe", "fv")
        if method not in methods:
            raise ConfigError(f"unknown --method {method!r}.{nearest(method, methods)} Expected one of {methods}")
        from interp.cli._common import check_out_dir

        if method == "fv":
            from interp.datasets.icl import load_icl

            icl = load_icl(concept)              # DataError before the model loads
        else:
            from interp.datasets.contrast import load_contrast

            cs = load_contrast(concept)
        opts = model_options(device, dtype)   # before any model work
        check_out_dir(out, "--out")
        m = load_model(model, **opts)
        out.mkdir(parents=True, exist_ok=True)
        if method == "fv":
            from interp.steering.fv import FVConfig, fit_function_vector, fv_layer_sweep

            task = icl.for_model(m)
            fit_task, held = task.split(fit_pairs or len(task.pairs) // 2, seed=seed)
            cfg = FVConfig(n_prompts=n_prompts, top_k=top_k, layer=fv_layer, seed=seed)
            fv = fit_function_vector(m, fit_task, cfg)
            fv.axis.save(out / "axis")
            meta = run_meta(m, dataset=task.name, data=list(task.pairs), seed=seed, config=cfg)
            res = fv.result(meta)
            res.save(out)
            _save_fig(res, out, "fv_aie")
            sw = fv_layer_sweep(m, fv, held, parse_layers(layers, m.cfg.n_layers) if layers else [fv.axis.layer],
                                alpha=alpha, meta=meta)
            sw.save(out)
            typer.echo(f"function vector {task.name}: top heads {', '.join(fv.axis.stats['heads'])}; "
                       f"saved at {out / 'axis'} (layer {fv.axis.layer})")
            for r in sw.table.itertuples():
                typer.echo(f"  FV at L{r.layer} (alpha {alpha:g}): zero-shot accuracy {r.accuracy:.2f} on "
                           f"{len(held.pairs)} held-out pairs (unsteered {r.baseline:.2f})")
            return
        ls = parse_layers(layers, m.cfg.n_layers)
        acts = A.residual_activations(m, cs.texts, ls, progress=True)
        y = np.asarray(cs.labels)
        spec = m.interp_info.spec if getattr(m, "interp_info", None) else model
        fitted = [A.fit_axis(method, acts[l], y, site=Site("resid_post", l), name=cs.name, model=spec, seed=seed)
                  for l in ls]
        meta = run_meta(m, dataset=cs.name, data=list(cs.texts), seed=seed, method=method)
        score = "accuracy" if method == "probe" else "d_prime"
        best = max(fitted, key=lambda a: abs(a.stats.get(score, 0.0)))
        for ax in fitted:
            ax.save(out / "axes" / f"L{ax.layer}")
        best.save(out / "axis")
        results = [A.axes_result(fitted, meta=meta, name=method), A.projections_result(fitted, acts, y, meta=meta,
                                                                                      name=method)]
        if method == "probe":
            results.append(A.probe_by_layer(acts, y, seed=seed, meta=meta, name=cs.name))
        for r in results:
            r.save(out)
            _save_fig(r, out, r.id)
        typer.echo(f"{method} axes for {cs.name!r} at {len(ls)} layers; best L{best.layer} "
                   f"({score} {best.stats.get(score, float('nan')):.3f}) saved at {out / 'axis'}")
        if method == "probe":
            typer.echo(f"  held-out accuracy {best.stats['accuracy']:.3f}, control {best.stats['control_accuracy']:.3f}")

    @app.command("steer")
    def steer(model: str = typer.Argument(..., help="model spec"),
              axis: Path = typer.Option(..., help="folder of a saved axis (OUT/axis from 'interp axes fit')"),
              alphas: str = typer.Option("-4,-2,-1,0,1,2,4", help="comma-separated steering strengths"),
              positions: str = typer.Option("all", help="all | last | an integer start position"),
              prompts: Optional[Path] = typer.Option(None, help="prompt file (default: bundled for the concept)"),
              targets: Optional[str] = typer.Option(None, help="comma-separated single-token targets, e.g. ' great, good'"),
              negatives: Optional[str] = typer.Option(None, help="comma-separated contrast tokens"),
              gen_tokens: int = typer.Option(6, help="greedy tokens for qualitative examples (0: none)"),
              out: Path = typer.Option(..., help="output folder"),
              device: str = typer.Option("", "--device", help=DEVICE_HELP),
              dtype: str = typer.Option("", "--dtype", help=DTYPE_HELP)) -> None:
        """Sweep alpha for a saved axis: target effect, perplexity on neutral text, steered examples.

        Example: interp steer smollm2 --axis out/axes/axis --alphas -4,-2,0,2,4 --out out/steer
        """
        import pandas as pd

        from interp.cli._common import check_out_dir
        from interp.datasets.base import load_prompts
        from interp.datasets.contrast import SENTIMENT_TARGETS, neutral_texts, sentiment_prompts
        from interp.errors import ConfigError
        from interp.models import load_model
        from interp.results import Result, run_meta
        from interp.steering import generate, load_axis, steer_factory, sweep

        ax = load_axis(axis)
        pos: str | int = int(positions) if positions.lstrip("-").isdigit() else positions
        al = _floats(alphas)
        if ax.method != "fv":               # prompts and targets are checked before the model loads
            if ax.name == "sentiment" and prompts is None and targets is None:
                ps, tg = sentiment_prompts(), list(SENTIMENT_TARGETS["positive"])
                ng = list(SENTIMENT_TARGETS["negative"])
            else:
                if prompts is None or targets is None:
                    raise ConfigError("give --prompts and --targets (defaults exist only for the sentiment concept)")
                ps, tg = load_prompts(prompts), [t for t in targets.split(",") if t]
                ng = [t for t in negatives.split(",") if t] if negatives else []
        opts = model_options(device, dtype)   # before any model work
        check_out_dir(out, "--out")
        m = load_model(model, **opts)
        out.mkdir(parents=True, exist_ok=True)
        meta = run_meta(m, dataset=ax.name, seed=None, axis=str(axis), positions=str(pos))
        if ax.method == "fv":
            from interp.datasets.icl import load_icl
            from interp.steering import accuracy

            zs = load_icl(ax.name).for_model(m).zero_shot()
            rows = [{"layer": ax.layer, "node": ax.node, "alpha": a, "accuracy":
                     accuracy(m, zs.prompts, zs.answers, steer=steer_factory(m, ax, a, positions="last"))} for a in al]
            res = Result("steering.fv_alpha", pd.DataFrame(rows), meta, name=ax.name)
            res.save(out)
            for r in rows:
                typer.echo(f"alpha {r['alpha']:+g}: zero-shot accuracy {r['accuracy']:.2f}")
            return
        res = sweep(m, [ax], al, ps, tg, neutral_texts(), negatives=ng, positions=pos, meta=meta, name=ax.name)
        res.save(out)
        _save_fig(res, out, "sweep")
        lines = []
        for r in res.table.itertuples():
            extra = f", share {r.target_share:.3f}" if ng else ""
            lines.append(f"alpha {r.alpha:+g}: target prob {r.target_prob:.4f}{extra}, perplexity {r.perplexity:.2f}")
        if gen_tokens > 0:
            ex = []
            for a in al:
                conts = generate(m, ps[:3], max_new_tokens=gen_tokens, steer=steer_factory(m, ax, a, positions=pos))
                ex += [{"alpha": a, "prompt": p, "continuation": c} for p, c in zip(ps[:3], conts)]
                lines.append(f"  alpha {a:+g}: {ps[0]!r} -> {conts[0]!r}")
            Result("steering.examples", pd.DataFrame(ex), meta, name=ax.name).save(out)
        typer.echo("\n".join(lines))
