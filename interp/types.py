"""Types the package shares: what interp needs from a model, and shape aliases for its tensors.

* :class:`Model` — the protocol every analysis takes instead of ``Any``: a config with the
  sizes (:class:`ModelConfig`), a tokenizer, the hook points by name, a forward call from
  tokens to logits, and the unembedding. TransformerLens' ``TransformerBridge`` (what
  :func:`interp.load_model` returns) satisfies it; so does anything else with these members.
* Shape aliases in the one vocabulary of dimension names (``batch pos layer head d_model
  d_head d_mlp d_sae d_vocab``), written with jaxtyping: ``Tokens`` is
  ``Int[Tensor, "batch pos"]``, ``Logits`` is ``Float[Tensor, "batch pos d_vocab"]`` and so on.
  They document shapes in signatures; nothing checks them at run time.

The protocols are ``runtime_checkable``, so ``isinstance(x, Model)`` tells whether ``x`` has
the members (not their types or shapes).

Example:
    >>> from interp.models import load_model
    >>> from interp.types import Model
    >>> model = load_model("toy:llama")
    >>> isinstance(model, Model), isinstance("gpt2", Model)
    (True, False)
    >>> model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model, model.cfg.d_head, model.cfg.d_vocab
    (2, 4, 64, 16, 259)
    >>> tuple(model.W_U.shape)                              # [d_model, d_vocab]
    (64, 259)
    >>> from interp.models import tokenize
    >>> tokens = tokenize(model, ["hi", "hello"]).tokens                  # [batch, pos], BOS first
    >>> tuple(model(tokens).shape)                                        # [batch, pos, d_vocab]
    (2, 6, 259)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["Model", "ModelConfig", "Tokenizer", "Tokens", "Logits", "Residual", "HeadActs", "MlpActs", "Pattern",
           "Unembed", "SaeActs", "Direction"]

# --- shapes (one vocabulary of dim names: batch pos layer head d_model d_head d_mlp d_sae d_vocab) ------------
Tokens = Int[Tensor, "batch pos"]
"""Token ids of a batch of prompts."""
Logits = Float[Tensor, "batch pos d_vocab"]
"""Unembedded logits at every position."""
Residual = Float[Tensor, "batch pos d_model"]
"""A residual-stream activation (``resid_pre``/``mid``/``post``, ``attn_out``, ``mlp_out``)."""
HeadActs = Float[Tensor, "batch pos head d_head"]
"""A per-head activation (``q``, ``k``, ``v``, ``z``)."""
MlpActs = Float[Tensor, "batch pos d_mlp"]
"""MLP hidden activations (``mlp_pre``, ``mlp_post``)."""
Pattern = Float[Tensor, "batch head pos pos"]
"""Attention pattern: query position x key position (the same prompt, so both ``pos``)."""
Unembed = Float[Tensor, "d_model d_vocab"]
"""The unembedding matrix ``W_U``."""
SaeActs = Float[Tensor, "batch pos d_sae"]
"""Sparse-autoencoder latents."""
Direction = Float[Tensor, "d_model"]
"""A direction in the residual stream (a steering axis, a probe's weight)."""


@runtime_checkable
class ModelConfig(Protocol):
    """The sizes interp reads from ``model.cfg``."""

    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_vocab: int


@runtime_checkable
class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer interp uses (ids <-> text)."""

    def encode(self, text: str, *args: Any, **kwargs: Any) -> list[int]: ...

    def decode(self, ids: Any, *args: Any, **kwargs: Any) -> str: ...


@runtime_checkable
class Model(Protocol):
    """What interp needs from a model (a TransformerLens ``TransformerBridge`` has all of it).

    Attributes:
        cfg: sizes (:class:`ModelConfig`).
        tokenizer: the model's tokenizer (:class:`Tokenizer`).
        hook_dict: hook name (``Site("z", 3).hook_name``, see :class:`interp.sites.Site`) -> hook point.
        W_U: unembedding ``[d_model, d_vocab]``.
    """

    cfg: ModelConfig
    tokenizer: Tokenizer
    hook_dict: Mapping[str, Any]

    @property
    def W_U(self) -> Unembed: ...

    def __call__(self, tokens: Tokens, *args: Any, **kwargs: Any) -> Logits: ...

    def parameters(self) -> Iterator[Tensor]: ...
