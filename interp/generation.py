"""Generation with interventions, using the model's KV cache.

:func:`generate` continues prompts token by token with the one engine's
:class:`~interp.engine.Intervention` s (set, add, scale, ablate, gate, restore, apply) applied
during generation: steering vectors, ablations, patching of recorded activations, at chosen
steps or at every step, and returns per-step activations (captures) at :class:`~interp.sites.Site` s.

**Steps and positions.** Step ``k`` (``0 <= k < max_new_tokens``) produces new token ``k``.
Step 0 runs the prompt (positions ``0 .. L-1``); step ``k >= 1`` runs position ``L + k - 1``
(the token chosen at step ``k - 1``) against the cached keys and values of all earlier
positions. Intervention ``positions`` are *absolute* indices into prompt + continuation:
``None`` = every position, an int or a tuple = those, a ``slice`` = that range, with negative
bounds counted from the end of the *prompt* (``slice(-1, None)``: the prompt's last token and
every generated one, i.e. every position that predicts a new token). ``at_steps`` restricts
every intervention to the positions run at those steps (``[0]``: the prompt pass only).
A tensor value with a position axis (a recorded activation, ``[batch, pos, ...]`` or
``[pos, ...]``) applies at the positions it covers only; a batch axis of ``n_prompts`` rows is
split with the prompts.

Because an intervention on a position is applied when that position is run, and its cached
keys and values carry it afterwards, greedy generation with the cache equals recomputing the
whole sequence at every step (``use_cache=False``) with the same interventions at the same
positions: equal tokens, logits within float error (tested on toy models and SmolLM2).

Prompts of different lengths are run in groups of equal length (no padding, no attention mask,
so positions are exact); ``batch_size`` caps a group.

Example:
    >>> from interp import load_model, Site
    >>> from interp.engine import Intervention
    >>> from interp.generation import generate
    >>> model = load_model("toy:llama")
    >>> out = generate(model, ["ab", "hello"], max_new_tokens=4, capture=[Site("resid_post", 0)])
    >>> out.new_tokens.shape, out.logits.shape                 # [batch, new], [batch, new, d_vocab]
    (torch.Size([2, 4]), torch.Size([2, 4, 259]))
    >>> out.captures[Site("resid_post", 0)][1].shape           # prompt 1: BOS + 5 bytes + 3 generated
    torch.Size([9, 64])
    >>> steer = Intervention("add", Site("resid_post", 1), 30 * model.W_U[:, 65], positions=slice(-1, None))
    >>> steered = generate(model, ["ab", "hello"], max_new_tokens=4, interventions=[steer])
    >>> bool((steered.logits[..., 65] > out.logits[..., 65]).all())   # the logit of "A" rises at every step
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.engine import Intervention, as_hook
from interp.errors import ConfigError, DataError, ShapeError, SiteError
from interp.hooks import hooked
from interp.sites import Site

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["generate", "Generation"]


@dataclass
class Generation:
    """What :func:`generate` returns (every tensor on the CPU).

    Attributes:
        prompt_tokens: per prompt, its ``[L_i]`` tokens.
        new_tokens: ``[batch, new]`` generated tokens.
        logits: ``[batch, new, d_vocab]`` the logits each new token was chosen from (float32).
        texts: decoded continuations (without the prompt).
        captures: per captured site, per prompt, the activation (after interventions) at every
            position run, ``[L_i + new - 1, ...]`` (batch axis dropped; positions ``0 .. L_i-1`` come
            from step 0, position ``L_i - 1 + k`` from step ``k``).
    """

    prompt_tokens: list[Tensor]
    new_tokens: Int[Tensor, "batch new"]
    logits: Float[Tensor, "batch new d_vocab"]
    texts: list[str]
    captures: dict[Site, list[Tensor]] = field(default_factory=dict)

    @property
    def prompt_lengths(self) -> list[int]:
        return [int(t.shape[0]) for t in self.prompt_tokens]

    def sequences(self) -> list[Tensor]:
        """Per prompt, prompt + continuation tokens ``[L_i + new]``."""
        return [torch.cat([p, n]) for p, n in zip(self.prompt_tokens, self.new_tokens)]

    def at_step(self, site: Site | str, step: int) -> Tensor:
        """``[batch, ...]`` activation at ``site`` of the position that predicted new token ``step``."""
        site = site if isinstance(site, Site) else Site.parse(site)
        if site not in self.captures:
            raise SiteError(f"{site} was not captured; captured: {', '.join(map(str, self.captures)) or 'none'}")
        n = int(self.new_tokens.shape[1])
        if not 0 <= step < n:
            raise ConfigError(f"step {step} out of range for {n} generated tokens")
        return torch.stack([a[L - 1 + step] for a, L in zip(self.captures[site], self.prompt_lengths)])


# --------------------------------------------------------------------------- checks

def _check_options(max_new_tokens: int, do_sample: bool, temperature: float, top_k: int | None,
                   top_p: float | None, at_steps: Any) -> frozenset[int] | None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if do_sample:
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ConfigError(f"temperature must be a finite number > 0, got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ConfigError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
        if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
            raise ConfigError(f"top_p must be in (0, 1] or None, got {top_p!r}")
    if at_steps is None or at_steps == "all":
        return None
    if isinstance(at_steps, str) or not isinstance(at_steps, Iterable):
        raise ConfigError(f"at_steps must be None, 'all' or a list of step indices, got {at_steps!r}")
    steps = list(at_steps)
    bad = [s for s in steps if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < max_new_tokens]
    if bad or not steps:
        raise ConfigError(f"at_steps: expected step indices in 0..{max_new_tokens - 1} (max_new_tokens="
                          f"{max_new_tokens}), got {steps!r}")
    return frozenset(steps)


def _check_site(site: Site, what: str) -> None:
    if "pos" not in site.dims:
        raise SiteError(f"generate: {what} at {site} is not supported: its key axis grows with every step "
                        "(use a site with a position axis: resid_*, attn_out, mlp_*, z, q, k, v ...)")


# --------------------------------------------------------------------------- positions

def _value_pos_axis(iv: Intervention) -> int | None:
    """Axis of ``iv.value`` that runs along positions (a recorded activation), else None."""
    v = iv.value
    if not isinstance(v, Tensor):
        return None
    if iv.op == "restore":
        full = len(iv.site.dims)
        return 1 if v.dim() == full else 0
    if iv.op in ("set", "ablate", "add", "scale") and iv.positions is None:
        dims = iv.site.dims if iv.site.head is None else \
            iv.site.dims[:iv.site.head_axis] + iv.site.dims[iv.site.head_axis + 1:]
        if v.dim() >= len(dims) - 1:                 # right-aligned: the value reaches the pos axis
            axis = v.dim() - (len(dims) - 1)
            return axis if v.shape[axis] > 1 else None
    return None


def _batch_axis(iv: Intervention, n_prompts: int) -> bool:
    """Whether ``iv.value`` has a leading batch axis of ``n_prompts`` rows."""
    v = iv.value
    if not isinstance(v, Tensor) or v.dim() == 0:
        return False
    if iv.op == "restore":
        return v.dim() == len(iv.site.dims)
    if iv.op == "gate":
        return v.dim() == 2
    dims = len(iv.site.dims) - (iv.site.head is not None)
    return v.dim() == dims and (v.shape[0] > 1 or n_prompts == 1)


def _wanted(positions: Any, L: int, total: int) -> set[int] | None:
    """Absolute positions an intervention names (None: all); negative slice bounds count from the prompt end."""
    if positions is None:
        return None
    if isinstance(positions, int):
        return {positions}
    if isinstance(positions, tuple):
        return set(positions)
    start, stop = positions.start, positions.stop
    start = 0 if start is None else (L + start if start < 0 else start)
    stop = total if stop is None else (L + stop if stop < 0 else stop)
    return set(range(max(start, 0), min(stop, total)))


@dataclass
class _Prepared:
    iv: Intervention
    pos_axis: int | None
    batched: bool


def _at_pass(p: _Prepared, rows: Tensor, run: list[int], L: int, total: int,
             steps: frozenset[int] | None) -> Intervention | None:
    """``p``'s intervention for a pass running absolute positions ``run`` (pass-relative positions)."""
    iv = p.iv
    step_of = [0 if q < L else q - L + 1 for q in run]
    keep = [i for i, (q, s) in enumerate(zip(run, step_of)) if steps is None or s in steps]
    want = _wanted(iv.positions, L, total)
    if want is not None:
        keep = [i for i in keep if run[i] in want]
    v = iv.value
    if p.batched:
        v = v[rows.to(v.device)]
    if p.pos_axis is not None:
        keep = [i for i in keep if run[i] < v.shape[p.pos_axis]]
    if not keep:
        return None
    op = iv.op
    if p.pos_axis is not None:
        v = v.index_select(p.pos_axis, torch.tensor([run[i] for i in keep], device=v.device))
        if op == "restore":               # the value is the recorded hook activation: select the head, then set
            if iv.site.head is not None:
                v = v.select(iv.site.head_axis - (v.dim() < len(iv.site.dims)), iv.site.head)
            op = "set"
    elif op == "restore":
        op = "set"
        if iv.site.head is not None:
            v = v.select(iv.site.head_axis - (v.dim() < len(iv.site.dims)), iv.site.head)
    positions = None if len(keep) == len(run) else tuple(keep)
    return Intervention(op, iv.site, v, positions=positions)


