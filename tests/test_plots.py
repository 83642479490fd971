"""Figure export works offline: real PDF, SVG, PNG with the asked size, self-contained HTML."""

import struct

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
    import subprocess
    import sys

    # a fresh interpreter: the box appears on the first export of a process (kaleido 0.2.1)
    path = tmp_path / "first.pdf"
    code = ("import numpy as np; from interp.plots import heatmap, export; "
            f"export(heatmap(np.eye(3), title='Planted title'), {str(path)!r})")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    texts = _pdf_text(path.read_bytes())
    assert any("Planted title" in t for t in texts), texts  # the decoder reads this PDF's text
    assert not any("MathJax" in t for t in texts), texts
