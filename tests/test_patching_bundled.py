"""Patching on the bundled SmolLM2 with IOI (kept under ~40 s on a free 2-core CPU)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.bundled


@pytest.fixture(scope="module")
def ioi(smollm2):
    from interp.datasets.ioi import ioi_dataset

    return ioi_dataset(smollm2, n=32, seed=0)


def test_ioi_logit_difference_positive_for_90_percent(smollm2, ioi):
    from interp.patching.exact import run_baseline
    from interp.patching.metrics import prepare_pairs

    base, _ = run_baseline(smollm2, prepare_pairs(smollm2, ioi), [], with_logp=False)
    assert float((base.ld_clean > 0).float().mean()) >= 0.9
    assert base.mean_clean > base.mean_corr + 1.0  # the ABC corruption removes the IO preference


def test_ioi_patching_whole_input_restores_clean_and_atp_runs_in_two_passes(smollm2, ioi):
    from interp.patching import AttributionConfig, PatchConfig, activation_patching, attribution_patching

    ds = ioi.subset(slice(0, 8))
    full = activation_patching(smollm2, ds, PatchConfig(component="resid_pre", positions="all", layers=(0,),
                                                         metrics=("logit_diff_norm",)))
    assert full.table["value"].item() == pytest.approx(1.0, abs=1e-4)
    atp = attribution_patching(smollm2, ds, AttributionConfig(components=("z",)))
    assert atp.meta.extra["forward_passes"] + atp.meta.extra["backward_passes"] == 2
    assert len(atp.table) == smollm2.cfg.n_layers * smollm2.cfg.n_heads
    assert torch.isfinite(torch.tensor(atp.table["value"].to_numpy())).all()
