"""Ground-truth toys: models whose circuit is known, to score discovery methods against (issue 16).

* :mod:`.induction` — a 2-layer attention-only Llama trained for induction on repeated random
  spans; its previous-token and induction heads are identified from attention patterns
  (:func:`.truth.induction_heads`). Committed checkpoint: ``data/toy/induction``.
* :mod:`.planted` — a GPT-2 with a four-head circuit set by hand (three copy heads and a mover).
* :mod:`.score` — runs exact patching, AtP, EAP, EAP-IG (inputs, activations), ACDC and head
  gating and scores each with ROC AUC over heads and edges (Result ``groundtruth.auc``).

Example:
    >>> from interp.groundtruth import planted_truth
    >>> planted_truth().nodes
    ('L0.H0', 'L0.H1', 'L0.H2', 'L1.H0')
"""

from interp.groundtruth.induction import InductionTrainConfig, RepeatedSpans, train_induction
from interp.groundtruth.planted import build_planted, planted_heads, planted_task, planted_truth
from interp.groundtruth.score import METHODS, auc, score_methods
from interp.groundtruth.truth import Truth, induction_heads, induction_task, induction_truth

__all__ = ["InductionTrainConfig", "RepeatedSpans", "train_induction", "build_planted", "planted_heads",
           "planted_task", "planted_truth", "METHODS", "auc", "score_methods", "Truth", "induction_heads",
           "induction_task", "induction_truth"]
