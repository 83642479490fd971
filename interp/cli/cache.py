"""``interp cache``: collect activations of a prompt file into an on-disk activation store."""

from __future__ import annotations

from pathlib import Path

import typer

from interp.cli._common import DEVICE_HELP, DEVICE_MAP_HELP, DTYPE_HELP, model_options


def register(app: typer.Typer) -> None:
    @app.command("cache")
    def cache(
        model: str = typer.Argument(..., help="model spec: smollm2, a local HF folder, toy:llama ..."),
        prompts: Path = typer.Option(..., "--prompts", help="text file (one prompt a line) or JSONL ('prompt'/'text')"),
        sites: str = typer.Option("resid_post", "--sites", help="comma-separated sites, e.g. resid_post,pattern,z.3"),
        out: Path = typer.Option(..., "--out", help="store folder (safetensors shards + manifest.json)"),
        batch_size: int = typer.Option(8, "--batch-size", min=1, help="prompts per forward pass"),
        max_memory: str = typer.Option("1GB", "--max-memory", help="RAM bound for activation buffers, e.g. 1GB"),
        dtype: str = typer.Option("", "--dtype", help="stored dtype (float32, float16, bfloat16); default the model's"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace a different store in --out"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
        allow_nan: bool = typer.Option(False, "--allow-nan", help="store NaN/inf activations instead of refusing them"),
        engine: str = typer.Option("local", "--engine", help="local (this process) or ray (shards on Ray workers)"),
        workers: int = typer.Option(0, "--workers", help="--engine ray: workers, each loading the model once "
                                    "(0: one per CPU)"),
        address: str = typer.Option("", "--address", help="--engine ray: a cluster (HOST:PORT, ray://HOST:PORT, "
                                    "auto); empty: a local Ray instance"),
        device: str = typer.Option("", "--device", help=DEVICE_HELP),
        model_dtype: str = typer.Option("", "--model-dtype", help=DTYPE_HELP),
        device_map: str = typer.Option("", "--device-map", help=DEVICE_MAP_HELP),
    ) -> None:
        """Cache activations at SITES for every prompt in a file, as a resumable on-disk store.

        Rerunning the same command after an interruption resumes: only missing shards
        are computed. Load the result with interp.ActivationStore.open(OUT).

        Example: interp cache smollm2 --prompts data/prompts/prose.txt --sites resid_post,pattern --out out/cache

        With --engine ray each shard is a task on a Ray worker; the store equals a local run's byte for byte.
        """
        import time

        from interp.cache import collect
        from interp.cache.store import dtype_from_name, parse_bytes
        from interp.cli._common import check_out_dir
        from interp.datasets import load_prompts
        from interp.models import load_model
        from interp.errors import SiteError
        from interp.sites import check_sites

        # every argument is checked before the model loads
        texts = load_prompts(prompts)            # DataError: missing, a folder, empty, not UTF-8, bad JSONL
        budget = parse_bytes(max_memory)
        store_dtype = dtype_from_name(dtype) if dtype else None
        try:
            check_sites(sites)
        except SiteError as e:
            raise SiteError(f"--sites: {e}") from e
        from interp.distributed.config import engine_from_cli

        opts = model_options(device, model_dtype, dtype_arg='--model-dtype', device_map=device_map)   # before any model work
        eng = engine_from_cli(engine, workers, address)
        check_out_dir(out, "--out")
        t0 = time.perf_counter()
        if eng.distributed:
            from interp.distributed import RayEngine, collect_ray

            with RayEngine(eng) as ray_engine:   # connects (or refuses the address) before the model loads
                m = load_model(model, **opts)
                store = collect_ray(m, texts, sites, engine=ray_engine, batch_size=batch_size, out=out,
                                    max_memory=budget, dtype=store_dtype, progress=progress, overwrite=overwrite,
                                    allow_nonfinite=allow_nan)
        else:
            m = load_model(model, **opts)
            store = collect(m, texts, sites, batch_size=batch_size, out=out, max_memory=budget, dtype=store_dtype,
                            progress=progress, overwrite=overwrite, allow_nonfinite=allow_nan)
        n_tok = int(store.lengths.sum())
        n_shards = len(store.manifest["shards"])
        size = sum(p.stat().st_size for p in Path(out).glob("shard-*.safetensors"))
        typer.echo(f"cached {len(store)} prompts ({n_tok} tokens), {len(store.sites)} sites, {store.manifest['dtype']}, "
                   f"{n_shards} shards, {size / 1e6:.1f} MB in {out} ({time.perf_counter() - t0:.1f} s)")
