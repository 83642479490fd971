"""Steering axes and steering.

* :mod:`~interp.steering.axes` — :class:`Axis`; contrast / PCA / ICA / probe fitting on
  plain ``[n, d_model]`` tensors; save/load without pickle.
* :mod:`~interp.steering.steer` — :func:`steered` hook context, evaluations, sweeps.
* :mod:`~interp.steering.fv` — function vectors (Todd et al. 2024).
* :mod:`~interp.steering.lens` — logit / affine lens, decodability vs steerability.
* :mod:`~interp.steering.cylinder` — cylindrical analysis of difference vectors.
"""

from interp.steering.axes import (METHODS, Axis, axes_result, axis_from_store, contrast_axis, fit_axis, ica_axis, load_axis, pca_axis,
                                  probe_axis, probe_by_layer, projections_result, residual_activations,
                                  rows_from_store)
from interp.steering.steer import (accuracy, generate, next_token_probs, perplexity, probe_score, steer_factory,
                                   steered, sweep, target_prob)

__all__ = ["Axis", "METHODS", "contrast_axis", "pca_axis", "ica_axis", "probe_axis", "fit_axis", "load_axis",
           "residual_activations", "rows_from_store", "axis_from_store", "probe_by_layer", "axes_result", "projections_result",
           "steered", "steer_factory", "next_token_probs", "target_prob", "accuracy", "perplexity", "probe_score",
           "generate", "sweep"]
