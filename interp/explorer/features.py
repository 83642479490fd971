"""Feature graphs in the explorer: the token x layer layout and each node's side-panel data.

An attribution graph (:mod:`interp.transcoders.attribution`) is a :class:`~interp.graph.CircuitGraph`
whose node ids carry a token position: transcoder features ``L7.TC.1234@3``, error nodes
``L7.MLP@3``, token embeddings ``EMBED@3`` and top logits ``LOGITS.791@11``. The page lays such a
graph out on a grid (:func:`feature_layout`): **x = token position** (one column per prompt token,
labelled with the token string), **y = layer** (embeddings in row 0, layer ``l`` in row ``l + 1``,
logits in the top row ``n_layers + 1``); nodes sharing a cell are spread inside it (features by
index, the error node last: an order that needs no score, so a graph reloaded from Neuronpedia JSON,
whose ``influence`` is cumulative, lays out the same). The top logits (all at the last position) are
spread along the top row in order of probability. Errors, embeddings and logits are drawn as distinct shapes.

The side panel of a node (the *feature context*, :func:`attribution_context`):

* **logit effects**: the node's direct effect on each top output logit, read from the *unpruned*
  adjacency of the :class:`~interp.transcoders.attribution.Attribution` (``A[logit, node]``: the
  change of the demeaned logit caused by the node through the frozen replacement model's direct
  path; not only the edges kept by pruning);
* **activations on this prompt**: the feature's activation at every prompt position where it is
  active (from the Attribution's active features);
* **top activating examples** over held-out text, when given: from saved SAE dashboards of the
  transcoders (:func:`dashboard_examples` reads the ``sae.examples`` Results that
  ``interp sae dashboard MODEL --sae <transcoder folder L<l>> --out DIR`` writes), or computed here
  (:func:`feature_examples` runs the dashboard's analysis,
  :func:`interp.sae.features.analyze_features`, with each layer's transcoder on its input site
  ``mlp_in.l``). Without them the panel says that only the prompt's activations are known.

:func:`context_from_neuronpedia` rebuilds the context from a saved Neuronpedia graph JSON (prompt
tokens, activations, logit nodes; logit effects then come from the kept links only, and the page
says so), so a graph file alone reopens in the explorer.

Example:
    >>> feature_layout(["EMBED@0", "L0.MLP@1", "L0.TC.9@1", "L0.TC.5@1", "LOGITS.7@1", "LOGITS.3@1"], n_layers=2,
    ...                n_pos=2, probs={"LOGITS.7@1": 0.6, "LOGITS.3@1": 0.3})
    {'LOGITS.7@1': (0.5, 3), 'LOGITS.3@1': (1.5, 3), 'EMBED@0': (0.5, 0), 'L0.TC.5@1': (1.25, 1), 'L0.TC.9@1': (1.5, 1), 'L0.MLP@1': (1.75, 1)}
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from interp.errors import DataError

if TYPE_CHECKING:
    from interp.graph import CircuitGraph
    from interp.types import Model

__all__ = ["node_pos", "is_feature_graph", "feature_layout", "attribution_context", "feature_examples",
           "examples_from_table", "dashboard_examples", "context_from_neuronpedia", "feature_key"]

_KIND_ORDER = {"tc": 0, "mlp": 1}


def node_pos(node: str) -> int | None:
    """The token position of a node id ``...@pos`` (None without one)."""
    from interp.nodes import parse_node_id

    try:
        return parse_node_id(node).get("pos")
    except Exception:                                     # visual / unknown ids have no position
        return None


def is_feature_graph(graph: CircuitGraph) -> bool:
    """True when the graph has transcoder feature nodes with a position (an attribution graph)."""
    return any(k == "tc" and node_pos(n) is not None for n, k in graph.nx.nodes(data="kind"))


def feature_key(node: str) -> str:
    """``L7.TC.1234@3`` -> ``L7.TC.1234``: examples are per feature, shared by its positions."""
    return node.split("@", 1)[0]


def _row(kind: str, layer: int, n_layers: int) -> int:
    return 0 if kind == "embed" else n_layers + 1 if kind == "logits" else layer + 1


def feature_layout(nodes: Iterable[str], n_layers: int, *, n_pos: int | None = None,
                   probs: Mapping[str, float] | None = None) -> dict[str, tuple[float, int]]:
    """``{node: (x, y)}`` in grid units: ``x`` in ``[pos, pos + 1)``, ``y`` the row (see the module doc).

    Nodes of one (row, pos) cell sit at ``pos + (i + 1) / (n + 1)``, features by index, the error
    node last; nodes without a position are left out. With ``n_pos``, the logits are spread over
    ``[0, n_pos)`` on the top row, by descending ``probs`` then id.
    """
    from interp.nodes import parse_node_id

    cells: dict[tuple[int, int], list[tuple[int, int, str]]] = {}
    for n in nodes:
        try:
            parts = parse_node_id(n)
        except Exception:
            continue
        if parts.get("pos") is None:
            continue
        row = _row(parts["kind"], parts["layer"] if parts["layer"] is not None else -1, n_layers)
        cells.setdefault((row, parts["pos"]), []).append(
            (_KIND_ORDER.get(parts["kind"], 2), parts["feature"] if parts["feature"] is not None else -1, n))
    out: dict[str, tuple[float, int]] = {}
    if n_pos:
        top = sorted((n for (row, _), items in cells.items() if row == n_layers + 1 for _, _, n in items),
                     key=lambda n: (-float((probs or {}).get(n, 0.0)), n))
        cells = {k: v for k, v in cells.items() if k[0] != n_layers + 1}
        for i, n in enumerate(top):
            out[n] = ((i + 0.5) * n_pos / len(top), n_layers + 1)
    for (row, pos), items in sorted(cells.items()):
        items.sort()
        for i, (_, _, n) in enumerate(items):
            out[n] = (pos + (i + 1) / (len(items) + 1), row)
    return out


def attribution_context(attribution: Any, graph: CircuitGraph | None = None, *,
                        examples: Mapping[str, list[dict[str, Any]]] | None = None,
                        examples_source: str = "") -> dict[str, Any]:
    """The side-panel data of an :class:`~interp.transcoders.attribution.Attribution` for the explorer.

    Args:
        graph: the graph shown (default: ``attribution.to_graph()``); data is kept for its nodes only.
        examples: ``{"L7.TC.1234": [example rows]}`` from :func:`feature_examples` /
            :func:`examples_from_table` (rows: ``token``, ``left``, ``right``, ``value``).
        examples_source: where the examples come from (shown in the panel).

    Returns:
        ``{"prompt", "tokens", "n_layers", "logits": [{"id", "token", "token_id", "prob"}],
        "nodes": {node: {"logit_effects": [one per logit], "activation", "prompt_acts": [[pos, act]]}},
        "examples": {...}, "examples_source", "effects_from": "adjacency"}``.
    """
    graph = attribution.to_graph() if graph is None else graph
    ids = attribution.node_ids()
    keep = set(graph.nodes)
    ls, n_f = attribution.logit_start, attribution.n_features
    strs = list(getattr(attribution, "logit_strs", None) or [str(int(t)) for t in attribution.logit_tokens])
    logits = [{"id": ids[ls + j], "token": strs[j], "token_id": int(t), "prob": float(p)}
              for j, (t, p) in enumerate(zip(attribution.logit_tokens.tolist(), attribution.logit_probs.tolist()))]
    acts: dict[tuple[int, int], list[list[float]]] = {}
    for (layer, pos, feat), v in zip(attribution.features.tolist(), attribution.activations.tolist()):
        acts.setdefault((layer, feat), []).append([pos, float(v)])
    adj = attribution.adjacency
    nodes: dict[str, dict[str, Any]] = {}
    for i, nid in enumerate(ids[:ls]):
        if nid not in keep:
            continue
        entry: dict[str, Any] = {"logit_effects": [float(x) for x in adj[ls:, i].tolist()]}
        if i < n_f:
            layer, _, feat = attribution.features[i].tolist()
            entry["activation"] = float(attribution.activations[i])
            entry["prompt_acts"] = acts[(layer, feat)]
        nodes[nid] = entry
    return {"prompt": attribution.prompt, "tokens": list(attribution.token_strs), "n_layers": int(attribution.n_layers),
            "logits": logits, "nodes": nodes, "examples": _check_examples(examples or {}),
            "examples_source": examples_source if examples else "", "effects_from": "adjacency"}


def _check_examples(examples: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    from interp.graph.core import jsonable

    out = {}
    for key, rows in examples.items():
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "token" in r for r in rows):
            raise DataError(f"explorer examples[{key!r}]: expected a list of rows with a 'token', got {rows!r:.80}")
        out[str(key)] = [jsonable(r) for r in rows]
    return out


def examples_from_table(table: Any, *, n_examples: int = 5) -> dict[str, list[dict[str, Any]]]:
    """``{"L7.TC.1234": rows}`` from an ``sae.examples`` table/Result of a transcoder (columns feature,
    layer, rank, value, token, left, right) — what the SAE dashboard lists per feature.

    Raises:
        DataError: the table lacks those columns.
    """
    from interp.nodes import node_id

    table = getattr(table, "table", table)
    need = ("feature", "layer", "rank", "value", "token", "left", "right")
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise DataError(f"explorer examples: the sae.examples table lacks column(s) {missing}")
    out: dict[str, list[dict[str, Any]]] = {}
    for r in table.sort_values(["layer", "feature", "rank"]).to_dict("records"):
        rows = out.setdefault(node_id("tc", layer=int(r["layer"]), feature=int(r["feature"])), [])
        if len(rows) < n_examples:
            rows.append({"token": str(r["token"]), "left": [str(x) for x in r["left"]],
                         "right": [str(x) for x in r["right"]], "value": float(r["value"])})
    return out


def feature_examples(model: Model, transcoders: Mapping[int, Any], graph: CircuitGraph, tokens: Any, *,
                     n_examples: int = 5, context: int = 8) -> tuple[dict[str, list[dict[str, Any]]], str]:
    """Top activating examples of every transcoder feature of ``graph`` over ``tokens`` ([rows, pos]).

    Runs the SAE dashboard's analysis (:func:`interp.sae.features.analyze_features`) with the layer's
    transcoder on its input site ``mlp_in.l``, for the graph's features only.

    Returns:
        ``(examples, source)``: ``{"L7.TC.1234": rows}`` and a line saying where they come from.
    """
    from interp.sae.features import FeatureConfig, analyze_features
    from interp.sites import Site

    by_layer: dict[int, set[int]] = {}
    for n, d in graph.nx.nodes(data=True):
        if d["kind"] == "tc":
            by_layer.setdefault(int(d["layer"]), set()).add(int(d["feature"]))
    out: dict[str, list[dict[str, Any]]] = {}
    for layer, feats in sorted(by_layer.items()):
        if layer not in transcoders:
            raise DataError(f"explorer examples: the graph has layer-{layer} features but no transcoder for layer {layer}")
        fa = analyze_features(model, transcoders[layer], Site("mlp_in", layer), tokens,
                              FeatureConfig(features=tuple(sorted(feats)), n_examples=n_examples, context=context))
        out.update(examples_from_table(fa.examples, n_examples=n_examples))
    source = (f"top activations over {int(tokens.shape[0])} rows x {int(tokens.shape[1])} tokens "
              "(interp.sae.features.analyze_features on mlp_in, as the SAE dashboard)")
    return out, source


def dashboard_examples(model: Model, folders: Iterable[Any], *, n_examples: int = 5
                       ) -> tuple[dict[str, list[dict[str, Any]]], str]:
    """Top activating examples from saved SAE dashboards of the transcoders: every ``sae.examples`` Result in
    the results ``folders`` (``interp sae dashboard MODEL --sae <transcoder L<l>> --out DIR``).

    Returns:
        ``(examples, source)`` as :func:`feature_examples`.

    Raises:
        StoreError: a folder that is not a results folder.
        DataError: examples of another site than a transcoder input ``mlp_in.l`` (an SAE's feature 12 is
            not transcoder feature 12), of another model revision, or no ``sae.examples`` at all.
    """
    from interp.models import model_info
    from interp.results import load_results
    from interp.sites import Site

    want = model_info(model).revision
    out: dict[str, list[dict[str, Any]]] = {}
    names = []
    for folder in folders:
        for rid, res in load_results(folder).items():
            if res.kind != "sae.examples":
                continue
            site = str(res.meta.extra.get("site") or res.name)
            try:
                component = Site.parse(site).component
            except Exception:
                component = ""
            if component != "mlp_in":
                raise DataError(f"{folder}/{rid}: examples of site {site!r}, not of a transcoder input mlp_in.<layer>; "
                                "an SAE's features are not the transcoder's")
            if res.meta.model_revision and want and res.meta.model_revision != want:
                raise DataError(f"{folder}/{rid}: examples of model revision {res.meta.model_revision!r}, "
                                f"this model is {want!r}")
            out.update(examples_from_table(res, n_examples=n_examples))
            names.append(site)
    if not names:
        raise DataError(f"no sae.examples Result in {', '.join(map(str, folders))} (write them with interp sae dashboard)")
    return out, f"top activations from the SAE dashboards of {', '.join(sorted(set(names)))}"


_CLERP = re.compile(r'^Output "(.*)" \(p=[^)]*\)$', re.S)


def context_from_neuronpedia(obj: dict[str, Any], graph: CircuitGraph | None = None) -> dict[str, Any]:
    """The feature context of a Neuronpedia graph JSON (as :func:`interp.transcoders.graph_json.to_neuronpedia`
    writes it): tokens, activations, logits; logit effects from the links kept in the file.

    Raises:
        DataError: the object does not validate.
    """
    from interp.transcoders.graph_json import from_neuronpedia

    graph = from_neuronpedia(obj) if graph is None else graph
    meta = obj["metadata"]
    ours = _neuronpedia_ids(obj)
    logit_nodes = [n for n in obj["nodes"] if n["feature_type"] == "logit"]
    logit_nodes.sort(key=lambda n: -float(n.get("token_prob") or 0.0))
    logits = []
    for n in logit_nodes:
        m = _CLERP.match(n.get("clerp") or "")
        logits.append({"id": ours[n["node_id"]], "token": m.group(1) if m else str(n["feature"]),
                       "token_id": int(n["feature"]), "prob": float(n.get("token_prob") or 0.0)})
    col = {lg["id"]: j for j, lg in enumerate(logits)}
    n_layers = max([int(n["layer"]) - 1 for n in logit_nodes] or [0])
    nodes: dict[str, dict[str, Any]] = {}
    acts: dict[str, list[list[float]]] = {}
    for n in obj["nodes"]:
        if n["feature_type"] == "logit":
            continue
        nid = ours[n["node_id"]]
        nodes[nid] = {"logit_effects": [0.0] * len(logits)}
        if n["feature_type"] == "cross layer transcoder" and n.get("activation") is not None:
            nodes[nid]["activation"] = float(n["activation"])
            acts.setdefault(feature_key(nid), []).append([int(n["ctx_idx"]), float(n["activation"])])
    for nid, entry in nodes.items():
        if "activation" in entry:
            entry["prompt_acts"] = sorted(acts[feature_key(nid)])
    for link in obj["links"]:
        src, dst = ours[link["source"]], ours[link["target"]]
        if dst in col and src in nodes:
            nodes[src]["logit_effects"][col[dst]] = float(link["weight"])
    return {"prompt": str(meta.get("prompt", "")), "tokens": list(meta["prompt_tokens"]), "n_layers": n_layers,
            "logits": logits, "nodes": nodes, "examples": {}, "examples_source": "", "effects_from": "links"}


def _neuronpedia_ids(obj: dict[str, Any]) -> dict[str, str]:
    """Neuronpedia node id -> our node id (as :func:`interp.transcoders.graph_json.from_neuronpedia` maps them)."""
    from interp.transcoders.graph_json import our_node_id

    return {n["node_id"]: our_node_id(n) for n in obj["nodes"]}
