"""``interp attribute``: the attribution graph of one prompt through per-layer transcoders.

Example:

  interp attribute smollm2 --prompt "The Eiffel Tower is located in the city of" --out out/graph
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def attribute_cmd(
    model: str = typer.Argument(..., help="model spec: smollm2, a local HF folder, toy:llama ..."),
    prompt: str = typer.Option(..., "--prompt", help="the prompt (at most 64 tokens)"),
    out: Path = typer.Option(..., "--out", help="folder for circuit_graph.json (CircuitGraph), <slug>.json + "
                             "graph-metadata.json (Neuronpedia), scores.json, graph.html (explorer)"),
    transcoders: Optional[Path] = typer.Option(None, "--transcoders", help="transcoder folder (default: the cache "
                                               "of this model identity)"),
    slug: str = typer.Option("graph", "--slug", help="graph name in the Neuronpedia JSON"),
    node_threshold: float = typer.Option(0.8, "--node-threshold", help="cumulative node influence kept"),
    edge_threshold: float = typer.Option(0.98, "--edge-threshold", help="cumulative edge influence kept"),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="targets per backward pass"),
) -> None:
    """Build, prune and save the attribution graph of PROMPT (local replacement model, circuit-tracer's method).

    Example: interp attribute smollm2 --prompt "The Eiffel Tower is located in the city of" --out out/graph
    """
    import re
    import time

    from interp._fs import atomic_write_json
    from interp.cli._common import check_out_dir
    from interp.errors import ConfigError
    from interp.graph import to_json
    from interp.models import load_model
    from interp.transcoders import load_transcoders
    from interp.transcoders.attribution import AttributionConfig, attribute
    from interp.transcoders.graph_json import to_neuronpedia

    if not re.fullmatch(r"[A-Za-z0-9_.-]+", slug) or slug in ("circuit_graph", "scores", "graph-metadata"):
        raise ConfigError(f"--slug: letters, digits, '_', '-', '.' only, and not circuit_graph/scores/"
                          f"graph-metadata, got {slug!r}")
    cfg = AttributionConfig(node_threshold=node_threshold, edge_threshold=edge_threshold, batch_size=batch_size)
    check_out_dir(out, "--out")
    m = load_model(model)
    tcs = load_transcoders(m, transcoders)
    t0 = time.perf_counter()
    g = attribute(m, prompt, tcs, cfg)
    seconds = time.perf_counter() - t0
    scores = g.scores()
    graph = g.to_graph(pruned=True, name=slug)
    out.mkdir(parents=True, exist_ok=True)
    to_json(graph, out / "circuit_graph.json")
    from interp.explorer.features import attribution_context

    has_features = any(".TC." in str(n) for n in graph.nodes)   # pruning may keep none on a tiny model
    graph.to_html(out / "graph.html", **({"features": attribution_context(g, graph)} if has_features else {}))
    np_graph = to_neuronpedia(g, slug=slug)
    atomic_write_json(out / f"{slug}.json", np_graph)
    atomic_write_json(out / "graph-metadata.json", {"graphs": [np_graph["metadata"]]})   # circuit-tracer's index
    atomic_write_json(out / "scores.json", {"prompt": prompt, "tokens": g.n_pos, "features": g.n_features,
                                            "logits": [int(t) for t in g.logit_tokens],
                                            "logit_probs": [float(p) for p in g.logit_probs], **scores,
                                            "pruned_nodes": len(graph), "pruned_edges": len(graph.edges),
                                            "seconds": seconds})
    typer.echo(f"{g.n_pos} tokens, {g.n_features} active features, {len(g.logit_tokens)} logits; pruned graph "
               f"{len(graph)} nodes / {len(graph.edges)} edges; replacement {scores['replacement']:.3f}, "
               f"completeness {scores['completeness']:.3f}; {seconds:.1f} s -> {out}")


def register(app: typer.Typer) -> None:
    app.command("attribute")(attribute_cmd)
