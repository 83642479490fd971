"""A self-contained HTML dashboard per SAE: no CDN, inline CSS and JS, works offline.

One page lists the SAE's evaluation metrics and training curve, and one card per feature with
its density, top-activating examples in context (the activating token highlighted), an
activation histogram (inline SVG) and its logit effects; a search box filters features
(inline JS). Every token string and every other text from data goes through
``html.escape`` before it reaches the page, so tokens such as ``</script>`` show as text.

Example:
    >>> import torch
    >>> from sae_lens import SAE
    >>> from interp.models import load_model
    >>> from interp.sae.features import FeatureConfig, analyze_features
    >>> from interp.sites import Site
    >>> model = load_model("toy:llama")
    >>> with torch.random.fork_rng():                 # an untrained SAE on z.1 (4 heads x 16 = 64 inputs)
    ...     _ = torch.manual_seed(0)
    ...     sae = SAE.from_dict({"architecture": "standard", "d_in": 64, "d_sae": 32, "dtype": "float32",
    ...                          "device": "cpu", "reshape_activations": "hook_z",
    ...                          "metadata": {"hook_name": Site("z", 1).hook_name}})
    >>> tokens = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))   # [rows, pos]
    >>> fa = analyze_features(model, sae, "z.1", tokens, FeatureConfig(n_examples=3))
    >>> import tempfile
    >>> from interp.sae.dashboard import write_dashboard
    >>> path = write_dashboard(tempfile.mkdtemp() + "/dashboard.html", fa, title="<z.1> of toy:llama")
    >>> "<h1>&lt;z.1&gt; of toy:llama</h1>" in path.read_text()          # text from data is escaped
    True

    With the SAE's evaluation and training history: ``write_dashboard(path, fa, eval_result=ev,
    training=trained.history, title="resid_post.15")``.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

__all__ = ["render_dashboard", "write_dashboard"]

_CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:1.5em;color:#222;max-width:1100px}
h1{font-size:1.4em} h2{font-size:1.1em;margin-top:1.5em}
table.m{border-collapse:collapse} table.m td{padding:2px 10px;border-bottom:1px solid #eee}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:.8em 0}
.card h3{margin:.2em 0;font-size:1em}
.ex{font-family:Menlo,Consolas,monospace;font-size:.85em;white-space:pre-wrap;margin:2px 0}
.hit{background:#D55E00;color:#fff;border-radius:2px}
.ctx{color:#555} .val{color:#0072B2;display:inline-block;min-width:4.5em}
.lg span{display:inline-block;margin:1px 4px;padding:0 3px;border-radius:2px;font-family:monospace;font-size:.85em}
.pos{background:#cfe3f5} .neg{background:#f8d9c8} .muted{color:#888}
"""

