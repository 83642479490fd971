"""Cylindrical analysis of a concept: a mean axis plus a low-dimensional normal plane.

Per-sample difference vectors ``d_i = h(pos_i) - h(neg_i)`` (minimal pairs); the axis is
their mean; the normal plane is the PCA (k = 5) of the components of ``d_i`` orthogonal
to the axis. :func:`angle_sweep` rotates a steering vector of the axis's length away from
the axis towards a normal direction and records the steering success at each angle, as
measured by an injected ``effect(steer_factory) -> float``.

Example:
    >>> import torch
    >>> from interp.sites import Site
    >>> from interp.steering.cylinder import fit_cylinder
    >>> g = torch.Generator().manual_seed(0)
    >>> neg = torch.randn(40, 16, generator=g); pos = neg + 3 * torch.eye(16)[0] + 0.1 * torch.randn(40, 16, generator=g)
    >>> cyl = fit_cylinder(pos, neg, site=Site("resid_post", 2))
    >>> round(float(cyl.axis.unit[0]), 2)
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from interp.errors import ConfigError, DataError, ShapeError
from interp.sites import Site
from interp.steering.axes import Axis, data_hash

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["Cylinder", "fit_cylinder", "rotated", "angle_sweep"]


@dataclass(frozen=True, eq=False)
class Cylinder:
    """Axis + normal plane of paired difference vectors.

    Attributes:
        axis: mean difference (method ``"cylinder"``).
        normal: ``[k, d_model]`` orthonormal PCA directions of the orthogonal residuals.
        normal_var: ``[k]`` their variance ratios (of the orthogonal residual variance).
        angles: ``[n]`` angle in degrees between each ``d_i`` and the axis.
        axial_fraction: share of ``sum ||d_i||^2`` along the axis.
    """

    axis: Axis
    normal: torch.Tensor
    normal_var: torch.Tensor
    angles: torch.Tensor
    axial_fraction: float


def fit_cylinder(pos: Any, neg: Any, *, site: Site, k: int = 5, name: str = "", model: str = "") -> Cylinder:
    """Fit the cylinder from paired activations ``pos[i]``, ``neg[i]`` (``[n, d_model]`` each)."""
    p = torch.as_tensor(pos).detach().cpu().float()
    q = torch.as_tensor(neg).detach().cpu().float()
    if p.ndim != 2 or p.shape != q.shape:
        raise ShapeError(f"fit_cylinder: expected paired [n, d_model] tensors of one shape, got "
                         f"{tuple(p.shape)} and {tuple(q.shape)}")
    if p.shape[0] < 2:
        raise DataError(f"fit_cylinder: need >= 2 pairs, got {p.shape[0]}")
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    d = p - q
    a = d.mean(0)
    u = a / a.norm().clamp_min(1e-12)
    along = d @ u
    orth = d - along[:, None] * u
    oc = orth - orth.mean(0)
    _, s, vt = torch.linalg.svd(oc, full_matrices=False)
    k = min(k, vt.shape[0])
    var = s**2
    normal_var = var[:k] / var.sum().clamp_min(1e-12)
    cos = along / d.norm(dim=1).clamp_min(1e-12)
    angles = torch.rad2deg(torch.arccos(cos.clamp(-1, 1)))
    axial = float((along**2).sum() / (d**2).sum().clamp_min(1e-12))
    ax = Axis(name=name, vector=a, site=site, method="cylinder", data_hash=data_hash(d), model=model,
              stats={"n_pairs": p.shape[0], "axial_fraction": axial, "mean_angle_deg": float(angles.mean()),
                     "normal_var": normal_var.tolist()})
    return Cylinder(axis=ax, normal=vt[:k], normal_var=normal_var, angles=angles, axial_fraction=axial)


def rotated(cyl: Cylinder, angle_deg: float, *, direction: int = 0) -> Axis:
    """The axis rotated by ``angle_deg`` towards normal direction ``direction`` (same length)."""
    if not math.isfinite(angle_deg):
        raise ConfigError(f"angle must be finite, got {angle_deg}")
    if not 0 <= direction < cyl.normal.shape[0]:
        raise ConfigError(f"direction must be in [0, {cyl.normal.shape[0]}), got {direction}")
    th = math.radians(angle_deg)
    n = cyl.normal[direction]
    n = n - (n @ cyl.axis.unit) * cyl.axis.unit
    n = n / n.norm().clamp_min(1e-12)
    v = cyl.axis.norm * (math.cos(th) * cyl.axis.unit + math.sin(th) * n)
    return cyl.axis.with_vector(v, angle_deg=angle_deg, direction=direction)


def angle_sweep(model: Model, cyl: Cylinder, angles: Sequence[float], effect: Callable[[Any], float], *,
                alpha: float = 1.0, direction: int = 0, positions: Any = "all", meta: Any = None) -> Any:
    """Result ``steering.cylinder``: steering success (``effect``) vs angle to the axis.

    Args:
        effect: ``fn(steer_factory) -> float``, e.g.
            ``lambda st: target_prob(model, prompts, targets, steer=st)``.
    """
    import pandas as pd

    from interp.results import Result, RunMeta
    from interp.steering.steer import steer_factory

    rows = []
    for ang in angles:
        ax = rotated(cyl, float(ang), direction=direction)
        rows.append({"angle_deg": float(ang), "layer": ax.layer, "node": ax.node, "alpha": alpha,
                     "cos": math.cos(math.radians(float(ang))),
                     "effect": float(effect(steer_factory(model, ax, alpha, positions=positions)))})
    return Result("steering.cylinder", pd.DataFrame(rows), meta or RunMeta(), name=cyl.axis.name)
