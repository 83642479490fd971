"""``interp sad``: sparse attention decomposition traced backwards from a head."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def summary_markdown(spec: str, head: str, res, n_prompts: int) -> str:
    """The short report ``interp sad`` writes as ``summary.md``: the strongest signals per receiver."""
    t = res.table
    cfg = res.meta.config
    lines = [f"# Sparse attention decomposition: {spec}, traced from {head}", "",
             f"- prompts: {n_prompts}; fraction f = {cfg.get('fraction')}; firing = attention >= "
             f"{cfg.get('attn_threshold')}, positive score, key != 0: {cfg.get('skip_first_key')}; "
             f"top_k = {cfg.get('top_k')}, depth = {cfg.get('depth')}", ""]
    if t.empty:
        return "\n".join(lines + [f"{head} never fires (no pair reaches the attention threshold)."]) + "\n"
    for dst in dict.fromkeys(t.sort_values("depth")["dst"]):
        r = t[t["dst"] == dst]
        first = r.iloc[0]
        lines += [f"## into {dst} (depth {int(first.depth)}): {int(first.n_firings)} firings in "
                  f"{int(first.n_prompts)} prompts, mean score {first.dst_score:.2f}, "
                  f"{first.dst_terms:.1f} kept terms", "", "| sender | via | signal | share |", "|---|---|---|---|"]
        for s in r.assign(_a=r["signal"].abs()).nlargest(8, "_a").itertuples():
            lines.append(f"| {s.src} | {s.dst_input} | {s.signal:+.3f} | {s.share:+.1%} |")
        lines.append("")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    @app.command("sad")
    def sad(model: str = typer.Argument(..., help="model spec, e.g. smollm2 or toy:llama"),
            head: str = typer.Option(..., "--head", help="the head of interest, e.g. L23.H3"),
            out: Path = typer.Option(..., "--out", help="output folder"),
            task: str = typer.Option("ioi", "--task", help="a registered task (its clean prompts) or a TaskDataset "
                                     "JSONL file"),
            prompts: Optional[Path] = typer.Option(None, "--prompts", help="a prompt file instead of --task"),
            n: int = typer.Option(32, "--n", help="number of prompts"),
            positions: str = typer.Option("last", "--positions", help="query positions of the head: last or all"),
            fraction: float = typer.Option(1.0, "--fraction", help="kept terms reach this fraction of each score"),
            threshold: float = typer.Option(0.5, "--threshold", help="a pair fires at attention >= this"),
            top_k: int = typer.Option(3, "--top-k", help="upstream heads traced further per receiver"),
            depth: int = typer.Option(2, "--depth", help="receivers deep to trace"),
            seed: int = typer.Option(0, "--seed"),
            figures: str = typer.Option("png", "--figures", help="png, svg, pdf, html or none")) -> None:
        """Signals into a head (and, recursively, into its strongest senders): a sad.signals Result, bars, summary.md.

        \b
        Examples:
          interp sad smollm2 --head L23.H3 --task ioi --n 32 --out out/sad
          interp sad toy:llama --head L1.H0 --prompts data/prompts/prose.txt --positions all --out out/sad
        """
        from interp.cli._common import (check_choice, check_formats, check_out_dir, check_positive, prompt_texts,
                                        task_texts)
        from interp.errors import ConfigError
        from interp.models import load_model, tokenize
        from interp.nodes import parse_node_id
        from interp.sad import SADConfig, trace

        try:
            ok = parse_node_id(head)["kind"] == "head"
        except Exception:                       # noqa: BLE001 - any parse failure is the same bad input
            ok = False
        if not ok:
            raise ConfigError(f"--head: expected a head like 'L5.H1', got {head!r}")
        check_choice(positions, ("last", "all"), "--positions")
        check_positive(n, "--n")
        fig_formats = check_formats(figures, "--figures")
        cfg = SADConfig(fraction=fraction, attn_threshold=threshold, top_k=top_k, depth=depth)
        texts = prompt_texts(prompts, task, n)
        check_out_dir(out, "--out")
        m = load_model(model)
        texts = task_texts(texts, task, m, n, seed)
        batch = tokenize(m, texts)
        toks = [batch.tokens[i, : int(batch.lengths[i])] for i in range(len(texts))]
        qpos = [[len(t) - 1] for t in toks] if positions == "last" else None
        res = trace(m, toks, head, query_positions=qpos, config=cfg,
                    dataset=str(prompts) if prompts is not None else task)
        out.mkdir(parents=True, exist_ok=True)
        res.save(out)
        (out / "summary.md").write_text(summary_markdown(model, head, res, len(toks)), encoding="utf-8")
        t = res.table
        into = t[t["dst"] == head]
        if into.empty:
            typer.echo(f"{head} never fires on these prompts (attention >= {threshold} to a key other than 0)")
        else:
            top = into.assign(_a=into["signal"].abs()).nlargest(6, "_a")
            typer.echo(f"signals into {head} ({int(top.n_firings.iloc[0])} firings): " +
                       ", ".join(f"{s}.{d} {v:+.2f}" for s, d, v in zip(top.src, top.dst_input, top.signal)))
        for fmt in fig_formats:
            from interp.plots import export

            export(res.figure(), out / f"{res.id}.{fmt}")
        typer.echo(f"wrote {out}/ ({res.id}, summary.md)")
