"""Causal tracing (ROME, Meng et al. 2022): where does a model recall a fact?

For each fact, one batch holds the clean prompt (row 0) and ``n_samples`` corrupted
copies whose subject-token embeddings (output of :class:`Site` ``embed``) get noise
``nu * eps`` with ``nu = noise * std(embeddings of all subject tokens of the fact set)``.
The answer is the clean argmax at the last position; ``p`` is its softmax probability
averaged over the corrupted rows. A *restoration* copies clean activations into the
corrupted rows at chosen (site, token) pairs:

* ``resid``: the hidden state (block output, ``resid_post``) at one (token, layer);
* ``mlp`` / ``attn``: the MLP / attention outputs at one token for the ``window``
  layers centred on the layer (``l - window//2 ... l + window//2 - 1``, clipped).

Total effect ``TE = p_clean - p_corrupt``; indirect effect of a site
``IE = p_restored - p_corrupt``. Many restorations share one forward pass: rows =
restorations x noise copies, ``batch_size`` rows a pass (the noise copies are the same
for every restoration, as in ROME). Every pass runs on :mod:`interp.engine`: the noise is
an intervention on ``embed``, each restoration a world of ``restore`` interventions. A restoration's rows join the pass at its first
restored layer (the layers before it are the corrupted run, computed once per pass), and
logits are computed at the last position only.

Results: ``tracing.grid`` (one row per fact x site kind x token x layer) and
``tracing.summary`` (one row per fact).

Example:
    >>> from interp.models import load_model
    >>> from interp.datasets import TaskDataset
    >>> model = load_model("toy:llama")
    >>> ds = TaskDataset("facts", ("Paris is in",), answers=(" F",),
    ...                  meta=({"subject_start": 1, "subject_end": 6},))
    >>> grid, summary = causal_trace(model, ds, TracingConfig(n_samples=4))
    >>> sorted(grid.table.site_kind.unique())
    ['attn', 'mlp', 'resid']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp import metrics
from interp.engine import Intervention, World, run
from interp.errors import ConfigError, DataError
from interp.sites import Site

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["TracingConfig", "Restoration", "causal_trace", "subject_noise_std", "draw_noise",
           "restoration_probs", "site_kind_restoration", "aligned_effects", "trace_peaks", "KINDS", "TOKEN_MODES",
           "CATEGORIES"]

KINDS = ("resid", "mlp", "attn")
TOKEN_MODES = ("all", "from_subject", "key")
_COMPONENT = {"resid": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}

#: A set of (site, token position) pairs restored together in one row.
Restoration = tuple[tuple[Site, int], ...]


@dataclass(frozen=True, kw_only=True)
class TracingConfig:
    """Causal tracing settings (defaults: ROME).

    Attributes:
        n_samples: corrupted copies per fact.
        noise: multiplier of the subject-embedding std (``nu = noise * std``).
        noise_std: the embedding std to use instead of measuring it on the fact set
            (``nu = noise * noise_std``).
        uniform: draw ``eps`` uniform in [-1, 1] instead of standard normal.
        replace: replace the subject embeddings by the noise instead of adding it.
        window: layers restored together for ``mlp``/``attn`` (centred on the layer).
        kinds: site kinds to trace, from ``("resid", "mlp", "attn")``.
        tokens: ``"all"`` tokens, ``"from_subject"`` (first subject token to the end,
            the tokens ROME's averaged figure uses) or ``"key"`` (first/last subject
            token, first token after the subject, last token: a cheap run).
        layer_stride: trace every ``layer_stride``-th layer (1 = all; the last layer is
            always included).
        batch_size: rows (restorations x copies) per forward pass.
        seed: seed of the noise generator (a private ``torch.Generator``).
    """

    n_samples: int = 10
    noise: float = 3.0
    noise_std: float | None = None
    uniform: bool = False
    replace: bool = False
    window: int = 10
    kinds: tuple[str, ...] = KINDS
    tokens: str = "all"
    layer_stride: int = 1
    batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise ConfigError(f"n_samples must be >= 1, got {self.n_samples}")
        if self.noise <= 0 or (self.noise_std is not None and self.noise_std <= 0):
            raise ConfigError(f"noise and noise_std must be > 0, got {self.noise} and {self.noise_std}")
        if self.window < 1:
            raise ConfigError(f"window must be >= 1, got {self.window}")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ConfigError(f"kinds must be a non-empty subset of {KINDS}, got {self.kinds!r}")
        if self.tokens not in TOKEN_MODES:
            raise ConfigError(f"tokens must be one of {TOKEN_MODES}, got {self.tokens!r}")
        if self.layer_stride < 1 or self.batch_size < 1:
            raise ConfigError(f"layer_stride and batch_size must be >= 1, got {self.layer_stride}, {self.batch_size}")


def _subject_span(ds: Any, i: int, n_tokens: int) -> tuple[int, int]:
    meta = ds.meta[i] if ds.meta else {}
    if "subject_start" not in meta or "subject_end" not in meta:
        raise DataError(f"{ds.name}: prompt {i} has no subject_start/subject_end in its meta "
                        f"(build facts with interp.datasets.facts_dataset): {ds.clean[i]!r}")
    a, b = int(meta["subject_start"]), int(meta["subject_end"])
    if not 0 <= a < b <= n_tokens:
        raise DataError(f"{ds.name}: prompt {i} subject span [{a}, {b}) is outside its {n_tokens} tokens: "
                        f"{ds.clean[i]!r}")
    return a, b


def subject_noise_std(model: Model, ds: Any) -> float:
    """Std of the token-embedding outputs of all subject tokens of the fact set (ROME's ``nu / 3``)."""
    from interp.hooks import run_capture
    from interp.models import tokenize

    site = Site("embed")
    rows = []
    with torch.inference_mode():
        for i in range(len(ds)):
            tb = tokenize(model, [ds.clean[i]])
            a, b = _subject_span(ds, i, int(tb.lengths[0]))
            rows.append(run_capture(model, tb.tokens, [site])[site][0, a:b].float())
    return float(torch.cat(rows).std())


def draw_noise(shape: tuple[int, ...], std: float, *, uniform: bool, generator: torch.Generator) -> Float[Tensor, "..."]:
    """``std * eps`` with eps standard normal, or uniform in [-1, 1] (ROME's uniform option); float32, CPU."""
    if uniform:
        return std * (torch.rand(shape, generator=generator) * 2 - 1)
    return std * torch.randn(shape, generator=generator)


def _layers_of(kind: str, layer: int, n_layers: int, window: int) -> range:
    if kind == "resid":
        return range(layer, layer + 1)
    lo = max(0, layer - window // 2)
    return range(lo, min(n_layers, layer - window // 2 + window))


def site_kind_restoration(kind: str, token: int, layer: int, n_layers: int, window: int = 10) -> Restoration:
    """The restoration of one grid cell: ``resid`` at (token, layer), or ``mlp``/``attn`` over the window."""
    comp = _COMPONENT[kind]
    return tuple((Site(comp, l), token) for l in _layers_of(kind, layer, n_layers, window))


def restoration_probs(model: Model, tokens: Int[Tensor, "1 pos"], subject: tuple[int, int], answer_id: int,
                      noise: Float[Tensor, "copies subject d_model"], restorations: Sequence[Restoration], clean: dict[Site, Float[Tensor, "1 pos ..."]], *,
                      replace: bool = False, batch_size: int = 128, fast: bool = True,
                      progress: Any = None) -> Float[Tensor, " restoration"]:
    """Mean answer probability over the noise copies for each restoration, batched.

    Args:
        tokens: ``[pos]`` one prompt.
        subject: token span ``[start, end)`` that gets the noise.
        noise: ``[n_samples, end - start, d_model]`` noise of each copy.
        restorations: each a tuple of (site, token) pairs restored together; ``()``
            restores nothing (gives ``p_corrupt``).
        clean: ``{site: [pos, d_model]}`` clean activations of every site restored.
        batch_size: rows per forward pass (a pass holds ``batch_size // n_samples``
            restorations, at least one).
        fast: compute logits from ``ln_final`` at the last position only; then the
            corrupted rows are also *grown*: copies are appended at each restoration's
            first layer, so the layers before it run once per pass, not once per restoration.
        progress: optional tqdm bar, advanced by one per restoration.

    Returns:
        ``[len(restorations)]`` float32 probabilities.
    """
    n_s = noise.shape[0]
    per_pass = max(1, batch_size // n_s)
    grow = fast and all(s.layer is not None for r in restorations for s, _ in r)
    base = [Intervention("set" if replace else "add", Site("embed"), noise, positions=tuple(range(*subject)))]
    ids = _ids(answer_id, n_s)
    # entering worlds are sorted by their first layer inside a pass: chunk in that order
    order = sorted(range(len(restorations)), key=lambda k: _first_layer(restorations[k])) if grow \
        else list(range(len(restorations)))
    out = torch.zeros(len(restorations))
    for lo in range(0, len(order), per_pass):
        idx = order[lo:lo + per_pass]
        worlds = [_world(restorations[k], clean, grow) for k in idx if restorations[k] or not grow]
        res = run(model, tokens[None].expand(n_s, -1), worlds, base=base, with_base=grow, stop_early=fast)
        p_worlds = iter(metrics.prob(res.worlds.reshape(-1, res.worlds.shape[-1]), ids.repeat(len(worlds)))
                        .view(len(worlds), n_s).mean(1).tolist())
        p_base = float(metrics.prob(res.base, ids).mean()) if grow else float("nan")
        out[idx] = torch.tensor([next(p_worlds) if restorations[k] or not grow else p_base for k in idx])
        if progress is not None:
            progress.update(len(idx))
    return out


def _ids(answer_id: int, n: int) -> torch.Tensor:
    """The answer id repeated for ``n`` rows."""
    return torch.full((n,), answer_id, dtype=torch.long)


def _first_layer(rest: Restoration) -> int:
    return min((s.layer for s, _ in rest), default=-1)


def _world(rest: Restoration, clean: dict[Site, torch.Tensor], enter: bool) -> World:
    """One restoration as an engine world: clean activations restored at its (site, token) pairs; with
    ``enter`` its rows join the pass at the first restored layer as copies of the corrupted rows."""
    ivs = tuple(Intervention("restore", site, clean[site], positions=tok) for site, tok in rest)
    return World(ivs, enter=_first_layer(rest) if enter else None)


def _token_set(mode: str, n: int, a: int, b: int) -> list[int]:
    if mode == "all":
        return list(range(n))
    if mode == "from_subject":
        return list(range(a, n))
    return sorted({a, b - 1, min(b, n - 1), n - 1})


CATEGORIES = ("first subject token", "middle subject tokens", "last subject token", "first subsequent token",
              "further tokens", "last token")


def _category(t: int, a: int, b: int, n: int) -> str:
    if t == n - 1:
        return "last token"
    if t < a:
        return "before subject"
    if t == b - 1:
        return "last subject token"
    if t == a:
        return "first subject token"
    if t < b:
        return "middle subject tokens"
    return "first subsequent token" if t == b else "further tokens"


def _categories_of(t: int, a: int, last_subj: int, last: int) -> list[str]:
    cats = []
    if t == a:
        cats.append("first subject token")
    if a < t < last_subj:
        cats.append("middle subject tokens")
    if t == last_subj:
        cats.append("last subject token")
    if t == last_subj + 1 and t != last:
        cats.append("first subsequent token")
    if last_subj + 1 < t < last:
        cats.append("further tokens")
    if t == last:
        cats.append("last token")
    return cats


def aligned_effects(table: Any, value: str = "indirect_effect") -> Any:
    """Average ``value`` per (site_kind, category, layer), tokens aligned as in ROME.

    Each fact first averages its tokens within a category (middle subject tokens,
    further tokens), then categories are averaged over facts. A token can count in two
    categories (a one-token subject is both the first and the last subject token).
    Tokens before the subject are left out, as in ROME.
    """
    import pandas as pd

    rows = []
    for fact, g in table.groupby("fact"):
        subj = g.loc[g.is_subject, "token_index"]
        if subj.empty:
            continue
        a = int(subj.min())
        last_subj = int(g.loc[g.is_last_subject, "token_index"].max())
        last = int(g.token_index.max())
        cat_of = {t: _categories_of(t, a, last_subj, last) for t in g.token_index.unique()}
        for (kind, t, layer), v in g.groupby(["site_kind", "token_index", "layer"])[value].mean().items():
            for c in cat_of[int(t)]:
                rows.append({"fact": fact, "site_kind": kind, "category": c, "layer": layer, "token_index": t,
                             value: v})
    if not rows:
        raise DataError("tracing grid has no subject tokens to align")
    df = pd.DataFrame(rows)
    per_fact = df.groupby(["fact", "site_kind", "category", "layer"])[value].mean().reset_index()
    out = per_fact.groupby(["site_kind", "category", "layer"])[value].agg(["mean", "count"]).reset_index()
    return out.rename(columns={"mean": value, "count": "n_facts"})


def trace_peaks(grid: Any) -> Any:
    """Where the average indirect effect peaks, per site kind: over aligned categories and over layers.

    Returns:
        DataFrame with one row per site kind: ``site_kind``, ``category``, ``layer``, ``aie``
        (the peak of :func:`aligned_effects`), ``last_subject_peak_layer``/``_aie`` and
        ``last_token_peak_layer``/``_aie``.
    """
    import pandas as pd

    agg = aligned_effects(grid.table if hasattr(grid, "table") else grid)
    rows = []
    for kind, g in agg.groupby("site_kind"):
        top = g.loc[g.indirect_effect.idxmax()]
        row = {"site_kind": kind, "category": top.category, "layer": int(top.layer), "aie": float(top.indirect_effect)}
        for cat, key in (("last subject token", "last_subject"), ("last token", "last_token")):
            c = g[g.category == cat]
            if not c.empty:
                best = c.loc[c.indirect_effect.idxmax()]
                row[f"{key}_peak_layer"], row[f"{key}_aie"] = int(best.layer), float(best.indirect_effect)
        rows.append(row)
    return pd.DataFrame(rows)


def causal_trace(model: Model, ds: Any, config: TracingConfig | None = None, *, progress: bool = True,
                 runner: Any = None) -> tuple[Any, Any]:
    """ROME causal tracing of every fact of ``ds``; returns ``(grid, summary)`` Results.

    Args:
        model: a model from :func:`interp.load_model`.
        ds: a TaskDataset whose meta holds ``subject_start``/``subject_end`` (see
            :func:`interp.datasets.facts_dataset`; usually filtered by ``known_facts``).
        config: :class:`TracingConfig` (ROME defaults).
        progress: show a tqdm bar over restorations.
        runner: computes the restorations: called once with an iterator of per-fact jobs (keyword arguments
            of :func:`restoration_probs` after ``model``), it yields each job's probabilities in order
            (default: :func:`restoration_probs` in this process, one fact at a time;
            :func:`interp.distributed.causal_trace_ray` spreads chunks of the rows over Ray workers).

    Returns:
        ``grid`` (kind ``tracing.grid``: fact, site_kind, token_index, token, is_subject,
        is_last_subject, category, layer, p_restored, indirect_effect) and ``summary``
        (kind ``tracing.summary``: fact, prompt, subject, answer, dataset_answer,
        subject_start, subject_end, n_tokens, p_clean, p_corrupt, total_effect).

    Raises:
        DataError: facts without subject spans.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from interp.models import tokenize
    from interp.results import Result, run_meta

    from interp.arch import require_arch

    require_arch(model, method="causal tracing (next-token probability)", causal=True)
    cfg = config or TracingConfig()
    n_layers = model.cfg.n_layers
    layers = sorted(set(range(0, n_layers, cfg.layer_stride)) | {n_layers - 1})
    std = cfg.noise_std if cfg.noise_std is not None else subject_noise_std(model, ds)
    nu = cfg.noise * std
    gen = torch.Generator().manual_seed(cfg.seed)
    grid_rows, summary_rows = [], []
    plans = []
    for i in range(len(ds)):
        tb = tokenize(model, [ds.clean[i]])
        n = int(tb.lengths[0])
        a, b = _subject_span(ds, i, n)
        cells = [(kind, t, l) for kind in cfg.kinds for t in _token_set(cfg.tokens, n, a, b) for l in layers]
        plans.append((tb.tokens[0], n, a, b, cells))
    bar = tqdm(total=sum(len(p[4]) for p in plans), desc="causal trace", disable=not progress, leave=False)
    fast = None
    facts: list[tuple[float, float, int]] = []

    def jobs() -> Any:   # pass 1 of each fact, lazily: the runner asks for the next fact when it needs it
        nonlocal fast
        for i, (tokens, n, a, b, cells) in enumerate(plans):
            noise = draw_noise((cfg.n_samples, b - a, model.cfg.d_model), nu, uniform=cfg.uniform, generator=gen)
            sites = sorted({s for kind, t, l in cells for s, _ in site_kind_restoration(kind, t, l, n_layers,
                                                                                          cfg.window)})
            # pass 1: the clean world and one corrupted world per noise copy, recording the clean activations
            # (and, once, the final norm to check the fast logits)
            span, op, fin = tuple(range(a, b)), "set" if cfg.replace else "add", Site("ln_final")
            worlds = [World()] + [World((Intervention(op, Site("embed"), noise[k:k + 1], positions=span),))
                                  for k in range(cfg.n_samples)]
            out = run(model, tokens[None, :n], worlds, positions=torch.tensor([n - 1]), stop_early=False,
                      record=[*sites, fin] if fast is None else sites)
            full = out.worlds[:, 0].float()
            if fast is None:
                hid = torch.cat([rec[fin][:, n - 1] for rec in out.recorded])
                fast = bool(torch.allclose(model.unembed(hid[:, None])[:, 0].float(), full, atol=1e-4, rtol=1e-4))
            answer = int(full[0].argmax())
            probs = metrics.prob(full, _ids(answer, full.shape[0]))
            p_clean, p_corr = float(probs[0]), float(probs[1:].mean())
            clean = {s: out.recorded[0][s][0] for s in sites}
            rests = [site_kind_restoration(kind, t, l, n_layers, cfg.window) for kind, t, l in cells]
            facts.append((p_clean, p_corr, answer))
            yield dict(tokens=tokens, subject=(a, b), answer_id=answer, noise=noise, restorations=rests,
                       clean=clean, replace=cfg.replace, batch_size=cfg.batch_size, fast=fast)

    def local(todo: Any) -> Any:
        for job in todo:
            yield restoration_probs(model, **job, progress=bar)

    with torch.inference_mode():
        for i, p in enumerate((runner or local)(jobs())):
            tokens, n, a, b, cells = plans[i]
            p_clean, p_corr, answer = facts[i]
            toks = [model.tokenizer.decode([int(x)]) for x in tokens[:n]]
            for (kind, t, l), pr in zip(cells, p.tolist()):
                grid_rows.append({"fact": i, "site_kind": kind, "token_index": t, "token": toks[t],
                                  "is_subject": a <= t < b, "is_last_subject": t == b - 1,
                                  "category": _category(t, a, b, n), "layer": l, "p_restored": pr,
                                  "indirect_effect": pr - p_corr})
            summary_rows.append({"fact": i, "prompt": ds.clean[i], "subject": (ds.meta[i] or {}).get("subject", ""),
                                 "answer": model.tokenizer.decode([answer]),
                                 "dataset_answer": ds.answers[i] if ds.answers else "",
                                 "subject_start": a, "subject_end": b, "n_tokens": n, "p_clean": p_clean,
                                 "p_corrupt": p_corr, "total_effect": p_clean - p_corr})
    bar.close()
    meta = run_meta(model, dataset=ds.name, data=list(ds.clean), seed=cfg.seed, config=cfg,
                    noise_std=std, nu=nu, layers=layers, fast_logits=bool(fast))
    return (Result("tracing.grid", pd.DataFrame(grid_rows), meta),
            Result("tracing.summary", pd.DataFrame(summary_rows), meta))
