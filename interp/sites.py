"""Sites: the only code that builds or parses hook names.

A :class:`Site` names one place in the model where activations can be read or
written: a *component* (``"resid_post"``, ``"z"``, ``"pattern"`` ...), a *layer*
(``None`` for model-wide components such as ``"embed"``) and optionally a *head*
(a selection inside per-head components; the hook itself is per layer).

Each component knows its hook-name template and the names of its dims, in the one
vocabulary of the library: ``batch pos layer head kv_head d_model d_head d_mlp
d_vocab query_pos key_pos``.

Example:
    >>> from interp.sites import Site
    >>> Site("z", layer=3, head=1).hook_name
    'blocks.3.attn.hook_z'
    >>> Site.parse("blocks.3.hook_resid_post")
    Site(component='resid_post', layer=3, head=None)
    >>> [str(s) for s in parse_sites("resid_post", n_layers=2)]
    ['resid_post.0', 'resid_post.1']
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from interp.errors import SiteError, ShapeError, nearest

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["Component", "COMPONENTS", "Site", "parse_sites", "check_sites", "validate_site", "expected_shape"]


@dataclass(frozen=True)
class Component:
    """Facts about one kind of site: hook template, dims, whether it is per layer.

    Attributes:
        name: short name used by users (``"resid_post"``).
        template: hook name, with ``{layer}`` where the layer goes.
        dims: names of the activation's dims, batch first.
        per_head: the activation has a head dim (``head`` or ``kv_head``), so a
            Site of this component may select one head.
        doc: one line for ``interp sites`` and error messages.
    """

    name: str
    template: str
    dims: tuple[str, ...]
    per_head: bool = False
    doc: str = ""

    @property
    def per_layer(self) -> bool:
        return "{layer}" in self.template


def _c(name: str, template: str, dims: str, doc: str, per_head: bool = False) -> Component:
    return Component(name, template, tuple(dims.split()), per_head, doc)


#: Every component interp knows, as data. Hook names are TransformerLens names, which
#: the TransformerBridge resolves to its own hook points for every architecture.
COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in [
        _c("embed", "hook_embed", "batch pos d_model", "token embedding output"),
        _c("pos_embed", "hook_pos_embed", "batch pos d_model", "positional embedding (absolute-position models)"),
        _c("resid_pre", "blocks.{layer}.hook_resid_pre", "batch pos d_model", "residual stream entering the block"),
        _c("resid_mid", "blocks.{layer}.hook_resid_mid", "batch pos d_model", "residual stream between attention and MLP"),
        _c("resid_post", "blocks.{layer}.hook_resid_post", "batch pos d_model", "residual stream leaving the block (block output)"),
        _c("attn_out", "blocks.{layer}.hook_attn_out", "batch pos d_model", "attention output added to the residual stream"),
        _c("mlp_out", "blocks.{layer}.hook_mlp_out", "batch pos d_model", "MLP output added to the residual stream"),
        _c("mlp_post", "blocks.{layer}.mlp.hook_post", "batch pos d_mlp", "MLP hidden activations (input of W_out)"),
        _c("q", "blocks.{layer}.attn.hook_q", "batch pos head d_head", "queries per head", per_head=True),
        _c("k", "blocks.{layer}.attn.hook_k", "batch pos kv_head d_head", "keys per key/value head", per_head=True),
        _c("v", "blocks.{layer}.attn.hook_v", "batch pos kv_head d_head", "values per key/value head", per_head=True),
        _c("z", "blocks.{layer}.attn.hook_z", "batch pos head d_head", "head outputs before W_O", per_head=True),
        _c("attn_scores", "blocks.{layer}.attn.hook_attn_scores", "batch head query_pos key_pos", "pre-softmax attention scores", per_head=True),
        _c("pattern", "blocks.{layer}.attn.hook_pattern", "batch head query_pos key_pos", "attention probabilities", per_head=True),
        _c("ln_final", "ln_final.hook_out", "batch pos d_model", "final normalised residual stream (input of the unembedding)"),
        _c("final_resid", "ln_final.hook_in", "batch pos d_model", "residual stream before the final norm"),
        _c("q_input", "blocks.{layer}.hook_q_input", "batch pos head d_model", "per-head query input (residual before ln1); needs model.set_use_split_qkv_input(True)", per_head=True),
        _c("k_input", "blocks.{layer}.hook_k_input", "batch pos kv_head d_model", "per-KV-head key input; needs split qkv input", per_head=True),
        _c("v_input", "blocks.{layer}.hook_v_input", "batch pos kv_head d_model", "per-KV-head value input; needs split qkv input", per_head=True),
        _c("mlp_in", "blocks.{layer}.ln2.hook_in", "batch pos d_model", "MLP input (residual entering the MLP's norm; the MLP path only)"),
        _c("ln1_scale", "blocks.{layer}.ln1.hook_scale", "batch pos one", "the attention norm's scale (RMS / std) per token"),
        _c("ln_final_scale", "ln_final.hook_scale", "batch pos one", "the final norm's scale (RMS / std) per token"),
    ]
}

_HEAD_AXIS = {"batch pos head d_head": 2, "batch pos kv_head d_head": 2, "batch head query_pos key_pos": 1,
              "batch pos head d_model": 2, "batch pos kv_head d_model": 2}

# Reverse index: regex per component, built once from the templates above.
_PATTERNS: list[tuple[re.Pattern[str], Component]] = [
    (re.compile("^" + re.escape(c.template).replace(r"\{layer\}", r"(\d+)") + "$"), c)
    for c in COMPONENTS.values()
]


@dataclass(frozen=True, order=True)
class Site:
    """One place in the model: component, layer, optional head.

    Args:
        component: a key of :data:`COMPONENTS`.
        layer: block index, ``None`` only for model-wide components.
        head: head index for per-head components (a selection; the hook is per layer).

    Raises:
        SiteError: unknown component (with the nearest names), missing or negative layer,
            head on a component without heads.
    """

    component: str
    layer: int | None = None
    head: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.component, str):
            raise SiteError(f"Site component must be a string such as 'resid_post', got "
                            f"{type(self.component).__name__} {self.component!r}")
        for what in ("layer", "head"):
            v = getattr(self, what)
            if v is None or (isinstance(v, int) and not isinstance(v, bool)):
                continue
            try:  # numpy / torch integer scalars
                index = None if isinstance(v, (bool, str)) else int(v.__index__())
            except (AttributeError, TypeError, ValueError, RuntimeError):
                index = None
            if index is None:
                raise SiteError(f"Site({self.component!r}): {what} must be an int or None, got "
                                f"{type(v).__name__} {v!r}")
            object.__setattr__(self, what, index)
        comp = COMPONENTS.get(self.component)
        if comp is None:
            raise SiteError(f"unknown component {self.component!r}.{nearest(self.component, COMPONENTS)} "
                            f"Known: {', '.join(COMPONENTS)}")
        if comp.per_layer and (self.layer is None or self.layer < 0):
            raise SiteError(f"component {self.component!r} needs a layer >= 0, got {self.layer!r}")
        if not comp.per_layer and self.layer is not None:
            raise SiteError(f"component {self.component!r} is model-wide; got layer={self.layer}")
        if self.head is not None and (not comp.per_head or self.head < 0):
            raise SiteError(f"component {self.component!r} takes no head index >= 0; got head={self.head}")

    @property
    def spec(self) -> Component:
        return COMPONENTS[self.component]

    @property
    def hook_name(self) -> str:
        """The TransformerLens hook name, e.g. ``"blocks.3.attn.hook_z"``."""
        return self.spec.template.format(layer=self.layer)

    @property
    def dims(self) -> tuple[str, ...]:
        """Dim names of the activation at this hook (before any head selection)."""
        return self.spec.dims

    @property
    def head_axis(self) -> int | None:
        """Axis of the head dim in the hook's activation, or ``None``."""
        return _HEAD_AXIS.get(" ".join(self.dims))

    @property
    def layer_site(self) -> "Site":
        """The same site without a head selection."""
        return Site(self.component, self.layer)

    def select(self, act: Any) -> Any:
        """Apply the head selection to an activation of this site's hook (no-op without head)."""
        if self.head is None:
            return act
        return act.select(self.head_axis, self.head)

    def __str__(self) -> str:
        parts = [self.component]
        if self.layer is not None:
            parts.append(str(self.layer))
        if self.head is not None:
            parts.append(str(self.head))
        return ".".join(parts)

    @classmethod
    def parse(cls, text: str) -> "Site":
        """Invert :attr:`hook_name` or :meth:`__str__`.

        Accepts ``"blocks.3.attn.hook_z"``, ``"z.3"``, ``"z.3.1"``, ``"embed"``.
        """
        text = text.strip()
        for pat, comp in _PATTERNS:
            m = pat.match(text)
            if m:
                return cls(comp.name, int(m.group(1)) if m.groups() else None)
        parts = text.split(".")
        if parts[0] in COMPONENTS and all(p.isdigit() for p in parts[1:]) and len(parts) <= 3:
            nums = [int(p) for p in parts[1:]]
            comp = COMPONENTS[parts[0]]
            if not comp.per_layer:
                if nums:
                    raise SiteError(f"component {parts[0]!r} is model-wide; got {text!r}")
                return cls(comp.name)
            return cls(comp.name, *nums) if nums else cls(comp.name, None)  # error on missing layer
        known = list(COMPONENTS) + [c.template.format(layer=0) for c in COMPONENTS.values()]
        raise SiteError(f"cannot parse site {text!r}.{nearest(text, known)} "
                        "Write a component with optional layer and head ('resid_post', 'z.3', 'z.3.1') "
                        "or a TransformerLens hook name ('blocks.3.attn.hook_z').")


