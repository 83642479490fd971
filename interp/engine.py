"""The one batched intervention engine: worlds of rows with typed interventions on Sites.

A *pass* runs a set of **worlds** side by side on one batch axis (Penzai's
``RewireComputationPaths``, TransformerLens' batched patching). Every world is a block of
``B`` rows, one per prompt of ``tokens`` ``[B, pos]``, and carries typed
:class:`Intervention` s on :class:`~interp.sites.Site` s:

* ``set`` / ``ablate``: the region becomes ``value`` (broadcast; ``ablate`` defaults to 0);
* ``add`` / ``scale``: the region plus / times ``value``;
* ``gate``: every head of a per-head site times ``value`` (``[head]``, ``[batch, head]``, or
  ``[tile, head]``: the rows split into equal tiles of consecutive rows, as CHG's mask tiles); the
  value may be a zero-argument callable read when the hook runs (gates trained in a loop;
  returning None leaves the pass ungated);
* ``restore``: the region takes the same region of ``value``, a recorded activation of the
  site's hook (``[batch, pos, ...]``, or ``[pos, ...]`` shared by all rows), e.g. the
  clean run's activation in a corrupted world.
* ``apply``: the region becomes ``value(region)``, a callable given the world's own rows (it may
  return None to keep them): values computed in the same world during the pass, e.g. edge-level
  circuit evaluation, where a receiver's input depends on the world's own sender outputs.

The *region* is the site's head slice (``Site("z", 3, head=1)``) at ``positions``: all
(``None``), one (``int``), several (``tuple``), a ``slice``, one per row (a ``[batch]`` tensor),
or a ``[batch, pos]`` bool mask (a VLM token group), indexing axis 1 after the head selection.
Values longer than the pass along a position axis are cut to it (values recorded on longer prompts).

A world may **enter at layer l** (``World(enter=l)``): its rows join the pass at
``resid_pre`` of layer ``l`` as copies of ``entry`` (recorded residuals ``[batch, pos,
d_model]``) or, without ``entry``, of the base rows' own residual there, so no layer
before ``l`` is computed for it. The *base* rows (``with_base``, or needed as the source
of entering worlds) run the unintervened prompts; ``base`` interventions apply to every
block (e.g. the noise of causal tracing). A pass whose worlds all enter from recorded
residuals starts from a one-row stub that the first entering world replaces.

The pass stops at ``ln_final`` and reads each row's final hidden state at ``positions``
only (the last layer's MLP then runs at that position only, where a one-off check on the
model shows this is exact); logits are unembedded for those rows only, and with
``columns`` for just those token ids. Worlds are chunked into passes of at most
``max_rows`` rows.

Example:
    >>> import torch
    >>> from interp import load_model, Site
    >>> from interp.engine import Intervention, World, run
    >>> model = load_model("toy:llama")
    >>> tokens = torch.tensor([[256, 72, 105], [256, 99, 98]])
    >>> zero = World((Intervention("ablate", Site("z", 1, head=0)),), enter=1)
    >>> out = run(model, tokens, [World(), zero], with_base=True)
    >>> out.worlds.shape, out.base.shape          # [world, batch, d_vocab], [batch, d_vocab]
    (torch.Size([2, 2, 259]), torch.Size([2, 259]))
    >>> bool((out.worlds[0] - out.base).abs().max() < 1e-4)
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Int, Shaped
from torch import Tensor

from interp.errors import ConfigError, ShapeError, nearest
from interp.forward import (_AFTER_BLOCKS, _TAIL_OK, Counter, _grow_kwargs, causal_mask, final_logits,  # noqa: F401
                            forward_hidden, tail_ok)
from interp.hooks import HookFn, hooked
from interp.sites import Site

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["OPS", "Intervention", "World", "Outcome", "Counter", "run", "intervening", "intervening_worlds", "as_hook", "forward_hidden",
           "final_logits", "causal_mask", "tail_ok"]

#: Intervention types.
OPS = ("set", "add", "scale", "ablate", "gate", "restore", "apply")


@dataclass(frozen=True, eq=False)
class Intervention:
    """One typed intervention: ``op`` on the region of ``site`` at ``positions`` (see the module doc).

    Attributes:
        op: one of :data:`OPS` (unknown names get the nearest).
        site: a Site or its string (``"z.3.1"``); a head selects that head's slice.
        value: scalar or tensor (``set``/``ablate``/``add``/``scale``/``gate``), or the recorded
            activation of the site's hook (``restore``).
        positions: ``None`` (all), an ``int``, a tuple of ints, a ``slice`` (e.g. ``slice(-1, None)``: the
            last column), a ``[batch]`` tensor (one per row), or a ``[batch, pos]`` bool mask (several per
            row, e.g. a VLM token group from :func:`interp.vlm.groups.token_group`).
    """

    op: str
    site: Site
    value: Any = 0.0
    positions: Any = None

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ConfigError(f"unknown intervention {self.op!r}.{nearest(self.op, OPS)} Known: {', '.join(OPS)}")
        site = self.site if isinstance(self.site, Site) else Site.parse(str(self.site))
        object.__setattr__(self, "site", site)
        pos = self.positions
        if isinstance(pos, (list, tuple)):
            pos = tuple(int(p) for p in pos)
            if not pos or min(pos) < 0:
                raise ConfigError(f"{self.op} {site}: positions must be a non-empty tuple of indices >= 0, got {pos}")
        elif isinstance(pos, slice):
            if pos.step not in (None, 1):
                raise ConfigError(f"{self.op} {site}: position slices must have step 1, got {pos}")
        elif isinstance(pos, Tensor):
            if not (pos.dim() == 1 and not pos.is_floating_point() or pos.dim() == 2 and pos.dtype == torch.bool):
                raise ConfigError(f"{self.op} {site}: per-row positions must be a [batch] integer tensor or a "
                                  f"[batch, pos] bool mask, got {pos.dtype} {tuple(pos.shape)}")
        elif pos is not None:
            pos = int(pos)
            if pos < 0:
                raise ConfigError(f"{self.op} {site}: position must be >= 0, got {pos}")
        object.__setattr__(self, "positions", pos)
        if self.op == "gate" and (site.head is not None or site.head_axis is None):
            raise ConfigError(f"gate {site}: gates act on every head of a per-head site (e.g. 'z.3'), "
                              "not on one head or a site without heads")
        if self.op == "gate" and not callable(self.value) and torch.as_tensor(self.value).dim() not in (0, 1, 2):
            raise ConfigError(f"gate {site}: gates must be [head], [batch, head] or [tile, head], "
                              f"got {tuple(torch.as_tensor(self.value).shape)}")
        if self.op == "apply" and not callable(self.value):
            raise ConfigError(f"apply {site}: value must be a callable region -> new region, "
                              f"got {type(self.value).__name__}")
        if self.op == "restore" and not isinstance(self.value, Tensor):
            raise ConfigError(f"restore {site}: value must be the recorded activation tensor, "
                              f"got {type(self.value).__name__}")


@dataclass(frozen=True, eq=False)
class World:
    """A block of rows (one per prompt) with its interventions; optionally entering at a layer.

    Attributes:
        interventions: applied in order at their sites.
        enter: layer whose ``resid_pre`` the rows enter at (``None``: they run from the tokens).
        entry: ``[batch, pos, d_model]`` residual to enter with; ``None`` = the base rows' own.
    """

    interventions: tuple[Intervention, ...] = ()
    enter: int | None = None
    entry: Tensor | None = field(default=None, repr=False)


@dataclass
class Outcome:
    """What a :func:`run` returns.

    Attributes:
        worlds: ``[world, batch, ...]`` readout of every world, in the order given.
        base: ``[batch, ...]`` readout of the base rows (``with_base``), else None.
        recorded: per world, ``{site: [batch, ...]}`` activations recorded after its interventions
            (sites before a world's entry layer are absent).
    """

    worlds: Tensor
    base: Tensor | None
    recorded: list[dict[Site, Tensor]]


# --------------------------------------------------------------------------- regions

def _depth(site: Site, n_layers: int) -> int:
    """Order of a site's hook in the forward pass: its layer; -1 before the blocks, n_layers after."""
    if site.layer is not None:
        return site.layer
    return n_layers if site.component in _AFTER_BLOCKS else -1


def _region_dims(site: Site) -> tuple[str, ...]:
    dims = site.dims
    return dims if site.head is None else dims[:site.head_axis] + dims[site.head_axis + 1:]


def _fit(v: Tensor, dims: Sequence[str], shape: Sequence[int]) -> Tensor:
    """Cut ``v`` (right-aligned with ``dims``/``shape``) along position axes longer than the target."""
    off = len(shape) - v.dim()
    for i in range(max(0, -off), v.dim()):
        j = i + off
        if "pos" in dims[j] and v.shape[i] > shape[j]:
            v = v.narrow(i, 0, shape[j])
    return v


def _index(positions: Any, n: int, n_pos: int, site: Site, device: Any) -> tuple:
    if positions is None:
        return (slice(None),)
    if isinstance(positions, slice):
        return (slice(None), positions)
    if isinstance(positions, Tensor):
        if positions.shape[0] != n:
            raise ShapeError(f"{site}: {positions.shape[0]} per-row positions for a block of {n} rows")
        if positions.dim() == 2:                                   # a [batch, pos] mask (token groups)
            if positions[:, n_pos:].any():
                raise ShapeError(f"{site}: position mask marks positions beyond the {n_pos} positions")
            return (positions[:, :n_pos].to(device),)
        pos = positions.to(device)
        top = int(pos.max()) if pos.numel() else 0
        index: tuple = (torch.arange(n, device=device), pos)
    else:
        top = positions if isinstance(positions, int) else max(positions)
        index = (slice(None), positions if isinstance(positions, int) else torch.tensor(positions, device=device))
    if top >= n_pos:
        raise ShapeError(f"{site}: position {top} out of range for {n_pos} positions")
    return index


def _apply(block: Tensor, iv: Intervention) -> None:
    """Apply ``iv`` in place to ``block`` (``[n, ...]``, the rows of one world at the site's hook)."""
    site, op = iv.site, iv.op
    n = block.shape[0]
    if op == "gate":
        value = iv.value() if callable(iv.value) else iv.value
        if value is None:                                    # a live gate that is off for this pass
            return
        g = torch.as_tensor(value).to(device=block.device, dtype=block.dtype)
        shape = [1] * block.dim()
        shape[site.head_axis] = block.shape[site.head_axis]
        if g.dim() == 2 and g.shape[0] != n and g.shape[0] and n % g.shape[0] == 0:
            g = g.repeat_interleave(n // g.shape[0], dim=0)   # [tile, head]: equal tiles of consecutive rows
        if g.dim() == 2:
            shape[0] = n
        src = block.clone() if g.requires_grad else block    # the product's backward must not see the write
        try:
            new = src * g.reshape(shape)
        except RuntimeError as e:
            raise ShapeError(f"gate {site}: gates {tuple(g.shape)} do not fit {tuple(block.shape)} "
                             "(expected [head], [batch, head] or [tile, head] with tiles dividing the batch)") from e
        idx = _index(iv.positions, n, block.shape[1], site, block.device)
        block[idx] = new[idx]
        return
    region = site.select(block)
    idx = _index(iv.positions, n, region.shape[1], site, block.device)
    v = iv.value
    if op == "apply":
        new = v(region)
        if new is not None:
            if tuple(new.shape) != tuple(region.shape):
                raise ShapeError(f"apply {site}: the callable returned {tuple(new.shape)}, expected the region's "
                                 f"{tuple(region.shape)}")
            region[idx] = new[idx]
        return
    try:
        if op == "restore":
            src = v.to(device=block.device, dtype=block.dtype)
            if src.dim() == block.dim() - 1:                       # one recorded prompt for every row
                src = _fit(src, site.dims[1:], block.shape[1:])[None]
            else:
                src = _fit(src, site.dims, block.shape)
            src = site.select(src)
            region[idx] = (src.expand(n, *src.shape[1:]) if src.shape[0] == 1 else src)[idx]
            return
        if isinstance(v, Tensor):
            v = v.to(device=region.device, dtype=region.dtype)
            if iv.positions is None:
                v = _fit(v, _region_dims(site), region.shape)
        if op in ("set", "ablate"):
            region[idx] = v
        elif op == "add":
            region[idx] = region[idx] + v
        else:
            region[idx] = region[idx] * v
    except RuntimeError as e:
        shape = tuple(v.shape) if isinstance(v, Tensor) else "scalar"
        raise ShapeError(f"{op} {site}: value {shape} does not fit the region {tuple(region[idx].shape)}") from e


def as_hook(interventions: Sequence[Intervention]) -> HookFn:
    """A hook ``fn(act, site)`` applying ``interventions`` (all at one hook point) to every row."""
    def fn(act: Tensor, site: Site) -> Tensor:
        out = act.clone()
        for iv in interventions:
            _apply(out, iv)
        return out
    return fn


@contextlib.contextmanager
def intervening(model: Model, interventions: Iterable[Intervention]) -> Iterator[None]:
    """Apply interventions to every row of every forward pass in the block (hooks removed in ``finally``).

    Example:
        >>> import torch
        >>> tokens = torch.tensor([[256, 72, 105]])
        >>> clean = model(tokens)
        >>> with intervening(model, [Intervention("ablate", "z.1.0")]):
        ...     ablated = model(tokens)                                    # head L1.H0 zeroed
        >>> ablated.shape, bool(torch.equal(clean, ablated))
        (torch.Size([1, 3, 259]), False)
        >>> torch.equal(model(tokens), clean)                             # hooks removed on exit
        True
    """
    by_point: dict[Site, list[Intervention]] = {}
    for iv in interventions:
        by_point.setdefault(iv.site.layer_site, []).append(iv)
    with hooked(model, [(p, as_hook(ivs)) for p, ivs in by_point.items()]):
        yield


@contextlib.contextmanager
def intervening_worlds(model: Model, worlds: Sequence[World], n_rows: int, *, base: Sequence[Intervention] = (),
                       record: Sequence[Site] = ()) -> Iterator[list[dict[Site, Shaped[Tensor, "rows ..."]]]]:
    """Apply each world's interventions to its own block of rows in any forward pass run in the block.

    For passes the caller runs itself (a KV-cached step, a generation loop): the pass's batch must be
    the worlds' blocks of ``n_rows`` consecutive rows, in the order given (a pass of another size
    raises a ShapeError naming the site). ``base`` applies to every row. Worlds may not enter at a
    layer (use :func:`run`). Yields, per world, ``{site: activation}`` of the last pass for ``record``.

    Example:
        >>> import torch
        >>> tokens = torch.tensor([[256, 72, 105]]).repeat(2, 1)
        >>> worlds = [World(), World((Intervention("ablate", "z.1.0"),))]
        >>> with intervening_worlds(model, worlds, 1):
        ...     logits = model(tokens)                      # row 0 clean, row 1 with L1.H0 zeroed
        >>> with intervening(model, [Intervention("ablate", "z.1.0")]):
        ...     ablated = model(tokens[:1])
        >>> bool(torch.allclose(logits[1], ablated[0], atol=1e-5)), bool(torch.allclose(logits[0], model(tokens[:1])[0], atol=1e-5))
        (True, True)
    """
    n_layers = model.cfg.n_layers
    for k, w in enumerate(worlds):
        if w.enter is not None or w.entry is not None:
            raise ConfigError(f"world {k}: intervening_worlds runs whole passes; entering at a layer needs run()")
    recorded: dict[int, dict[Site, Tensor]] = {i: {} for i in range(len(worlds))}
    blocks = [_Block(i, None, None) for i in range(len(worlds))]
    with hooked(model, _pass_hooks(blocks, worlds, base, n_rows, n_layers, record, recorded)):
        yield [recorded[i] for i in range(len(worlds))]


# --------------------------------------------------------------------------- worlds

@dataclass
class _Block:
    world: int            # index into the worlds given to run(); -1 = base rows
    enter: int | None
    entry: Tensor | None


def _check_world(w: World, k: int, n_layers: int, tokens: Tensor, d_model: int) -> None:
    if w.enter is None:
        if w.entry is not None:
            raise ConfigError(f"world {k}: entry residuals given without an entry layer (enter=)")
        return
    if not 0 <= w.enter < n_layers:
        raise ConfigError(f"world {k}: enter={w.enter} out of range; the model has {n_layers} layers")
    if w.entry is not None and tuple(w.entry.shape) != (*tokens.shape, d_model):
        raise ShapeError(f"world {k}: entry residuals: expected {(*tokens.shape, d_model)}, got {tuple(w.entry.shape)}")
    for iv in w.interventions:
        if _depth(iv.site, n_layers) < w.enter:
            raise ConfigError(f"world {k} enters at layer {w.enter} but intervenes at {iv.site}, before it")


def _pass_hooks(blocks: list[_Block], worlds: Sequence[World], base: Sequence[Intervention], n_b: int,
                n_layers: int, record: Sequence[Site], recorded: dict[int, dict[Site, Tensor]]) -> list:
    """Entry, intervention and record hooks of one pass over ``blocks`` (from-token blocks first)."""
    stub = all(b.enter is not None for b in blocks)
    first = min((b.enter for b in blocks if b.enter is not None), default=None)

    def present(depth: int) -> list[int]:
        if stub and depth < first:
            return []
        return [k for k, b in enumerate(blocks) if b.enter is None or b.enter <= depth]

    hooks: list[tuple[Site, Any]] = []
    entering: dict[int, list[_Block]] = {}
    for b in blocks:
        if b.enter is not None:
            entering.setdefault(b.enter, []).append(b)
    for layer, group in sorted(entering.items()):
        def enter(act: Tensor, site: Site, _g: list[_Block] = group, _start: bool = stub and layer == first) -> Tensor:
            new = [(b.entry if b.entry is not None else act[:n_b]).to(device=act.device, dtype=act.dtype)
                   for b in _g]
            return torch.cat(new if _start else [act, *new])
        hooks.append((Site("resid_pre", layer), enter))

    points: dict[Site, list[tuple[int | None, Intervention | None]]] = {}
    for iv in base:
        points.setdefault(iv.site.layer_site, []).append((None, iv))
    for k, b in enumerate(blocks):
        if b.world >= 0:
            for iv in worlds[b.world].interventions:
                points.setdefault(iv.site.layer_site, []).append((k, iv))
    for s in record:
        points.setdefault(s.layer_site, [])

    for point, items in points.items():
        depth = _depth(point, n_layers)
        rec = [s for s in record if s.layer_site == point]

        def fn(act: Tensor, site: Site, _items: list = items, _depth: int = depth, _rec: list[Site] = rec) -> Tensor:
            here = present(_depth)
            if here and act.shape[0] != len(here) * n_b:
                raise ShapeError(f"{site}: {act.shape[0]} rows in the pass, expected {len(here)} blocks of {n_b}")
            out = act.clone() if _items else act
            for k, iv in _items:
                for j in (here if k is None else [k]):
                    if j in here:
                        _apply(out[j * n_b:(j + 1) * n_b], iv)
            for s in _rec:
                for j in here:
                    if blocks[j].world >= 0:
                        recorded[blocks[j].world][s] = s.select(out[j * n_b:(j + 1) * n_b]).detach().clone()
            return out
        hooks.append((point, fn))
    return hooks


def run(model: Model, tokens: Int[Tensor, "batch pos"], worlds: Sequence[World], *,
        positions: Int[Tensor, " batch"] | None = None, readout: str = "logits",
        columns: Int[Tensor, "batch k"] | None = None, base: Sequence[Intervention] = (), with_base: bool = False,
        record: Sequence[Site] = (), max_rows: int | None = None, stop_early: bool = True,
        counter: Counter | None = None) -> Outcome:
    """Run ``worlds`` (each a block of ``batch`` rows) in as few passes as ``max_rows`` allows.

    Args:
        tokens: ``[batch, pos]`` prompts (right padding is harmless: reads are at ``positions``).
        worlds: the worlds; each row of world ``w`` is prompt ``b`` of ``tokens`` under ``w``'s interventions.
        positions: ``[batch]`` position read out per prompt (default: the last).
        readout: ``"logits"`` (``[..., d_vocab]``, or ``[..., k]`` with ``columns``) or ``"hidden"``
            (final normalised hidden states ``[..., d_model]``).
        columns: ``[batch, k]`` token ids to unembed (only those columns are computed).
        base: interventions applied to every block (the base rows and every world).
        with_base: also return the base rows' readout.
        record: sites whose activations (after interventions) each world returns.
        max_rows: most rows in one pass (at least one world per pass); None = all worlds at once.
        stop_early: stop at ``ln_final`` (default); False runs the whole model and reads its logits.
        counter: a :class:`Counter` advanced per pass.

    Raises:
        ConfigError: unknown readout, a world entering out of range or intervening before its entry layer.
        ShapeError: entry residuals or intervention values that do not fit.
    """
    if readout not in ("logits", "hidden"):
        raise ConfigError(f"unknown readout {readout!r}.{nearest(readout, ('logits', 'hidden'))} "
                          "Known: logits, hidden")
    if readout == "hidden" and not stop_early:
        raise ConfigError("readout='hidden' needs stop_early=True (the hidden state is read at ln_final)")
    n_b, n_pos = int(tokens.shape[0]), int(tokens.shape[1])
    n_layers, d_model = model.cfg.n_layers, model.cfg.d_model
    positions = torch.full((n_b,), n_pos - 1, dtype=torch.long) if positions is None else positions
    for k, w in enumerate(worlds):
        _check_world(w, k, n_layers, tokens, d_model)
    order = sorted(range(len(worlds)), key=lambda i: -1 if worlds[i].enter is None else worlds[i].enter)
    need_base = with_base or any(w.enter is not None and w.entry is None for w in worlds)
    per_pass = len(worlds) if max_rows is None else max(1, max_rows // n_b - int(need_base))
    chunks = [order[i:i + per_pass] for i in range(0, len(order), max(per_pass, 1))] or [[]]
    outs: dict[int, Tensor] = {}
    base_out: Tensor | None = None
    recorded: dict[int, dict[Site, Tensor]] = {i: {} for i in range(len(worlds))}
    for chunk in chunks:
        blocks = ([_Block(-1, None, None)] if need_base else []) + \
            [_Block(i, worlds[i].enter, worlds[i].entry) for i in chunk]
        if not blocks:
            break
        n_tok = sum(b.enter is None for b in blocks)
        hooks = _pass_hooks(blocks, worlds, base, n_b, n_layers, record, recorded)
        grow = any(b.enter is not None for b in blocks)
        start = tokens.repeat(n_tok, 1) if n_tok else tokens[:1]
        col = None if columns is None else columns.repeat(len(blocks), 1)
        if stop_early:
            hid = forward_hidden(model, start, positions, hooks, grow=grow, counter=counter)
            res = hid if readout == "hidden" else final_logits(model, hid, col)
        else:
            with hooked(model, hooks):
                logits = model(start, **(_grow_kwargs(model, n_pos, tokens.device) if grow else {}))
            rows = torch.arange(logits.shape[0], device=logits.device)
            res = logits[rows, positions.to(logits.device)[rows % n_b]]
            if col is not None:
                res = res.gather(-1, col.to(res.device))
            if counter is not None:
                counter.forward += 1
                counter.rows += int(logits.shape[0])
        res = res.reshape(len(blocks), n_b, *res.shape[1:])
        for j, b in enumerate(blocks):
            if b.world < 0:
                base_out = res[j] if base_out is None else base_out
            else:
                outs[b.world] = res[j]
    stacked = torch.stack([outs[i] for i in range(len(worlds))]) if worlds else torch.empty(0)
    return Outcome(stacked, base_out if with_base else None, [recorded[i] for i in range(len(worlds))])
