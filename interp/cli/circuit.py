"""``interp circuit acdc`` / ``interp circuit prune``: ACDC (:func:`interp.circuits.acdc`) and Edge Pruning
(:func:`interp.circuits.edge_pruning`) circuit discovery on a task."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

circuit_app = typer.Typer(help="Circuit discovery on a task: acdc, prune.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(circuit_app, name="circuit")


@circuit_app.command("acdc")
def acdc_cmd(
    model: str = typer.Argument(..., help="model spec, e.g. smollm2 or toy:llama"),
    task: str = typer.Option("ioi", "--task", help="a registered task (ioi, ...) or a TaskDataset JSONL file"),
    out: Path = typer.Option(..., "--out", help="output folder for the Results"),
    threshold: float = typer.Option(0.02, "--threshold", help="tau: remove an edge if the metric rises by less"),
    metric: str = typer.Option("kl", "--metric", help="kl, logit_diff or logit_diff_norm"),
    ablation: str = typer.Option("patching", "--ablation", help="patching or mean"),
    n: int = typer.Option(16, "--n", help="number of prompt pairs"),
    seed: int = typer.Option(0, "--seed"),
    max_rows: int = typer.Option(64, "--max-rows", help="batch rows per forward pass"),
    max_receivers: Optional[int] = typer.Option(None, "--max-receivers",
                                                help="stop after this many receivers (a partial run, for timing)"),
    candidates: Optional[int] = typer.Option(None, "--candidates",
                                             help="approximate ACDC: test only the top N edges by |EAP-IG score|; "
                                                  "every other edge is removed from the start"),
) -> None:
    """Prune the model's edge graph with ACDC and write the edge Result (patching.edges) and the membership
    (circuits.acdc).

    \b
    Examples:
      interp circuit acdc smollm2 --task ioi --out out/acdc --threshold 0.02
      interp circuit acdc toy:llama --task ioi --n 4 --out out/acdc_toy
      interp circuit acdc smollm2 --task ioi --out out/acdc_top --candidates 400   (approximate)
    """
    from interp.circuits import ACDC_METRICS, acdc, acdc_membership
    from interp.circuits.evaluate import ABLATIONS
    from interp.cli._common import check_choice, check_out_dir, check_positive
    from interp.cli.patch import _task
    from interp.datasets.registry import check_task
    from interp.models import load_model

    check_choice(metric, ACDC_METRICS, "--metric")
    check_choice(ablation, ABLATIONS, "--ablation")
    check_positive(n, "--n")
    check_positive(max_rows, "--max-rows")
    if candidates is not None:
        check_positive(candidates, "--candidates")
    check_task(task, "--task")
    check_out_dir(out, "--out")
    m = load_model(model)
    ds = _task(m, task, n, seed)
    r = acdc(m, ds, threshold=threshold, metric=metric, ablation=ablation, max_rows=max_rows,
             max_receivers=max_receivers, candidates=candidates, progress=True)
    out.mkdir(parents=True, exist_ok=True)
    r.save(out)
    acdc_membership(m, r).save(out)
    e = r.meta.extra
    typer.echo(f"acdc on {ds.name} ({len(ds)} pairs, {metric}, tau {threshold:g}): kept {e['n_edges']} of "
               f"{e['n_model_edges']} edges ({e['n_nodes']} nodes), faithfulness {e['faithfulness']:.3f}; "
               f"{e['edges_tested']} edges tested in {e['rounds']} batched rounds, {e['forward_passes']} forward "
               f"passes, {e['seconds']:.0f} s{'' if e['complete'] else ' (partial run)'}")
    a = e.get("approximation")
    if a:
        typer.echo(f"approximate: only the top {a['candidates']} edges by |{a['scores']}| were tested, the rest "
                   f"removed first; that start circuit's faithfulness {a['start_faithfulness']:.3f}")
    typer.echo(f"wrote {out}")


@circuit_app.command("prune")
def prune_cmd(
    model: str = typer.Argument(..., help="model spec, e.g. smollm2 or toy:llama"),
    task: str = typer.Option("ioi", "--task", help="a registered task (ioi, ...) or a TaskDataset JSONL file"),
    out: Path = typer.Option(..., "--out", help="output folder for the Results"),
    edges: int = typer.Option(300, "--edges", help="target number of edges to keep"),
    steps: int = typer.Option(150, "--steps",
                              help="optimisation steps (full batch; ~8 s each on SmolLM2 with 16 prompts, 2 cores)"),
    lr: float = typer.Option(0.8, "--lr", help="learning rate of the masks"),
    reg_lr: float = typer.Option(0.8, "--reg-lr", help="learning rate of the Lagrange multipliers (the authors' 0.8; "
                                                       "8 reached 2,478 edges on SmolLM2 IOI in 150 steps)"),
    warmup: float = typer.Option(2500 / 3000, "--warmup", help="fraction of the steps over which the edge target "
                                                               "ramps from 0 (the authors' 0.83; 0.1 with --reg-lr 8)"),
    ablation: str = typer.Option("patching", "--ablation", help="patching or mean"),
    n: int = typer.Option(16, "--n", help="number of prompt pairs"),
    seed: int = typer.Option(0, "--seed", help="seed of the prompts and of the mask noise"),
    measure: bool = typer.Option(True, "--measure/--no-measure",
                                 help="measure each kept edge's removal effect after training (about half a forward "
                                      "pass of the batch per kept edge: long for thousands of edges)"),
) -> None:
    """Learn an edge mask by Edge Pruning (Bhaskar et al. 2024) and write the edge Result (patching.edges) with the
    circuit, its edge-level faithfulness and the training curve in its metadata.

    \b
    Examples:
      interp circuit prune smollm2 --task ioi --out out/prune --edges 300 --reg-lr 8 --warmup 0.1
      interp circuit prune toy:llama --task task.jsonl --n 4 --out out/prune_toy --edges 20 --steps 50
    """
    from interp.circuits import PruneConfig, edge_pruning
    from interp.circuits.evaluate import ABLATIONS
    from interp.cli._common import check_choice, check_out_dir, check_positive
    from interp.cli.patch import _task
    from interp.datasets.registry import check_task
    from interp.models import load_model

    check_choice(ablation, ABLATIONS, "--ablation")
    for v, name in ((n, "--n"), (steps, "--steps"), (edges, "--edges")):
        check_positive(v, name)
    check_task(task, "--task")
    check_out_dir(out, "--out")
    cfg = PruneConfig(target_edges=edges, steps=steps, lr=lr, reg_lr=reg_lr, warmup=warmup, ablation=ablation,
                      seed=seed, progress=True, measure=measure)
    m = load_model(model)
    ds = _task(m, task, n, seed)
    r = edge_pruning(m, ds, cfg)
    out.mkdir(parents=True, exist_ok=True)
    r.save(out)
    e = r.meta.extra
    typer.echo(f"edge pruning on {ds.name} ({len(ds)} pairs, {steps} steps): kept {e['n_edges']} of "
               f"{e['n_model_edges']} edges ({e['n_nodes']} nodes), faithfulness {e['faithfulness']:.3f}, "
               f"KL {e['kl']:.3f} (corrupted run {e['kl_corrupted']:.3f}); {e['seconds']:.0f} s")
    typer.echo(f"wrote {out}")
