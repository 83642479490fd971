"""Figures: one paper theme, pure functions Result -> plotly Figure, offline export.

* :data:`THEME` — fonts, sizes, colour scales and column widths used by every figure.
* :func:`figure` — dispatch a Result to the plot function of its family
  (``result.kind`` ``"sinks.alpha"`` -> ``interp.plots.sinks.plot``).
* :func:`heatmap`, :func:`lines` — the generic building blocks the families use.
* :func:`escape_text` — the one way data text (token strings, prompts, names) enters a
  figure: plotly reads ``<br>``, ``<b>``, ``<a href>``, entities and ``$...$`` (LaTeX) in
  titles, tick labels, hover text, legends and annotations; escaped, a token shows as typed.
  :func:`heatmap` and :func:`lines` escape their string labels themselves.
* :func:`export` — ``.pdf``, ``.svg``, ``.png`` (through kaleido 0.2.1, which bundles its
  own headless Chromium, so export works offline on a fresh machine) and ``.html``
  (plotly.js inlined, no CDN).

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> from interp.plots import heatmap, export
    >>> fig = heatmap(np.eye(3), x=["<bos>", "Hi", " there"], x_title="token", y_title="layer", title="demo")
    >>> fig.data[0].x                                       # token strings are escaped: shown as typed
    ('&lt;bos&gt;', 'Hi', ' there')
    >>> path = export(fig, tempfile.mkdtemp() + "/demo.svg", width="single")
    >>> path.read_text()[:4]
    '<svg'
"""

from __future__ import annotations

import html
import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from interp.errors import ConfigError, nearest

if TYPE_CHECKING:
    from numpy.typing import ArrayLike
    from plotly.graph_objects import Figure

    from interp.results import Result

__all__ = ["Theme", "THEME", "escape_text", "figure", "dispatch", "empty_figure", "heatmap", "lines", "export",
           "apply_theme"]


@dataclass(frozen=True)
class Theme:
    """The paper theme. Widths in pixels at 96 dpi (single column 3.5 in, double 7.2 in)."""

    font_family: str = "Helvetica, Arial, sans-serif"
    font_size: int = 11
    title_size: int = 12
    single_width: int = 336
    double_width: int = 691
    height: int = 260
    diverging: str = "RdBu_r"       # signed effects (patching, steering); centred at 0
    sequential: str = "Viridis"     # magnitudes (attention, scores)
    categorical: tuple[str, ...] = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9",
                                    "#F0E442", "#000000")  # Okabe-Ito, colour-blind safe
    template: str = "simple_white"


THEME = Theme()

_ENTITY_START = re.compile(r"&(?=[#0-9A-Za-z])")

# Families with their own plot module: kind prefix -> module under interp.plots.
_FAMILIES = ("cache", "sinks", "massive", "tracing", "patching", "gating", "sae", "steering", "graph", "sad",
             "diagnostics", "vlm")


def escape_text(text: Any) -> str:
    """``text`` as plain text in a plotly figure: no markup, entity or LaTeX is interpreted.

    ``<``, ``>`` and ``&`` become ``&lt;``, ``&gt;``, ``&amp;`` (plotly turns them back into the
    characters when drawing), and ``$`` becomes ``&#36;`` so a label such as ``$x$`` is not
    typeset by MathJax in a notebook. An ``&`` that starts something entity-like (web-text BPE
    vocabularies have tokens such as ``&amp;`` and ``&lt;``) also gets an invisible word joiner
    (U+2060) after it:
    plotly's static export (SVG/PDF/PNG) decodes entities a second time, and would otherwise
    draw the token ``&amp;`` as ``&``. Non-strings are converted with ``str``.

    Example:
        >>> escape_text("<b>x</b> <br> a & b")
        '&lt;b&gt;x&lt;/b&gt; &lt;br&gt; a &amp; b'
        >>> escape_text("$5 &amp;") == "&#36;5 &amp;\u2060amp;"
        True
    """
    text = _ENTITY_START.sub("&\u2060", str(text))
    return html.escape(text, quote=False).replace("$", "&#36;")


def _labels(values: Sequence[Any] | None) -> list[Any] | None:
    """Axis values for a figure: strings escaped, numbers kept (so numeric axes stay numeric)."""
    if values is None:
        return None
    return [escape_text(v) if isinstance(v, str) else v for v in values]


def apply_theme(fig: Figure, *, width: str | int = "single", height: int | None = None, theme: Theme = THEME) -> Figure:
    """Apply the paper theme to a plotly figure in place and return it."""
    w = {"single": theme.single_width, "double": theme.double_width}.get(width, width) if isinstance(width, str) else width
    if isinstance(w, str):
        raise ConfigError(f"width must be 'single', 'double' or pixels, got {width!r}")
    fig.update_layout(template=theme.template, width=w, height=height or theme.height,
                      font=dict(family=theme.font_family, size=theme.font_size),
                      title_font=dict(size=theme.title_size), margin=dict(l=50, r=20, t=36, b=40),
                      colorway=list(theme.categorical))
    return fig


