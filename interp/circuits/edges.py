"""Edges of a model's computational graph, circuits as edge sets, and circuit selection.

An *edge* is ``(src, dst, dst_input)`` with node ids of :mod:`interp.nodes`: senders are
``EMBED``, heads (``"L3.H1"``, output ``z W_O``) and MLPs (``"L3.MLP"``); receivers are the
``q``/``k``/``v`` inputs of heads of a later layer, the ``mlp`` input of an MLP of the same or a
later layer (attention precedes the MLP in a block; an MLP does not feed its own input), and
``LOGITS`` (``dst_input = "logits"``, the final residual stream). This is the graph of
:func:`interp.patching.edge_attribution_patching` (EAP, EAP-IG) and of EAP-IG / auto-circuit.

With grouped-query attention a ``k``/``v`` input exists per KV head: an edge into the k or v
input of any query head of a group *is* the edge into the group's shared input, so circuits are
kept in canonical form with ``dst`` = the group's first query head (:func:`canonical`).

Selection (from an edge Result's ``effect`` column, by ``|effect|``): :func:`top_n`,
:func:`above_threshold`, :func:`greedy` (EAP-IG's: grow from the logits, repeatedly adding the
highest-scoring edge whose receiver is already connected to ``LOGITS``).

Example:
    >>> from interp import load_model
    >>> model = load_model("toy:llama,n_layers=2")
    >>> len(model_edges(model)), model_edges(model)[0]
    (82, ('EMBED', 'L0.H0', 'q'))
    >>> canonical(model, [("L0.H1", "L1.H3", "k")])     # heads 2 and 3 share KV head 1
    [('L0.H1', 'L1.H2', 'k')]
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from interp.errors import ConfigError, DataError
from interp.nodes import node_id, parse_node_id

__all__ = ["Edge", "INPUTS", "model_edges", "canonical", "circuit_nodes", "edge_scores", "top_n", "above_threshold",
           "greedy"]

#: ``(src, dst, dst_input)``
Edge = tuple[str, str, str]
#: receiver inputs
INPUTS = ("q", "k", "v", "mlp", "logits")


def _shape(model: Any) -> tuple[int, int, int]:
    cfg = model.cfg
    n_heads = int(cfg.n_heads)
    n_kv = int(getattr(cfg, "n_key_value_heads", None) or n_heads)
    return int(cfg.n_layers), n_heads, n_kv


def senders(model: Any) -> list[str]:
    """Sender node ids in graph order: EMBED, then per layer its heads and its MLP."""
    n_layers, n_heads, _ = _shape(model)
    out = ["EMBED"]
    for l in range(n_layers):
        out += [node_id("head", layer=l, head=h) for h in range(n_heads)] + [node_id("mlp", layer=l)]
    return out


def receivers(model: Any) -> list[tuple[str, str]]:
    """Receiver inputs ``(dst, dst_input)`` in forward order; k/v once per KV group (its first query head)."""
    n_layers, n_heads, n_kv = _shape(model)
    rep = n_heads // n_kv
    out: list[tuple[str, str]] = []
    for l in range(n_layers):
        out += [(node_id("head", layer=l, head=h), "q") for h in range(n_heads)]
        out += [(node_id("head", layer=l, head=g * rep), "k") for g in range(n_kv)]
        out += [(node_id("head", layer=l, head=g * rep), "v") for g in range(n_kv)]
        out.append((node_id("mlp", layer=l), "mlp"))
    out.append(("LOGITS", "logits"))
    return out


def _layer(node: str, n_layers: int) -> int:
    return -1 if node == "EMBED" else n_layers if node == "LOGITS" else int(parse_node_id(node)["layer"])


def _problem(model: Any, edge: Any) -> str | None:
    """Why ``edge`` is not an edge of the model's graph, or None."""
    n_layers, n_heads, _ = _shape(model)
    if not (isinstance(edge, (tuple, list)) and len(edge) == 3 and all(isinstance(x, str) for x in edge)):
        return "not a (src, dst, dst_input) triple of strings"
    src, dst, inp = edge
    if inp not in INPUTS:
        return f"unknown dst_input {inp!r} (expected one of {', '.join(INPUTS)})"
    try:
        s, d = parse_node_id(src), parse_node_id(dst)
    except ConfigError as e:
        return str(e)
    if s["kind"] not in ("embed", "head", "mlp"):
        return f"sender {src!r} is not EMBED, a head or an MLP"
    want = {"q": "head", "k": "head", "v": "head", "mlp": "mlp", "logits": "logits"}[inp]
    if d["kind"] != want:
        return f"a {inp!r} input belongs to a {want} node, not {dst!r}"
    for n, p in ((src, s), (dst, d)):
        if p["kind"] in ("head", "mlp") and not 0 <= p["layer"] < n_layers:
            return f"{n}: layer out of range (the model has {n_layers} layers)"
        if p["kind"] == "head" and not 0 <= p["head"] < n_heads:
            return f"{n}: head out of range (layers have {n_heads} heads)"
    sl, dl = _layer(src, n_layers), _layer(dst, n_layers)
    if not (sl < dl or (inp == "mlp" and sl == dl and s["kind"] == "head")):
        return f"the receiver (layer {dl}) does not come after the sender (layer {sl})"
    return None


