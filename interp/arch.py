"""Per-architecture facts as data: one table of families, read from the loaded model.

Methods that are only correct for some architectures consult these facts instead of
guessing from hook names, and refuse the rest with an error that names the fact:

* EAP edges need attention before the MLP in each block (not GPT-NeoX/GPT-J style
  parallel attention) and no norm between a sender's output and the residual stream
  (not Gemma-2/3 style post-norms), so that a sender's effect on a receiver's input
  is its output ``z W_O`` / ``mlp_out``.
* Right-padded batches (faithfulness, the activation store) need causal attention.

:data:`FAMILIES` holds the facts of each Hugging Face ``model_type`` that are fixed by
the architecture (norm kind and positions, positional scheme, causal or not);
:func:`arch_facts` adds the ones a config sets (heads, KV heads, parallel residual,
soft-caps, sliding window). For a family not in the table every fact is derived from
the TransformerLens bridge (its config and hook points) and the Hugging Face config.
A vision-language model's facts are its text model's, plus its wrapper's row of
:data:`VISION_FAMILIES` (how image tokens attend, whether they form one fixed grid).

Example:
    >>> from interp.models import load_model
    >>> facts = arch_facts(load_model("toy:llama"))
    >>> facts.family, facts.positional, facts.gqa, facts.parallel_attn_mlp
    ('llama', 'rope', True, False)
    >>> require_arch(load_model("toy:neox"), method="EAP edges", parallel_attn_mlp=False)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    interp.errors.ConfigError: EAP edges: parallel attention/MLP (GPT-NeoX style) is not supported: ...
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from interp.errors import ConfigError, nearest

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["Family", "VisionFamily", "ArchFacts", "FAMILIES", "VISION_FAMILIES", "arch_facts", "require_arch",
           "padding_kwargs"]

POSITIONAL = ("absolute", "rope", "alibi", "none")
NORMS = ("layernorm", "rmsnorm")


@dataclass(frozen=True, kw_only=True)
class Family:
    """What an architecture family fixes, whatever its size (one row of :data:`FAMILIES`).

    Attributes:
        name: readable name (``"GPT-NeoX"``).
        norm: ``"layernorm"`` or ``"rmsnorm"``.
        post_attn_norm: a norm on the attention output before it joins the residual stream.
        post_mlp_norm: a norm on the MLP output before it joins the residual stream.
        qk_norm: per-head norms on queries and keys.
        positional: ``"absolute"``, ``"rope"``, ``"alibi"`` or ``"none"``.
        causal: causal (decoder) attention; ``False`` for bidirectional encoders.
        parallel_attn_mlp: attention and MLP read the same residual (``None``: the config says,
            e.g. GPT-NeoX's ``use_parallel_residual``).
    """

    name: str
    norm: str
    positional: str
    post_attn_norm: bool = False
    post_mlp_norm: bool = False
    qk_norm: bool = False
    causal: bool = True
    parallel_attn_mlp: bool | None = False

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ConfigError(f"family {self.name}: norm must be one of {NORMS}, got {self.norm!r}")
        if self.positional not in POSITIONAL:
            raise ConfigError(f"family {self.name}: positional must be one of {POSITIONAL}, got {self.positional!r}")


#: Hugging Face ``model_type`` -> the family's fixed facts.
FAMILIES: dict[str, Family] = {
    "gpt2": Family(name="GPT-2", norm="layernorm", positional="absolute"),
    "llama": Family(name="Llama", norm="rmsnorm", positional="rope"),
    "mistral": Family(name="Mistral", norm="rmsnorm", positional="rope"),
    "qwen2": Family(name="Qwen2", norm="rmsnorm", positional="rope"),
    "qwen3": Family(name="Qwen3", norm="rmsnorm", positional="rope", qk_norm=True),
    "gemma": Family(name="Gemma", norm="rmsnorm", positional="rope"),
    "gemma2": Family(name="Gemma-2", norm="rmsnorm", positional="rope", post_attn_norm=True, post_mlp_norm=True),
    "gemma3_text": Family(name="Gemma-3", norm="rmsnorm", positional="rope", post_attn_norm=True,
                          post_mlp_norm=True, qk_norm=True),
    "gpt_neox": Family(name="GPT-NeoX", norm="layernorm", positional="rope", parallel_attn_mlp=None),
    "gptj": Family(name="GPT-J", norm="layernorm", positional="rope", parallel_attn_mlp=True),
    "bloom": Family(name="BLOOM", norm="layernorm", positional="alibi"),
    "bert": Family(name="BERT", norm="layernorm", positional="absolute", causal=False),
}


@dataclass(frozen=True, kw_only=True)
class VisionFamily:
    """What a vision-language wrapper fixes (its text model is a row of :data:`FAMILIES`).

    Attributes:
        name: readable name.
        image_attention: ``"causal"`` or ``"bidirectional"`` (an image's tokens see each other both ways).
        image_grid: ``"fixed"`` (one raster grid of tokens per image), ``"tiled"`` (any-resolution crops)
            or ``"dynamic"`` (the grid follows the image size).
    """

    name: str
    image_attention: str = "causal"
    image_grid: str = "fixed"


#: Hugging Face top-level ``model_type`` of vision-language models -> their image-token facts.
VISION_FAMILIES: dict[str, VisionFamily] = {
    "llava": VisionFamily(name="LLaVA"),
    "llava_next": VisionFamily(name="LLaVA-NeXT", image_grid="tiled"),
    "llava_onevision": VisionFamily(name="LLaVA-OneVision", image_grid="tiled"),
    "gemma3": VisionFamily(name="Gemma 3 multimodal", image_attention="bidirectional"),
    "qwen2_5_vl": VisionFamily(name="Qwen2.5-VL", image_grid="dynamic"),
}


@dataclass(frozen=True, kw_only=True)
class ArchFacts:
    """Facts of one loaded model that methods consult (see :func:`arch_facts`).

    Attributes:
        family: Hugging Face ``model_type`` (``"llama"``, ``"gemma2"``, ``"gpt_neox"`` ...).
        known: whether ``family`` is a row of :data:`FAMILIES` (else derived from the bridge).
        parallel_attn_mlp: attention and MLP both read the block's input (GPT-NeoX, GPT-J);
            the MLP input then does not include this layer's attention output.
        norm, post_attn_norm, post_mlp_norm, qk_norm, positional, causal: as in :class:`Family`.
        n_heads, n_kv_heads: query heads and key/value heads per layer.
        sliding_window: local-attention window of the sliding layers, if any.
        attn_softcap, final_softcap: ``tanh`` soft-caps of attention scores / final logits.
        vision: a vision-language model's top-level ``model_type`` (``"llava"``), ``None`` for text models.
        image_attention, image_grid: as in :class:`VisionFamily` (``None`` for text models).
    """

    family: str
    known: bool
    parallel_attn_mlp: bool
    norm: str
    post_attn_norm: bool
    post_mlp_norm: bool
    qk_norm: bool
    positional: str
    causal: bool
    n_heads: int
    n_kv_heads: int
    sliding_window: int | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None
    vision: str | None = None
    image_attention: str | None = None
    image_grid: str | None = None

    @property
    def gqa(self) -> bool:
        """Grouped-query attention: fewer key/value heads than query heads."""
        return self.n_kv_heads < self.n_heads

    @property
    def post_norms(self) -> bool:
        return self.post_attn_norm or self.post_mlp_norm

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"gqa": self.gqa}


#: encoder-only model types (bidirectional attention) the bridge can load.
_BIDIRECTIONAL = frozenset({"bert", "roberta", "distilbert", "electra", "deberta", "deberta-v2", "xlm-roberta",
                            "albert", "modernbert"})


def _hf_config(model: Model) -> Any:
    hf = getattr(getattr(model, "original_model", None), "config", None)
    if hf is not None and hasattr(hf, "get_text_config"):
        hf = hf.get_text_config()
    return hf


def _softcap(value: Any) -> float | None:
    return float(value) if value not in (None, 0) and float(value) > 0 else None


def _derived(model: Model, hf: Any) -> Family:
    """A family's facts read from the bridge (config and hook points), for families not in the table."""
    cfg = model.cfg
    blocks = getattr(model, "blocks", None)
    block = blocks[0] if blocks is not None and len(blocks) else None
    attn = getattr(block, "attn", None)
    pos = str(getattr(cfg, "positional_embedding_type", "standard"))
    positional = {"standard": "absolute", "rotary": "rope", "alibi": "alibi", "shortformer": "absolute"}.get(pos, "none")
    norm = "rmsnorm" if str(getattr(cfg, "normalization_type", "LN")).upper().startswith("RMS") else "layernorm"
    model_type = str(getattr(hf, "model_type", "") or "")
    return Family(name=model_type or type(model).__name__, norm=norm, positional=positional,
                  post_attn_norm=hasattr(block, "ln1_post"), post_mlp_norm=hasattr(block, "ln2_post"),
                  qk_norm=hasattr(attn, "q_norm"),
                  causal=model_type not in _BIDIRECTIONAL,
                  parallel_attn_mlp=bool(getattr(cfg, "parallel_attn_mlp", False)))


def arch_facts(model: Model) -> ArchFacts:
    """The :class:`ArchFacts` of a loaded model (TransformerLens bridge + its Hugging Face config).

    Static facts come from :data:`FAMILIES` by ``model_type``; heads, KV heads, parallel
    residual, soft-caps and sliding window from the configs. Nothing is stored on the model.
    """
    hf = _hf_config(model)
    cfg = model.cfg
    family = str(getattr(hf, "model_type", "") or "")
    row = FAMILIES.get(family)
    fam = row or _derived(model, hf)
    parallel = fam.parallel_attn_mlp
    if parallel is None:  # the config decides (GPT-NeoX: use_parallel_residual, default True)
        parallel = bool(getattr(hf, "use_parallel_residual", getattr(cfg, "parallel_attn_mlp", True)))
    n_heads = int(cfg.n_heads)
    n_kv = int(getattr(cfg, "n_key_value_heads", None) or n_heads)
    window = getattr(hf, "sliding_window", None)
    layer_types = getattr(hf, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        window = None
    top = getattr(getattr(model, "original_model", None), "config", None)
    vision = str(top.model_type) if getattr(top, "vision_config", None) is not None else None
    vfam = VISION_FAMILIES.get(vision or "")
    return ArchFacts(family=family or fam.name, known=row is not None, parallel_attn_mlp=bool(parallel),
                     norm=fam.norm, post_attn_norm=fam.post_attn_norm, post_mlp_norm=fam.post_mlp_norm,
                     qk_norm=fam.qk_norm, positional=fam.positional, causal=fam.causal, n_heads=n_heads,
                     n_kv_heads=n_kv, sliding_window=int(window) if window else None,
                     attn_softcap=_softcap(getattr(hf, "attn_logit_softcapping", None)),
                     final_softcap=_softcap(getattr(hf, "final_logit_softcapping", None)), vision=vision,
                     image_attention=vfam.image_attention if vfam else None,
                     image_grid=vfam.image_grid if vfam else None)


#: fact -> (how to name a value that blocks a method, why it blocks).
_BLOCKING: dict[str, dict[Any, tuple[str, str]]] = {
    "parallel_attn_mlp": {True: ("parallel attention/MLP (GPT-NeoX style)",
                                 "the MLP input does not include this layer's attention output")},
    "post_attn_norm": {True: ("a norm after attention (Gemma-2/3 style post-norm)",
                              "a head's contribution to the residual stream passes through that norm, so it is not "
                              "its output z W_O")},
    "post_mlp_norm": {True: ("a norm after the MLP (Gemma-2/3 style post-norm)",
                             "the MLP's contribution to the residual stream passes through that norm, so it is not "
                             "its output")},
    "causal": {False: ("bidirectional attention",
                       "right-padded batches assume causal attention (padding would change the real tokens' "
                       "activations) and next-token predictions need a causal decoder (an encoder's tokens see "
                       "the tokens after them)")},
    "gqa": {True: ("grouped-query attention", "keys and values are shared by several query heads")},
    "qk_norm": {True: ("query/key norms", "queries and keys are not linear in the residual stream")},
}


def _describe(fact: str, value: Any) -> tuple[str, str]:
    if fact == "sliding_window" and value is not None:
        return (f"sliding-window attention (window {value}, Gemma-2/3 / Mistral style local layers)",
                "rows entering at a layer run under one explicit full causal mask, which drops the window")
    named = _BLOCKING.get(fact, {}).get(value)
    if named:
        return named
    return f"{fact}={value!r}", "the method assumes otherwise"


def require_arch(model: Model, *, method: str, **needs: Any) -> ArchFacts:
    """Refuse a model whose architecture a method does not support; return its facts otherwise.

    Args:
        model: a loaded model.
        method: the method's name as users know it (``"EAP edges"``), first in the message.
        **needs: ``fact=value`` (or ``fact=(allowed, values)``) for facts of :class:`ArchFacts`,
            e.g. ``parallel_attn_mlp=False, post_attn_norm=False`` or ``positional=("rope", "absolute")``.

    Raises:
        ConfigError: the first unmet fact, named with why it blocks the method, e.g.
            ``"EAP edges: parallel attention/MLP (GPT-NeoX style) is not supported: the MLP
            input does not include this layer's attention output (model toy:neox, family gpt_neox)"``.
    """
    facts = arch_facts(model)
    names = [f.name for f in dataclasses.fields(ArchFacts)] + ["gqa", "post_norms"]
    for fact, want in needs.items():
        if fact not in names:
            raise ConfigError(f"require_arch: unknown fact {fact!r}.{nearest(fact, names)} Known: {', '.join(names)}")
        got = getattr(facts, fact)
        allowed = want if isinstance(want, (tuple, list, set, frozenset)) else (want,)
        if got not in allowed:
            what, why = _describe(fact, got)
            info = getattr(model, "interp_info", None)
            where = f"model {info.spec}, " if info is not None else ""
            raise ConfigError(f"{method}: {what} is not supported: {why} ({where}family {facts.family})")
    return facts


def padding_kwargs(model: Model, mask: Any) -> dict[str, Any]:
    """Forward keyword arguments that make a right-padded batch exact for ``model``.

    A causal model needs none: real tokens never attend to the padding after them. A
    bidirectional encoder gets ``attention_mask`` (1 at real tokens), without which every
    real token would attend to the padding.

    Args:
        mask: ``[batch, pos]`` bool, True at real tokens (:attr:`interp.models.TokenBatch.mask`).

    Example:
        >>> from interp.models import load_model, tokenize
        >>> padding_kwargs(load_model("toy:llama"), tokenize(load_model("toy:llama"), ["a", "bc"]).mask)
        {}
    """
    if arch_facts(model).causal:
        return {}
    return {"attention_mask": mask.long()}
