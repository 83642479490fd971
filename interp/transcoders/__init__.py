"""Transcoders (MLP input -> MLP output, sparse features) and attribution graphs (METHODS.md section 12).

* :mod:`interp.transcoders.train` — per-layer training from an activation store, resumable, SAE-Lens format.
* :mod:`interp.transcoders.io` — loading with model identity / layer layout checks.
* :mod:`interp.transcoders.evaluate` — L0, explained variance, replacement-model next-token loss.
* :mod:`interp.transcoders.attribution` — local replacement model, attribution graph, pruning, scores.
* :mod:`interp.transcoders.graph_json` — Neuronpedia graph JSON out, CircuitGraph in.
* :mod:`interp.transcoders.interventions` — scale a feature, compare the logit change with the graph's prediction.

Importing ``interp.transcoders`` does no work: names resolve on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TranscoderTrainConfig": "train", "TrainedLayer": "train", "train_transcoders": "train",
    "transcoder_home": "train", "train_layer": "train", "encode_pre": "train", "encode_tokens": "train",
    "sink_positions": "train", "calibrate_thresholds": "train",
    "load_transcoders": "io", "check_transcoder_folder": "io",
    "evaluate_transcoders": "evaluate", "replaced_mlps": "evaluate",
    "AttributionConfig": "attribution", "Attribution": "attribution", "attribute": "attribution",
    "MAX_PROMPT_TOKENS": "attribution",
    "intervention_agreement": "interventions", "predicted_logit_change": "interventions",
    "observed_logit_change": "interventions",
    "to_neuronpedia": "graph_json", "from_neuronpedia": "graph_json",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'interp.transcoders' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"interp.transcoders.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
