"""``interp run CONFIG.toml``: the main job (cache -> patching/EAP -> gating -> sinks -> graph)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(config: Path = typer.Argument(..., help="analysis TOML, e.g. analyses/ioi_circuit.toml"),
            out: Path = typer.Option(None, "--out", help="output folder (default: the config's `out`)"),
            device: str = typer.Option("", "--device", help="torch device (default: the config's `device`, else "
                                       "CUDA when present, else CPU)"),
            dtype: str = typer.Option("", "--dtype", help="model dtype float32, bfloat16, float16, float64 (default: the "
                                      "config's `dtype`)")) -> None:
        """Run an analysis pipeline and write Results, graphs, explorer pages, figures and report.md.

        Exits 1 when a stage fails; its traceback is in OUT/logs/<stage>.traceback.txt (named in report.md).

        Example: interp run analyses/ioi_circuit.toml --out out/ioi
        """
        import dataclasses

        from interp.cli._common import check_out_dir, model_options
        from interp.pipeline import load_config, run_pipeline

        cfg = load_config(config)
        if out is not None:
            cfg = dataclasses.replace(cfg, out=str(out))
        dmap = "" if device else cfg.device_map            # --device overrides the config's device_map too
        model_options(device or cfg.device, dtype or cfg.dtype, device_arg="--device" if device else f"{config}: device",
                      dtype_arg="--dtype" if dtype else f"{config}: dtype", device_map=dmap,
                      device_map_arg=f"{config}: device_map")     # before anything is written
        if device or dtype:
            cfg = dataclasses.replace(cfg, device=device or cfg.device, dtype=dtype or cfg.dtype, device_map=dmap)
        check_out_dir(Path.cwd() / cfg.out, "--out" if out is not None else f"{config}: out")
        report = run_pipeline(cfg, base=Path.cwd(), log=lambda m: typer.echo(m, err=True))
        for r in report.stages:
            typer.echo(f"{r.name:<10} {r.status:<8} {r.seconds:7.1f}s  {r.note}")
        typer.echo(f"report: {report.path}")
        if not report.ok:   # a stage raised (or could not run because one it needs did): exit non-zero
            for r in report.failed:
                typer.echo(f"interp: stage {r.name} {r.status}: {r.note}", err=True)
            raise typer.Exit(1)
