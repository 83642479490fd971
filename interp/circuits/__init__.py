"""Circuits as edge sets: edge-level evaluation, selection and faithfulness curves (issue 16).

* ``edges`` — the model's graph (:func:`model_edges`), validation (:func:`canonical`), selection
  from an edge Result (:func:`edge_scores`, :func:`top_n`, :func:`above_threshold`, :func:`greedy`).
* ``evaluate`` — :func:`evaluate_circuits` (Result ``circuits.eval``) and the reusable :class:`Evaluator`:
  every edge outside the circuit patched, circuits as worlds of the one engine.
* ``curves`` — :func:`faithfulness_curve` (Result ``circuits.curve``: faithfulness against edges and
  nodes, random baselines, complements, area under the curve), :func:`smallest_circuit`, :func:`curve_figure`.
* ``acdc`` — :func:`acdc` (ACDC recursive edge pruning, batched through the Evaluator; Result
  ``patching.edges``), :func:`acdc_circuit`, :func:`acdc_membership` (Result ``circuits.acdc``).
* ``prune`` — :func:`edge_pruning` (Edge Pruning, Bhaskar et al. 2024: hard-concrete edge masks learned by
  gradient descent on the same receiver rewrite; Result ``patching.edges``), :func:`pruning_scores`.
"""

from __future__ import annotations

from interp.circuits.acdc import ACDC_METRICS, acdc, acdc_circuit, acdc_membership
from interp.circuits.curves import (CircuitChoice, CurveConfig, curve_auc, curve_figure, faithfulness_curve,
                                    smallest_circuit)
from interp.circuits.edges import (INPUTS, Edge, above_threshold, canonical, circuit_nodes, edge_scores, greedy,
                                   model_edges, top_n)
from interp.circuits.evaluate import EdgeEvalConfig, Evaluator, evaluate_circuits
from interp.circuits.prune import PruneConfig, edge_pruning, pruning_scores

__all__ = ["Edge", "INPUTS", "model_edges", "canonical", "circuit_nodes", "edge_scores", "top_n", "above_threshold",
           "greedy", "EdgeEvalConfig", "Evaluator", "evaluate_circuits", "CurveConfig", "CircuitChoice",
           "faithfulness_curve", "smallest_circuit", "curve_auc", "curve_figure", "acdc", "acdc_circuit",
           "acdc_membership", "ACDC_METRICS", "PruneConfig", "edge_pruning", "pruning_scores"]
