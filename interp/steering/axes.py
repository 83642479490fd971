"""Steering axes: contrast (difference of means), PCA, ICA and linear-probe directions.

The fitting functions take plain tensors ``[n, d_model]`` (plus labels), so they work on
activations from any source: :func:`residual_activations` (hook capture), or an
activation store through :func:`rows_from_store`. An :class:`Axis` carries its vector,
the :class:`~interp.sites.Site` it was fitted at, the method, a hash of the data and
fit statistics; :meth:`Axis.save` / :func:`load_axis` use safetensors + JSON (no pickle).

Conventions: contrast axes keep their raw length (``alpha = 1`` moves the negative mean
onto the positive mean); PCA, ICA and probe axes are unit vectors oriented so the
positive class projects higher (probe: ``stats["weight_norm"]`` and
``stats["intercept"]`` give the probe's logit ``weight_norm * (u . h) + intercept``).

Example:
    >>> import torch
    >>> from interp.sites import Site
    >>> from interp.steering.axes import contrast_axis
    >>> g = torch.Generator().manual_seed(0)
    >>> pos, neg = torch.randn(50, 8, generator=g) + 2, torch.randn(50, 8, generator=g)
    >>> ax = contrast_axis(pos, neg, site=Site("resid_post", 3), name="demo")
    >>> ax.node, ax.method
    ('L3.RESID', 'contrast')
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float, Shaped
from torch import Tensor

from interp.errors import ConfigError, DataError, ShapeError, StoreError
from interp.nodes import node_id
from interp.sites import Site

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["Axis", "METHODS", "contrast_axis", "pca_axis", "ica_axis", "probe_axis", "fit_axis", "load_axis",
           "residual_activations", "rows_from_store", "axis_from_store", "probe_by_layer", "axes_result", "projections_result",
           "data_hash"]

METHODS = ("contrast", "pca", "ica", "probe", "fv", "cylinder")
_FORMAT = "interp.axis/1"


@dataclass(frozen=True, kw_only=True, eq=False)
class Axis:
    """A direction in activation space at one site.

    Attributes:
        name: concept or task (``"sentiment"``).
        vector: ``[d_model]`` float tensor (CPU, float32).
        site: where it was fitted and where steering adds it (``Site("resid_post", l)``).
        method: one of :data:`METHODS`.
        data_hash: hash of the fitting data (see :func:`data_hash`).
        model: model spec it was fitted on (``""`` if unknown).
        stats: fit statistics (JSON-able: floats, ints, strings, lists).
    """

    name: str
    vector: torch.Tensor
    site: Site
    method: str
    data_hash: str = ""
    model: str = ""
    stats: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown axis method {self.method!r}; expected one of {METHODS}")
        v = self.vector
        if not isinstance(v, torch.Tensor) or v.ndim != 1 or v.numel() == 0:
            raise ShapeError(f"axis {self.name!r}: vector must be a 1-d tensor [d_model], got "
                             f"{tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}")
        if not torch.isfinite(v).all():
            raise DataError(f"axis {self.name!r}: vector has NaN or inf entries")
        object.__setattr__(self, "vector", v.detach().to("cpu", torch.float32).contiguous())
        object.__setattr__(self, "stats", json.loads(json.dumps(self.stats, default=_jsonable)))

    @property
    def layer(self) -> int | None:
        return self.site.layer

    @property
    def node(self) -> str:
        """Circuit-graph node id of the site (``"L5.RESID"``)."""
        return node_id("resid", layer=self.site.layer) if self.site.layer is not None else "EMBED"

    @property
    def norm(self) -> float:
        return float(self.vector.norm())

    @property
    def unit(self) -> torch.Tensor:
        return self.vector / self.vector.norm().clamp_min(1e-12)

    def project(self, acts: torch.Tensor) -> torch.Tensor:
        """``[..., d_model] -> [...]`` scalar projection on the unit axis."""
        return acts.float() @ self.unit.to(acts.device)

    def with_vector(self, vector: torch.Tensor, **stats: Any) -> "Axis":
        """A copy with another vector (e.g. rotated or rescaled), stats updated."""
        return Axis(name=self.name, vector=vector, site=self.site, method=self.method, data_hash=self.data_hash,
                    model=self.model, stats={**self.stats, **stats})

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/axis.safetensors`` (the vector) and ``folder/axis.json`` (the rest)."""
        from safetensors.torch import save_file

        from interp._fs import atomic_write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "axis.safetensors.tmp"
        save_file({"vector": self.vector}, str(tmp))
        tmp.replace(folder / "axis.safetensors")
        atomic_write_json(folder / "axis.json", {
            "format": _FORMAT, "name": self.name, "site": str(self.site), "hook": self.site.hook_name,
            "method": self.method, "data_hash": self.data_hash, "model": self.model, "d_model": self.vector.numel(),
            "node": self.node, "norm": self.norm, "stats": self.stats})
        return folder

    def __repr__(self) -> str:
        return (f"Axis(name={self.name!r}, method={self.method!r}, site={str(self.site)!r}, "
                f"norm={self.norm:.4g}, d_model={self.vector.numel()})")


