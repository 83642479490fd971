"""The circuit explorer: one self-contained HTML page per graph (no server, no CDN, opens from disk).

``write_html(graph, path, circuit=..., curve=...)`` (also ``graph.to_html(path, ...)`` and
``graph.show(...)``) inlines the page's CSS and JavaScript (``explorer.css``, ``explorer.js``
next to this file) and the payload of :func:`page_data` as JSON inside
``<script type="application/json">`` with ``<``, ``>``, ``&`` (and U+2028/9) escaped as
``\\u003c`` etc., so no token string or label can close the script element. The page inserts
every data string with ``textContent`` / ``setAttribute``, never as HTML.

**The chosen circuit.** ``circuit`` is the circuit as ``(src, dst, dst_input)`` edges (see
:mod:`interp.circuits.edges`) and/or node ids. The graph's edges are node -> node (the builders
sum an edge Result over ``dst_input``), so the q, k and v inputs of one pair are one graph edge;
the page counts both ("12 graph edges (20 model edges)"). A circuit of node ids only keeps the
graph edges between its nodes (``EMBED`` and ``LOGITS`` count as in it). An edge or node not in
the graph is refused with a :class:`~interp.errors.DataError` naming it. The page opens on the
circuit: its edges and the nodes they touch. The "edges" slider widens the view from the circuit's
size to every edge, adding the strongest other edges by ``|weight|`` (dashed, nodes outside the
circuit faded); "circuit only" and "all edges" jump to either end; the counts line shows the
current number. Without ``circuit`` the page shows the full graph as before.

**Encodings.** Fill and edge colour: the sign of the effect, oriented so that blue = supports
the clean behaviour and red = opposes it (a ``denoising`` effect on a metric where larger is
cleaner, e.g. ``logit_diff``, keeps its sign; ``noising`` or a lower-is-cleaner metric such as
``kl`` flips it); radius and edge width: its size. A ring in the colour of the gating role
(facilitating green, interfering magenta, irrelevant grey), dashed when the role contradicts the
methods. A badge ``n/m`` at the lower right of a node with two or more comparable methods.

**Method agreement** (:func:`node_agreement`). The *methods* of a node are its scores of
sources ``"method/direction/metric"`` (the ``patching.nodes`` builder's keys) whose direction
and metric have a known orientation; gating scores (``chg.*``) are not methods. Each gives an
oriented value (as above) and a rank: 1 + the number of nodes with a larger ``|value|`` in that
source. The methods *agree on sign* when every nonzero oriented value has the same sign; a
method ranks the node *top* when its rank is at most ``top_k`` (default: the number of heads and
MLPs in the circuit, else 10). The badge is ``n_top/n_methods``, green when the signs agree and
red when they do not. A gating role *contradicts* the methods when the node is
``facilitating`` and most methods give it a negative value, or ``interfering`` and most give a
positive one.

**The faithfulness curve** (``curve``: a ``circuits.curve`` Result or its table, columns of
:mod:`interp.schemas`) is drawn by the page's own script as an inline SVG in the side panel:
faithfulness against ``log(1 + n_edges)``, the random-circuit mean with a +/- std band, the
complement, reference lines at 0 and 1, and a marker at the chosen circuit's size (its model
edges).

**Feature graphs** (attribution graphs through transcoders, node ids ``L7.TC.1234@3``): laid out by
token position (x, columns labelled with the prompt's tokens) and layer (y), with each node's top
activating examples and logit effects in the side panel (``features=``: see
:mod:`interp.explorer.features`), and **supernodes** grouped by hand, drawn as one node with summed
edges, saved as a JSON sidecar (``supernodes=``: see :mod:`interp.explorer.supernodes`).

Graphs with more than ``max_edges`` edges are pruned to the circuit's and then the strongest
edges (by ``|weight|``) and the page shows a notice saying so; nodes beyond ``max_nodes`` are
dropped the same way, and each node/edge keeps at most ``max_evidence`` rows.

Example:
    >>> import tempfile
    >>> import pandas as pd
    >>> from interp.graph import CircuitGraph
    >>> g = CircuitGraph(name="</script> demo")
    >>> for src, dst, w in [("EMBED", "L0.H1", 0.9), ("L0.H1", "L1.H0", 0.5), ("L1.H0", "LOGITS", 1.2),
    ...                     ("L0.H0", "L1.H0", -0.1), ("L0.MLP", "LOGITS", 0.05)]:
    ...     g.add_edge(src, dst, weight=w, method="eap")
    >>> g.add_node("L1.H0", score=0.7, source="exact/denoising/logit_diff")
    >>> g.add_node("L1.H0", score=-0.4, source="atp/noising/logit_diff")     # noising: -0.4 supports clean
    >>> circuit = [("EMBED", "L0.H1", "q"), ("L0.H1", "L1.H0", "q"), ("L0.H1", "L1.H0", "k"),
    ...            ("L1.H0", "LOGITS", "logits")]
    >>> curve = pd.DataFrame({"n_edges": [0, 4, 12], "faithfulness": [0.0, 0.85, 1.0],
    ...                       "random_mean": [0.0, 0.1, 1.0], "complement": [1.0, 0.2, 0.0]})
    >>> data = page_data(g, circuit=circuit, curve=curve)
    >>> data["circuit"]["n_edges"], data["circuit"]["n_model_edges"], data["view"]
    (3, 4, {'min': 3, 'max': 5, 'default': 3})
    >>> [(e["source"], e["target"], e["inputs"]) for e in data["edges"] if e["in_circuit"]]
    [('L1.H0', 'LOGITS', ['logits']), ('EMBED', 'L0.H1', ['q']), ('L0.H1', 'L1.H0', ['q', 'k'])]
    >>> ag = data["nodes"][[n["id"] for n in data["nodes"]].index("L1.H0")]["agreement"]
    >>> ag["sign"], [m["value"] for m in ag["methods"]]
    ('agree', [0.7, 0.4])
    >>> page = g.to_html(tempfile.mkdtemp() + "/demo.html", circuit=circuit, curve=curve).read_text()
    >>> page.count("</script>")                                     # only the page's own two scripts close
    2
    >>> page_data(g, circuit=[("L0.H0", "L1.H1", "v")])             # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    interp.errors.DataError: explorer circuit=: 1 item(s) not in the graph ...: ('L0.H0', 'L1.H1', 'v'): node(s) ['L1.H1'] ...
    >>> print(escape_json({"name": "</script>"}))
    {"name": "\\u003c/script\\u003e"}
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from interp.graph import CircuitGraph

from interp.explorer.payload import node_agreement, page_data, resolve_circuit

__all__ = ["page_data", "render_html", "write_html", "show", "escape_json", "resolve_circuit", "node_agreement"]


def escape_json(data: Any) -> str:
    """JSON text safe inside an HTML ``<script>`` element."""
    text = json.dumps(data, allow_nan=False, ensure_ascii=False)
    for a, b in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(a, b)
    return text


def _asset(name: str) -> str:
    return resources.files("interp.explorer").joinpath(name).read_text(encoding="utf-8")


def render_html(graph: CircuitGraph, **kwargs: Any) -> str:
    """The page as a string (keyword arguments: ``circuit``, ``curve``, ``max_edges``, ... of :func:`page_data`)."""
    page = _asset("template.html")
    css, js = _asset("explorer.css"), _asset("features.js") + "\n" + _asset("explorer.js")
    if "</script" in js.lower() or "</style" in css.lower():
        raise AssertionError("explorer assets must not contain closing script/style tags")
    data = escape_json(page_data(graph, **kwargs))
    # str.replace with fixed markers; the data is inserted last so nothing inside it is re-scanned
    page = page.replace("/*__CSS__*/", css).replace("/*__JS__*/", js)
    head, tail = page.split("/*__DATA__*/")
    return head + data + tail


def write_html(graph: CircuitGraph, path: str | Path, *, circuit: Any = None, curve: Any = None,
               **kwargs: Any) -> Path:
    """Write the self-contained explorer page to ``path`` (atomically).

    Args:
        circuit: the chosen circuit (``(src, dst, dst_input)`` edges and/or node ids); the page opens on it.
        curve: a ``circuits.curve`` Result (or its table), drawn in the side panel.
        kwargs: ``max_edges``, ``max_nodes``, ``max_evidence``, ``top_k``, ``features``, ``supernodes`` of
            :func:`page_data`.

    Raises:
        DataError: circuit edges or nodes not in the graph (named), or a curve table without
            ``n_edges``/``faithfulness``.
    """
    from interp._fs import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, render_html(graph, circuit=circuit, curve=curve, **kwargs).encode("utf-8"))
    return path


def show(graph: CircuitGraph, *, height: int = 640, **kwargs: Any) -> Any:
    """An ``IPython.display.HTML`` iframe (``srcdoc`` = the page, attribute-escaped) for Jupyter."""
    import html

    from IPython.display import HTML

    page = render_html(graph, **kwargs)
    return HTML(f'<iframe srcdoc="{html.escape(page, quote=True)}" style="width:100%;height:{int(height)}px;'
                'border:1px solid #ddd" sandbox="allow-scripts allow-downloads"></iframe>')
