"""``interp sinks``: attention sinks, massive activations, secondary sinks, dormant heads, interventions."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from interp.cli._common import DEVICE_HELP, DTYPE_HELP, model_options


def default_prompt_files() -> dict[str, Path]:
    """The project's prompt sets (``data/prompts``) when running from a checkout: domains and controls."""
    root = Path(__file__).resolve().parents[2] / "data" / "prompts"
    return {p.stem: p for p in sorted(root.glob("*.txt"))} if root.is_dir() else {}


def _fmt(x: Any, digits: int = 3) -> str:
    try:
        return f"{float(x):.{digits}g}"
    except (TypeError, ValueError):
        return str(x)


def summary_markdown(model_spec: str, results: dict[str, Any], controls: dict[str, Any]) -> str:
    """A short human summary of the sink Results (what ``summary.md`` holds)."""
    lines = [f"# Attention sinks and massive activations: {model_spec}", ""]
    m = results.get("sinks.model")
    if m is not None and not m.table.empty:
        r = m.table.iloc[0]
        lines += [f"- Sink_1^{r.eps} rate: **{r.sink_rate:.1%}** ± {r.sink_rate_std:.1%} over {int(r.n_prompts)} prompts "
                  f"({int(r.n_heads_total)} heads)."]
        for name, res in controls.items():
            if not res.table.empty:
                c = res.table.iloc[0]
                lines.append(f"- Control `{name}`: Sink_1^{c.eps} rate {c.sink_rate:.1%} ± {c.sink_rate_std:.1%}.")
    else:
        lines.append("- No prompt with two or more tokens: no sink statistics.")
    lay = results.get("sinks.layers")
    if lay is not None and not lay.table.empty:
        low = lay.table[lay.table.sink_rate < 0.5].layer.tolist()
        lines.append(f"- Layers where fewer than half the heads are sinks: {low or 'none'}.")
    dims = results.get("massive.dims")
    ml = results.get("massive.layers")
    if dims is not None and not dims.table.empty:
        lines += ["", "## Massive activations", "", "| dim | layers (>= half the prompts) | first | last | prompts |",
                  "|---|---|---|---|---|"]
        for r in dims.table.head(8).itertuples():
            lines.append(f"| {r.dim} | {r.n_layers} | {r.first_layer} | {r.last_layer} | {r.fraction:.0%} |")
        if ml is not None:
            hits = ml.table[ml.table.is_massive]
            top = hits.loc[hits.abs_value.idxmax()]
            pos_share = (hits.pos == 0).mean()
            lines += ["", f"Largest: {top.value:.1f} at layer {top.layer}, position {top.pos} ({top.token!r}), dim "
                          f"{top.dim}; ratio to the median {top.ratio:.0f}. {pos_share:.0%} of massive entries are at "
                          "position 0."]
    else:
        lines += ["", "No massive activations (|value| > threshold and ratio > threshold)."]
    sec = results.get("sinks.secondary")
    if sec is not None:
        counts = sec.table["class"].value_counts().to_dict()
        lines += ["", "## Secondary sinks", "", f"Rows by class: {counts or 'none (no first-token sink state)'}."]
        s = sec.table[sec.table["class"] == "secondary"]
        if not s.empty:
            common = s.token.value_counts().head(5)
            lines.append("Most frequent secondary-sink tokens: " + ", ".join(f"{t!r} ({n})" for t, n in common.items())
                         + f"; median creation layer {s.creation_layer.median():.0f}, median lifetime "
                         f"{s.lifetime.median():.0f}, median MLP alignment {s.mlp_cos.median():.2f}.")
    dr, pk = results.get("sinks.drain"), results.get("sinks.peak")
    if dr is not None and not dr.table.empty:
        lines += ["", "## Extreme tokens", "",
                  f"- Value-state drain: median |v_first| / |v_other| over heads {dr.table.ratio.median():.2f} "
                  f"(min {dr.table.ratio.min():.2f})."]
    if pk is not None and not pk.table.empty:
        best = pk.table.loc[pk.table.ratio.idxmax()]
        lines.append(f"- Residual-state peak: first-token norm up to {best.ratio:.0f}x the median token "
                     f"(layer {int(best.layer)}).")
    do = results.get("sinks.dormancy")
    if do is not None and not do.table.empty:
        sw = sorted(set(do.table[do.table.switches].node))
        lines.append(f"- Heads switching between active and dormant across domains ({len(sw)}): "
                     f"{', '.join(sw[:20]) or 'none'}{' ...' if len(sw) > 20 else ''}.")
    iv = results.get("sinks.interventions")
    if iv is not None and not iv.table.empty:
        lines += ["", "## Interventions (next-token loss on held-out prompts)", "",
                  "| intervention | target | before | after | delta |", "|---|---|---|---|---|"]
        for r in iv.table.itertuples():
            lines.append(f"| {r.intervention} | {r.target} | {r.loss_before:.3f} | {r.loss_after:.3f} | "
                         f"{r.delta:+.3f} |")
    return "\n".join(lines) + "\n"


