"""Attribution graphs as Neuronpedia graph JSON (circuit-tracer's writer) and back into a CircuitGraph.

The fields are those of circuit-tracer's ``create_graph_files`` (``circuit_tracer/utils/create_graph_files.py``)
and its pydantic models (``circuit_tracer/frontend/graph_models.py``): ``metadata`` (slug, scan,
transcoder_list, prompt_tokens, prompt, node_threshold), ``qParams`` (pinnedIds, supernodes,
linkType, clickedId, sg_pos), ``nodes`` (node_id, feature, layer, ctx_idx, feature_type,
token_prob, is_target_logit, run_idx, reverse_ctx_idx, jsNodeId, clerp, influence, activation)
and ``links`` (source, target, weight). Node ids as circuit-tracer writes them: feature
``"{layer}_{feature}_{pos}"``, error ``"0_{layer}_{pos}"``, token ``"E_{token id}_{pos}"``,
logit ``"{n_layers + 1}_{token id}_{pos}"``; nodes are told apart by ``feature_type``. One
deviation: circuit-tracer's error id ``"0_{layer}_{pos}"`` equals the id of layer-0 feature
``layer`` at the same position; where both are in a graph the error node gets ``"_err"``
appended, so every link names one node.
Our model identity travels in two extra metadata keys (``interp_model``, ``interp_model_revision``),
which pydantic readers ignore.
"""

from __future__ import annotations

from typing import Any

from interp.errors import DataError

__all__ = ["to_neuronpedia", "from_neuronpedia", "validate_neuronpedia", "our_node_id", "NODE_FIELDS"]

#: field -> type(s), as circuit-tracer's ``Node`` model (None allowed where its default is None)
NODE_FIELDS: dict[str, tuple[type, ...]] = {
    "node_id": (str,), "feature": (int,), "layer": (str,), "ctx_idx": (int,), "feature_type": (str,),
    "token_prob": (float, int), "is_target_logit": (bool,), "run_idx": (int,), "reverse_ctx_idx": (int,),
    "jsNodeId": (str,), "clerp": (str,), "influence": (float, int, type(None)), "activation": (float, int, type(None)),
}
_META_FIELDS = {"slug": (str,), "scan": (str,), "transcoder_list": (list,), "prompt_tokens": (list,),
                "prompt": (str,), "node_threshold": (float, int, type(None))}
_QPARAMS = {"pinnedIds": (list,), "supernodes": (list,), "linkType": (str,), "clickedId": (str,), "sg_pos": (str,)}
_TYPES = ("cross layer transcoder", "mlp reconstruction error", "embedding", "logit")


def _process_token(token: str) -> str:
    return token.replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


def _json_node(**kw: Any) -> dict[str, Any]:
    base = {"token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0, "clerp": "",
            "influence": None, "activation": None}
    return base | kw


def to_neuronpedia(graph: Any, *, slug: str = "graph", scan: str = "", transcoder_list: list[str] | None = None,
                   node_threshold: float | None = None, edge_threshold: float | None = None) -> dict[str, Any]:
    """The pruned :class:`~interp.transcoders.attribution.Attribution` as a Neuronpedia graph JSON object."""
    res = graph.prune(node_threshold, edge_threshold)
    node_mask, edge_mask, cum = res.node_mask, res.edge_mask, res.cumulative_scores
    n_f, n_pos, n_layers = graph.n_features, graph.n_pos, graph.n_layers
    tok_start, logit_start = graph.token_start, graph.logit_start
    nodes: dict[int, dict[str, Any]] = {}
    for i in node_mask.nonzero().flatten().tolist():
        infl = float(cum[i])
        if i < n_f:
            layer, pos, feat = graph.features[i].tolist()
            nodes[i] = _json_node(node_id=f"{layer}_{feat}_{pos}", feature=feat, layer=str(layer), ctx_idx=pos,
                             feature_type="cross layer transcoder", jsNodeId=f"{layer}_{feat}-0", influence=infl,
                             activation=float(graph.activations[i]))
        elif i < tok_start:
            layer, pos = divmod(i - n_f, n_pos)
            nodes[i] = _json_node(node_id=f"0_{layer}_{pos}", feature=-1, layer=str(layer), ctx_idx=pos,
                             feature_type="mlp reconstruction error", jsNodeId=f"{layer}_{pos}-0", influence=infl)
        elif i < logit_start:
            pos = i - tok_start
            vocab = graph.tokens[pos]
            nodes[i] = _json_node(node_id=f"E_{vocab}_{pos}", feature=pos, layer="E", ctx_idx=pos,
                             feature_type="embedding", jsNodeId=f"E_{vocab}-{pos}", influence=infl)
        else:
            j = i - logit_start
            vocab, prob = int(graph.logit_tokens[j]), float(graph.logit_probs[j])
            layer = str(n_layers + 1)
            token = _process_token(graph.logit_strs[j]) if getattr(graph, "logit_strs", None) else str(vocab)
            nodes[i] = _json_node(node_id=f"{layer}_{vocab}_{n_pos - 1}", feature=vocab, layer=layer, ctx_idx=n_pos - 1,
                             feature_type="logit", token_prob=prob, is_target_logit=j == 0,
                             jsNodeId=f"L_{vocab}-{n_pos - 1}", clerp=f'Output "{token}" (p={prob:.3f})')
    feature_ids = {n["node_id"] for i, n in nodes.items() if i < n_f}
    for i, n in nodes.items():       # circuit-tracer's error id "0_{layer}_{pos}" can equal a layer-0 feature's
        if n_f <= i < tok_start and n["node_id"] in feature_ids:
            n["node_id"] += "_err"
    dst, src = edge_mask.nonzero(as_tuple=True)
    links = [{"source": nodes[s]["node_id"], "target": nodes[t]["node_id"], "weight": float(graph.adjacency[t, s])}
             for t, s in zip(dst.tolist(), src.tolist()) if s in nodes and t in nodes]
    used = {x for link in links for x in (link["source"], link["target"])}
    kept = [n for n in nodes.values() if n["node_id"] in used or n["feature_type"] in ("embedding", "logit")]
    meta = {"slug": slug, "scan": scan or f"interp-{graph.model_revision}", "transcoder_list": list(transcoder_list or []),
            "prompt_tokens": [_process_token(t) for t in graph.token_strs], "prompt": graph.prompt,
            "node_threshold": graph.config.node_threshold if node_threshold is None else node_threshold,
            "interp_model": graph.model, "interp_model_revision": graph.model_revision}
    return {"metadata": meta, "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "",
                                         "sg_pos": ""}, "nodes": kept, "links": links}


