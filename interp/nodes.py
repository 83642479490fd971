"""Node ids of the circuit graph, shared by every analysis that emits nodes or edges.

Ids: ``"EMBED"``, ``"L5.H1"`` (head 1 of layer 5), ``"L3.MLP"``, ``"L7.SAE.1234"``
(feature 1234 of an SAE at layer 7), ``"L4.RESID"`` (a residual-stream site, e.g. a
steering axis), ``"LOGITS"``; ``"L7.TC.1234"`` (transcoder feature 1234 at layer 7) and
``"LOGITS.791"`` (the logit of token id 791). Any id may end in ``"@pos"``, one token
position (attribution graphs: ``"L7.TC.1234@3"``, ``"L2.MLP@3"`` the error node, ``"EMBED@0"``).

This module is the one mapping between :class:`~interp.sites.Site` and node ids:
:func:`site_node` names the node a site belongs to (a head's ``z``/``q``/``k``/``v``/
``pattern`` -> ``L5.H1``; ``mlp_out``/``mlp_in``/``mlp_post`` -> ``L3.MLP``; residual
sites -> ``L4.RESID``; ``embed`` -> ``EMBED``; ``ln_final`` -> ``LOGITS``) and
:func:`node_site` gives a node's canonical output site (``L5.H1`` -> ``z.5`` head 1).
No other module builds ``"L{layer}.H{head}"`` strings.

Example:
    >>> node_id("head", layer=5, head=1), parse_node_id("L3.MLP")
    ('L5.H1', {'kind': 'mlp', 'layer': 3, 'head': None, 'feature': None})
    >>> from interp.sites import Site
    >>> site_node(Site("z", 5, head=1)), node_site("L3.MLP")
    ('L5.H1', Site(component='mlp_out', layer=3, head=None))
"""

from __future__ import annotations

import re
from typing import Any

from interp.errors import ConfigError

__all__ = ["node_id", "parse_node_id", "NODE_KINDS", "site_node", "node_site", "COMPONENT_NODE_KIND"]

NODE_KINDS = ("embed", "head", "mlp", "sae", "resid", "logits", "tc")
_RE = re.compile(r"^L(\d+)\.(?:H(\d+)|(MLP)|SAE\.(\d+)|(RESID)|TC\.(\d+))$")
_AT = re.compile(r"^(.+)@(\d+)$")


def node_id(kind: str, layer: int | None = None, head: int | None = None, feature: int | None = None,
            pos: int | None = None) -> str:
    """Build a node id from its parts (``pos``: one token position, appended as ``@pos``)."""
    if pos is not None:
        return f"{node_id(kind, layer, head, feature)}@{int(pos)}"
    if kind == "logits" and feature is not None:
        return f"LOGITS.{int(feature)}"
    if kind == "tc":
        if layer is None or feature is None:
            raise ConfigError("a transcoder feature node needs a layer and a feature index")
        return f"L{int(layer)}.TC.{int(feature)}"
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
    """Inverse of :func:`node_id`: ``{"kind", "layer", "head", "feature"}`` (plus ``"pos"`` for ``...@pos``)."""
    at = _AT.match(text)
    if at:
        return {**parse_node_id(at.group(1)), "pos": int(at.group(2))}
    if text.startswith("LOGITS.") and text[7:].isdigit():
        return {"kind": "logits", "layer": None, "head": None, "feature": int(text[7:])}
    if text in ("EMBED", "LOGITS"):
        return {"kind": text.lower(), "layer": None, "head": None, "feature": None}
    m = _RE.match(text)
    if not m:
        raise ConfigError(f"not a node id: {text!r} (expected EMBED, LOGITS, L5.H1, L3.MLP, L7.SAE.12, L4.RESID, L7.TC.12, LOGITS.791, any with @pos)")
    layer = int(m.group(1))
    if m.group(2) is not None:
        return {"kind": "head", "layer": layer, "head": int(m.group(2)), "feature": None}
    if m.group(3):
        return {"kind": "mlp", "layer": layer, "head": None, "feature": None}
    if m.group(4) is not None:
        return {"kind": "sae", "layer": layer, "head": None, "feature": int(m.group(4))}
    if m.group(6) is not None:
        return {"kind": "tc", "layer": layer, "head": None, "feature": int(m.group(6))}
    return {"kind": "resid", "layer": layer, "head": None, "feature": None}


#: Site component -> node kind (components absent here have no node of their own).
COMPONENT_NODE_KIND: dict[str, str] = {
    **dict.fromkeys(("z", "q", "k", "v", "pattern", "attn_scores", "q_input", "k_input", "v_input"), "head"),
    **dict.fromkeys(("mlp_out", "mlp_in", "mlp_post"), "mlp"),
    **dict.fromkeys(("resid_pre", "resid_mid", "resid_post"), "resid"),
    "embed": "embed", "ln_final": "logits", "final_resid": "logits",
}
#: node kind -> the component of its canonical output site
_OUTPUT_COMPONENT = {"head": "z", "mlp": "mlp_out", "resid": "resid_post", "embed": "embed", "logits": "ln_final"}


def site_node(site: Any, *, missing: str | None = None) -> str:
    """The node id a :class:`~interp.sites.Site` belongs to (``Site("z", 5, head=1)`` -> ``"L5.H1"``).

    Args:
        missing: returned for a component without a node of its own (e.g. ``""``) instead of raising.

    Raises:
        ConfigError: a component without a node (``attn_out`` is a whole layer, not a head) and no
            ``missing``, or a per-head component without a head.
    """
    kind = COMPONENT_NODE_KIND.get(site.component)
    if kind is None and missing is not None:
        return missing
    if kind is None:
        raise ConfigError(f"site {site} has no circuit-graph node (components with nodes: "
                          f"{', '.join(COMPONENT_NODE_KIND)})")
    if kind == "head" and site.head is None:
        raise ConfigError(f"site {site} spans every head of layer {site.layer}; a head node needs Site(..., head=h)")
    return node_id(kind, layer=site.layer, head=site.head)


def node_site(node: str) -> Any:
    """The canonical output :class:`~interp.sites.Site` of a node id (``"L5.H1"`` -> ``Site("z", 5, head=1)``).

    Raises:
        ConfigError: not a node id, or an SAE feature node (it has no hook site of its own).
    """
    from interp.sites import Site

    parts = parse_node_id(node)
    if parts["kind"] in ("sae", "tc"):
        raise ConfigError(f"node {node!r} is an SAE/transcoder feature; it has no hook site of its own")
    return Site(_OUTPUT_COMPONENT[parts["kind"]], parts["layer"], head=parts["head"])
