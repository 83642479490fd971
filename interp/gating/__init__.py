"""Head gating: ablations, causal head gating (CHG), contrastive CHG and their validation.

* :mod:`interp.gating.ablation` — zero / mean / resample ablation contexts for heads, MLPs
  and positions; :func:`evaluate` a metric under ablations.
* :mod:`interp.gating.chg` — causal head gating (Nam et al. 2025), taxonomy and scores; stages
  stop when the roles are stable for a patience window.
* :mod:`interp.gating.contrastive` — contrastive CHG (keep on positives, remove on negatives).
* :mod:`interp.gating.gates` — gate hooks on heads' `z`, frozen model, last-token log-probs.
* :mod:`interp.gating.validate` — facilitating vs random heads, interfering heads,
  Spearman agreement with exact head patching, disagreements and a verdict.

Example:
    >>> from interp import load_model
    >>> from interp.datasets import TaskDataset
    >>> from interp.gating import CHGConfig, causal_head_gating
    >>> model = load_model("toy:llama")
    >>> ds = TaskDataset("copy", clean=("abcabc", "xyzxyz"), answers=("a", "x"))
    >>> res = causal_head_gating(model, ds, config=CHGConfig(max_steps=5, n_masks=2, progress=False))
    >>> res.table.shape   # one row per head: 2 layers x 4 heads
    (8, 13)
    >>> res.table.node.tolist()[:3], set(res.table.role) <= {"facilitating", "interfering", "irrelevant"}
    (['L0.H0', 'L0.H1', 'L0.H2'], True)
"""

from __future__ import annotations

from interp.gating.ablation import (Ablation, ablating, ablation_table, answer_logprob, default_metric, evaluate,
                                    head_sites, logit_diff, mean_values, resample_indices)
from interp.gating.chg import (CHGConfig, CHGFit, GateData, StageRun, causal_head_gating, chg_result, fit_chg,
                               fit_stage, gate_data, gated, head_roles, init_gate_logits)
from interp.gating.contrastive import contrastive_head_gating

__all__ = ["Ablation", "ablating", "ablation_table", "answer_logprob", "default_metric", "evaluate", "head_sites",
           "logit_diff", "mean_values", "resample_indices",
           "CHGConfig", "CHGFit", "GateData", "StageRun", "causal_head_gating", "chg_result", "contrastive_head_gating",
           "fit_chg", "fit_stage", "gate_data", "gated", "head_roles", "init_gate_logits",
           "validate_chg", "head_patching", "ValidationConfig", "disagreements", "summary_lines"]


def __getattr__(name: str):
    if name in ("validate_chg", "head_patching", "ValidationConfig", "disagreements", "summary_lines"):
        from interp.gating import validate

        return getattr(validate, name)
    raise AttributeError(f"module 'interp.gating' has no attribute {name!r}")