def parse_sites(spec: str | Iterable[str | Site], n_layers: int) -> list[Site]:
    """Expand a user's site list into Sites, in order, without duplicates.

    A bare per-layer component (``"resid_post"``) means every layer; ``"resid_post.5"``
    one layer; ``"z.5.1"`` one head; hook names are accepted too.

    Args:
        spec: comma-separated string or iterable of strings / Sites.
        n_layers: number of blocks of the model, to expand bare components and
            check layer ranges.

    Raises:
        SiteError: unknown names (with suggestions) or layers >= n_layers.
    """
    out: list[Site] = []
    for item in _site_items(spec):
        if isinstance(item, Site):
            sites = [item]
        elif item.strip() in COMPONENTS and COMPONENTS[item.strip()].per_layer:
            sites = [Site(item.strip(), layer) for layer in range(n_layers)]
        else:
            sites = [Site.parse(item)]
        for s in sites:
            if s.layer is not None and s.layer >= n_layers:
                raise SiteError(f"site {s}: layer {s.layer} out of range, the model has {n_layers} layers (0..{n_layers - 1})")
            if s not in out:
                out.append(s)
    return out


def check_sites(spec: str | Iterable[str | Site]) -> None:
    """Check a user's site list without a model (names, types); layer ranges need :func:`parse_sites`.

    The CLI calls this before loading a model, so a misspelled site fails at once.

    Raises:
        SiteError: as :func:`parse_sites`, except for layer ranges.
    """
    for item in _site_items(spec):
        if isinstance(item, str) and not (item.strip() in COMPONENTS and COMPONENTS[item.strip()].per_layer):
            Site.parse(item)