def load_axis(folder: str | Path) -> Axis:
    """Read an :class:`Axis` written by :meth:`Axis.save`.

    Raises:
        StoreError: missing files or an unknown format.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    meta_path, vec_path = folder / "axis.json", folder / "axis.safetensors"
    if not meta_path.exists() or not vec_path.exists():
        raise StoreError(f"{folder} is not a saved axis (expected axis.json and axis.safetensors)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != _FORMAT:
        raise StoreError(f"{meta_path}: unknown format {meta.get('format')!r}, expected {_FORMAT!r}")
    vec = load_file(str(vec_path))["vector"]
    return Axis(name=meta["name"], vector=vec, site=Site.parse(meta["site"]), method=meta["method"],
                data_hash=meta.get("data_hash", ""), model=meta.get("model", ""), stats=meta.get("stats", {}))


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.generic,)):
        return x.item()
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return x.tolist()
    return str(x)


def data_hash(x: Shaped[Tensor, "..."], labels: Any = None) -> str:
    """Short content hash of fitting data (activations and labels)."""
    import hashlib

    h = hashlib.sha256(np.ascontiguousarray(x.detach().cpu().float().numpy()).tobytes())
    if labels is not None:
        h.update(np.asarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- input checks


def _as_2d(x: Any, what: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach().cpu().float()
    if t.ndim != 2:
        raise ShapeError(f"{what}: expected activations [n, d_model], got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise DataError(f"{what}: activations contain NaN or inf")
    return t


def _labels(labels: Any, n: int) -> np.ndarray:
    y = np.asarray(labels).astype(int).ravel()
    if y.shape[0] != n:
        raise DataError(f"expected {n} labels (one per activation row), got {y.shape[0]}")
    bad = sorted(set(np.unique(y).tolist()) - {0, 1})
    if bad:
        raise DataError(f"labels must be 0/1, got values {bad}")
    for cls in (0, 1):
        if not (y == cls).any():
            raise DataError(f"class {cls} is empty: all {n} labels are {1 - cls}; a contrast needs both classes")
    return y


def _split(x: torch.Tensor, labels: Any) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    y = _labels(labels, x.shape[0])
    return x[torch.from_numpy(y == 1)], x[torch.from_numpy(y == 0)], y


def _orient(v: torch.Tensor, x: torch.Tensor, y: np.ndarray | None) -> torch.Tensor:
    if y is None:
        return v
    proj = x @ v
    return v if proj[torch.from_numpy(y == 1)].mean() >= proj[torch.from_numpy(y == 0)].mean() else -v


def _sep_stats(proj: torch.Tensor, y: np.ndarray) -> dict[str, float]:
    p1, p0 = proj[torch.from_numpy(y == 1)], proj[torch.from_numpy(y == 0)]
    thr = (p1.mean() + p0.mean()) / 2
    acc = float(((proj > thr).numpy().astype(int) == y).mean())
    pooled = float(torch.sqrt((p1.var(unbiased=False) + p0.var(unbiased=False)) / 2).clamp_min(1e-12))
    return {"train_accuracy": acc, "d_prime": float(p1.mean() - p0.mean()) / pooled}


# --------------------------------------------------------------------------- fitting


def contrast_axis(pos: Any, neg: Any, *, site: Site, name: str = "", model: str = "") -> Axis:
    """Difference of means ``mean(pos) - mean(neg)`` (raw length kept).

    Args:
        pos: ``[n1, d_model]`` activations where the concept is present.
        neg: ``[n0, d_model]`` activations where it is absent.

    Raises:
        DataError: one class empty, NaN/inf activations. ShapeError: mismatched widths.
    """
    p = torch.as_tensor(pos).detach().cpu().float()
    q = torch.as_tensor(neg).detach().cpu().float()
    for t, what in ((p, "positive"), (q, "negative")):
        if t.ndim != 2 or t.shape[0] == 0:
            raise DataError(f"contrast axis {name!r}: the {what} class is empty or not [n, d_model] "
                            f"(got shape {tuple(t.shape)}); a contrast needs examples of both classes")
    p, q = _as_2d(p, "positive"), _as_2d(q, "negative")
    if p.shape[1] != q.shape[1]:
        raise ShapeError(f"contrast axis {name!r}: positive d_model {p.shape[1]} != negative d_model {q.shape[1]}")
    v = p.mean(0) - q.mean(0)
    x = torch.cat([p, q])
    y = np.r_[np.ones(len(p), int), np.zeros(len(q), int)]
    stats = {"n_pos": len(p), "n_neg": len(q), **_sep_stats(x @ (v / v.norm().clamp_min(1e-12)), y)}
    return Axis(name=name, vector=v, site=site, method="contrast", data_hash=data_hash(x, y), model=model,
                stats=stats)


def pca_axis(x: Any, labels: Any = None, *, site: Site, component: int = 0, name: str = "",
             model: str = "") -> Axis:
    """Principal component ``component`` of centred activations (unit length).

    With labels, the sign is chosen so the positive class projects higher and the stats
    include the separation along the component.
    """
    x = _as_2d(x, "pca_axis")
    y = _labels(labels, x.shape[0]) if labels is not None else None
    if x.shape[0] < 2:
        raise DataError(f"pca_axis needs at least 2 rows, got {x.shape[0]}")
    xc = x - x.mean(0)
    _, s, vt = torch.linalg.svd(xc, full_matrices=False)
    if component >= vt.shape[0]:
        raise ConfigError(f"pca_axis: component {component} >= rank bound {vt.shape[0]}")
    var = s**2
    v = _orient(vt[component], x, y)
    stats: dict[str, Any] = {"component": component, "explained_variance_ratio": float(var[component] / var.sum()),
                             "n": x.shape[0]}
    if y is not None:
        stats.update(_sep_stats(x @ v, y))
    return Axis(name=name, vector=v, site=site, method="pca", data_hash=data_hash(x, y), model=model, stats=stats)


def ica_axis(x: Any, labels: Any = None, *, site: Site, n_components: int = 5, seed: int = 0, name: str = "",
             model: str = "") -> Axis:
    """One FastICA component (scikit-learn, seeded) as a unit axis.

    The data are first reduced to ``n_components`` by FastICA's whitening. With labels the
    component whose projection separates the classes best (largest ``|d'|``) is chosen and
    oriented; without labels the most non-Gaussian one (largest ``|excess kurtosis|``).
    """
    from sklearn.decomposition import FastICA

    x = _as_2d(x, "ica_axis")
    y = _labels(labels, x.shape[0]) if labels is not None else None
    k = min(n_components, x.shape[0] - 1, x.shape[1])
    if k < 1:
        raise DataError(f"ica_axis needs at least 2 rows, got {x.shape[0]}")
    ica = FastICA(n_components=k, random_state=seed, whiten="unit-variance", max_iter=1000, tol=1e-4)
    s = ica.fit_transform(x.numpy().astype(np.float64))
    dirs = torch.from_numpy(ica.components_.astype(np.float32))      # unmixing rows [k, d_model]
    dirs = dirs / dirs.norm(dim=1, keepdim=True).clamp_min(1e-12)
    if y is not None:
        scores = [abs(_sep_stats(x @ d, y)["d_prime"]) for d in dirs]
    else:
        sc = (s - s.mean(0)) / s.std(0).clip(1e-12)
        scores = list(np.abs((sc**4).mean(0) - 3.0))
    best = int(np.argmax(scores))
    v = _orient(dirs[best], x, y)
    stats: dict[str, Any] = {"component": best, "n_components": k, "seed": seed, "n": x.shape[0],
                             "selection_score": float(scores[best])}
    if y is not None:
        stats.update(_sep_stats(x @ v, y))
    return Axis(name=name, vector=v, site=site, method="ica", data_hash=data_hash(x, y), model=model, stats=stats)


def _control_labels(y: np.ndarray, groups: Sequence[Hashable] | None, rng: np.random.Generator) -> np.ndarray:
    """Hewitt & Liang control task: a random label per group (token type), same class balance.

    Without groups every row is its own type, which reduces to randomly permuted labels.
    """
    if groups is None:
        return rng.permutation(y)
    groups = list(groups)
    if len(groups) != len(y):
        raise DataError(f"control groups: expected {len(y)} (one per row), got {len(groups)}")
    types = sorted(set(groups), key=str)
    p1 = float(y.mean())
    assign = {t: int(rng.random() < p1) for t in types}
    return np.array([assign[g] for g in groups], dtype=int)


def probe_axis(x: Any, labels: Any, *, site: Site, seed: int = 0, test_size: float = 0.3, C: float = 1.0,
               control_groups: Sequence[Hashable] | None = None, name: str = "", model: str = "") -> Axis:
    """Logistic-regression probe (scikit-learn) with held-out and control-task accuracy.

    Features are standardised inside the probe; the returned axis is the probe's
    weight vector mapped back to activation space (unit length, pointing to class 1).
    Stats: ``accuracy`` (held-out), ``train_accuracy``, ``control_accuracy`` (the same
    probe trained and tested on control labels, Hewitt & Liang 2019), ``selectivity``
    (accuracy - control_accuracy), ``weight_norm``, ``intercept``, ``n_train``, ``n_test``.

    Args:
        control_groups: the "token type" of each row for the control task (e.g. the word
            a row was read at); ``None``: random permutation of the labels.
        test_size: held-out fraction (stratified split, seeded).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    if not 0.0 < test_size < 1.0:
        raise ConfigError(f"probe_axis: test_size must be in (0, 1), got {test_size}")
    x = _as_2d(x, "probe_axis")
    y = _labels(labels, x.shape[0])
    if min((y == 0).sum(), (y == 1).sum()) < 2:
        raise DataError(f"probe_axis: need >= 2 examples per class, got {(y == 1).sum()} / {(y == 0).sum()}")
    rng = np.random.default_rng(seed)
    xn = x.numpy().astype(np.float64)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_size, random_state=seed, stratify=y)

    def fit(labels_: np.ndarray) -> tuple[Any, Any, float, float]:
        scaler = StandardScaler().fit(xn[tr])
        clf = LogisticRegression(C=C, max_iter=2000).fit(scaler.transform(xn[tr]), labels_[tr])
        tr_acc = float(clf.score(scaler.transform(xn[tr]), labels_[tr]))
        te_acc = float(clf.score(scaler.transform(xn[te]), labels_[te]))
        return scaler, clf, tr_acc, te_acc

    yc = _control_labels(y, control_groups, rng)
    if len(np.unique(yc[tr])) < 2:
        yc = rng.permutation(y)
    scaler, clf, tr_acc, te_acc = fit(y)
    _, _, _, ctrl_acc = fit(yc)
    w = clf.coef_[0] / scaler.scale_
    b = float(clf.intercept_[0] - (w * scaler.mean_).sum())
    wn = float(np.linalg.norm(w))
    v = torch.from_numpy((w / max(wn, 1e-12)).astype(np.float32))
    stats = {"accuracy": te_acc, "train_accuracy": tr_acc, "control_accuracy": ctrl_acc,
             "selectivity": te_acc - ctrl_acc, "weight_norm": wn, "intercept": b, "n_train": len(tr),
             "n_test": len(te), "seed": seed, "C": C,
             "control": "permuted labels" if control_groups is None else "random label per type"}
    return Axis(name=name, vector=v, site=site, method="probe", data_hash=data_hash(x, y), model=model, stats=stats)


