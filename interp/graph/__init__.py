"""Circuit graphs: one networkx graph holding the evidence of every analysis.

* :class:`CircuitGraph` (``core``) — typed nodes/edges with evidence, one model per graph.
* builders (``builders``) — ``graph.add_result(result)`` for patching, gating, sinks,
  massive activations, SAE and steering Results.
* operations (``ops``) — :func:`prune`, :func:`merge`, :func:`compare`,
  :func:`faithfulness`, :func:`random_circuit`, :func:`random_baseline`.
* edge-level evaluation (:mod:`interp.circuits`, re-exported here) — :func:`evaluate_circuits` runs a circuit given
  as edges with every other edge patched; :func:`faithfulness_curve` sweeps selected circuits by size.
  :func:`faithfulness` stays the node-level (head/MLP ablation) option.
* exports (``io``) — JSON node-link, GraphML, GEXF; :func:`load_graph`.
* ``graph.figure()`` (paper figure) and ``graph.to_html(path)`` / ``graph.show()`` (explorer).

Example:
    >>> from interp.graph import CircuitGraph, from_results
    >>> g = from_results([], name="empty")
    >>> len(g)
    0
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from interp.circuits import evaluate_circuits, faithfulness_curve
from interp.graph.builders import BUILDERS, add_result
from interp.graph.core import EDGE_ATTRS, NODE_ATTRS, CircuitGraph
from interp.graph.io import graphs_equal, load_graph, to_gexf, to_graphml, to_json
from interp.graph.ops import (FaithfulnessConfig, circuit_nodes, compare, faithfulness, merge, prune, random_baseline,
                              random_circuit)

__all__ = ["CircuitGraph", "NODE_ATTRS", "EDGE_ATTRS", "BUILDERS", "add_result", "from_results", "prune", "merge",
           "compare", "faithfulness", "FaithfulnessConfig", "random_circuit", "random_baseline", "circuit_nodes",
           "load_graph", "to_json", "to_graphml", "to_gexf", "graphs_equal", "evaluate_circuits", "faithfulness_curve"]


def from_results(results: Iterable[Any], *, name: str = "", model: str = "") -> CircuitGraph:
    """A graph built from several Results (each through the builder of its kind)."""
    g = CircuitGraph(name=name, model=model)
    for r in results:
        g.add_result(r)
    return g