# --------------------------------------------------------------------------- sampling

def _choose(logits: Tensor, do_sample: bool, temperature: float, top_k: int | None, top_p: float | None,
            gen: torch.Generator | None) -> Tensor:
    if not do_sample:
        return logits.argmax(-1)
    scores = logits.float() / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        order = scores.argsort(-1, descending=True)
        probs = scores.gather(-1, order).softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p            # mass before the token already reaches top_p
        scores = scores.scatter(-1, order, scores.gather(-1, order).masked_fill(drop, float("-inf")))
    return torch.multinomial(scores.softmax(-1), 1, generator=gen)[:, 0]


# --------------------------------------------------------------------------- generation

def _prompt_rows(model: Model, prompts: Any) -> list[Tensor]:
    if isinstance(prompts, Tensor):
        if prompts.dim() != 2 or prompts.is_floating_point() or prompts.shape[1] == 0:
            raise ShapeError(f"generate: token prompts must be a [batch, pos] integer tensor, got "
                             f"{prompts.dtype} {tuple(prompts.shape)}")
        return [row for row in prompts.long()]
    from interp.models import tokenize

    tb = tokenize(model, [prompts] if isinstance(prompts, str) else list(prompts))
    return [tb.tokens[i, :int(tb.lengths[i])] for i in range(len(tb.lengths))]