def _site_items(spec: Any) -> list[str | Site]:
    """The entries of a site list, each a string or a Site (else a SiteError naming the entry)."""
    if isinstance(spec, str):
        items: list[Any] = [s for s in spec.split(",") if s.strip()]
    elif isinstance(spec, Site):
        items = [spec]
    elif isinstance(spec, Iterable):
        items = list(spec)
    else:
        raise SiteError(f"sites: expected a comma-separated string or a list of strings / Sites, got "
                        f"{type(spec).__name__} {spec!r}")
    if not items:
        raise SiteError("no sites given; e.g. 'resid_post,pattern'")
    for i, item in enumerate(items):
        if not isinstance(item, (str, Site)):
            raise SiteError(f"site list entry {i} is {type(item).__name__} {item!r}; expected a string "
                            "('resid_post', 'z.3', 'z.3.1', a hook name) or a Site")
    return items


def validate_site(site: Site, model: Model, *, hook_dict: Any = None) -> Site:
    """Check a Site against a loaded model (layer and head ranges, hook exists).

    Pass ``hook_dict=model.hook_dict`` when validating many sites: the bridge rebuilds
    that dict (with aliases) on every access, ~40 ms each on SmolLM2.

    Raises:
        SiteError: with the nearest valid hook names when the model lacks the hook.
    """
    cfg = model.cfg
    if site.layer is not None and site.layer >= cfg.n_layers:
        raise SiteError(f"site {site}: layer {site.layer} out of range, the model has {cfg.n_layers} layers")
    if site.head is not None:
        n = _dim_sizes(cfg)["kv_head" if "kv_head" in site.dims else "head"]
        if site.head >= n:
            raise SiteError(f"site {site}: head {site.head} out of range, the layer has {n} heads")
    hook_dict = model.hook_dict if hook_dict is None else hook_dict
    if site.hook_name not in hook_dict:
        raise SiteError(f"model has no hook {site.hook_name!r} for site {site}."
                        f"{nearest(site.hook_name, hook_dict)}")
    return site


def _dim_sizes(cfg: Any) -> dict[str, int]:
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    return {
        "d_model": cfg.d_model,
        "d_head": cfg.d_head,
        "head": cfg.n_heads,
        "kv_head": n_kv,
        "d_mlp": cfg.d_mlp,
        "d_vocab": cfg.d_vocab,
        "one": 1,
    }


def expected_shape(site: Site, cfg: Any, batch: int, pos: int) -> tuple[int, ...]:
    """Full hook shape of ``site`` for a batch of ``batch`` prompts of ``pos`` tokens."""
    sizes = _dim_sizes(cfg) | {"batch": batch, "pos": pos, "query_pos": pos, "key_pos": pos}
    return tuple(sizes[d] for d in site.dims)


def check_shape(site: Site, tensor: Any, cfg: Any) -> None:
    """Raise :class:`ShapeError` unless ``tensor`` has the hook shape of ``site``.

    Batch and position sizes are taken from the tensor; the other dims from ``cfg``.
    """
    shape = tuple(tensor.shape)
    if len(shape) != len(site.dims):
        raise ShapeError(f"{site.hook_name}: expected ({', '.join(site.dims)}), got {shape}")
    pos = shape[site.dims.index("pos")] if "pos" in site.dims else shape[-1]
    want = expected_shape(site, cfg, shape[0], pos)
    if want != shape:
        raise ShapeError(f"{site.hook_name}: expected ({', '.join(site.dims)}) = {want}, got {shape}")


def sites_by_layer(sites: Sequence[Site]) -> int:
    """Deepest layer any of ``sites`` needs (-1 when only model-wide sites before the blocks)."""
    deepest = -1
    for s in sites:
        if s.component in ("ln_final", "final_resid", "ln_final_scale"):
            return 10**9
        if s.layer is not None:
            deepest = max(deepest, s.layer)
    return deepest