def _check(obj: Any, fields: dict[str, tuple[type, ...]], where: str, required: tuple[str, ...]) -> None:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected an object, got {type(obj).__name__}")
    for key in required:
        if key not in obj:
            raise DataError(f"{where}: missing field {key!r}")
    for key, types in fields.items():
        if key not in obj:
            continue
        value = obj[key]
        ok = isinstance(value, bool) if bool in types else isinstance(value, types) and not isinstance(value, bool)
        if not ok:
            raise DataError(f"{where}.{key}: expected {'/'.join(t.__name__ for t in types)}, got {value!r}")


def validate_neuronpedia(obj: Any) -> None:
    """Raise :class:`DataError` unless ``obj`` has the fields and types circuit-tracer's pydantic models require."""
    _check(obj, {"metadata": (dict,), "qParams": (dict,), "nodes": (list,), "links": (list,)}, "graph",
           ("metadata", "qParams", "nodes", "links"))
    _check(obj["metadata"], _META_FIELDS, "metadata", ("slug", "scan", "transcoder_list", "prompt_tokens", "prompt"))
    _check(obj["qParams"], _QPARAMS, "qParams", tuple(_QPARAMS))
    ids = set()
    for i, node in enumerate(obj["nodes"]):
        _check(node, NODE_FIELDS, f"nodes[{i}]", ("node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId"))
        if node["feature_type"] not in _TYPES:
            raise DataError(f"nodes[{i}].feature_type: {node['feature_type']!r} is not one of {_TYPES}")
        ids.add(node["node_id"])
    for i, link in enumerate(obj["links"]):
        _check(link, {"source": (str,), "target": (str,), "weight": (float, int)}, f"links[{i}]",
               ("source", "target", "weight"))
        for end in ("source", "target"):
            if link[end] not in ids:
                raise DataError(f"links[{i}].{end}: {link[end]!r} is not a node id of this graph")


def our_node_id(node: dict[str, Any]) -> str:
    from interp.nodes import node_id

    kind, pos = node["feature_type"], int(node["ctx_idx"])
    if kind == "cross layer transcoder":
        return node_id("tc", layer=int(node["layer"]), feature=int(node["node_id"].split("_")[1]), pos=pos)
    if kind == "mlp reconstruction error":
        return node_id("mlp", layer=int(node["layer"]), pos=pos)
    if kind == "embedding":
        return node_id("embed", pos=pos)
    return node_id("logits", feature=int(node["feature"]), pos=pos)


def from_neuronpedia(obj: dict[str, Any], *, name: str = "") -> Any:
    """A :class:`~interp.graph.CircuitGraph` with the JSON's nodes (our ids) and links (weights kept).

    Raises:
        DataError: the object does not validate (:func:`validate_neuronpedia`).
    """
    from interp.graph import CircuitGraph

    validate_neuronpedia(obj)
    meta = obj["metadata"]
    g = CircuitGraph(model=str(meta.get("interp_model", "")), model_revision=str(meta.get("interp_model_revision", "")),
                     name=name or meta.get("prompt", ""))
    ours = {}
    for node in obj["nodes"]:
        nid = our_node_id(node)
        ours[node["node_id"], node["feature_type"]] = nid
        is_logit = node["feature_type"] == "logit"
        score = node["token_prob"] if is_logit else node.get("influence")
        g.add_node(nid, score=None if score is None else float(score), source="prob" if is_logit else "influence")
        if node.get("activation") is not None:
            g.add_node(nid, score=float(node["activation"]), source="activation")
    by_id: dict[str, list[str]] = {}
    for (nid, _), ours_id in ours.items():
        by_id.setdefault(nid, []).append(ours_id)
    for link in obj["links"]:
        src, dst = by_id[link["source"]], by_id[link["target"]]
        if len(src) > 1 or len(dst) > 1:
            raise DataError(f"link {link['source']} -> {link['target']}: the node id names several nodes "
                            "(a layer-0 feature and an error node with circuit-tracer's shared id form)")
        g.add_edge(src[0], dst[0], weight=float(link["weight"]), method="attribution")
    return g
