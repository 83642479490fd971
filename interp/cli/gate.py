"""``interp gate``: causal head gating on a task, validated by ablation and head patching."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("gate")
    def gate(
        model: str = typer.Argument(..., help="model spec, e.g. smollm2 or toy:llama"),
        task: str = typer.Option("ioi", "--task", help="a registered task (ioi, facts, colored_objects) or a TaskDataset JSONL file"),
        out: Path = typer.Option(..., "--out", help="output folder for Results and figures"),
        steps: int = typer.Option(500, "--steps", help="optimizer updates per stage"),
        masks: int = typer.Option(4, "--masks", help="masks (seeds) fitted at once"),
        n: int = typer.Option(64, "--n", help="number of prompts (first n of the task)"),
        batch_size: int = typer.Option(0, "--batch-size", help="prompts per step (0 = all)"),
        lam: float = typer.Option(0.1, "--lam", help="|lambda| of the +/- stages"),
        seed: int = typer.Option(0, "--seed"),
        validate: bool = typer.Option(True, "--validate/--no-validate", help="ablation + patching checks"),
        n_random: int = typer.Option(10, "--n-random", help="random head sets per comparison"),
        patch_prompts: int = typer.Option(16, "--patch-prompts", help="prompts for exact head patching (0 = all)"),
        figures: str = typer.Option("png", "--figures", help="figure format: png, svg, pdf, html or none"),
    ) -> None:
        """Fit CHG gates, label heads facilitating / interfering / irrelevant, validate, plot.

        Example: interp gate smollm2 --task ioi --out out/gate --steps 200 --masks 3 --n 32
        """
        from interp.cli._common import check_formats, check_out_dir, check_positive
        from interp.datasets.registry import build_task, check_task
        from interp.gating import CHGConfig, causal_head_gating
        from interp.gating.validate import ValidationConfig, validate_chg
        from interp.models import load_model

        # arguments and the output folder first: nothing below runs on a typo
        fig_formats = check_formats(figures, "--figures")
        cfg = CHGConfig(steps=steps, n_masks=masks, lam=lam, seed=seed, batch_size=batch_size or None)
        vcfg = ValidationConfig(n_random=n_random, seed=seed, patch_prompts=patch_prompts or None)
        check_positive(n, "--n")
        check_task(task, "--task")
        check_out_dir(out, "--out")
        m = load_model(model)
        ds = build_task(task, model=m, n=n, seed=seed)
        if validate and ds.corrupted:
            ds.check_pairs(m)        # equal lengths, not identical: before the fit, not after it
        res = causal_head_gating(m, ds, config=cfg)
        res.save(out)
        roles = res.table.role.value_counts().to_dict()
        typer.echo(f"CHG on {ds.name} ({len(ds)} prompts, {masks} masks, {steps} steps/stage): "
                   f"{res.meta.extra['fit_seconds']:.0f} s; roles {roles}")
        for role in ("facilitating", "interfering"):
            nodes = res.table[res.table.role == role].node.tolist()
            typer.echo(f"  {role}: {' '.join(nodes) if nodes else '-'}")
        results = [res]
        if validate:
            from interp.gating.validate import patching_for

            patch = patching_for(m, ds, vcfg) if ds.corrupted else None
            if patch is not None:
                patch.save(out)
            val = validate_chg(m, ds, res, config=vcfg, patching=patch)
            val.save(out)
            results.append(val)
            for r in val.table.itertuples():
                typer.echo(f"  {r.what:<22} n={r.n_heads:<3} {r.metric}={r.metric_value:+.3f}"
                           + (f"  random {r.baseline_mean:+.3f} +/- {r.baseline_std:.3f}" if r.baseline_mean == r.baseline_mean else "")
                           + (f"  p={r.p_value:.2g}" if r.p_value == r.p_value else ""))
        for fmt in fig_formats:
            from interp.plots import export, figure

            for which in ("g_plus", "g_minus", "role"):
                export(figure(res, which=which), out / f"chg_{ds.name}_{which}.{fmt}")
            if validate:
                export(figure(results[1]), out / f"validation_{ds.name}.{fmt}")
        typer.echo(f"wrote {out}")
