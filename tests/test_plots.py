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