def fit_axis(method: str, x: Any, labels: Any, *, site: Site, name: str = "", model: str = "", seed: int = 0) -> Axis:
    """Dispatch to the fitting function of ``method`` (``contrast``, ``pca``, ``ica``, ``probe``)."""
    x = _as_2d(x, f"fit_axis({method})")
    if method == "contrast":
        p, q, _ = _split(x, labels)
        return contrast_axis(p, q, site=site, name=name, model=model)
    if method == "pca":
        return pca_axis(x, labels, site=site, name=name, model=model)
    if method == "ica":
        return ica_axis(x, labels, site=site, name=name, model=model, seed=seed)
    if method == "probe":
        return probe_axis(x, labels, site=site, name=name, model=model, seed=seed)
    from interp.errors import nearest

    raise ConfigError(f"unknown method {method!r}.{nearest(method, ['contrast', 'pca', 'ica', 'probe'])}")


# --------------------------------------------------------------------------- activations


def residual_activations(model: Model, prompts: Sequence[str], layers: Sequence[int], *, position: str = "last",
                         batch_size: int = 16, progress: bool = False) -> dict[int, Float[Tensor, "prompt d_model"]]:
    """Residual stream (``resid_post``) rows ``[n_prompts, d_model]`` per layer.

    Args:
        position: ``"last"`` (last real token of each prompt) or ``"mean"`` (mean over
            real tokens; beware of massive activations on the first token in some models).
    """
    from tqdm.auto import tqdm

    from interp.arch import padding_kwargs
    from interp.hooks import run_capture
    from interp.models import tokenize

    if position not in ("last", "mean"):
        raise ConfigError(f"position must be 'last' or 'mean', got {position!r}")
    if not prompts:
        raise DataError("residual_activations: no prompts")
    sites = [Site("resid_post", int(l)) for l in layers]
    out: dict[int, list[torch.Tensor]] = {int(l): [] for l in layers}
    starts = range(0, len(prompts), batch_size)
    with torch.inference_mode():
        for i in tqdm(starts, disable=not progress, desc="activations"):
            tb = tokenize(model, list(prompts[i:i + batch_size]))
            acts = run_capture(model, tb.tokens, sites, **padding_kwargs(model, tb.mask))
            for s in sites:
                a = acts[s].float()
                if position == "last":
                    r = a[torch.arange(a.shape[0], device=a.device), tb.last]
                else:
                    m = tb.mask.to(a.dtype)[..., None]
                    r = (a * m).sum(1) / m.sum(1)
                out[s.layer].append(r.cpu())
    return {l: torch.cat(v) for l, v in out.items()}


