"""Patching metrics at each prompt's last real token, batched over rows.

Rows of a patching run are laid out as ``block * B + b``: one block of ``B`` rows per
patch (path patching puts its unpatched base run in block 0), ``b`` indexes the ``B``
prompts. Every metric here works on ``[rows, ...]`` tensors and is reduced per block.

Metrics (METHODS.md section 2):

* ``logit_diff``: ``logit[answer] - logit[counterfactual]`` at the last real token,
  mean over prompts.
* ``logit_diff_norm``: ``(LD_patched - LD_corr) / (LD_clean - LD_corr)`` of the
  prompt-mean logit differences (0 = corrupted behaviour, 1 = clean). Normalising the
  batch means (as TransformerLens' IOI demos do) keeps prompts with a tiny clean/corrupted
  gap from dominating.
* ``prob``: softmax probability of the answer, mean over prompts.
* ``kl``: ``KL(clean || patched)`` of the next-token distributions, mean over prompts.

Example:
    >>> import torch
    >>> from interp.patching.metrics import normalize
    >>> normalize(torch.tensor([2.0, 5.0]), ld_clean=5.0, ld_corr=1.0).tolist()
    [0.25, 1.0]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from interp.engine import causal_mask, final_logits  # noqa: F401  (re-exported: patching's names)
from interp.errors import ConfigError, DataError

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["METRICS", "PairData", "Baseline", "prepare_pairs", "final_logits", "row_stats", "hidden_stats",
           "block_values",
           "normalize", "check_metrics"]

METRICS = ("logit_diff_norm", "logit_diff", "prob", "kl")
#: Relative gap below which clean and corrupted metrics count as identical.
_IDENTICAL = 1e-6


def check_metrics(metrics: tuple[str, ...], allowed: tuple[str, ...] = METRICS) -> None:
    """Raise :class:`ConfigError` for unknown metric names (nearest names suggested)."""
    from interp.metrics import check_metric_names

    check_metric_names(metrics, allowed)


@dataclass(frozen=True)
class PairData:
    """Tokenized clean/corrupted pairs ready for patching.

    Attributes:
        clean, corrupted: ``[batch, pos]`` token ids (right-padded; pair lengths equal).
        last: ``[batch]`` index of each prompt's last real token.
        answer_ids, counter_ids: ``[batch]`` answer / counterfactual token ids.
        texts: clean prompts (for error messages); ``corrupted_texts`` likewise.
        dataset: the source TaskDataset.
    """

    clean: torch.Tensor
    corrupted: torch.Tensor
    last: torch.Tensor
    answer_ids: torch.Tensor
    counter_ids: torch.Tensor
    texts: tuple[str, ...]
    corrupted_texts: tuple[str, ...]
    dataset: Any

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    def subset(self, idx: torch.Tensor, n_pos: int | None = None) -> "PairData":
        """The pairs at ``idx`` (a ``[k]`` index tensor), token rows cut to ``n_pos`` positions.

        ``n_pos`` must cover every kept prompt (``> last``); right padding makes the cut
        exact: no real token attends to a padding position.
        """
        n_pos = int(self.clean.shape[1]) if n_pos is None else n_pos
        if n_pos <= int(self.last[idx].max()):
            raise ConfigError(f"subset: n_pos {n_pos} cuts real tokens (last position {int(self.last[idx].max())})")
        keep = idx.tolist()
        return PairData(self.clean[idx, :n_pos], self.corrupted[idx, :n_pos], self.last[idx], self.answer_ids[idx],
                        self.counter_ids[idx], tuple(self.texts[i] for i in keep),
                        tuple(self.corrupted_texts[i] for i in keep), self.dataset.subset(keep))

    def length_buckets(self) -> list[tuple[torch.Tensor, int]]:
        """Prompts grouped by real length: ``[(idx, n_pos), ...]``, shortest first.

        Patching runs each group cut to its own length, so no pass computes padding.
        """
        lengths = self.last + 1
        return [((lengths == n).nonzero().flatten(), int(n)) for n in torch.unique(lengths).tolist()]

    def named_positions(self, key: str) -> torch.Tensor:
        """``[batch]`` per-prompt positions from ``dataset.meta[i][key]`` (e.g. ``"s2_pos"``)."""
        meta = self.dataset.meta
        if not meta or any(key not in m for m in meta):
            have = sorted(meta[0]) if meta else []
            raise ConfigError(f"dataset {self.dataset.name!r} has no per-prompt position {key!r}; meta keys: {have}")
        pos = torch.tensor([int(m[key]) for m in meta], device=self.clean.device)
        bad = [i for i in range(len(self)) if not 0 <= int(pos[i]) <= int(self.last[i])]
        if bad:
            raise DataError(f"dataset {self.dataset.name!r}: meta {key!r} out of range for prompts {bad[:5]}")
        return pos


def prepare_pairs(model: Model, data: Any) -> PairData:
    """Tokenize and validate a TaskDataset for patching.

    Raises:
        DataError: no corrupted prompts / answers / counterfactuals, clean and corrupted
            prompts of different token lengths, or answers that are not single tokens
            (the messages name the prompts).
    """
    from interp.arch import require_arch
    from interp.datasets.base import TaskDataset

    require_arch(model, method="patching (next-token logit metrics)", causal=True)
    if isinstance(data, PairData):
        return data
    if not isinstance(data, TaskDataset):
        raise DataError(f"expected a TaskDataset, got {type(data).__name__}")
    for attr in ("corrupted", "answers", "counterfactuals"):
        if not getattr(data, attr):
            raise DataError(f"dataset {data.name!r} has no {attr}; patching needs clean/corrupted pairs with "
                            "answers and counterfactuals")
    batch = data.tokenize(model, same_length=True)
    return PairData(batch.clean.tokens, batch.corrupted.tokens, batch.clean.last, batch.answer_ids,
                    batch.counter_ids, tuple(data.clean), tuple(data.corrupted), data)


@dataclass(frozen=True)
class Baseline:
    """Per-prompt metrics of the clean and corrupted runs.

    Attributes:
        ld_clean, ld_corr: ``[batch]`` logit differences.
        p_clean, p_corr: ``[batch]`` answer probabilities.
        logp_clean: ``[batch, d_vocab]`` clean next-token log-probabilities (for KL).
        kl_corr: mean ``KL(clean || corrupted)`` of the next-token distributions (NaN if not computed).
    """

    ld_clean: torch.Tensor
    ld_corr: torch.Tensor
    p_clean: torch.Tensor
    p_corr: torch.Tensor
    logp_clean: torch.Tensor
    kl_corr: float = float("nan")

    def reference(self, direction: str) -> dict[str, float]:
        """Metric values of the run a patch is applied to (corrupted for denoising, clean for noising).

        These are the ``reference_value`` of the evidence vocabulary (:mod:`interp.schemas`):
        ``effect = metric(patched) - reference[metric]``.
        """
        from interp.schemas import reference_of

        clean = reference_of(direction) == "clean"
        return {"logit_diff": self.mean_clean if clean else self.mean_corr,
                "logit_diff_norm": 1.0 if clean else 0.0,
                "prob": float((self.p_clean if clean else self.p_corr).mean()),
                "kl": 0.0 if clean else self.kl_corr}

    @property
    def mean_clean(self) -> float:
        return float(self.ld_clean.mean())

    @property
    def mean_corr(self) -> float:
        return float(self.ld_corr.mean())

    def check(self, pairs: PairData) -> None:
        """Raise :class:`DataError` on non-finite baselines, or clean and corrupted metrics that are identical
        (normalisation by zero).

        Names every prompt whose clean and corrupted logit differences coincide.
        """
        for name, ld in (("clean", self.ld_clean), ("corrupted", self.ld_corr)):
            bad = (~torch.isfinite(ld)).nonzero().flatten().tolist()
            if bad:
                texts = pairs.texts if name == "clean" else pairs.corrupted_texts
                raise DataError(f"the {name} run's logit difference is {float(ld[bad[0]])} on {len(bad)} prompt(s), "
                                f"first #{bad[0]} {texts[bad[0]]!r}: the model produces NaN/inf (a NaN weight or "
                                "activation upstream), so every patching number would be NaN")
        gap = (self.ld_clean - self.ld_corr).abs()
        scale = torch.maximum(self.ld_clean.abs(), self.ld_corr.abs()).clamp_min(1.0)
        same = (gap <= _IDENTICAL * scale).nonzero().flatten().tolist()
        mean_gap = abs(self.mean_clean - self.mean_corr)
        if same or mean_gap <= _IDENTICAL * max(1.0, abs(self.mean_clean)):
            idx = same or list(range(len(pairs)))
            lines = [f"  #{i}: LD {float(self.ld_clean[i]):.6g} on {pairs.texts[i]!r} and on "
                     f"{pairs.corrupted_texts[i]!r}" for i in idx[:5]]
            raise DataError(f"{len(idx)} prompt(s) have identical clean and corrupted logit differences, so the "
                            "normalised metric (LD - LD_corr) / (LD_clean - LD_corr) divides by zero:\n"
                            + "\n".join(lines))


def row_stats(logits: Float[Tensor, "rows d_vocab"], pairs: PairData, logp_clean: Float[Tensor, "batch d_vocab"] | None) -> dict[str, Float[Tensor, " rows"]]:
    """Per-row logit difference, answer probability and KL to clean.

    Args:
        logits: ``[rows, d_vocab]`` last-token logits, rows = ``block * B + b``.
        logp_clean: ``[B, d_vocab]`` clean log-probs, or None to skip KL.

    Returns:
        ``{"ld", "prob"[, "kl"]}`` each ``[rows]``.
    """
    from interp import metrics as M

    b = torch.arange(logits.shape[0], device=logits.device) % len(pairs)
    ans, cf = pairs.answer_ids.to(logits.device)[b], pairs.counter_ids.to(logits.device)[b]
    out = {"ld": M.logit_diff(logits, ans, cf), "prob": M.prob(logits, ans)}
    if logp_clean is not None:
        out["kl"] = M.kl(logits, logp_clean[b])
    return out


def hidden_stats(model: Model, hidden: Float[Tensor, "rows d_model"], pairs: PairData, logp_clean: Float[Tensor, "batch d_vocab"] | None,
                 metrics: tuple[str, ...]) -> dict[str, Float[Tensor, " rows"]]:
    """:func:`row_stats` from final normalised hidden states ``[rows, d_model]``.

    When the metrics are logit differences only (and the model has no output soft-cap),
    just the answer and counterfactual columns of the unembedding are used: ``[rows]``
    dot products instead of ``[rows, d_vocab]`` logits.
    """
    w_u = getattr(model, "W_U", None)
    if set(metrics) <= {"logit_diff", "logit_diff_norm"} and isinstance(w_u, torch.Tensor):
        from interp.metrics import logit_diff

        b = torch.arange(hidden.shape[0], device=hidden.device) % len(pairs)
        ids = torch.stack([pairs.answer_ids.to(hidden.device)[b], pairs.counter_ids.to(hidden.device)[b]], 1)
        cols = final_logits(model, hidden, ids)
        two = torch.arange(2, device=hidden.device)
        return {"ld": logit_diff(cols, two[0].expand(len(cols)), two[1].expand(len(cols)))}
    return row_stats(final_logits(model, hidden), pairs, logp_clean)


def normalize(ld: Float[Tensor, "*shape"], *, ld_clean: float, ld_corr: float) -> Float[Tensor, "*shape"]:
    """``(ld - ld_corr) / (ld_clean - ld_corr)`` (:func:`interp.metrics.normalized`)."""
    from interp.metrics import normalized

    return normalized(ld, clean=ld_clean, corrupted=ld_corr)


def block_values(stats: dict[str, Float[Tensor, " rows"]], n_prompts: int, baseline: Baseline,
                 metrics: tuple[str, ...]) -> dict[str, Float[Tensor, " block"]]:
    """Reduce per-row stats to one value per block (prompt means), for each metric."""
    out = {}
    for m in metrics:
        src = stats["ld" if m.startswith("logit_diff") else m]
        mean = src.reshape(-1, n_prompts).double().mean(1)
        out[m] = normalize(mean, ld_clean=baseline.mean_clean, ld_corr=baseline.mean_corr) \
            if m == "logit_diff_norm" else mean
    return out
