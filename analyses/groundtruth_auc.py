"""Every discovery method scored against the two ground-truth toys (README "Ground truth" table).

    python analyses/groundtruth_auc.py            # ~10 min on a quiet 2-core CPU (ACDC sweep and CHG dominate)

Prints ROC AUC over heads (node) and over edges (edge) per method and toy; the tests assert the parts that
must hold (tests/test_groundtruth.py).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from interp import load_model
from interp.gating import CHGConfig
from interp.groundtruth.induction import InductionTrainConfig
from interp.groundtruth.planted import build_planted, planted_task, planted_truth
from interp.groundtruth.score import METHODS, score_methods
from interp.groundtruth.truth import induction_heads, induction_task, induction_truth

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT = 20_003   # the tests' held-out seed (tests/test_groundtruth.py)


def main() -> None:
    induction = load_model(str(ROOT / "data" / "toy" / "induction"), device="cpu")
    planted = load_model(str(build_planted(Path(tempfile.mkdtemp()) / "planted")), device="cpu")
    cfg = InductionTrainConfig()
    toys = (("induction", induction, induction_task(cfg.data, 24, seed=HELD_OUT),
             induction_truth(induction_heads(induction, cfg.data))),
            ("planted", planted, planted_task(16, seed=1), planted_truth()))
    for name, model, ds, truth in toys:
        res = score_methods(model, ds, truth, toy=name, methods=METHODS,
                            chg_config=CHGConfig(steps=40, n_masks=1, progress=False))
        print(res.table[["toy", "method", "level", "auc", "n_true", "n_total"]].to_string(index=False), flush=True)


if __name__ == "__main__":
    main()
