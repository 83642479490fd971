"""Node ids of the circuit graph, shared by every analysis that emits nodes or edges.

Ids: ``"EMBED"``, ``"L5.H1"`` (head 1 of layer 5), ``"L3.MLP"``, ``"L7.SAE.1234"``
(feature 1234 of an SAE at layer 7), ``"L4.RESID"`` (a residual-stream site, e.g. a
steering axis), ``"LOGITS"``.

Example:
    >>> node_id("head", layer=5, head=1), parse_node_id("L3.MLP")
    ('L5.H1', {'kind': 'mlp', 'layer': 3, 'head': None, 'feature': None})
"""

from __future__ import annotations

import re
from typing import Any

from interp.errors import ConfigError

__all__ = ["node_id", "parse_node_id", "NODE_KINDS"]

NODE_KINDS = ("embed", "head", "mlp", "sae", "resid", "logits")
_RE = re.compile(r"^L(\d+)\.(?:H(\d+)|(MLP)|SAE\.(\d+)|(RESID))$")


def node_id(kind: str, layer: int | None = None, head: int | None = None, feature: int | None = None) -> str:
    """Build a node id from its parts."""
    if kind == "embed":
        return "EMBED"
    if kind == "logits":
        return "LOGITS"
    if layer is None:
        raise ConfigError(f"node kind {kind!r} needs a layer")
    if kind == "head":
        if head is None:
            raise ConfigError("a head node needs a head index")
        return f"L{int(layer)}.H{int(head)}"
    if kind == "mlp":
        return f"L{int(layer)}.MLP"
    if kind == "sae":
        if feature is None:
            raise ConfigError("an SAE node needs a feature index")
        return f"L{int(layer)}.SAE.{int(feature)}"
    if kind == "resid":
        return f"L{int(layer)}.RESID"
    raise ConfigError(f"unknown node kind {kind!r}; expected one of {NODE_KINDS}")


def parse_node_id(text: str) -> dict[str, Any]:
    """Inverse of :func:`node_id`: ``{"kind", "layer", "head", "feature"}``."""
    if text in ("EMBED", "LOGITS"):
        return {"kind": text.lower(), "layer": None, "head": None, "feature": None}
    m = _RE.match(text)
    if not m:
        raise ConfigError(f"not a node id: {text!r} (expected EMBED, LOGITS, L5.H1, L3.MLP, L7.SAE.12, L4.RESID)")
    layer = int(m.group(1))
    if m.group(2) is not None:
        return {"kind": "head", "layer": layer, "head": int(m.group(2)), "feature": None}
    if m.group(3):
        return {"kind": "mlp", "layer": layer, "head": None, "feature": None}
    if m.group(4) is not None:
        return {"kind": "sae", "layer": layer, "head": None, "feature": int(m.group(4))}
    return {"kind": "resid", "layer": layer, "head": None, "feature": None}