def register(app: typer.Typer) -> None:
    @app.command("sinks")
    def sinks(model: str = typer.Argument(..., help="model spec: smollm2, a local folder, toy:llama"),
              prompts: Optional[list[Path]] = typer.Option(None, "--prompts", help="prompt file(s), one domain each "
                                                           "(default: data/prompts prose, code, lists)"),
              out: Path = typer.Option(..., "--out", help="output folder for Results, figures, summary.md"),
              max_len: int = typer.Option(64, "--max-len", help="tokens per prompt (Gu et al.: 64)"),
              eps: float = typer.Option(0.3, "--eps", help="sink threshold of Sink_1^eps"),
              batch_size: int = typer.Option(8, "--batch-size"),
              interventions: bool = typer.Option(True, "--interventions/--no-interventions",
                                                 help="run ACT and massive zero/mean (extra passes)"),
              formats: str = typer.Option("pdf,svg", "--formats", help="figure formats, comma-separated"),
              progress: bool = typer.Option(True, "--progress/--quiet"),
              device: str = typer.Option("", "--device", help=DEVICE_HELP),
              dtype: str = typer.Option("", "--dtype", help=DTYPE_HELP)) -> None:
        """Attention sinks, massive activations, secondary sinks, dormant heads and interventions.

        Example: interp sinks smollm2 --out out/sinks
        """
        import warnings

        from interp.cli._common import check_formats, check_out_dir
        from interp.datasets.base import load_prompts
        from interp.errors import DataError
        from interp.models import load_model
        from interp.plots import export
        from interp.results import Result
        from interp.sinks import AnalysisConfig, SinkConfig, analyze, sink_scores

        known = default_prompt_files()
        if prompts:
            files = {p.stem: p for p in prompts}
            controls_files: dict[str, Path] = {}
        else:
            files = {k: known[k] for k in ("prose", "code", "lists") if k in known}
            controls_files = {k: known[k] for k in ("random", "repeated") if k in known}
            if not files:
                raise DataError("no --prompts given and no data/prompts folder next to this checkout; "
                                "pass --prompts FILE (one prompt a line)")
        domains = {name: load_prompts(path) for name, path in files.items()}
        control_prompts = {name: load_prompts(path) for name, path in controls_files.items()}
        fmts = check_formats(formats, "--formats", none_ok=False)
        cfg = AnalysisConfig(sinks=SinkConfig(eps=eps, max_len=max_len), max_len=max_len, batch_size=batch_size,
                             run_interventions=interventions)
        opts = model_options(device, dtype)   # before any model work
        check_out_dir(out, "--out")
        m = load_model(model, **opts)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results = analyze(m, domains, cfg, progress=progress)
            controls = {}
            for name, texts in control_prompts.items():
                heads, layers, rate = sink_scores(m, texts, SinkConfig(eps=eps, max_len=max_len),
                                                  dataset=name)
                controls[name] = Result(rate.kind, rate.table, rate.meta, name=name)
        for w in caught:
            typer.echo(f"warning: {w.message}", err=True)
        out.mkdir(parents=True, exist_ok=True)
        fig_dir = out / "figures"
        by_kind = {r.kind: r for r in results}
        for r in [*results, *controls.values()]:
            r.save(out)
        for r in results:
            if r.kind == "sinks.model":
                continue
            fig = r.figure()
            for fmt in fmts:
                export(fig, fig_dir / f"{r.id}.{fmt}")
        text = summary_markdown(model, by_kind, controls)
        (out / "summary.md").write_text(text)
        typer.echo(text.split("\n## ")[0].strip())
        typer.echo(f"wrote {len(results) + len(controls)} Results, figures and summary.md to {out}")