def generate(model: Model, prompts: Sequence[str] | str | Int[Tensor, "batch pos"], *,
             interventions: Sequence[Intervention] = (), max_new_tokens: int = 16, do_sample: bool = False,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, seed: int = 0,
             at_steps: Any = None, capture: Sequence[Site | str] = (), use_cache: bool = True,
             batch_size: int = 16) -> Generation:
    """Continue ``prompts`` by ``max_new_tokens`` tokens under ``interventions`` (see the module doc).

    Args:
        prompts: a prompt, a list, or ``[batch, pos]`` tokens (used as given).
        interventions: :class:`~interp.engine.Intervention` s; positions absolute (module doc).
        max_new_tokens: tokens to generate (no early stop at EOS: every row gets exactly this many).
        do_sample: sample (with ``temperature``, ``top_k``, ``top_p`` and a generator seeded by
            ``seed``) instead of greedy argmax.
        at_steps: ``None`` / ``"all"`` (every step) or the steps whose positions are intervened on.
        capture: sites whose activations (after interventions) are returned per position.
        use_cache: reuse keys and values (default); ``False`` recomputes the whole sequence each step
            (the reference the cache is tested against; slower).
        batch_size: most prompts of one length run together.

    Raises:
        ConfigError: bad options (max_new_tokens, temperature, top_k, top_p, at_steps), a sequence
            longer than the model's context. SiteError: an unknown site, or an attention-pattern site.
        ShapeError / DataError: prompts or intervention values that do not fit.
    """
    from interp.arch import require_arch

    require_arch(model, method="generation", causal=True)
    steps = _check_options(max_new_tokens, do_sample, temperature, top_k, top_p, at_steps)
    ivs = list(interventions)
    for iv in ivs:
        if not isinstance(iv, Intervention):
            raise ConfigError(f"generate: interventions must be interp.engine.Intervention objects, got "
                              f"{type(iv).__name__}")
        if isinstance(iv.positions, Tensor):
            raise ConfigError(f"generate: {iv.op} {iv.site}: per-row tensor positions are not supported during "
                              "generation; use absolute positions (int, tuple, slice) and at_steps")
        _check_site(iv.site, f"an intervention ({iv.op})")
    sites = [s if isinstance(s, Site) else Site.parse(str(s)) for s in capture]
    for s in sites:
        _check_site(s, "a capture")
    rows = _prompt_rows(model, prompts)
    n_prompts = len(rows)
    if n_prompts == 0:
        raise DataError("generate: no prompts given")
    n_ctx = int(getattr(model.cfg, "n_ctx", 0) or 0)
    longest = max(int(r.shape[0]) for r in rows) + max_new_tokens
    if n_ctx and longest - 1 > n_ctx:
        raise ConfigError(f"generate: the longest prompt plus max_new_tokens={max_new_tokens} is {longest} tokens, "
                          f"more than the model's context of {n_ctx}")
    prepared = [_Prepared(iv, _value_pos_axis(iv), _batch_axis(iv, n_prompts)) for iv in ivs]
    for p in prepared:
        if p.batched and p.iv.value.shape[0] != n_prompts:
            raise ShapeError(f"generate: {p.iv.op} {p.iv.site}: value has {p.iv.value.shape[0]} rows for "
                             f"{n_prompts} prompts")

    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed) if do_sample else None
    points = sorted({iv.site.layer_site for iv in ivs} | {s.layer_site for s in sites})
    state: dict[str, Any] = {"by_point": {}, "record": None}

    def dispatch(act: Tensor, site: Site) -> Tensor | None:
        here = state["by_point"].get(site)
        out = as_hook(here)(act, site) if here else act
        rec = state["record"]
        if rec is not None:
            lo = rec["from"]
            for s in sites:
                if s.layer_site == site:
                    rec["acts"].setdefault(s, []).append(s.select(out[:, lo:]).detach().float().cpu())
        return out if here else None

    new_tokens = torch.zeros(n_prompts, max_new_tokens, dtype=torch.long)
    logits_out: list[Tensor | None] = [None] * n_prompts
    captured: dict[Site, list[Tensor | None]] = {s: [None] * n_prompts for s in sites}
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(int(r.shape[0]), []).append(i)
    chunks = [(L, idx[j:j + batch_size]) for L, idx in sorted(groups.items())
              for j in range(0, len(idx), max(1, batch_size))]

    with hooked(model, [(pt, dispatch) for pt in points]), torch.inference_mode():
        for L, idx in chunks:
            index = torch.tensor(idx)
            tokens = torch.stack([rows[i] for i in idx]).to(device)
            total = L + max_new_tokens - 1          # positions ever run
            cache = None
            step_logits, step_acts = [], []
            for k in range(max_new_tokens):
                seq = tokens.shape[1]
                start = 0 if (k == 0 or not use_cache) else seq - 1
                new_from = 0 if k == 0 else seq - 1    # positions first run at this step
                run_pos = list(range(start, seq))
                by_point: dict[Site, list[Intervention]] = {}
                for p in prepared:
                    at = _at_pass(p, index, run_pos, L, total, steps)
                    if at is not None:
                        by_point.setdefault(at.site.layer_site, []).append(at)
                acts: dict[Site, list[Tensor]] = {}
                state["by_point"] = by_point
                state["record"] = {"from": new_from - start, "acts": acts} if sites else None
                if use_cache:
                    if k == 0:
                        logits, cache = model(tokens, use_cache=True, return_type="logits_and_cache")
                    else:
                        logits = model(tokens[:, -1:], past_key_values=cache, use_cache=True,
                                       attention_mask=torch.ones(tokens.shape, dtype=torch.long, device=device),
                                       position_ids=torch.full((len(idx), 1), seq - 1, device=device))
                else:
                    logits = model(tokens)
                last = logits[:, -1].float()
                nxt = _choose(last, do_sample, temperature, top_k, top_p, gen)
                tokens = torch.cat([tokens, nxt[:, None].to(tokens.dtype)], dim=1)
                step_logits.append(last)
                step_acts.append(acts)
            state["by_point"], state["record"] = {}, None
            new = tokens[:, L:].cpu()
            lg = torch.stack(step_logits, 1).cpu()
            for j, i in enumerate(idx):
                new_tokens[i] = new[j]
                logits_out[i] = lg[j]
            for s in sites:
                per_step = [a[s][0] for a in step_acts]            # [b, n_new_positions, ...]
                full = torch.cat(per_step, dim=1)
                for j, i in enumerate(idx):
                    captured[s][i] = full[j]
    tok = getattr(model, "tokenizer", None)
    texts = [tok.decode(t.tolist()) if tok is not None else "" for t in new_tokens]
    return Generation(prompt_tokens=[r.cpu() for r in rows], new_tokens=new_tokens,
                      logits=torch.stack(logits_out), texts=texts,
                      captures={s: list(v) for s, v in captured.items()})
