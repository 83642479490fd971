"""Sparse autoencoders, a thin adapter over SAE-Lens (METHODS.md section 6).

Modules, one concern each:

* :mod:`interp.sae.corpus` — offline docstring corpus with provenance and licences, tokenized and split.
* :mod:`interp.sae.data` — capture activations once, flat safetensors shards, shuffled batches
  (also from ``interp.cache`` stores).
* :mod:`interp.sae.train` — SAE-Lens training (standard, topk, batchtopk, jumprelu) from stored
  activations or with the model in the loop.
* :mod:`interp.sae.evaluate` — held-out L0, explained variance, MSE, CE loss recovered, KL, dead/dense.
* :mod:`interp.sae.features` — top examples, histograms, logit effects, DFA to heads and sources.
* :mod:`interp.sae.dashboard` — self-contained HTML page per SAE.
* :mod:`interp.sae.io` — SAE-Lens format save/load, pretrained releases (fail fast offline).

Example:
    >>> from interp.sae import SAETrainConfig, train_sae, evaluate_sae, load_sae

Importing ``interp.sae`` does no work (and does not import sae_lens): names resolve on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CorpusConfig": "corpus", "build_corpus": "corpus", "tokenize_corpus": "corpus", "TokenSplit": "corpus",
    "capture_activations": "data", "cache_activations": "data", "ActivationShards": "data",
    "ActivationBatches": "data", "site_width": "data",
    "SAETrainConfig": "train", "TrainedSAE": "train", "train_sae": "train", "train_streaming": "train",
    "make_training_sae": "train",
    "SAEEvalConfig": "evaluate", "evaluate_sae": "evaluate",
    "FeatureConfig": "features", "FeatureAnalysis": "features", "analyze_features": "features",
    "logit_effects": "features", "head_contributions": "features", "source_contributions": "features",
    "direct_feature_attribution": "features", "dfa_sources": "features",
    "write_dashboard": "dashboard", "render_dashboard": "dashboard",
    "save_sae": "io", "load_sae": "io", "load_pretrained": "io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'interp.sae' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"interp.sae.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
