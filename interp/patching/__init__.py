"""Activation, path and attribution patching (METHODS.md section 2).

* :func:`activation_patching` (:mod:`.exact`) — one generic, batched sweep over sites
  (resid/attn_out/mlp_out per layer and position, head outputs per layer and head),
  denoising and noising; many patches per forward pass.
* :func:`path_patching` (:mod:`.path`) — sender heads to receivers (q/k/v of later
  heads, or the logits), Wang et al.
* :func:`attribution_patching` and :func:`edge_attribution_patching`
  (:mod:`.attribution`) — AtP for all nodes, EAP and EAP-IG for edges, with agreement
  against exact patching.
* :mod:`.metrics` — logit difference, normalised, probability, KL.

Every function returns :class:`~interp.results.Result` tables: ``patching.nodes``
(method, direction, metric, component, layer, head, pos, node, value) or
``patching.edges`` (method, src, dst, dst_input, value).
"""

from interp.patching.attribution import (AttributionConfig, agreement, attribution_patching,
                                         edge_attribution_patching)
from interp.patching.exact import PatchConfig, activation_patching
from interp.patching.metrics import METRICS
from interp.patching.path import PathConfig, path_patching

__all__ = ["PatchConfig", "activation_patching", "AttributionConfig", "attribution_patching",
           "edge_attribution_patching", "agreement", "PathConfig", "path_patching", "METRICS"]
