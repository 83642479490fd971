"""Seeded synthetic scenes for the VLM trained here (:mod:`interp.vlm.train`), with ground truth by construction.

**Scene**: a ``GRID x GRID`` (4 x 4) grid of ``CELL x CELL`` (8 x 8) pixel cells, a 32 x 32 RGB image on a black
background. A scene holds one to three objects, at most one of each shape (``square``, ``circle``, ``triangle``),
each in its own cell, each in one of four colours (``red``, ``green``, ``blue``, ``yellow``; colours may repeat
across shapes). The vision tower's patch size equals the cell size, so **one object is exactly one image patch**:
the object in cell ``c`` (row-major, ``c = row * GRID + col``) is image patch ``c``, i.e. the ``c``-th image token
of the prompt (:func:`object_positions` turns cells into token positions).

Cell :data:`SINK_CELL` (top-left) never holds an object: it is the patch on which the trained model carries its
planted visual sink (see :mod:`interp.vlm.train`), a background patch as the sinks of real VLMs are.

**Questions** (the LM reads the image first, then the question, and answers with one word after ``?``):

* ``exists``: ``"is there a red square?"`` -> ``yes``/``no``, balanced; a ``no`` asks for a (colour, shape) absent
  from the scene, drawn uniformly, so most are hard negatives (the shape present in another colour, or the colour
  on another shape). Chance: 1/2.
* ``colour``: ``"what colour is the circle?"`` about a shape present in the scene -> its colour. Chance: 1/4.

**Split**: every scene has an integer key (:meth:`SceneBatch.keys`); a fixed seeded tenth of all keys is held out
(:func:`held_out_mask`), never drawn for training and always drawn for evaluation.

**Minimal pairs** (:func:`minimal_pair`): the same scene with one object changed (its colour, its shape, or the
object removed), for NOTICE-style image corruption and for restoring checks.

Example:
    >>> b = draw_scenes(4, seed=0)
    >>> b.images().shape, b.pixel_values().shape
    ((4, 32, 32, 3), torch.Size([4, 3, 32, 32]))
    >>> s = b.scene(0); all(0 < o.cell < N_PATCHES for o in s.objects)
    True
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch

from interp.errors import ConfigError, nearest

__all__ = ["COLOURS", "SHAPES", "RGB", "GRID", "CELL", "IMAGE", "N_PATCHES", "SINK_CELL", "KINDS", "CHANCE",
           "Obj", "Scene", "SceneBatch", "Question", "draw_scenes", "draw_questions", "question_text",
           "minimal_pair", "pixel_values", "held_out_mask", "object_positions", "IMAGE_MEAN", "IMAGE_STD"]

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("square", "circle", "triangle")
RGB = {"red": (230, 40, 40), "green": (40, 200, 40), "blue": (50, 90, 240), "yellow": (230, 220, 40)}
GRID = 4
CELL = 8
IMAGE = GRID * CELL
N_PATCHES = GRID * GRID
#: the background cell carrying the planted visual sink; never holds an object
SINK_CELL = 0
KINDS = ("exists", "colour")
CHANCE = {"exists": 0.5, "colour": 0.25}
#: pixel normalisation (the processor's): (x / 255 - mean) / std
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
_HELD_OUT_SEED = 20251130
_HELD_OUT_FRACTION = 0.1
_KEY_BASE = len(COLOURS) * N_PATCHES + 1   # per shape slot: 0 = absent, else 1 + colour * N_PATCHES + cell


@lru_cache(maxsize=1)
def _masks() -> torch.Tensor:
    """``[3, CELL, CELL]`` bool masks of the shapes inside one cell (square 36 px, circle 32 px, triangle 24 px)."""
    r = torch.arange(CELL, dtype=torch.float32)[:, None]
    c = torch.arange(CELL, dtype=torch.float32)[None, :]
    square = (r >= 1) & (r <= 6) & (c >= 1) & (c <= 6)
    circle = (r - 3.5) ** 2 + (c - 3.5) ** 2 <= 3.3 ** 2
    triangle = (r >= 1) & (r <= 6) & ((c - 3.5).abs() <= (r - 0.5) * 0.6)
    return torch.stack([square, circle, triangle])


def _check_name(name: str, options: tuple[str, ...], what: str) -> int:
    if name not in options:
        raise ConfigError(f"{what} must be one of {options}, got {name!r}.{nearest(str(name), options)}")
    return options.index(name)


@dataclass(frozen=True)
class Obj:
    """One object: its ``shape``, ``colour`` and ``cell`` (row-major index; its image patch)."""

    shape: str
    colour: str
    cell: int

    def __post_init__(self) -> None:
        _check_name(self.shape, SHAPES, "object shape")
        _check_name(self.colour, COLOURS, "object colour")
        if not (isinstance(self.cell, int) and 0 <= self.cell < N_PATCHES) or self.cell == SINK_CELL:
            raise ConfigError(f"object cell must be an int in 1..{N_PATCHES - 1} (cell {SINK_CELL} is the sink "
                              f"cell), got {self.cell!r}")


@dataclass(frozen=True)
class Scene:
    """A scene: up to three objects of distinct shapes in distinct cells (see the module docstring)."""

    objects: tuple[Obj, ...]

    def __post_init__(self) -> None:
        shapes = [o.shape for o in self.objects]
        cells = [o.cell for o in self.objects]
        if len(set(shapes)) != len(shapes) or len(set(cells)) != len(cells):
            raise ConfigError(f"scene objects must have distinct shapes and distinct cells, got {self.objects}")

    def get(self, shape: str) -> Obj | None:
        """The object of this ``shape``, or ``None``."""
        _check_name(shape, SHAPES, "shape")
        return next((o for o in self.objects if o.shape == shape), None)

    def has(self, colour: str, shape: str) -> bool:
        o = self.get(shape)
        return o is not None and o.colour == colour

    def to_batch(self) -> SceneBatch:
        colour = torch.full((1, len(SHAPES)), -1, dtype=torch.long)
        cell = torch.full((1, len(SHAPES)), -1, dtype=torch.long)
        for o in self.objects:
            colour[0, SHAPES.index(o.shape)] = COLOURS.index(o.colour)
            cell[0, SHAPES.index(o.shape)] = o.cell
        return SceneBatch(colour, cell)

    def render(self) -> np.ndarray:
        """The image, ``uint8 [IMAGE, IMAGE, 3]`` (height, width, RGB)."""
        return self.to_batch().images()[0]


@dataclass(frozen=True)
class SceneBatch:
    """Scenes as tensors, one slot per shape: ``colour [B, 3]`` and ``cell [B, 3]`` (``-1`` where absent)."""

    colour: torch.Tensor
    cell: torch.Tensor

    def __len__(self) -> int:
        return int(self.colour.shape[0])

    @property
    def present(self) -> torch.Tensor:
        return self.colour >= 0

    def keys(self) -> torch.Tensor:
        """``[B]`` integer key of each scene (equal keys = equal scenes)."""
        slot = torch.where(self.present, 1 + self.colour * N_PATCHES + self.cell, torch.zeros_like(self.colour))
        return (slot * torch.tensor([_KEY_BASE ** 2, _KEY_BASE, 1])).sum(-1)

    def scene(self, i: int) -> Scene:
        return Scene(tuple(Obj(SHAPES[s], COLOURS[int(self.colour[i, s])], int(self.cell[i, s]))
                           for s in range(len(SHAPES)) if int(self.colour[i, s]) >= 0))

    def images(self) -> np.ndarray:
        """``uint8 [B, IMAGE, IMAGE, 3]``."""
        b = len(self)
        rgb = torch.tensor([RGB[c] for c in COLOURS], dtype=torch.uint8)             # [4, 3]
        cells = torch.zeros(b, N_PATCHES, CELL, CELL, 3, dtype=torch.uint8)
        masks = _masks()
        for s in range(len(SHAPES)):
            rows = torch.nonzero(self.present[:, s]).flatten()
            if rows.numel():
                paint = masks[s][None, :, :, None] * rgb[self.colour[rows, s]][:, None, None, :]
                cells[rows, self.cell[rows, s]] = paint.to(torch.uint8)
        img = cells.view(b, GRID, GRID, CELL, CELL, 3).permute(0, 1, 3, 2, 4, 5).reshape(b, IMAGE, IMAGE, 3)
        return img.numpy()

    def pixel_values(self) -> torch.Tensor:
        """``float32 [B, 3, IMAGE, IMAGE]``, normalised as the processor does (:func:`pixel_values`)."""
        return pixel_values(self.images())


def pixel_values(images: np.ndarray) -> torch.Tensor:
    """``uint8 [B, H, W, 3]`` images -> ``float32 [B, 3, H, W]``: ``(x / 255 - mean) / std``, the saved
    ``CLIPImageProcessor``'s rescale and normalise (it neither resizes nor crops)."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@lru_cache(maxsize=1)
