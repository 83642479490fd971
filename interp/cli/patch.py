"""``interp patch``: activation, path and attribution patching on a task."""

from __future__ import annotations

from typing import Optional

from pathlib import Path

import typer

from interp.cli._common import DEVICE_HELP, DEVICE_MAP_HELP, DTYPE_HELP, model_options

METHODS = ("exact", "path", "atp", "eap", "eap-ig")


def _task(m, task: str, n: int, seed: int):
    """The task's TaskDataset (from the task registry), keeping only clean/corrupted pairs of equal token length."""
    from interp.datasets.registry import build_task
    from interp.errors import DataError
    from interp.models import tokenize

    ds = build_task(task, model=m, n=n, seed=seed)
    if not ds.corrupted:
        raise DataError(f"--task {task!r} has no corrupted prompts; patching needs clean/corrupted pairs")
    clean, corr = tokenize(m, ds.clean), tokenize(m, ds.corrupted)
    keep = [i for i in range(len(ds)) if int(clean.lengths[i]) == int(corr.lengths[i])]
    if not keep:
        raise DataError(f"--task {task!r}: no clean/corrupted pair has equal token lengths")
    if len(keep) < len(ds):
        typer.echo(f"kept {len(keep)} of {len(ds)} pairs with equal clean/corrupted token lengths")
    ds = ds.subset(keep)
    ds.check_pairs(m)       # identical pairs, multi-token answers: refused before any sweep
    return ds