_JS = """
function filt(){var q=document.getElementById('q').value.toLowerCase();
var cards=document.getElementsByClassName('card');for(var i=0;i<cards.length;i++){
var t=cards[i].getAttribute('data-search');cards[i].style.display=(t.indexOf(q)>=0)?'':'none';}}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _tok(t: Any) -> str:
    # show whitespace-ish tokens visibly, then escape
    s = str(t).replace("\n", "\u21b5")
    return _e(s)


def _svg_hist(rows: Any, width: int = 260, height: int = 60) -> str:
    if rows is None or len(rows) == 0:
        return '<span class="muted">no activations</span>'
    counts = [int(c) for c in rows["count"]]
    lefts = [float(b) for b in rows["bin_left"]]
    m = max(counts)
    lo, hi = min(lefts), max(float(b) for b in rows["bin_right"])
    span = max(hi - lo, 1e-9)
    bw = width / max(len(counts), 1)
    bars = []
    for c, left in zip(counts, lefts):
        h = height * c / m
        x = (left - lo) / span * width
        bars.append(f'<rect x="{x:.1f}" y="{height - h:.1f}" width="{max(bw - 1, 1):.1f}" height="{h:.1f}" '
                    f'fill="#0072B2"><title>{_e(f"10^{left:.2f}: {c}")}</title></rect>')
    return (f'<svg width="{width}" height="{height + 14}" role="img">{"".join(bars)}'
            f'<text x="0" y="{height + 12}" font-size="10">1e{lo:.1f}</text>'
            f'<text x="{width - 30}" y="{height + 12}" font-size="10">1e{hi:.1f}</text></svg>')


def render_dashboard(analysis: Any, *, eval_result: Any = None, training: Any = None, title: str = "SAE",
                     max_features: int = 200, sort_by: str = "density") -> str:
    """The dashboard page as a string (see :func:`write_dashboard`)."""
    ft = analysis.features.table
    ex = analysis.examples.table
    hist = analysis.histograms.table
    lg = analysis.logits.table
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{_e(title)}</h1>"]
    meta = analysis.features.meta
    parts.append(f"<p class='muted'>model {_e(meta.model)} &middot; {len(ft)} features analysed &middot; "
                 f"{_e(meta.extra.get('n_tokens', ''))} held-out tokens &middot; created {_e(meta.created)}</p>")
    if eval_result is not None:
        parts.append("<h2>Held-out evaluation</h2><table class='m'>")
        for _, r in eval_result.table.iterrows():
            parts.append(f"<tr><td>{_e(r['metric'])}</td><td>{_e(f'{float(r.value):.4g}')}</td></tr>")
        parts.append("</table>")
    if training is not None and len(training.table):
        t = training.table
        pts = [(float(a), float(b)) for a, b in zip(t["tokens"], t["loss"])]
        parts.append("<h2>Training curve (loss vs tokens)</h2>" + _svg_line(pts))
    parts.append("<h2>Features</h2><p><input id='q' oninput='filt()' placeholder='filter by token or id'></p>")
    order = ft.sort_values(sort_by, ascending=False) if sort_by in ft.columns else ft
    order = order[order["density"] > 0].head(max_features)
    ex_by = {f: g for f, g in ex.groupby("feature")}
    hist_by = {f: g for f, g in hist.groupby("feature")}
    lg_by = {f: g for f, g in lg.groupby("feature")}
    for _, r in order.iterrows():
        f = int(r.feature)
        search = " ".join([str(f)] + [str(x) for x in (r.top_tokens if r.top_tokens is not None else [])]).lower()
        parts.append(f"<div class='card' data-search='{_e(search)}'><h3>feature {f}</h3>"
                     f"<div class='muted'>density {float(r.density):.3g} &middot; max {float(r.max_act):.3g} &middot; "
                     f"mean when active {float(r.mean_act):.3g}</div>")
        parts.append(_svg_hist(hist_by.get(f)))
        for _, e in (ex_by.get(f).iterrows() if f in ex_by else []):
            left = "".join(_tok(x) for x in e.left)
            right = "".join(_tok(x) for x in e.right)
            parts.append(f"<div class='ex'><span class='val'>{float(e.value):.3g}</span>"
                         f"<span class='ctx'>{left}</span><span class='hit'>{_tok(e.token)}</span>"
                         f"<span class='ctx'>{right}</span></div>")
        if f in lg_by:
            g = lg_by[f]
            for side, cls in (("top", "pos"), ("bottom", "neg")):
                toks = g[g.side == side].sort_values("rank")
                spans = "".join(f"<span class='{cls}' title='{_e(f'{v:.3g}')}'>{_tok(t)}</span>"
                                for t, v in zip(toks.token, toks.effect))
                parts.append(f"<div class='lg'><span class='muted'>{side} logits</span>{spans}</div>")
        parts.append("</div>")
    parts.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(parts)


def _svg_line(pts: list[tuple[float, float]], width: int = 420, height: int = 120) -> str:
    if len(pts) < 2:
        return ""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = lambda x: 30 + (x - x0) / max(x1 - x0, 1e-9) * (width - 40)  # noqa: E731
    sy = lambda y: 10 + (y1 - y) / max(y1 - y0, 1e-9) * (height - 30)  # noqa: E731
    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    return (f'<svg width="{width}" height="{height}"><polyline points="{path}" fill="none" stroke="#0072B2"/>'
            f'<text x="0" y="12" font-size="10">{y1:.3g}</text><text x="0" y="{height - 20}" font-size="10">{y0:.3g}</text>'
            f'<text x="{width - 80}" y="{height - 4}" font-size="10">{_e(f"{x1:,.0f} tokens")}</text></svg>')


def write_dashboard(path: str | Path, analysis: Any, *, eval_result: Any = None, training: Any = None,
                    title: str = "SAE", max_features: int = 200) -> Path:
    """Write the dashboard of one SAE to ``path`` (atomically) and return the path."""
    from interp._fs import atomic_write_bytes

    page = render_dashboard(analysis, eval_result=eval_result, training=training, title=title,
                            max_features=max_features)
    path = Path(path)
    atomic_write_bytes(path, page.encode("utf-8"))
    return path

