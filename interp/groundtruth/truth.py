"""Known circuits of the ground-truth toys: :class:`Truth`, head identification, task datasets.

Example:
    >>> t = Truth("demo", nodes=("L0.H1", "L1.H2"), edges=(("L0.H1", "L1.H2", "k"), ("L1.H2", "LOGITS", "logits")))
    >>> t.is_true_edge("L1.H2", "LOGITS", "logits")
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from interp.errors import DataError

__all__ = ["Truth", "induction_scores", "induction_heads", "induction_truth", "induction_task", "heads_result"]


@dataclass(frozen=True)
class Truth:
    """The circuit a toy implements, known by training + measurement or by construction.

    Attributes:
        name: the toy.
        nodes: true head node ids (``"L0.H1"``).
        edges: true edges ``(src, dst, dst_input)`` in the vocabulary of ``patching.edges``
            (``dst_input``: q, k, v, mlp or logits).
    """

    name: str
    nodes: tuple[str, ...]
    edges: tuple[tuple[str, str, str], ...]

    def is_true_edge(self, src: str, dst: str, dst_input: str) -> bool:
        return (src, dst, dst_input) in set(self.edges)


def _patterns(model: Any, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Per layer ``[batch, head, query_pos, key_pos]`` attention probabilities."""
    from interp.hooks import capturing
    from interp.sites import Site

    sites = [Site("pattern", layer) for layer in range(model.cfg.n_layers)]
    with torch.inference_mode(), capturing(model, sites) as store:
        model(tokens.to(next(model.parameters()).device))
    return [store[s].float().cpu() for s in sites]


def induction_scores(model: Any, spans: Any) -> pd.DataFrame:
    """Previous-token and induction scores of every head on ``spans`` (a :class:`~.induction.Spans`).

    ``prev_token``: mean attention from position ``i`` to ``i - 1`` over positions ``2..end`` (after
    BOS and the first letter). ``induction``: mean attention from the second copy's ``A[j]`` (token
    position ``1 + second + j``) to ``2 + first + j`` (the letter after ``A[j]``'s first occurrence),
    over ``j = 0..length-2`` of every row.

    Returns:
        one row per head: ``layer, head, node, prev_token, induction``.
    """
    from interp.nodes import node_id

    pats = _patterns(model, spans.tokens)
    length = spans.tokens.shape[1]
    qs = torch.arange(2, length)
    bb, bq, bk = [], [], []
    for r in range(spans.tokens.shape[0]):
        for j in range(int(spans.length[r]) - 1):
            bb.append(r)
            bq.append(1 + int(spans.second[r]) + j)
            bk.append(2 + int(spans.first[r]) + j)
    bb_, bq_, bk_ = torch.tensor(bb), torch.tensor(bq), torch.tensor(bk)
    rows = []
    for layer, p in enumerate(pats):
        for head in range(p.shape[1]):
            rows.append({"layer": layer, "head": head, "node": node_id("head", layer=layer, head=head),
                         "prev_token": float(p[:, head, qs, qs - 1].mean()),
                         "induction": float(p[bb_, head, bq_, bk_].mean())})
    return pd.DataFrame(rows)


def heads_result(toy: str, scores: pd.DataFrame, *, roles: dict[int, tuple[str, float]], model: Any = None,
                 **extra: Any) -> Any:
    """``groundtruth.heads`` Result from a score table (``layer, head, node`` + one column per role).

    Args:
        roles: layer -> (role column, threshold); a head has the role when its score is above the threshold.
    """
    from interp.results import Result, run_meta

    rows = []
    for r in scores.itertuples():
        role, thr = roles.get(int(r.layer), roles.get(-1, ("", 1.0)))
        score = float(getattr(r, role))
        rows.append({"toy": toy, "layer": int(r.layer), "head": int(r.head), "node": r.node, "role": role,
                     "score": score, "threshold": thr, "is_true": score > thr})
    return Result("groundtruth.heads", pd.DataFrame(rows), run_meta(model, dataset=toy, **extra), name=toy)