def heatmap(z: ArrayLike, *, x: Sequence[Any] | None = None, y: Sequence[Any] | None = None, x_title: str = "",
            y_title: str = "", title: str = "", diverging: bool = False, colorbar_title: str = "",
            width: str | int = "single", height: int | None = None, text: Any = None) -> Figure:
    """A themed heatmap; ``diverging=True`` uses the diverging scale centred at 0.

    String labels in ``x``, ``y`` and ``text`` are data (tokens, node ids, task names) and are
    escaped with :func:`escape_text`; ``title`` and the axis titles are plotly text as given.
    """
    import numpy as np
    import plotly.graph_objects as go

    z = np.asarray(z, dtype=float)
    kw: dict[str, Any] = {}
    if diverging:
        finite = np.abs(z[np.isfinite(z)])
        lim = float(finite.max()) if finite.size else 1.0
        kw = dict(zmid=0, zmin=-lim, zmax=lim, colorscale=THEME.diverging)
    else:
        kw = dict(colorscale=THEME.sequential)
    if text is not None:
        text = np.vectorize(lambda s: escape_text(s) if isinstance(s, str) else s, otypes=[object])(
            np.asarray(text, dtype=object)).tolist()
    fig = go.Figure(go.Heatmap(z=z, x=_labels(x), y=_labels(y), colorbar=dict(title=colorbar_title), text=text,
                               hovertemplate="%{y} / %{x}: %{z:.4g}<extra></extra>", **kw))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title)
    return apply_theme(fig, width=width, height=height)


def lines(x: Sequence[Any], series: dict[str, Sequence[float]], *, x_title: str = "", y_title: str = "",
          title: str = "", log_y: bool = False, width: str | int = "single", height: int | None = None) -> Figure:
    """Themed line plot of named series over a shared x (series names and string x values escaped)."""
    import plotly.graph_objects as go

    fig = go.Figure([go.Scatter(x=_labels(list(x)), y=list(v), mode="lines+markers", name=escape_text(k))
                     for k, v in series.items()])
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title)
    if log_y:
        fig.update_yaxes(type="log")
    return apply_theme(fig, width=width, height=height)


def empty_figure(title: str) -> Figure:
    """A themed placeholder saying "no data" (for Results with no rows)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_annotation(text="no data", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title=title)
    return apply_theme(fig)


def dispatch(result: Result, plots: dict[str, Any], what: str, **kwargs: Any) -> Figure:
    """Call ``plots[result.kind](result, **kwargs)``; a kind without a plot gets the nearest kinds named.

    The family modules' ``plot`` functions are this call with their own table of kinds.
    """
    fn = plots.get(result.kind)
    if fn is None:
        raise ConfigError(f"no {what} figure for Result kind {result.kind!r}.{nearest(result.kind, plots)} "
                          f"Known: {', '.join(plots)}")
    return fn(result, **kwargs)


def figure(result: Result, **kwargs: Any) -> Figure:
    """The figure of a Result, drawn by ``interp.plots.<family>.plot(result, **kwargs)``."""
    family = result.kind.split(".")[0]
    if family not in _FAMILIES:
        raise ConfigError(f"no figure for Result kind {result.kind!r}.{nearest(family, _FAMILIES)}")
    try:
        module = importlib.import_module(f"interp.plots.{family}")
    except ModuleNotFoundError as e:
        raise ConfigError(f"no figure module for Result kind {result.kind!r} ({e})") from e
    return module.plot(result, **kwargs)


def export(fig: Figure, path: str | Path, *, width: str | int | None = None, height: int | None = None,
           scale: float = 2.0) -> Path:
    """Write a figure to ``.pdf``, ``.svg``, ``.png`` or ``.html`` (self-contained), atomically.

    Args:
        fig: plotly figure.
        path: output file; the suffix picks the format.
        width: ``"single"``, ``"double"`` or pixels; default keeps the figure's width.
        scale: pixel density of PNG export (2 = ~192 dpi at the theme widths).
    """
    from interp._fs import atomic_write_bytes

    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("pdf", "svg", "png", "html"):
        raise ConfigError(f"cannot export to {path.suffix!r}; use .pdf, .svg, .png or .html")
    if width is not None:
        apply_theme(fig, width=width, height=height or fig.layout.height)
    if fmt == "html":
        data = fig.to_html(include_plotlyjs=True, full_html=True).encode()
    else:
        _kaleido_without_mathjax()
        data = fig.to_image(format=fmt, scale=scale if fmt == "png" else 1)
    atomic_write_bytes(path, data)
    return path


def _kaleido_without_mathjax() -> None:
    """Turn off MathJax in kaleido's export scope before a static export.

    kaleido 0.2.1 loads MathJax in its headless Chromium; the first figure exported in a
    process is rendered before MathJax has finished loading and carries its status box
    ("Loading [MathJax]/extensions/MathMenu.js") in the PDF. Setting ``mathjax = None`` on
    kaleido's scope makes it not load MathJax at all. This changes only kaleido's own
    scope object (no environment variable, no plotly default, nothing else in the process),
    and it is what interp wants for every export anyway: figure text is plain text (token
    strings are shown as text), and a token such as ``$x$`` must not be
    typeset as LaTeX in a PDF when the HTML export (which never includes MathJax) shows it
    literally. It is set once and left set, because changing a kaleido scope setting
    restarts kaleido's Chromium; restoring it after each export would cost a restart per file.
    """
    import plotly.io as pio

    scope = pio.kaleido.scope
    if scope is not None and scope.mathjax is not None:
        scope.mathjax = None
