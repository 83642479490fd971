"""Figures of patching Results: layer x position and layer x head heatmaps (diverging).

* ``patching.nodes`` with heads over all positions -> layer x head;
* ``patching.nodes`` per position (resid, attn, mlp; heads per position) -> layer x position
  with the first prompt's tokens (or the named positions) as labels; for heads per
  position the cell shows the head with the largest |value| (hover names it);
* ``patching.edges`` -> sender x receiver for the ``top`` senders/receivers by |value|.

Example:
    >>> from interp.datasets import TaskDataset
    >>> from interp.models import load_model
    >>> from interp.patching import PatchConfig, activation_patching
    >>> from interp.plots import figure
    >>> ds = TaskDataset("toy", clean=("cat on", "a dog to"), corrupted=("cow on", "a dog at"),
    ...                  answers=("x", "y"), counterfactuals=("q", "w"))     # one-byte answers: toy tokenizer
    >>> result = activation_patching(load_model("toy:llama"), ds, PatchConfig(component="z"))
    >>> fig = figure(result, metric="logit_diff_norm")
    >>> fig.layout.xaxis.title.text, fig.layout.yaxis.title.text, len(fig.data[0].z), len(fig.data[0].z[0])
    ('head', 'layer', 2, 4)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from interp.errors import ConfigError

if TYPE_CHECKING:
    from plotly.graph_objects import Figure

    from interp.results import Result

__all__ = ["plot"]

_LABEL = {"logit_diff_norm": "normalised logit diff.", "logit_diff": "logit diff.", "prob": "p(answer)",
          "kl": "KL(clean || patched)"}


def _select(t: Any, metric: str | None, component: str | None) -> tuple[Any, str]:
    metric = metric or ("logit_diff_norm" if "logit_diff_norm" in set(t["metric"]) else t["metric"].iloc[0])
    t = t[t["metric"] == metric]
    if component is not None and "component" in t.columns:
        t = t[t["component"] == component]
    if t.empty:
        raise ConfigError(f"no rows for metric={metric!r} component={component!r}")
    return t, metric


def plot(result: Result, *, metric: str | None = None, component: str | None = None, top: int = 30,
         width: str | int = "double", title: str | None = None) -> Figure:
    """Heatmap of a ``patching.nodes`` or ``patching.edges`` Result.

    Args:
        metric: which metric's rows (default: normalised logit difference when present).
        component: for node tables with several components (``head``, ``mlp``, ``resid``, ``attn``).
        top: for edge tables, how many senders and receivers to show.
    """
    from interp.plots import escape_text, heatmap

    t, metric = _select(result.table, metric, component)
    method = t["method"].iloc[0]
    direction = t["direction"].iloc[0]
    ttl = title or escape_text(f"{method} patching ({direction}) - {result.meta.model}")
    if result.kind == "patching.edges":
        return _edges(t, metric, top, ttl, width)
    comps = sorted(set(t["component"]))
    if len(comps) > 1:
        comp = "head" if "head" in comps else comps[0]
        t = t[t["component"] == comp]
    layers = sorted(set(t["layer"]))
    if (t["pos"] < 0).all():
        heads = sorted(set(t["head"]))
        z = np.full((len(layers), len(heads)), np.nan)
        for r in t.itertuples():
            z[layers.index(r.layer), heads.index(r.head)] = r.value
        return heatmap(z, x=[str(h) for h in heads], y=[str(l) for l in layers], x_title="head", y_title="layer", title=ttl, diverging=True,
                       colorbar_title=_LABEL.get(metric, metric), width=width)
    t = t[t["pos"] >= 0]
    positions = sorted(set(t["pos"]))
    labels = {int(r.pos): str(r.pos_label) for r in t.itertuples()}
    z = np.full((len(layers), len(positions)), np.nan)
    text = np.full(z.shape, "", dtype=object)
    for r in t.itertuples():
        i, j = layers.index(r.layer), positions.index(r.pos)
        if np.isnan(z[i, j]) or abs(r.value) > abs(z[i, j]):
            z[i, j] = r.value
            text[i, j] = r.node
    x = [f"{p}:{labels[p]!r}" for p in positions]
    return heatmap(z, x=x, y=[str(l) for l in layers], x_title="position", y_title="layer", title=ttl, diverging=True,
                   colorbar_title=_LABEL.get(metric, metric), width=width, text=text)


def _edges(t: Any, metric: str, top: int, title: str, width: str | int) -> Figure:
    from interp.plots import heatmap

    t = t.assign(dst_full=t["dst"] + "." + t["dst_input"])
    srcs = t.groupby("src")["value"].apply(lambda v: v.abs().sum()).nlargest(top).index.tolist()
    dsts = t.groupby("dst_full")["value"].apply(lambda v: v.abs().sum()).nlargest(top).index.tolist()
    sub = t[t["src"].isin(srcs) & t["dst_full"].isin(dsts)]
    z = np.full((len(srcs), len(dsts)), np.nan)
    for r in sub.itertuples():
        z[srcs.index(r.src), dsts.index(r.dst_full)] = r.value
    return heatmap(z, x=dsts, y=srcs, x_title="receiver", y_title="sender", title=title, diverging=True,
                   colorbar_title=_LABEL.get(metric, metric), width=width, height=max(260, 14 * len(srcs)))