def rows_from_store(store: Any, site: Site, *, position: str = "last") -> Float[Tensor, "batch d_model"]:
    """``[batch, d_model]`` rows from an activation store (``store[site]`` right-padded, ``store.lengths``)."""
    acts = torch.as_tensor(store[site]).float()
    lengths = torch.as_tensor(store.lengths).long().to(acts.device)
    if acts.ndim != 3:
        raise ShapeError(f"{site.hook_name}: expected (batch, pos, d_model) in the store, got {tuple(acts.shape)}")
    if position == "last":
        return acts[torch.arange(acts.shape[0], device=acts.device), lengths - 1].cpu()
    if position == "mean":
        mask = (torch.arange(acts.shape[1], device=acts.device)[None] < lengths[:, None]).float()[..., None]
        return ((acts * mask).sum(1) / mask.sum(1)).cpu()
    raise ConfigError(f"position must be 'last' or 'mean', got {position!r}")


def axis_from_store(store: Any, site: Site, labels: Any, method: str, *, position: str = "last", name: str = "",
                    seed: int = 0) -> Axis:
    """Fit an axis on the rows of an :class:`~interp.cache.ActivationStore` (see :func:`rows_from_store`).

    Example:
        >>> from interp.cache import collect
        >>> texts, labels = ["a good day", "a great day", "a bad day", "an awful day"], [1, 1, 0, 0]
        >>> store = collect(model, texts, [Site("resid_post", 1)], progress=False)   # model: the toy Llama
        >>> ax = axis_from_store(store, Site("resid_post", 1), labels, "contrast")
        >>> ax.node, ax.method, tuple(ax.vector.shape)
        ('L1.RESID', 'contrast', (64,))
    """
    model = getattr(store, "model", "") or ""
    return fit_axis(method, rows_from_store(store, site, position=position), labels, site=site, name=name,
                    model=str(model), seed=seed)


