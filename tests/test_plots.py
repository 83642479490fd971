"""Figure export works offline: real PDF, SVG, PNG with the asked size, self-contained HTML."""

import struct

import pandas as pd

import numpy as np
import pytest

from interp.errors import ConfigError
from interp.plots import THEME, export, heatmap, lines


def _png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_export_formats(tmp_path):
    fig = heatmap(np.random.default_rng(0).normal(size=(4, 6)), x_title="head", y_title="layer",
                  title="demo", diverging=True)
    assert export(fig, tmp_path / "f.pdf").read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in export(fig, tmp_path / "f.svg").read_bytes()[:400]
    w, h = _png_size(export(fig, tmp_path / "f.png", width="double", scale=2))
    assert (w, h) == (2 * THEME.double_width, 2 * THEME.height)
    html = export(fig, tmp_path / "f.html").read_text()
    assert "<script src=\"http" not in html and "Plotly.newPlot" in html  # plotly.js inlined


def test_bad_export_suffix(tmp_path):
    with pytest.raises(ConfigError, match=".pdf"):
        export(lines([0, 1], {"a": [1, 2]}), tmp_path / "f.jpg")


def test_diverging_heatmap_is_centred():
    fig = heatmap(np.array([[-1.0, 3.0]]), diverging=True)
    assert fig.data[0].zmid == 0 and fig.data[0].zmin == -3 and fig.data[0].zmax == 3


def test_figure_dispatch_by_kind_and_empty_results():
    import pandas as pd

    from interp.results import Result

    with pytest.raises(ConfigError, match="Did you mean 'sinks.heads'"):
        Result("sinks.haeds", pd.DataFrame({"x": [1]})).figure()
    fig = Result("sinks.heads", pd.DataFrame(columns=["layer", "head", "alpha_first"])).figure()
    assert fig.layout.annotations[0].text == "no data"
    lens = Result("steering.lens", pd.DataFrame({"task": ["a", "a"], "layer": [0, 1], "decode_acc": [0.1, 0.5],
                                                 "steer_acc": [0.2, 0.4]})).figure()
    assert len(fig.data) == 0 and len(lens.data) > 0


# --- exported PDFs carry no MathJax box -------------------------------------------------------------------------

def _pdf_text(data: bytes) -> list[str]:
    """The text shown in a Chromium/Skia PDF, once per ToUnicode CMap (glyph ids are per font).

    Skia writes Type0 fonts with Identity-H encoding: ``<hex glyph ids> Tj`` in the content
    streams, mapped to Unicode by each font's ToUnicode CMap (bfchar / bfrange). A string decoded
    with another font's CMap is gibberish, so searching every decoding finds a text shown in
    any font and no false hits.
    """
    import re
    import zlib

    streams = []
    for m in re.finditer(rb"stream\r?\n(.*?)endstream", data, re.S):
        try:
            streams.append(zlib.decompress(m.group(1)))
        except zlib.error:
            streams.append(m.group(1))
    cmaps = []
    for s in streams:
        if b"begincmap" not in s:
            continue
        cmap: dict[int, str] = {}
        for block in re.findall(rb"beginbfchar(.*?)endbfchar", s, re.S):
            for src, dst in re.findall(rb"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>", block):
                cmap[int(src, 16)] = bytes.fromhex(dst.decode()).decode("utf-16-be")
        for block in re.findall(rb"beginbfrange(.*?)endbfrange", s, re.S):
            for lo, hi, dst in re.findall(rb"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>", block):
                for k in range(int(lo, 16), int(hi, 16) + 1):
                    cmap[k] = chr(int(dst, 16) + k - int(lo, 16))
        cmaps.append(cmap)
    shown = [h for s in streams if b"begincmap" not in s
             for h in re.findall(rb"<([0-9A-Fa-f]+)>\s*(?:Tj|')|(?<=[\[\s])<([0-9A-Fa-f]+)>(?=[^\]]*\]\s*TJ)", s)]
    hexes = [a or b for a, b in shown]
    return ["".join(cmap.get(int(h[i:i + 4], 16), "?") for h in hexes for i in range(0, len(h), 4))
            for cmap in cmaps]


