"""Figures of ``vlm.*`` Results: drawn by :mod:`interp.vlm.plots` (maps over the image grid)."""

from interp.vlm.plots import plot

__all__ = ["plot"]