# --------------------------------------------------------------------------- Results


def probe_by_layer(acts: dict[int, Float[Tensor, "prompt d_model"]], labels: Any, *, seed: int = 0, meta: Any = None,
                   name: str = "", **probe_kw: Any) -> Any:
    """Fit a probe per layer; Result ``steering.probe`` (layer, node, accuracy, control_accuracy, ...)."""
    import pandas as pd

    from interp.results import Result, RunMeta

    rows = []
    for layer in sorted(acts):
        ax = probe_axis(acts[layer], labels, site=Site("resid_post", layer), seed=seed, name=name, **probe_kw)
        rows.append({"layer": layer, "node": ax.node, "accuracy": ax.stats["accuracy"],
                     "control_accuracy": ax.stats["control_accuracy"], "selectivity": ax.stats["selectivity"],
                     "train_accuracy": ax.stats["train_accuracy"]})
    return Result("steering.probe", pd.DataFrame(rows), meta or RunMeta(seed=seed), name=name)


def axes_result(axes: Sequence[Axis], *, meta: Any = None, name: str = "") -> Any:
    """Result ``steering.axes``: one row per axis (name, method, layer, site, node, norm, stats)."""
    import pandas as pd

    from interp.results import Result, RunMeta

    rows = []
    for ax in axes:
        row = {"name": ax.name, "method": ax.method, "layer": ax.layer, "site": str(ax.site), "node": ax.node,
               "norm": ax.norm, "accuracy": ax.stats.get("accuracy", ax.stats.get("train_accuracy", math.nan)),
               "control_accuracy": ax.stats.get("control_accuracy", math.nan),
               "d_prime": ax.stats.get("d_prime", math.nan), "data_hash": ax.data_hash}
        rows.append(row)
    return Result("steering.axes", pd.DataFrame(rows), meta or RunMeta(), name=name)


def projections_result(axes: Sequence[Axis], acts: dict[int, Float[Tensor, "prompt d_model"]], labels: Any, *, meta: Any = None,
                       name: str = "") -> Any:
    """Result ``steering.projection``: projection of each labelled row on the axis of its layer."""
    import pandas as pd

    from interp.results import Result, RunMeta

    y = np.asarray(labels).astype(int)
    rows = []
    for ax in axes:
        if ax.layer not in acts:
            continue
        proj = ax.project(acts[ax.layer]).numpy()
        rows += [{"layer": ax.layer, "node": ax.node, "method": ax.method, "index": i, "label": int(y[i]),
                  "projection": float(p)} for i, p in enumerate(proj)]
    return Result("steering.projection", pd.DataFrame(rows), meta or RunMeta(), name=name)