def register(app: typer.Typer) -> None:
    @app.command("patch")
    def patch(
        model: str = typer.Argument(..., help="model spec, e.g. smollm2 or toy:llama"),
        task: str = typer.Option("ioi", "--task", help="a registered task (ioi, facts, colored_objects) or a TaskDataset JSONL file"),
        method: str = typer.Option("exact", "--method", help="exact, path, atp, eap or eap-ig"),
        out: Path = typer.Option(..., "--out", help="output folder for Results and figures"),
        n: int = typer.Option(32, "--n", help="number of prompt pairs"),
        component: str = typer.Option("z", "--component",
                                      help="exact: z, attn_out, mlp_out, resid_pre, resid_post (comma-separated)"),
        positions: str = typer.Option("auto", "--positions",
                                      help="exact: auto, all, each, or comma-separated meta keys (io_pos,s2_pos)"),
        direction: str = typer.Option("", "--direction",
                                      help="denoising or noising (default: noising for path, as Wang et al.; else denoising)"),
        receivers: str = typer.Option("logits", "--receivers", help="path: e.g. 'L9.H6.q,L10.H0.q,logits'"),
        compare: bool = typer.Option(False, "--compare/--no-compare",
                                     help="atp/eap/eap-ig: also run exact head patching and report Spearman"),
        ig_steps: int = typer.Option(5, "--ig-steps", help="eap-ig interpolation steps"),
        max_rows: Optional[int] = typer.Option(None, "--max-rows", help="batch rows per forward pass "
                                                                     "(default: exact 256, path 1024)"),
        seed: int = typer.Option(0, "--seed"),
        figures: str = typer.Option("png", "--figures", help="png, svg, pdf, html or none"),
        engine: str = typer.Option("local", "--engine", help="local, or ray: exact sweeps' layers on Ray workers "
                                   "(path and attribution methods run in this process)"),
        workers: int = typer.Option(0, "--workers", help="--engine ray: workers (0: one per CPU)"),
        address: str = typer.Option("", "--address", help="--engine ray: HOST:PORT, ray://HOST:PORT or auto; "
                                    "empty: a local Ray instance"),
        device: str = typer.Option("", "--device", help=DEVICE_HELP),
        dtype: str = typer.Option("", "--dtype", help=DTYPE_HELP),
        device_map: str = typer.Option("", "--device-map", help=DEVICE_MAP_HELP),
    ) -> None:
        """Patch a task and write Results (patching.nodes / patching.edges) and heatmaps.

        \b
        Examples:
          interp patch smollm2 --task ioi --method exact --out out/patch --n 32
          interp patch smollm2 --task ioi --method exact --component resid_pre --positions each --out out/patch
          interp patch smollm2 --task ioi --method eap-ig --compare --out out/patch
          interp patch smollm2 --task ioi --method path --receivers L9.H6.q,logits --out out/patch
        """
        from interp.cli._common import check_choice, check_formats, check_out_dir, check_positive
        from interp.datasets.registry import check_task
        from interp.models import load_model
        from interp.patching import (AttributionConfig, PatchConfig, PathConfig, activation_patching,
                                     attribution_patching, edge_attribution_patching, path_patching)

        # every argument and the output folder are checked before the model loads
        check_choice(method, METHODS, "--method")
        if direction:
            check_choice(direction, ("denoising", "noising"), "--direction")
        direction = direction or ("noising" if method == "path" else "denoising")
        fig_formats = check_formats(figures, "--figures")
        rows = {} if max_rows is None else {"max_rows": max_rows}
        pos = positions if positions in ("auto", "all", "each") else tuple(p for p in positions.split(",") if p)
        exact_cfgs = []
        if method == "exact" or compare:
            exact_cfgs = [PatchConfig(component=comp, positions=pos if method == "exact" else "all",
                                      direction=direction, **rows, progress=True)
                          for comp in ([c for c in component.split(",") if c] if method == "exact" else ["z"])]
        path_cfg = PathConfig(receivers=tuple(r for r in receivers.split(",") if r), direction=direction, **rows,
                              progress=True) if method == "path" else None
        attr_cfg = AttributionConfig(direction=direction, ig_steps=ig_steps if method == "eap-ig" else 0,
                                     batch_size=8 if method != "atp" else 32) \
            if method in ("atp", "eap", "eap-ig") else None
        check_positive(n, "--n")
        check_task(task, "--task")
        from contextlib import ExitStack

        from interp.distributed.config import engine_from_cli

        opts = model_options(device, dtype, device_map=device_map)   # before any model work
        eng = engine_from_cli(engine, workers, address)
        check_out_dir(out, "--out")
        stack = ExitStack()
        sweep = activation_patching
        if eng.distributed and exact_cfgs:
            from interp.distributed import RayEngine, activation_patching_ray

            ray_engine = stack.enter_context(RayEngine(eng))   # refuses a bad address before the model loads
            sweep = lambda m_, ds_, c_: activation_patching_ray(m_, ds_, c_, engine=ray_engine)  # noqa: E731
        with stack:
            m = load_model(model, **opts)
            ds = _task(m, task, n, seed)
            results = []
            exact = None
            for pcfg in exact_cfgs:
                exact = sweep(m, ds, pcfg)
                results.append(exact)
        if path_cfg is not None:
            results.append(path_patching(m, ds, path_cfg))
        elif attr_cfg is not None:
            results.append(attribution_patching(m, ds, attr_cfg, exact=exact))
            if method != "atp":
                results.append(edge_attribution_patching(m, ds, attr_cfg, exact=exact))
        out.mkdir(parents=True, exist_ok=True)
        first = results[0].meta.extra
        typer.echo(f"{method} patching on {ds.name} ({len(ds)} pairs): LD clean {first['ld_clean']:+.3f}, "
                   f"corrupted {first['ld_corr']:+.3f}")
        for r in results:
            r.save(out)
            t = r.table
            if "metric" in t.columns and "logit_diff_norm" in set(t["metric"]):
                t = t[t["metric"] == "logit_diff_norm"]
            key = "node" if "node" in t.columns else "src"
            # every method states effect = metric(patched) - metric(reference run): rank by its size
            score = t["effect"]
            top = t.assign(_s=score.abs()).nlargest(8, "_s")
            if key == "node":
                label = [nd or f"{s}.{l}" for nd, s, l in zip(top["node"], top["site"], top["layer"])]
                label = [f"{a}@{p}" if p != "all" else a for a, p in zip(label, top["pos_label"])]
            else:
                label = top["src"] + " -> " + top["dst"] + "." + top["dst_input"]
            typer.echo(f"  {r.id}: top effects " + ", ".join(f"{a} {v:+.3f}" for a, v in zip(label, top["effect"])))
            if "agreement" in r.meta.extra:
                typer.echo(f"    agreement with exact: {r.meta.extra['agreement']}")
            for fmt in fig_formats:
                from interp.plots import export, figure

                export(figure(r), out / f"{r.id}.{fmt}")
        typer.echo(f"wrote {out}")