def induction_truth(heads: Any, name: str = "induction") -> Truth:
    """The induction circuit from a ``groundtruth.heads`` Result of :func:`induction_heads`.

    Edges: ``EMBED -> prev (v)`` (the letter the previous-token head moves), ``prev -> induction (k)``
    (the key it forms) and ``induction -> LOGITS``.

    Raises:
        DataError: no previous-token head or no induction head above its threshold (the best named).
    """
    t = heads.table
    prev = t[(t["role"] == "prev_token") & t["is_true"]]["node"].tolist()
    ind = t[(t["role"] == "induction") & t["is_true"]]["node"].tolist()
    if not prev or not ind:
        best = {role: t[t["role"] == role].nlargest(1, "score")[["node", "score", "threshold"]].values.tolist()
                for role in ("prev_token", "induction")}
        raise DataError(f"{name}: expected a previous-token head and an induction head above their thresholds; "
                        f"best (node, score, threshold): {best}")
    edges = [("EMBED", p, "v") for p in prev] + [(p, i, "k") for p in prev for i in ind] + \
        [(i, "LOGITS", "logits") for i in ind]
    return Truth(name, tuple(prev + ind), tuple(edges))


def induction_heads(model: Any, data: Any, *, n: int = 64, seed: int = 12345) -> Any:
    """Measure every head's role on ``n`` held-out sequences of ``data`` (a :class:`~.induction.RepeatedSpans`)
    with distinct letters: layer 0 is tested for ``prev_token``, later layers for ``induction``, both
    against 0.5 (:data:`~.induction.PREV_THRESHOLD`, :data:`~.induction.INDUCTION_THRESHOLD`)."""
    from interp.groundtruth.induction import INDUCTION_THRESHOLD, PREV_THRESHOLD

    scores = induction_scores(model, data.draw(n, seed=seed, distinct=True))
    return heads_result("induction", scores, roles={0: ("prev_token", PREV_THRESHOLD),
                                                    -1: ("induction", INDUCTION_THRESHOLD)},
                        model=model, n_sequences=n, seed=seed)


def induction_task(data: Any, n: int, *, seed: int) -> Any:
    """Clean/corrupted pairs for the induction toy (a :class:`~interp.datasets.TaskDataset`).

    Each clean prompt is a sequence of distinct letters (apart from the repeated span) cut right
    after a second-copy letter ``A[i]`` (``i`` random in ``0..length-2``); the answer is ``A[i+1]``.
    The corrupted prompt is the same text with ``A[i]``'s *first* occurrence replaced by a letter that
    occurs nowhere in the prompt, so no earlier ``A[i]`` is followed by the answer: the previous-token
    head's output there and the induction head's output both carry the contrast. The
    counterfactual is another letter absent from the prompt (the logit difference is then the
    answer's logit against an unrelated letter's).
    """
    from interp.datasets import TaskDataset

    from interp.groundtruth.induction import LETTER0

    spans = data.draw(n, seed=seed, distinct=True)
    g = torch.Generator().manual_seed(seed + 1)
    clean, corrupted, answers, counter, meta = [], [], [], [], []
    for r in range(n):
        letters = (spans.tokens[r, 1:] - LETTER0).tolist()
        a, b = int(spans.first[r]), int(spans.second[r])
        i = int(torch.randint(0, int(spans.length[r]) - 1, (1,), generator=g))
        prompt = letters[: b + i + 1]
        unused = [t for t in torch.randperm(data.n_letters, generator=g).tolist() if t not in letters]
        if len(unused) < 2:
            raise DataError(f"induction_task: need 2 letters outside each prompt, n_letters={data.n_letters} "
                            f"leaves {len(unused)}")
        bad = list(prompt)
        bad[a + i] = unused[0]

        def text(ids: list[int]) -> str:
            return "".join(chr(LETTER0 + t) for t in ids)

        clean.append(text(prompt))
        corrupted.append(text(bad))
        answers.append(text([letters[a + i + 1]]))
        counter.append(text([unused[1]]))
        meta.append({"first": a, "second": b, "i": i})
    return TaskDataset("induction", tuple(clean), tuple(corrupted), tuple(answers), tuple(counter), tuple(meta))
