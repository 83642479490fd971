"""Online attention diagnostics for any torch training loop.

:class:`AttentionDiagnostics` is called as ``cb(step, model, **scalars)`` inside the loop; every
``every`` steps it runs ``model`` on a fixed probe batch (no gradients, eval mode, the training
mode restored after), computes :func:`interp.diagnostics.pattern_stats` and keeps one row per
layer, with any scalars passed (losses, accuracies) as ``m_<name>`` columns.

Where the patterns come from (``patterns=``):

* ``None`` (auto): an interp / TransformerLens bridge model (it has ``blocks`` and hook points)
  through :func:`bridge_patterns` (``pattern`` sites); any other ``nn.Module`` through
  :func:`mha_patterns`, which reads the per-head weights of its ``torch.nn.MultiheadAttention``
  modules (called with keyword arguments for the options);
* a callable ``(model, probe) -> sequence of [batch, head, q, k]`` for anything else.

Example:
    >>> import torch
    >>> from interp.diagnostics.modadd import ModAddConfig, ModAddTransformer
    >>> model = ModAddTransformer(ModAddConfig(p=7, d_model=16, n_heads=2, d_mlp=32))
    >>> cb = AttentionDiagnostics(torch.tensor([[1, 2, 7], [3, 4, 7]]), every=10)
    >>> for step in range(20):
    ...     _ = cb(step, model, train_loss=0.0)
    >>> cb.table["step"].tolist(), cb.table["m_train_loss"].tolist()
    ([0, 10], [0.0, 0.0])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.errors import ConfigError

__all__ = ["AttentionDiagnostics", "bridge_patterns", "mha_patterns"]

PatternFn = Callable[[Any, Any], Sequence[torch.Tensor]]


def bridge_patterns(model: Any, tokens: Int[Tensor, "batch pos"]) -> list[Float[Tensor, "batch head query_pos key_pos"]]:
    """Per layer ``[batch, head, q, k]`` attention patterns of an interp / TransformerLens model (one pass)."""
    from interp.hooks import run_capture
    from interp.sites import Site

    sites = [Site("pattern", layer) for layer in range(model.cfg.n_layers)]
    dev = next(model.parameters()).device
    with torch.inference_mode():
        store = run_capture(model, tokens.to(dev), sites, stop_early=False)
    return [store[s].float() for s in sites]


def mha_patterns(model: torch.nn.Module, inputs: Any) -> list[Float[Tensor, "batch head query_pos key_pos"]]:
    """Per ``nn.MultiheadAttention`` module (in module order) its ``[batch, head, q, k]`` weights on ``inputs``.

    Each module is asked for per-head weights for this one call (``need_weights=True,
    average_attn_weights=False`` through a forward pre-hook on its keyword arguments); the hooks
    are removed after. The module must be called with ``batch_first=True`` inputs.
    """
    mods = [m for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    if not mods:
        raise ConfigError(f"mha_patterns: {type(model).__name__} has no torch.nn.MultiheadAttention module; pass "
                          "patterns=callable(model, probe) returning [batch, head, q, k] tensors")
    got: dict[int, torch.Tensor] = {}
    handles = []

    def pre(_m: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        return args, kwargs | {"need_weights": True, "average_attn_weights": False}

    for i, m in enumerate(mods):
        if not m.batch_first:
            raise ConfigError(f"mha_patterns: MultiheadAttention module {i} has batch_first=False; expected True")
        handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(m.register_forward_hook(lambda _m, _a, out, i=i: got.__setitem__(i, out[1].detach())))
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for h in handles:
            h.remove()
    return [got[i].float() for i in sorted(got)]


class AttentionDiagnostics:
    """Record attention diagnostics every ``every`` steps of a training loop.

    Args:
        probe: the fixed batch the model is run on (token ids ``[batch, pos]`` or the model's input).
        every: record at steps ``0, every, 2 every, ...`` (and whenever ``force=True``).
        patterns: where patterns come from (see the module docstring); ``None``: auto.
        run: a label stored in every row (``"wd=1.0"``), to tell runs apart in one table.
        skip_first_query: leave out the first query (causal: it sees one key).
    """

    def __init__(self, probe: Any, *, every: int = 100, patterns: PatternFn | None = None, run: str = "",
                 skip_first_query: bool = True) -> None:
        if every < 1:
            raise ConfigError(f"AttentionDiagnostics: every must be >= 1, got {every}")
        self.probe, self.every, self.run, self.skip_first_query = probe, every, run, skip_first_query
        self._patterns = patterns
        self.rows: list[dict[str, Any]] = []

    def _fn(self, model: Any) -> PatternFn:
        if self._patterns is not None:
            return self._patterns
        if hasattr(model, "blocks") and hasattr(model, "cfg") and hasattr(model, "hook_dict"):
            return bridge_patterns
        return mha_patterns

    def __call__(self, step: int, model: Any, *, force: bool = False, **scalars: float) -> bool:
        """Record the diagnostics at ``step`` if due; returns whether a row was recorded."""
        from interp.diagnostics import pattern_stats

        if step % self.every and not force:
            return False
        was_training = bool(getattr(model, "training", False))
        model.eval()
        try:
            pats = self._fn(model)(model, self.probe)
        finally:
            model.train(was_training)
        layer_rows, _ = pattern_stats(pats, skip_first_query=self.skip_first_query)
        extra = {f"m_{k}": float(v) for k, v in scalars.items()}
        self.rows += [{"run": self.run, "step": int(step), **r, **extra} for r in layer_rows]
        return True

    @property
    def table(self) -> pd.DataFrame:
        """One row per (recorded step, layer): ``run, step, layer, cos_sim, entropy_std, entropy_mean, ...``."""
        return pd.DataFrame(self.rows)

    def result(self, *, meta: Any = None, name: str = "") -> Any:
        """The rows as a ``diagnostics.curves`` Result."""
        from interp.results import Result, RunMeta

        return Result("diagnostics.curves", self.table, meta or RunMeta(), name=name)