def held_out_mask() -> torch.Tensor:
    """``bool [_KEY_BASE ** 3]``: the held-out scene keys (a fixed seeded tenth)."""
    g = torch.Generator().manual_seed(_HELD_OUT_SEED)
    return torch.rand(_KEY_BASE ** 3, generator=g) < _HELD_OUT_FRACTION


def _draw_raw(n: int, g: torch.Generator) -> SceneBatch:
    n_shapes = len(SHAPES)
    # a non-empty subset of the shapes: 7 subsets, uniform
    subset = torch.randint(1, 2 ** n_shapes, (n,), generator=g)
    present = ((subset[:, None] >> torch.arange(n_shapes)) & 1).bool()
    colour = torch.randint(0, len(COLOURS), (n, n_shapes), generator=g)
    # distinct cells, never the sink cell: the first three of a random permutation of the other cells
    free = torch.tensor([c for c in range(N_PATCHES) if c != SINK_CELL])
    perm = torch.argsort(torch.rand(n, free.numel(), generator=g), dim=1)[:, :n_shapes]
    cell = free[perm]
    return SceneBatch(torch.where(present, colour, -1), torch.where(present, cell, -1))


def draw_scenes(n: int, seed: int, *, split: str = "train") -> SceneBatch:
    """``n`` scenes drawn with ``seed`` from ``split`` (``"train"`` or ``"held_out"``; see the module docstring)."""
    _check_name(split, ("train", "held_out"), "split")
    if n < 1:
        raise ConfigError(f"number of scenes must be >= 1, got {n}")
    g = torch.Generator().manual_seed(int(seed))
    want_held = split == "held_out"
    colours, cells, have = [], [], 0
    while have < n:
        raw = _draw_raw(max(2 * (n - have), 16) * (10 if want_held else 1), g)
        keep = held_out_mask()[raw.keys()] == want_held
        colours.append(raw.colour[keep])
        cells.append(raw.cell[keep])
        have += int(keep.sum())
    return SceneBatch(torch.cat(colours)[:n], torch.cat(cells)[:n])