def test_first_pdf_export_of_a_process_has_no_mathjax_box(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import interp

    # a fresh interpreter (importing this interp): the box appears on the first export of a process (kaleido 0.2.1)
    path = tmp_path / "first.pdf"
    code = ("import numpy as np; from interp.plots import heatmap, export; "
            f"export(heatmap(np.eye(3), title='Planted title'), {str(path)!r})")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(interp.__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=env)
    texts = _pdf_text(path.read_bytes())
    assert any("Planted title" in t for t in texts), texts  # the decoder reads this PDF's text
    assert not any("MathJax" in t for t in texts), texts


# --- token strings are text, not plotly markup -------------------------------------------------------------------

TOKENS = ["<br>", "<b>x</b>", "&amp;", '<a href="http://x">y</a>', "$x$"]


def _escaped_figures():
    """One figure of every kind whose text comes from data, with the TOKENS planted in that data."""
    from interp.graph import CircuitGraph
    from interp.plots import figure
    from interp.plots.graph import plot_graph
    from interp.results import Result, RunMeta

    meta = RunMeta(model="toy:<b>model</b>")
    n = len(TOKENS)

    def r(kind, rows, name=""):
        return Result(kind, pd.DataFrame(rows), meta, name=name)

    patch_pos = r("patching.nodes", [dict(method="exact", direction="noising", metric="logit_diff", component="resid",
                                          layer=l, head=-1, pos=p, pos_label=tok, node=f"L{l}.resid.{p}", value=0.1 * p)
                                     for l in range(2) for p, tok in enumerate(TOKENS)])
    patch_edges = r("patching.edges", [dict(method="eap", direction="noising", metric="logit_diff", src=tok,
                                            dst=f"L1.H{i}", dst_input=tok, value=1.0) for i, tok in enumerate(TOKENS)])
    trace = r("tracing.grid", [dict(fact=0, site_kind="resid", layer=l, token_index=i, token=tok, is_subject=i == 1,
                                    is_last_subject=i == 1, p_restored=0.5, indirect_effect=0.1)
                               for l in range(2) for i, tok in enumerate(TOKENS)])
    summary = r("tracing.summary", [dict(fact=i, answer=tok, p_clean=0.9, p_corrupt=0.1)
                                    for i, tok in enumerate(TOKENS)])
    validation = r("gating.validation", [dict(what=tok, metric_value=1.0, baseline_mean=0.5, baseline_std=0.1,
                                              metric=TOKENS[0]) for tok in TOKENS])
    ablation = r("gating.ablation", [dict(name=tok, metric_value=1.0, metric="loss") for tok in TOKENS])
    secondary = r("sinks.secondary", [dict(token=tok, creation_layer=1, lifetime=2, **{"class": "secondary"})
                                      for tok in TOKENS])
    dormancy = r("sinks.dormancy", [dict(domain=tok, node=f"L0.H{h}", sink_mass=0.5, switches=True)
                                    for tok in TOKENS for h in range(2)])
    interventions = r("sinks.interventions", [dict(intervention=tok, target=tok, delta=0.1) for tok in TOKENS])
    lens = r("steering.lens", [dict(task=tok, layer=l, decode_acc=0.5, steer_acc=0.6)
                               for tok in TOKENS for l in range(2)])
    lens1 = r("steering.lens", [dict(task=TOKENS[1], layer=l, decode_acc=0.5, steer_acc=0.6) for l in range(2)])
    axes = r("steering.axes", [dict(name=tok, method="mean_diff", layer=1, norm=1.0) for tok in TOKENS])
    sae_eval = r("sae.eval", [dict(metric="l0", value=3.0), dict(metric="ce_loss_recovered", value=0.9)],
                 name=TOKENS[1])
    sae_train = r("sae.training", [dict(tokens=t, mse_loss=1.0, l0=2.0, explained_variance=0.5) for t in range(3)],
                  name=TOKENS[0])
    dfa = r("sae.dfa", [dict(feature=f, head=h, value=0.1) for f in range(2) for h in range(2)], name=TOKENS[1])
    compare = r("graph.compare", [dict(what="nodes", cls=tok, jaccard=0.5, overlap=0.6) for tok in TOKENS])
    faith = r("graph.faithfulness", [dict(circuit=tok, faithfulness=0.8, n_heads=3) for tok in TOKENS])
    g = CircuitGraph(name=TOKENS[0] + TOKENS[1])
    g.add_edge("L0.H1", "L1.H0", weight=0.5, method="eap")
    g.add_node("L1.H0", score=1.0, roles=[TOKENS[2]])
    figs = {res.kind + str(i): figure(res) for i, res in enumerate(
        (patch_pos, patch_edges, summary, validation, ablation, secondary, dormancy, interventions, lens, lens1, axes,
         sae_eval, sae_train, dfa, compare, faith))}
    figs["tracing.grid fact 0"] = figure(trace, fact=0)
    figs["circuit"] = plot_graph(g)
    return figs


def _strings(fig) -> str:
    """Every string in the figure's JSON, decoded (plotly's JSON writes ``</`` as ``<\\/``)."""
    import json

    out = []

    def walk(x):
        if isinstance(x, str):
            out.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(json.loads(fig.to_json()))
    return "\n".join(out)


def test_token_strings_are_escaped_in_every_figure():
    figs = _escaped_figures()
    for name, fig in figs.items():
        text = _strings(fig)
        # the figure holds the planted tokens only in escaped form
        for raw in ("<br>", "<b>", "</b>", "<a ", "$x$"):
            assert raw not in text, (name, raw)
        # the token "&amp;" only as its escaped form (see escape_text), never as an entity plotly would decode
        assert "&amp;" not in text.replace("&amp;\u2060amp;", ""), name
    # the planted tokens did reach the figures (escaped), so the check above is not vacuous
    assert "&lt;br&gt;" in _strings(figs["patching.nodes0"])
    assert "&lt;b&gt;x&lt;/b&gt;" in _strings(figs["circuit"])
    assert "&amp;\u2060amp;" in _strings(figs["sinks.interventions7"])


def test_escaped_tokens_render_as_typed(tmp_path):
    """In the exported SVG (plotly's static-export text, the same as in PDF and PNG) each token shows as typed."""
    import html as _html
    import re

    from interp.plots import escape_text, export

    fig = heatmap(np.ones((1, len(TOKENS) + 2)), x=TOKENS + ["&lt;", "a & b;"], y=["row"],
                  title=escape_text("t <br> $y$ &#36;"))
    svg = export(fig, tmp_path / "tokens.svg").read_text()
    shown = [_html.unescape(s).replace("\u2060", "") for s in re.findall(r">([^<]*)</(?:text|tspan)>", svg)]
    for tok in TOKENS + ["&lt;", "a & b;", "t <br> $y$ &#36;"]:
        assert tok in shown, (tok, shown)
