"""``interp trace``: ROME causal tracing of the facts a model knows."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from interp.cli._common import DEVICE_HELP, DEVICE_MAP_HELP, DTYPE_HELP, model_options


def _round_robin(ds, n: int | None):
    """At most ``n`` facts taken in turn from each relation (so all relations are represented)."""
    by: dict[str, list[int]] = {}
    for i, m in enumerate(ds.meta):
        by.setdefault(m.get("relation", ""), []).append(i)
    order: list[int] = []
    while any(by.values()):
        for rel in list(by):
            if by[rel]:
                order.append(by[rel].pop(0))
    return ds.subset(order[:n] if n else order)


def summary_markdown(model_spec: str, n_read: int, n_known: int, grid, summary, peaks, cfg) -> str:
    """The short report ``interp trace`` writes as ``summary.md``."""
    s = summary.table
    lines = [f"# Causal tracing: {model_spec}", "",
             f"- facts with single-token answers: {n_read}; known (answer is the argmax): {n_known}; "
             f"traced: {len(s)}",
             f"- config: n_samples={cfg.n_samples}, noise={cfg.noise} x subject-embedding std "
             f"(nu={grid.meta.extra['nu']:.4f}), window={cfg.window}, tokens={cfg.tokens}, "
             f"layers={grid.meta.extra['layers']}",
             f"- mean p_clean {s.p_clean.mean():.3f}, mean p_corrupt {s.p_corrupt.mean():.3f}, "
             f"mean total effect {s.total_effect.mean():.3f}", "",
             "## Peaks of the average indirect effect (tokens aligned as in ROME)", "",
             "| site | peak category | layer | AIE | last subject token: layer (AIE) | last token: layer (AIE) |",
             "|---|---|---|---|---|---|"]
    for _, r in peaks.iterrows():
        ls = f"{int(r.last_subject_peak_layer)} ({r.last_subject_aie:.4f})" if "last_subject_aie" in r and \
            r.last_subject_aie == r.last_subject_aie else "-"
        lt = f"{int(r.last_token_peak_layer)} ({r.last_token_aie:.4f})" if "last_token_aie" in r and \
            r.last_token_aie == r.last_token_aie else "-"
        lines.append(f"| {r.site_kind} | {r.category} | {r.layer} | {r.aie:.4f} | {ls} | {lt} |")
    lines += ["", "ROME (GPT-2 XL): MLP peak at the last subject token in middle layers, attention peak at the "
              "last token in late layers.", "", "## Facts", "", "| # | prompt | answer | p_clean | p_corrupt |",
              "|---|---|---|---|---|"]
    for _, r in s.iterrows():
        lines.append(f"| {r.fact} | {r.prompt} | {r.answer!r} | {r.p_clean:.3f} | {r.p_corrupt:.3f} |")
    return "\n".join(lines) + "\n"


def register(app: typer.Typer) -> None:
    @app.command("trace")
    def trace(model: str = typer.Argument(..., help="model spec, e.g. smollm2"),
              facts: Optional[Path] = typer.Option(None, "--facts", help="facts JSONL (prompt, subject, answer, "
                                                   "relation); default: the bundled set"),
              out: Path = typer.Option(..., "--out", help="output folder"),
              n_facts: Optional[int] = typer.Option(None, "--n-facts", help="trace at most this many known facts "
                                                    "(taken in turn from each relation)"),
              samples: int = typer.Option(10, "--samples", help="corrupted copies per fact"),
              noise: float = typer.Option(3.0, "--noise", help="noise = this x std of subject embeddings"),
              window: int = typer.Option(10, "--window", help="layers restored together for mlp/attn"),
              tokens: str = typer.Option("all", "--tokens", help="all | from_subject | key"),
              layer_stride: int = typer.Option(1, "--layer-stride", help="trace every k-th layer"),
              min_prob: Optional[float] = typer.Option(None, "--min-prob", help="known = p(answer) >= this "
                                                       "(default: answer is the argmax)"),
              batch_size: int = typer.Option(128, "--batch-size", help="rows per forward pass"),
              seed: int = typer.Option(0, "--seed"),
              uniform: bool = typer.Option(False, "--uniform", help="uniform noise instead of Gaussian"),
              replace: bool = typer.Option(False, "--replace", help="replace subject embeddings by noise"),
              engine: str = typer.Option("local", "--engine", help="local, or ray: chunks of the restoration rows "
                                         "on Ray workers (equal to a local run within 1e-6)"),
              workers: int = typer.Option(0, "--workers", help="--engine ray: workers (0: one per CPU)"),
              address: str = typer.Option("", "--address", help="--engine ray: HOST:PORT, ray://HOST:PORT or auto; "
                                          "empty: a local Ray instance"),
              device: str = typer.Option("", "--device", help=DEVICE_HELP),
              dtype: str = typer.Option("", "--dtype", help=DTYPE_HELP),
              device_map: str = typer.Option("", "--device-map", help=DEVICE_MAP_HELP)) -> None:
        """ROME causal tracing: Results, [tokens x layers] figures (PDF/SVG) and summary.md in --out.

        Example: interp trace smollm2 --out out/trace --n-facts 16 --samples 2 --tokens key --layer-stride 3
        """
        import warnings

        from interp.datasets import facts_dataset, known_facts
        from interp.models import load_model
        from interp.plots import export
        from interp.tracing import TracingConfig, causal_trace, trace_peaks

        from interp.cli._common import check_out_dir
        from interp.datasets import load_facts

        if facts is not None:
            load_facts(facts)               # DataError naming file:line, before the model loads
        cfg = TracingConfig(n_samples=samples, noise=noise, window=window, tokens=tokens,
                            layer_stride=layer_stride, batch_size=batch_size, seed=seed, uniform=uniform,
                            replace=replace)
        import contextlib

        from interp.distributed.config import engine_from_cli

        opts = model_options(device, dtype, device_map=device_map)   # before any model work
        eng = engine_from_cli(engine, workers, address)
        check_out_dir(out, "--out")
        stack = contextlib.ExitStack()
        if eng.distributed:
            from interp.distributed import RayEngine, causal_trace_ray

            ray_engine = stack.enter_context(RayEngine(eng))   # refuses a bad address before the model loads
            causal_trace = lambda m_, ds_, c_: causal_trace_ray(m_, ds_, c_, engine=ray_engine)  # noqa: E731
        m = load_model(model, **opts)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = facts_dataset(m, facts)
        for w in caught:
            typer.echo(f"note: {w.message}", err=True)
        known = known_facts(m, ds, min_prob=min_prob)
        typer.echo(f"{len(known)} of {len(ds)} facts known by {model}")
        sel = _round_robin(known, n_facts)
        with stack:
            grid, summary = causal_trace(m, sel, cfg)
        out.mkdir(parents=True, exist_ok=True)
        grid.save(out)
        summary.save(out)
        peaks = trace_peaks(grid)
        for suffix in ("pdf", "svg"):
            export(grid.figure(), out / f"tracing_average.{suffix}")
            export(summary.figure(), out / f"tracing_summary.{suffix}")
        for f in sorted(grid.table.fact.unique())[:4]:
            export(grid.figure(fact=int(f)), out / f"tracing_fact{int(f)}.svg")
        text = summary_markdown(model, len(ds), len(known), grid, summary, peaks, cfg)
        (out / "summary.md").write_text(text, encoding="utf-8")
        s = summary.table
        typer.echo(f"traced {len(s)} facts: p_clean {s.p_clean.mean():.3f}, p_corrupt {s.p_corrupt.mean():.3f}")
        for _, r in peaks.iterrows():
            typer.echo(f"  {r.site_kind:<5} peak AIE {r.aie:.4f} at {r.category}, layer {r.layer}")
        typer.echo(f"wrote {out}/ (Results, tracing_average.pdf/.svg, summary.md)")
