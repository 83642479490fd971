"""Graph operations: prune, merge, compare, and circuit faithfulness under mean ablation.

Example:
    >>> from interp.graph import CircuitGraph
    >>> a = CircuitGraph(); a.add_node("L0.H0", score=2.0); a.add_node("L0.H1", score=0.1)
    >>> prune(a, node_threshold=1.0).nodes
    ['L0.H0']
    >>> compare(a, prune(a, top_k_nodes=1)).table.query("cls == 'head'").jaccard.item()
    0.5
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from interp.errors import ConfigError, DataError
from interp.graph.core import CircuitGraph
from interp.nodes import node_id

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["prune", "merge", "compare", "FaithfulnessConfig", "faithfulness", "random_circuit", "random_baseline",
           "circuit_nodes"]

_ALWAYS = ("EMBED", "LOGITS")


# --------------------------------------------------------------------------- prune
def prune(graph: CircuitGraph, *, node_threshold: float | None = None, top_k_nodes: int | None = None,
          edge_threshold: float | None = None, top_k_edges: int | None = None, kinds: Iterable[str] | None = None,
          keep_isolated: bool | None = None) -> CircuitGraph:
    """A new graph with the strongest nodes and/or edges (by ``|score|`` / ``|weight|``).

    Args:
        node_threshold: keep nodes with ``|score| >= node_threshold``.
        top_k_nodes: keep the ``k`` nodes with the largest ``|score|`` (applied after the threshold;
            ``EMBED``/``LOGITS`` are always kept and not counted).
        edge_threshold, top_k_edges: the same for edges (``|weight|``); an edge survives only
            if both its ends survive.
        kinds: node kinds the node criteria apply to (default all); other kinds are kept.
        keep_isolated: keep nodes left without edges; default True unless an edge criterion is given.

    Returns:
        a new :class:`CircuitGraph` (the input is not changed).
    """
    for name, v in (("top_k_nodes", top_k_nodes), ("top_k_edges", top_k_edges)):
        if v is not None and v < 0:
            raise ConfigError(f"{name} must be >= 0, got {v}")
    g = graph.nx
    kinds = set(kinds) if kinds is not None else None
    cand = [n for n, d in g.nodes(data=True) if n not in _ALWAYS and (kinds is None or d["kind"] in kinds)]
    keep = set(g.nodes) - set(cand)
    if node_threshold is not None:
        cand = [n for n in cand if abs(g.nodes[n]["score"]) >= node_threshold]
    if top_k_nodes is not None:
        cand = sorted(cand, key=lambda n: -abs(g.nodes[n]["score"]))[:top_k_nodes]
    keep |= set(cand)
    edges = [(u, v) for u, v in g.edges if u in keep and v in keep]
    if edge_threshold is not None:
        edges = [(u, v) for u, v in edges if abs(g.edges[u, v]["weight"]) >= edge_threshold]
    if top_k_edges is not None:
        edges = sorted(edges, key=lambda e: -abs(g.edges[e]["weight"]))[:top_k_edges]
    if keep_isolated is None:
        keep_isolated = edge_threshold is None and top_k_edges is None
    if not keep_isolated:
        touched = {n for e in edges for n in e}
        keep = {n for n in keep if n in touched}
    out = g.__class__()
    out.graph.update(copy.deepcopy(g.graph))
    out.add_nodes_from((n, copy.deepcopy(g.nodes[n])) for n in g.nodes if n in keep)
    edge_set = set(edges)
    out.add_edges_from((u, v, copy.deepcopy(g.edges[u, v])) for u, v in g.edges if (u, v) in edge_set)
    return CircuitGraph._from_nx(out)


# --------------------------------------------------------------------------- merge
def _union_list(a: list, b: list) -> list:
    out = list(a)
    for x in b:
        if x not in out:
            out.append(x)
    return out


def merge(a: CircuitGraph, b: CircuitGraph, *, name: str = "") -> CircuitGraph:
    """Union of two graphs of the same model: nodes, edges, roles, flags, scores and evidence.

    Where both give a primary ``score`` / ``weight``, ``a``'s is kept (both stay in
    ``scores`` / ``weights``).

    Raises:
        DataError: the graphs describe different models or tokenizers.
    """
    ma, mb = a.meta, b.meta
    bad = [f"{k}: {ma[k]!r} vs {mb[k]!r}" for k in ("model", "model_revision", "tokenizer")
           if ma[k] and mb[k] and ma[k] != mb[k]]
    if bad:
        raise DataError(f"cannot merge graphs of different models ({a.name!r} and {b.name!r}): " + "; ".join(bad))
    out = a.copy()
    g = out.nx
    for k in ("model", "model_revision", "tokenizer"):
        g.graph[k] = ma[k] or mb[k]
    g.graph["name"] = name or (f"{ma['name']}+{mb['name']}" if ma["name"] or mb["name"] else "")
    g.graph["results"] = _union_list(g.graph["results"], b.results)
    for layer, info in b.layers.items():
        mine = g.graph["layers"].setdefault(layer, {"flags": [], "evidence": []})
        mine["flags"] = _union_list(mine["flags"], info["flags"])
        mine["evidence"] = _union_list(mine["evidence"], copy.deepcopy(info["evidence"]))
    for n, d in b.nx.nodes(data=True):
        d = copy.deepcopy(d)
        if n not in g:
            g.add_node(n, **d)
            continue
        mine = g.nodes[n]
        if not mine["scores"] and d["scores"]:
            mine["score"] = d["score"]
        mine["scores"] = {**d["scores"], **mine["scores"]}
        for key in ("roles", "flags", "evidence"):
            mine[key] = _union_list(mine[key], d[key])
    for u, v, d in b.nx.edges(data=True):
        d = copy.deepcopy(d)
        if not g.has_edge(u, v):
            g.add_edge(u, v, **d)
            continue
        mine = g.edges[u, v]
        mine["weights"] = {**d["weights"], **mine["weights"]}
        mine["evidence"] = _union_list(mine["evidence"], d["evidence"])
    return out


# --------------------------------------------------------------------------- compare
def _overlap(sa: set, sb: set) -> dict[str, Any]:
    inter, union = len(sa & sb), len(sa | sb)
    return {"n_a": len(sa), "n_b": len(sb), "intersection": inter, "union": union,
            "jaccard": inter / union if union else math.nan,
            "overlap": inter / min(len(sa), len(sb)) if min(len(sa), len(sb)) else math.nan}


def compare(a: CircuitGraph, b: CircuitGraph, *, ignore: Iterable[str] = _ALWAYS) -> Any:
    """Node and edge overlap of two circuits, overall and per node class.

    Jaccard = ``|A & B| / |A | B|``; overlap coefficient = ``|A & B| / min(|A|, |B|)``
    (NaN when undefined). ``EMBED``/``LOGITS`` are ignored by default (every circuit has them).

    Returns:
        Result ``graph.compare`` with rows ``what`` (nodes | edges), ``cls`` (all, head,
        mlp, sae, ...), n_a, n_b, intersection, union, jaccard, overlap, and the shared items.
    """
    from interp.results import Result, RunMeta

    ignore = set(ignore)
    na = {n: d["kind"] for n, d in a.nx.nodes(data=True) if n not in ignore}
    nb = {n: d["kind"] for n, d in b.nx.nodes(data=True) if n not in ignore}
    rows = [{"what": "nodes", "cls": "all", **_overlap(set(na), set(nb)), "shared": sorted(set(na) & set(nb))}]
    for cls in sorted(set(na.values()) | set(nb.values())):
        sa = {n for n, k in na.items() if k == cls}
        sb = {n for n, k in nb.items() if k == cls}
        rows.append({"what": "nodes", "cls": cls, **_overlap(sa, sb), "shared": sorted(sa & sb)})
    ea = {e for e in a.nx.edges if not (set(e) & ignore)}
    eb = {e for e in b.nx.edges if not (set(e) & ignore)}
    rows.append({"what": "edges", "cls": "all", **_overlap(ea, eb), "shared": sorted(f"{u}->{v}" for u, v in ea & eb)})
    ea2, eb2 = set(a.nx.edges), set(b.nx.edges)
    rows.append({"what": "edges", "cls": "with_embed_logits", **_overlap(ea2, eb2),
                 "shared": sorted(f"{u}->{v}" for u, v in ea2 & eb2)})
    meta = RunMeta(model=a.meta["model"], model_revision=a.meta["model_revision"], tokenizer=a.meta["tokenizer"],
                   dataset=f"{a.name} vs {b.name}", extra={"a": a.name, "b": b.name})
    return Result("graph.compare", pd.DataFrame(rows), meta, name=f"{a.name}_vs_{b.name}" if a.name or b.name else "")


# --------------------------------------------------------------------------- faithfulness
@dataclass(frozen=True, kw_only=True)
class FaithfulnessConfig:
    """How circuits are evaluated.

    Attributes:
        reference: the ablation distribution: the ``"corrupted"`` prompts of the dataset
            (e.g. IOI's ABC prompts, as Wang et al.) or the ``"clean"`` ones.
        ablation: ``"mean"``: nodes outside the circuit get the mean activation over the
            reference prompts, per position, taken within groups of prompts that share
            ``meta[group_by]`` (Wang et al.'s template-wise means; all prompts form one group
            when the dataset has no such key); ``"paired"``: each prompt gets its own
            reference prompt's activation (resample ablation with the aligned corrupted
            prompt, as in EAP/ACDC faithfulness).
        group_by: dataset meta key defining the mean-ablation groups (``None``: one group).
        ablate_mlps: also ablate MLPs outside the circuit (else every MLP is kept).
        batch_size: prompts per forward pass.
    """

    reference: str = "corrupted"
    ablation: str = "mean"
    group_by: str | None = "template"
    ablate_mlps: bool = True
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.reference not in ("corrupted", "clean"):
            raise ConfigError(f"reference must be 'corrupted' or 'clean', got {self.reference!r}")
        if self.ablation not in ("mean", "paired"):
            raise ConfigError(f"ablation must be 'mean' or 'paired', got {self.ablation!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")


def circuit_nodes(circuit: CircuitGraph | Iterable[str]) -> tuple[set[tuple[int, int]], set[int]]:
    """``({(layer, head)}, {mlp layers})`` of a circuit graph or an iterable of node ids."""
    from interp.nodes import parse_node_id

    ids = circuit.nodes if isinstance(circuit, CircuitGraph) else list(circuit)
    heads, mlps = set(), set()
    for n in ids:
        p = parse_node_id(n)
        if p["kind"] == "head":
            heads.add((p["layer"], p["head"]))
        elif p["kind"] == "mlp":
            mlps.add(p["layer"])
    return heads, mlps


def _ablation_values(model: Model, ref: Any, groups: list[Any], width: int, cfg: FaithfulnessConfig) -> dict[Any, Any]:
    """Per clean prompt, the value each ``z`` / ``mlp_out`` site is ablated to: ``{site: [batch, width, ...]}``.

    ``groups[i]`` is prompt i's group label (mean ablation) ; the reference prompt i is
    aligned with clean prompt i (paired ablation).
    """
    import torch

    from interp.hooks import run_capture
    from interp.sites import Site

    L = model.cfg.n_layers
    sites = [Site("z", l) for l in range(L)] + [Site("mlp_out", l) for l in range(L)]
    acts: dict[Any, list[Any]] = {s: [] for s in sites}
    with torch.inference_mode():
        for i in range(0, len(ref), cfg.batch_size):
            got = run_capture(model, ref.tokens[i:i + cfg.batch_size], sites, stop_early=False)
            for s in sites:
                acts[s].append(got[s])
    n, ref_w = len(ref), int(ref.tokens.shape[1])
    mask = (torch.arange(ref_w, device=ref.tokens.device)[None, :] < ref.lengths[:, None])    # [n, ref_w]
    out = {}
    for s in sites:
        a = torch.cat(acts[s])                                            # [n, ref_w, ...]
        m = mask.view(n, ref_w, *([1] * (a.dim() - 2))).to(a.dtype)
        overall = (a * m).sum((0, 1)) / m.sum()                           # mean over every real token
        if cfg.ablation == "paired":
            vals = torch.where(m.bool(), a, overall)
        else:
            vals = torch.empty_like(a)
            for label in dict.fromkeys(groups):
                idx = torch.tensor([i for i, g in enumerate(groups) if g == label], device=a.device)
                tot, cnt = (a[idx] * m[idx]).sum(0), m[idx].sum(0)            # [ref_w, ...]
                vals[idx] = torch.where(cnt > 0, tot / cnt.clamp(min=1), overall)
        if ref_w < width:   # positions no reference prompt reaches: the overall mean
            vals = torch.cat([vals, overall.expand(n, width - ref_w, *overall.shape).clone()], 1)
        out[s] = vals[:, :width]
    return out


def _metric(model: Model, batch: Any, values: dict[Any, Any] | None, keep_heads: set, keep_mlps: set | None,
            batch_size: int) -> float:
    """Mean logit difference (answer - counterfactual) at the last token, with non-kept nodes ablated to ``values``.

    Runs on :mod:`interp.engine`: per batch of prompts one world whose every non-kept head (``z``)
    and MLP (``mlp_out``) restores its ablation value; only the answer and counterfactual
    columns are unembedded.
    """
    import torch

    from interp import metrics
    from interp.engine import Intervention, World, run
    from interp.sites import Site

    L, H = model.cfg.n_layers, model.cfg.n_heads
    tb = batch.clean
    total, n = 0.0, 0
    for i in range(0, len(tb), batch_size):
        j = i + batch_size
        ivs = []
        if values is not None:
            for l in range(L):
                ivs += [Intervention("restore", Site("z", l, h), values[Site("z", l)][i:j])
                        for h in range(H) if (l, h) not in keep_heads]
                if keep_mlps is not None and l not in keep_mlps:
                    ivs.append(Intervention("restore", Site("mlp_out", l), values[Site("mlp_out", l)][i:j]))
        cols = torch.stack([batch.answer_ids[i:j], batch.counter_ids[i:j]], 1)
        with torch.inference_mode():
            two = run(model, tb.tokens[i:j], [World(tuple(ivs))], positions=tb.lengths[i:j] - 1, columns=cols).worlds[0]
        first, second = torch.zeros(len(two), dtype=torch.long), torch.ones(len(two), dtype=torch.long)
        total += float(metrics.logit_diff(two, first, second).sum())
        n += len(two)
    return total / n


def faithfulness(model: Model, circuits: CircuitGraph | Iterable[str] | Mapping[str, CircuitGraph | Iterable[str]],
                 data: Any, *, config: FaithfulnessConfig = FaithfulnessConfig()) -> Any:
    """Faithfulness of circuits: the logit difference with only the circuit kept, as a fraction of the full model's.

    Every head not in the circuit is ablated through its ``z`` (head output before W_O)
    and, with ``config.ablate_mlps``, every MLP not in the circuit through its
    ``mlp_out``: to its mean over the reference prompts, per position and per group of
    prompts sharing a template (``config.ablation="mean"``), or to the aligned reference
    prompt's own activation (``"paired"``). Embeddings and the unembedding are always kept;
    edges are not ablated (node-level faithfulness).

    Args:
        model: a model from :func:`interp.load_model`.
        circuits: one circuit (graph or node ids) or ``{name: circuit}``.
        data: a :class:`~interp.datasets.TaskDataset` (tokenized here) or a ``TaskBatch``
            with answers and counterfactuals.

    Returns:
        Result ``graph.faithfulness``: one row per circuit with n_heads, n_mlps, n_edges,
        ld_full, ld_circuit, ld_ablated (every head, and MLP if ablated, ablated),
        faithfulness = ld_circuit / ld_full and normalized =
        (ld_circuit - ld_ablated) / (ld_full - ld_ablated).

    Example:
        >>> from interp.datasets import TaskDataset
        >>> ds = TaskDataset("toy", ("cat on", "a dog to", "Al in a"), ("cow on", "a dog at", "Ed in a"),
        ...                  ("x", "y", "z"), ("q", "w", "e"))
        >>> full = [f"L{l}.H{h}" for l in range(2) for h in range(4)] + ["L0.MLP", "L1.MLP"]
        >>> t = faithfulness(model, {"full": full, "empty": []}, ds).table
        >>> t[["circuit", "n_heads", "faithfulness"]].round(3)   # the whole model keeps all of it
          circuit  n_heads  faithfulness
        0    full        8           1.0
        1   empty        0           0.4
    """
    from interp.results import run_meta
    from interp.arch import require_arch

    require_arch(model, method="faithfulness (right-padded batches)", causal=True)
    batch = data.tokenize(model, same_length=False) if hasattr(data, "tokenize") else data
    if batch.answer_ids is None or batch.counter_ids is None:
        raise DataError("faithfulness needs a dataset with answers and counterfactuals (logit difference)")
    ref = batch.corrupted if config.reference == "corrupted" else batch.clean
    if ref is None:
        raise DataError("reference='corrupted' but the dataset has no corrupted prompts; use reference='clean'")
    if isinstance(circuits, CircuitGraph) or not isinstance(circuits, Mapping):
        circuits = {getattr(circuits, "name", "") or "circuit": circuits}
    ds = getattr(batch, "dataset", None)
    metas = list(getattr(ds, "meta", ()) or ())
    key = config.group_by
    groups = [m.get(key) for m in metas] if key and len(metas) == len(batch) and all(key in m for m in metas) \
        else [0] * len(batch)
    values = _ablation_values(model, ref, groups, int(batch.clean.tokens.shape[1]), config)
    bs = config.batch_size
    full = _metric(model, batch, None, set(), None, bs)
    ablated = _metric(model, batch, values, set(), set() if config.ablate_mlps else None, bs)
    rows = []
    L, H = model.cfg.n_layers, model.cfg.n_heads
    for name, circ in circuits.items():
        heads, mlps = circuit_nodes(circ)
        bad = [(l, h) for l, h in heads if not (0 <= l < L and 0 <= h < H)] + [(l, -1) for l in mlps if not 0 <= l < L]
        if bad:
            raise DataError(f"circuit {name!r} has nodes outside the model ({L} layers, {H} heads): {bad[:5]}")
        value = _metric(model, batch, values, heads, mlps if config.ablate_mlps else None, bs)
        n_edges = circ.nx.number_of_edges() if isinstance(circ, CircuitGraph) else 0
        rows.append({"circuit": str(name), "n_heads": len(heads), "n_mlps": len(mlps), "n_edges": n_edges,
                     "ld_full": full, "ld_circuit": value, "ld_ablated": ablated,
                     "faithfulness": value / full if full else math.nan,
                     "normalized": (value - ablated) / (full - ablated) if full != ablated else math.nan})
    meta = run_meta(model, dataset=getattr(ds, "name", ""), data=list(getattr(ds, "clean", ())) or None,
                    config=config, groups=len(set(map(str, groups))))
    return _result("graph.faithfulness", pd.DataFrame(rows), meta)


def _result(kind: str, table: pd.DataFrame, meta: Any, name: str = "") -> Any:
    from interp.results import Result

    return Result(kind, table, meta, name=name)


def random_circuit(model: Model, *, n_heads: int, n_mlps: int = 0, seed: int = 0,
                   name: str = "random") -> CircuitGraph:
    """A circuit of ``n_heads`` heads and ``n_mlps`` MLPs drawn uniformly from the model (seeded)."""
    import torch

    L, H = model.cfg.n_layers, model.cfg.n_heads
    if not (0 <= n_heads <= L * H and 0 <= n_mlps <= L):
        raise ConfigError(f"random circuit of {n_heads} heads / {n_mlps} MLPs does not fit a model with "
                          f"{L * H} heads and {L} MLPs")
    gen = torch.Generator().manual_seed(seed)
    heads = torch.randperm(L * H, generator=gen)[:n_heads].tolist()
    mlps = torch.randperm(L, generator=gen)[:n_mlps].tolist()
    info = getattr(model, "interp_info", None)
    g = CircuitGraph(model=info.spec if info else "", model_revision=info.revision if info else "", name=name)
    for i in sorted(heads):
        g.add_node(node_id("head", i // H, head=i % H))
    for l in sorted(mlps):
        g.add_node(node_id("mlp", l))
    return g


def random_baseline(model: Model, circuit: CircuitGraph | Iterable[str], data: Any, *, n_samples: int = 5,
                    seed: int = 0, config: FaithfulnessConfig = FaithfulnessConfig()) -> Any:
    """Faithfulness of the circuit and of ``n_samples`` random circuits of the same size (heads, MLPs).

    Returns:
        Result ``graph.faithfulness`` (name ``random_baseline``): the circuit's row first,
        then ``random0``, ``random1``, ...
    """
    heads, mlps = circuit_nodes(circuit)
    circuits: dict[str, Any] = {getattr(circuit, "name", "") or "circuit": circuit}
    for i in range(n_samples):
        circuits[f"random{i}"] = random_circuit(model, n_heads=len(heads), n_mlps=len(mlps), seed=seed + i,
                                                name=f"random{i}")
    res = faithfulness(model, circuits, data, config=config)
    return _result(res.kind, res.table, dataclasses.replace(res.meta, seed=seed), name="random_baseline")
