"""``interp gate``: causal head gating on a task, validated by ablation and head patching.

Defaults are :class:`interp.gating.CHGConfig`'s and :class:`interp.gating.ValidationConfig`'s
(sized for a 2-core CPU: see their docstrings); every option overrides one field.

Threads: without the root ``--threads`` option, ``interp gate`` runs torch on ONE CPU thread.
CHG is hundreds of small forward/backward passes; on a shared 2-core machine two intra-op
threads spin-wait on each other (SmolLM2, 8 prompts, load ~9: ~50 s wall and ~15 s CPU per
lambda=0 step with 2 threads vs ~6 s wall and 1.3 s CPU with 1; BENCHMARKS.md).
``interp --threads N gate ...`` overrides it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import typer

from interp.cli._common import DEVICE_HELP, DEVICE_MAP_HELP, DTYPE_HELP, model_options

from interp.gating.chg import CHGConfig
from interp.gating.validate import ValidationConfig

_C, _V = CHGConfig(), ValidationConfig()


def register(app: typer.Typer) -> None:
    @app.command("gate")
    def gate(
        ctx: typer.Context,
        model: str = typer.Argument(..., help="model spec, e.g. smollm2 or toy:llama"),
        task: str = typer.Option("ioi", "--task", help="a registered task (ioi, facts, colored_objects) or a TaskDataset JSONL file"),
        out: Path = typer.Option(..., "--out", help="output folder for Results and figures"),
        max_steps: int = typer.Option(_C.max_steps, "--max-steps", "--steps",
                                      help="cap on optimizer updates per stage"),
        patience: int = typer.Option(_C.patience, "--patience",
                                     help="stop a stage when the roles are unchanged for this many steps (0 = never)"),
        masks: int = typer.Option(_C.n_masks, "--masks", help="masks (seeds) fitted at once"),
        n: int = typer.Option(8, "--n", help="number of prompts (first n of the task); 8 keeps a 2-core CPU "
                                             "within 15 minutes"),
        batch_size: int = typer.Option(0, "--batch-size", help="prompts per step (0 = all, a deterministic gradient)"),
        micro_batch: int = typer.Option(_C.micro_batch or 0, "--micro-batch",
                                        help="rows (masks x prompts) per forward/backward; bounds memory (0 = all)"),
        lam: float = typer.Option(_C.lam, "--lam", help="|lambda| of the +/- stages"),
        lr_decay: float = typer.Option(_C.lr_decay, "--lr-decay",
                                       help="per-step lr factor of the +/- stage after its warm-up (1 = constant)"),
        seed: int = typer.Option(0, "--seed"),
        validate: bool = typer.Option(True, "--validate/--no-validate",
                                      help="ablation vs random heads + agreement with exact patching"),
        n_random: int = typer.Option(_V.n_random, "--n-random", help="random head sets per comparison"),
        patch_prompts: int = typer.Option(16, "--patch-prompts", help="prompts for exact head patching (0 = all)"),
        agreement: str = typer.Option(_V.agreement_metric, "--agreement-metric",
                                      help="metric of the exact patching in the verdict: fit (the one CHG optimises, "
                                           "answer_logprob), answer_logprob or logit_diff; the other is reported "
                                           "beside it"),
        figures: str = typer.Option("png", "--figures", help="figure format: png, svg, pdf, html or none"),
        engine: str = typer.Option("local", "--engine", help="local, or ray: groups of masks on Ray workers (each "
                                   "runs --max-steps; the stop rule is applied to all masks, as locally)"),
        workers: int = typer.Option(0, "--workers", help="--engine ray: workers (0: one per CPU)"),
        address: str = typer.Option("", "--address", help="--engine ray: HOST:PORT, ray://HOST:PORT or auto; "
                                    "empty: a local Ray instance"),
        device: str = typer.Option("", "--device", help=DEVICE_HELP),
        dtype: str = typer.Option("", "--dtype", help=DTYPE_HELP),
        device_map: str = typer.Option("", "--device-map", help=DEVICE_MAP_HELP),
    ) -> None:
        """Fit CHG gates until the roles are stable, label heads facilitating / interfering / irrelevant,
        validate (verdict and disagreements with exact patching), plot.

        Example: interp gate smollm2 --task ioi --out out/gate
        """
        import resource
        import time

        t0 = time.perf_counter()

        from interp.cli._common import check_formats, check_out_dir, check_positive
        from interp.datasets.registry import build_task, check_task
        from interp.gating import causal_head_gating
        from interp.gating.validate import summary_lines, validate_chg
        from interp.models import load_model

        # arguments and the output folder first: nothing below runs on a typo
        fig_formats = check_formats(figures, "--figures")
        cfg = CHGConfig(max_steps=max_steps, patience=patience, n_masks=masks, lam=lam, seed=seed, lr_decay=lr_decay,
                        batch_size=batch_size or None, micro_batch=micro_batch or None)
        vcfg = ValidationConfig(n_random=n_random, seed=seed, patch_prompts=patch_prompts or None,
                                agreement_metric=agreement,
                                secondary_metric="answer_logprob" if agreement == "logit_diff" else "logit_diff")
        check_positive(n, "--n")
        check_task(task, "--task")
        from interp.distributed.config import engine_from_cli

        opts = model_options(device, dtype, device_map=device_map)   # before any model work
        eng = engine_from_cli(engine, workers, address)
        check_out_dir(out, "--out")
        with contextlib.ExitStack() as stack:
            if eng.distributed:
                from interp.distributed import RayEngine, causal_head_gating_ray

                ray_engine = stack.enter_context(RayEngine(eng))   # refuses a bad address before the model loads
                causal_head_gating = lambda m_, ds_, config: causal_head_gating_ray(  # noqa: E731
                    m_, ds_, config=config, engine=ray_engine)
            if not (ctx.parent is not None and ctx.parent.params.get("threads")):
                import torch  # the entry point sets thread counts: one thread unless --threads was given

                stack.callback(torch.set_num_threads, torch.get_num_threads())   # restored for in-process callers
                torch.set_num_threads(1)
            m = load_model(model, **opts)
            ds = build_task(task, model=m, n=n, seed=seed)
            if validate and ds.corrupted:
                ds.check_pairs(m)        # equal lengths, not identical: before the fit, not after it
            res = causal_head_gating(m, ds, config=cfg)
            res.save(out)
            roles = res.table.role.value_counts().to_dict()
            stages = res.meta.extra["stages"]
            typer.echo(f"CHG on {ds.name} ({len(ds)} prompts, {masks} masks, at most {max_steps} steps/stage, "
                       f"patience {patience}): {res.meta.extra['fit_seconds']:.0f} s; roles {roles}")
            for name, st in stages.items():
                typer.echo(f"  stage {name}: {st['steps']} steps, "
                           + ("converged" if st["converged"] else "NOT converged (roles still changing at the cap)")
                           + f" (roles last changed after step {st['last_change']})")
            border = res.meta.extra.get("borderline", [])
            typer.echo(f"  borderline (a gate within {cfg.margin} of its role threshold): "
                       + (" ".join(border) if border else "-"))
            loose = res.meta.extra.get("unsettled", [])
            typer.echo("  unsettled (the stage loss still pushes the gate towards its threshold): "
                       + (" ".join(loose) if loose else "-"))
            for role in ("facilitating", "interfering"):
                nodes = res.table[res.table.role == role].node.tolist()
                typer.echo(f"  {role}: {' '.join(nodes) if nodes else '-'}")
            results = [res]
            if validate:
                from interp.gating.validate import agreement_metric, patching_for

                # exact patching with the metric CHG optimised decides the verdict (saved); validate_chg adds
                # the logit-difference comparison beside it
                patch = patching_for(m, ds, vcfg, metric=agreement_metric(res, vcfg)) if ds.corrupted else None
                if patch is not None:
                    patch.save(out)
                val = validate_chg(m, ds, res, config=vcfg, patching=patch)
                val.save(out)
                results.append(val)
                for r in val.table.itertuples():
                    if r.what.startswith("disagreement"):
                        continue
                    typer.echo(f"  {r.what:<22} n={r.n_heads:<3} {r.metric}={r.metric_value:+.3f}"
                               + (f"  random {r.baseline_mean:+.3f} +/- {r.baseline_std:.3f}" if r.baseline_mean == r.baseline_mean else "")
                               + (f"  p={r.p_value:.2g}" if r.p_value == r.p_value else ""))
                for line in summary_lines(val):
                    typer.echo(line)
            for fmt in fig_formats:
                from interp.plots import export, figure

                for which in ("g_plus", "g_minus", "role"):
                    export(figure(res, which=which), out / f"chg_{ds.name}_{which}.{fmt}")
                if validate:
                    export(figure(results[1]), out / f"validation_{ds.name}.{fmt}")
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            _write_report(out, res, results[1] if validate else None, command=f"interp gate {model} --task {task}",
                          seconds=time.perf_counter() - t0, peak_mb=peak)
            typer.echo(f"peak RSS {peak:.0f} MB")
            typer.echo(f"wrote {out} (report.md)")


def _write_report(out: Path, chg: Any, validation: Any, *, command: str, seconds: float, peak_mb: float) -> None:
    """``out/report.md``: settings, each stage's convergence, borderline / unsettled heads, the roles, and
    (the main job's gating section) the validation table, its verdict and every disagreement."""
    from types import SimpleNamespace

    from interp._fs import atomic_write_bytes
    from interp.pipeline_report import _gating_section

    ex, c = chg.meta.extra, chg.meta.config
    cfg = c if isinstance(c, dict) else {}
    warm = cfg.get("warmup") if cfg.get("warmup") is not None else "ceil(2 * clamp / lr)"
    lines = [f"# Head gating: {chg.name}", "", f"`{command}`: {ex.get('n_prompts')} prompts, "
             f"{cfg.get('n_masks')} mask(s), at most {cfg.get('max_steps')} steps per stage, patience "
             f"{cfg.get('patience')}, lr {cfg.get('lr')} (+/- stage: {warm} "
             f"steps, then x{cfg.get('lr_decay')} per step); fit {ex.get('fit_seconds', 0):.0f} s, whole command "
             f"{seconds:.0f} s, peak RSS {peak_mb:.0f} MB.", "", "## Convergence", ""]
    for name, st in ex.get("stages", {}).items():
        lines.append(f"- stage `{name}`: {st['steps']} steps, " + (
            f"**converged** (roles unchanged after step {st['last_change']})" if st["converged"] else
            f"**NOT converged** (roles still changing at the cap; changes per step in the last 10: "
            f"{list(st.get('changes', ()))[-10:]})") + (f", last lr {st['lr_last']:.3g}" if "lr_last" in st else ""))
    border, loose = ex.get("borderline", []), ex.get("unsettled", [])
    lines += [f"- borderline (a mean gate within {cfg.get('margin')} of its threshold): "
              + (", ".join(border) if border else "none"),
              "- unsettled (at the returned gates the stage loss still pushes the gate towards its threshold by at "
              "least half the regulariser's pull: more steps could flip the role): " + (", ".join(loose) if loose else "none"),
              ""]
    for role in ("facilitating", "interfering"):
        nodes = chg.table[chg.table.role == role].node.tolist()
        lines.append(f"- {role} ({len(nodes)}): " + (" ".join(nodes) if nodes else "-"))
    lines.append("")
    lines += _gating_section(SimpleNamespace(results={chg.name: [chg] + ([validation] if validation is not None else [])}))
    atomic_write_bytes(out / "report.md", "\n".join(lines).encode())