@dataclass(frozen=True)
class Question:
    """One question about scene ``index`` of a batch: its ``kind``, ``colour``/``shape`` words, the ``text``,
    the one-word ``answer`` and ``target``, the object the answer rests on (``None`` for an ``exists`` -> ``no``)."""

    index: int
    kind: str
    colour: str | None
    shape: str
    text: str
    answer: str
    target: Obj | None


def question_text(kind: str, shape: str, colour: str | None = None) -> str:
    """``"is there a red square?"`` (``exists``) or ``"what colour is the circle?"`` (``colour``)."""
    _check_name(kind, KINDS, "question kind")
    _check_name(shape, SHAPES, "shape")
    if kind == "exists":
        _check_name(colour, COLOURS, "colour")
        return f"is there a {colour} {shape}?"
    return f"what colour is the {shape}?"


def draw_questions(batch: SceneBatch, kind: str, seed: int, *, answer: str | None = None) -> list[Question]:
    """One question of ``kind`` per scene of ``batch``, drawn with ``seed``.

    ``exists`` questions are ``yes`` for a uniform half (or all when ``answer="yes"``, none when ``answer="no"``):
    a ``yes`` asks for a present object drawn uniformly, a ``no`` for an absent (colour, shape) drawn uniformly.
    ``colour`` questions ask for a present shape drawn uniformly.
    """
    _check_name(kind, KINDS, "question kind")
    if answer is not None and (kind != "exists" or answer not in ("yes", "no")):
        raise ConfigError(f"answer= may only force 'yes'/'no' of 'exists' questions, got {answer!r} for {kind!r}")
    rng = np.random.default_rng(int(seed))
    out = []
    for i in range(len(batch)):
        scene = batch.scene(i)
        if kind == "colour":
            o = scene.objects[rng.integers(len(scene.objects))]
            out.append(Question(i, kind, None, o.shape, question_text(kind, o.shape), o.colour, o))
            continue
        yes = bool(rng.random() < 0.5) if answer is None else answer == "yes"
        if yes:
            o = scene.objects[rng.integers(len(scene.objects))]
            out.append(Question(i, kind, o.colour, o.shape, question_text(kind, o.shape, o.colour), "yes", o))
        else:
            absent = [(c, s) for s in SHAPES for c in COLOURS if not scene.has(c, s)]
            c, s = absent[rng.integers(len(absent))]
            out.append(Question(i, kind, c, s, question_text(kind, s, c), "no", None))
    return out


def minimal_pair(scene: Scene, shape: str, change: str, *, seed: int = 0) -> Scene:
    """The same ``scene`` with its ``shape`` object changed: ``"colour"`` (another colour), ``"shape"`` (another
    shape absent from the scene; fails when none is), ``"remove"`` (the object removed; fails when it is the only
    one, a scene keeps at least one object). Every other object is unchanged; the choice is drawn with ``seed``."""
    _check_name(change, ("colour", "shape", "remove"), "minimal-pair change")
    o = scene.get(shape)
    if o is None:
        raise ConfigError(f"minimal_pair: the scene has no {shape}, its objects are {scene.objects}")
    rng = np.random.default_rng(int(seed))
    others = tuple(x for x in scene.objects if x is not o)
    if change == "remove":
        if not others:
            raise ConfigError(f"minimal_pair: cannot remove the {shape}, it is the scene's only object")
        return Scene(others)
    if change == "colour":
        options = [c for c in COLOURS if c != o.colour]
        new = replace(o, colour=options[rng.integers(len(options))])
    else:
        options = [s for s in SHAPES if scene.get(s) is None]
        if not options:
            raise ConfigError(f"minimal_pair: no shape is absent from the scene to turn the {shape} into")
        new = replace(o, shape=options[rng.integers(len(options))])
    return Scene(tuple(new if x is o else x for x in scene.objects))


def object_positions(cells: list[int] | tuple[int, ...], image_positions: list[int] | torch.Tensor) -> list[int]:
    """Token positions of the image patches ``cells``, given the prompt's image-token positions (in order,
    one per patch: ``image_positions[c]`` is patch ``c``)."""
    pos = [int(p) for p in image_positions]
    if len(pos) != N_PATCHES:
        raise ConfigError(f"expected {N_PATCHES} image-token positions (one per patch), got {len(pos)}")
    return [pos[c] for c in cells]