def canonical(model: Any, edges: Iterable[Any], *, what: str = "circuit") -> list[Edge]:
    """Validated edges in canonical form (k/v ``dst`` = the KV group's first query head), duplicates dropped.

    Raises:
        DataError: edges that are not in the model's graph, each named with the reason (at most 5 shown).
    """
    n_layers, n_heads, n_kv = _shape(model)
    rep = n_heads // n_kv
    out: dict[Edge, None] = {}
    bad: list[str] = []
    for e in edges:
        why = _problem(model, e)
        if why:
            bad.append(f"{tuple(e) if isinstance(e, (list, tuple)) else e!r}: {why}")
            continue
        src, dst, inp = e
        if inp in ("k", "v") and rep > 1:
            p = parse_node_id(dst)
            dst = node_id("head", layer=p["layer"], head=(p["head"] // rep) * rep)
        out[(src, dst, inp)] = None
    if bad:
        raise DataError(f"{what}: {len(bad)} edge(s) not in the graph of the model ({n_layers} layers, {n_heads} "
                        f"heads): " + "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""))
    return list(out)


def model_edges(model: Any) -> list[Edge]:
    """Every edge of the model's graph (canonical form), receivers in forward order."""
    n_layers = _shape(model)[0]
    src = senders(model)
    out = []
    for dst, inp in receivers(model):
        dl = _layer(dst, n_layers)
        for s in src:
            sl = _layer(s, n_layers)
            if sl < dl or (inp == "mlp" and sl == dl and s != node_id("mlp", layer=sl)):
                out.append((s, dst, inp))
    return out


def circuit_nodes(edges: Iterable[Edge]) -> list[str]:
    """Head and MLP nodes an edge set touches (EMBED and LOGITS not counted), sorted."""
    return sorted({n for e in edges for n in e[:2] if n not in ("EMBED", "LOGITS")})


# --------------------------------------------------------------------------- selection

def edge_scores(model: Any, edges: Any, *, metric: str | None = None) -> pd.DataFrame:
    """Canonical ``src, dst, dst_input, effect`` rows of an edge Result (``patching.edges``).

    Rows of a joint receiver set (path patching's ``joint``) are dropped; with several metrics in
    the table ``metric`` must name one; k/v rows repeated on every query head of a GQA group are
    counted once.

    Raises:
        DataError: no ``effect`` column, several metrics and none chosen, or edges not in the model's graph.
    """
    table = getattr(edges, "table", edges)
    if not isinstance(table, pd.DataFrame) or not {"src", "dst", "dst_input", "effect"} <= set(table.columns):
        raise DataError("edge scores: expected a patching.edges Result (columns src, dst, dst_input, effect)")
    t = table[table["dst_input"] != "joint"]
    if "metric" in t.columns:
        have = sorted(set(t["metric"]))
        if metric is None and len(have) > 1:
            raise DataError(f"edge scores: the Result holds several metrics {have}; pass metric=")
        if metric is not None:
            if metric not in have:
                raise DataError(f"edge scores: metric {metric!r} not in the Result (has {have})")
            t = t[t["metric"] == metric]
    if "first_in_group" in t.columns:
        t = t[t["first_in_group"].astype(bool) | ~t["dst_input"].isin(["k", "v"])]
    keys = canonical(model, zip(t["src"], t["dst"], t["dst_input"]), what="edge Result")
    if len(keys) != len(t):   # repeated k/v rows without first_in_group: keep the first
        t = t.assign(_key=[k for k in _canon_each(model, t)]).drop_duplicates("_key")
        keys = list(t["_key"])
    return pd.DataFrame({"src": [k[0] for k in keys], "dst": [k[1] for k in keys],
                         "dst_input": [k[2] for k in keys], "effect": t["effect"].astype(float).to_numpy()})


def _canon_each(model: Any, t: pd.DataFrame) -> list[Edge]:
    return [canonical(model, [e])[0] for e in zip(t["src"], t["dst"], t["dst_input"])]


def _ranked(scores: pd.DataFrame) -> list[tuple[float, int]]:
    mag = scores["effect"].abs().to_numpy()
    return sorted(((float(-m), i) for i, m in enumerate(mag)))


def _edges(scores: pd.DataFrame, idx: Sequence[int]) -> list[Edge]:
    return [(scores["src"].iat[i], scores["dst"].iat[i], scores["dst_input"].iat[i]) for i in idx]


def top_n(scores: pd.DataFrame, n: int) -> list[Edge]:
    """The ``n`` edges of largest ``|effect|`` (ties: table order)."""
    if n < 0:
        raise ConfigError(f"top_n: n must be >= 0, got {n}")
    return _edges(scores, [i for _, i in _ranked(scores)[:n]])


def above_threshold(scores: pd.DataFrame, threshold: float) -> list[Edge]:
    """Every edge with ``|effect| >= threshold``, largest first."""
    return _edges(scores, [i for m, i in _ranked(scores) if -m >= threshold])


def greedy(scores: pd.DataFrame, n: int) -> list[Edge]:
    """EAP-IG's greedy selection: grow from ``LOGITS``, adding the highest-``|effect|`` edge whose receiver is
    already connected (LOGITS, or a node with a chosen out-edge), until ``n`` edges (or none is left)."""
    if n < 0:
        raise ConfigError(f"greedy: n must be >= 0, got {n}")
    mag = scores["effect"].abs().to_numpy()
    into: dict[str, list[int]] = {}
    for i, d in enumerate(scores["dst"]):
        into.setdefault(d, []).append(i)
    heap: list[tuple[float, int]] = [(-float(mag[i]), i) for i in into.get("LOGITS", [])]
    heapq.heapify(heap)
    connected = {"LOGITS"}
    chosen: list[int] = []
    while heap and len(chosen) < n:
        _, i = heapq.heappop(heap)
        chosen.append(i)
        src = scores["src"].iat[i]
        if src not in connected:
            connected.add(src)
            for j in into.get(src, []):
                heapq.heappush(heap, (-float(mag[j]), j))
    return _edges(scores, chosen)
