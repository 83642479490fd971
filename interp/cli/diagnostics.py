"""``interp diagnostics``: cheap attention diagnostics of a model, or of the modular-addition toy in training."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

diag = typer.Typer(help="Attention diagnostics: head cosine similarity, entropy and its spread.",
                   no_args_is_help=True, add_completion=False, rich_markup_mode=None)


@diag.command("attention")
def attention(model: str = typer.Argument(..., help="model spec, e.g. smollm2 or toy:llama"),
              out: Path = typer.Option(..., "--out", help="output folder"),
              prompts: Optional[Path] = typer.Option(None, "--prompts", help="a prompt file (default: --task)"),
              task: str = typer.Option("ioi", "--task", help="a registered task (its clean prompts)"),
              n: int = typer.Option(32, "--n", help="number of prompts"),
              seed: int = typer.Option(0, "--seed"),
              figures: str = typer.Option("png", "--figures", help="png, svg, pdf, html or none")) -> None:
    """Per layer: head cosine similarity and entropy std across heads; per head: entropy and its spread over prompts.

    Prompts are cut to the shortest prompt's length (the patterns are averaged over a batch).

    \b
    Example: interp diagnostics attention smollm2 --task ioi --n 32 --out out/diag
    """
    from interp.cli._common import check_formats, check_out_dir, check_positive, prompt_texts, task_texts
    from interp.diagnostics import diagnose
    from interp.models import load_model, tokenize

    check_positive(n, "--n")
    fig_formats = check_formats(figures, "--figures")
    texts = prompt_texts(prompts, task, n)
    check_out_dir(out, "--out")
    m = load_model(model)
    texts = task_texts(texts, task, m, n, seed)
    batch = tokenize(m, texts)
    length = int(batch.lengths.min())
    d = diagnose(m, batch.tokens[:, :length], dataset=str(prompts) if prompts is not None else task)
    out.mkdir(parents=True, exist_ok=True)
    for r in (d.layers, d.heads):
        r.save(out)
        for fmt in fig_formats:
            from interp.plots import export

            export(r.figure(), out / f"{r.id}.{fmt}")
    t = d.layers.table
    typer.echo(f"{len(texts)} prompts cut to {length} tokens; per layer cos_sim " +
               " ".join(f"{v:.2f}" for v in t.cos_sim) + "; entropy_std " + " ".join(f"{v:.2f}" for v in t.entropy_std))
    typer.echo(f"wrote {out}/")


@diag.command("modadd")
def modadd(out: Path = typer.Option(..., "--out", help="output folder"),
           weight_decays: str = typer.Option("0,1,2,4,10", "--weight-decays", help="comma-separated AdamW weight decays"),
           steps: int = typer.Option(2000, "--steps", help="AdamW steps per run (minibatches of 512 pairs)"),
           p: int = typer.Option(97, "--p", help="the modulus"),
           every: int = typer.Option(100, "--every", help="record every this many steps"),
           seed: int = typer.Option(0, "--seed"),
           figures: str = typer.Option("png", "--figures", help="png, svg, pdf, html or none")) -> None:
    """Train the modular-addition toy under several weight decays, recording the diagnostics online.

    \b
    Example: interp --threads 1 diagnostics modadd --weight-decays 0,1,2,4,10 --steps 2000 --out out/modadd
    """
    from interp.cli._common import check_formats, check_out_dir, check_positive
    from interp.diagnostics.modadd import ModAddConfig, sweep
    from interp.errors import ConfigError

    try:
        wds = tuple(float(w) for w in weight_decays.split(",") if w.strip())
    except ValueError as e:
        raise ConfigError(f"--weight-decays: expected comma-separated numbers, got {weight_decays!r}") from e
    if not wds or min(wds) < 0:
        raise ConfigError(f"--weight-decays: expected one or more numbers >= 0, got {weight_decays!r}")
    check_positive(steps, "--steps")
    fig_formats = check_formats(figures, "--figures")
    cfg = ModAddConfig(p=p, steps=steps, every=every, seed=seed)
    check_out_dir(out, "--out")
    res = sweep(cfg, wds, folder=out)
    last = res.table.sort_values("step").groupby("run").tail(1)
    for r in last.itertuples():
        typer.echo(f"{r.run}: step {r.step} train acc {r.m_train_acc:.2f} test acc {r.m_test_acc:.2f} "
                   f"cos_sim {r.cos_sim:.4f} entropy_std {r.entropy_std:.4f}")
    for fmt in fig_formats:
        from interp.plots import export

        export(res.figure(), out / f"{res.id}.{fmt}")
    typer.echo(f"wrote {out}/")


def register(app: typer.Typer) -> None:
    app.add_typer(diag, name="diagnostics")
