"""Path patching (Wang et al. 2022) from sender heads to receivers, batched.

For a *base* run (clean for noising, the default of Wang et al.; corrupted for
denoising) and a *source* run (the other prompt of each pair):

1. Run base and source side by side (one pass) and keep every head's output ``z``.
2. Rerun base with the sender's ``z`` taken from the source and every other head's
   ``z`` frozen to its base value (MLPs recompute, as in Wang et al. and the
   TransformerLens/ARENA implementation); record the receivers' inputs there.
3. Rerun base with only the receivers' inputs replaced by the recorded ones; the
   metric of that run is the path-patching value.

How receiver inputs are recorded: instead of TransformerLens' split-qkv mode (per-head
copies of the residual stream, ~3x slower on SmolLM2), step 2 records the receiver
head's own query/key/value vectors (``hook_q``/``hook_k``/``hook_v``) computed from the
step-2 residual stream; step 3 writes them into the receiver head's slot. This equals
patching the head's q/k/v *input* because q/k/v are a function of that input alone.
With grouped-query attention k and v exist per KV head, so a k/v receiver patches the
KV head that the query head reads (shared by its group). For the ``logits`` receiver,
step 3 is the final residual stream of step 2, so its value is read from step 2 directly.

Batching: each (sender) and (sender, receiver group) is a block of ``B`` batch rows
appended at its own layer (see :mod:`interp.patching.exact`), chunked by ``max_rows``.

Example:
    >>> from interp.datasets import TaskDataset
    >>> ds = TaskDataset("toy", ("cat on", "a dog to", "Al in a"), ("cow on", "a dog at", "Ed in a"),
    ...                  ("x", "y", "z"), ("q", "w", "e"))   # clean, corrupted, answers, wrong answers
    >>> cfg = PathConfig(receivers=("L1.H0.q", "logits"))
    >>> r = path_patching(model, ds, cfg)
    >>> len(r.table)   # 4 layer-0 senders x 2 receivers + 4 layer-1 senders x logits
    12
    >>> r.table.nsmallest(3, "value")[["src", "dst", "dst_input", "value"]].round(2)
         src     dst dst_input  value
    4  L0.H0  LOGITS    logits  -0.45
    7  L0.H3  LOGITS    logits   0.06
    5  L0.H1  LOGITS    logits   0.52
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from interp.errors import ConfigError
from interp.nodes import node_id, parse_node_id
from interp.results import Result, run_meta
from interp.schemas import add_effect
from interp.sites import Site

from interp.engine import Intervention, World, run
from interp.patching._run import Counter
from interp.patching.exact import DIRECTIONS, run_baseline
from interp.patching.metrics import (METRICS, block_values, check_metrics, final_logits, prepare_pairs, row_stats)

if TYPE_CHECKING:
    from interp.types import Model

__all__ = ["PathConfig", "path_patching", "parse_receiver"]

_INPUTS = {"q": "q", "k": "k", "v": "v"}


def parse_receiver(text: str) -> tuple[str, int, int, str]:
    """``"L9.H6.q"`` -> ("L9.H6", 9, 6, "q"); ``"logits"`` -> ("LOGITS", -1, -1, "logits")."""
    if text.lower() == "logits":
        return "LOGITS", -1, -1, "logits"
    node, _, inp = text.rpartition(".")
    if inp not in _INPUTS:
        raise ConfigError(f"receiver {text!r}: expected 'L<layer>.H<head>.<q|k|v>' or 'logits'")
    info = parse_node_id(node)
    if info["kind"] != "head":
        raise ConfigError(f"receiver {text!r}: only heads (q/k/v) or 'logits' can receive")
    return node, info["layer"], info["head"], inp


@dataclass(frozen=True, kw_only=True)
class PathConfig:
    """Configuration of :func:`path_patching`.

    Attributes:
        receivers: ``"L<layer>.H<head>.<q|k|v>"`` and/or ``"logits"``.
        senders: head node ids (``"L5.H1"``); ``None`` = every head before the last receiver.
        joint: patch all q/k/v receivers together (one value per sender, Wang et al.'s
            figures) in addition to one value per (sender, receiver) edge.
        direction: ``"noising"`` (base = clean, sender from corrupted; Wang et al.) or ``"denoising"``.
        metric: a metric of :data:`~interp.patching.metrics.METRICS`.
        max_rows: most batch rows per forward pass.
        progress: show a tqdm bar over forward passes.
    """

    receivers: tuple[str, ...] = ("logits",)
    senders: tuple[str, ...] | None = None
    joint: bool = True
    direction: str = "noising"
    metric: str = "logit_diff_norm"
    max_rows: int = 1024
    progress: bool = False

    def __post_init__(self) -> None:
        if not self.receivers:
            raise ConfigError("path patching needs at least one receiver")
        for r in self.receivers:
            parse_receiver(r)
        for s in self.senders or ():
            if parse_node_id(s)["kind"] != "head":
                raise ConfigError(f"sender {s!r} is not a head node id like 'L5.H1'")
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        check_metrics((self.metric,), METRICS)


def path_patching(model: Model, data: Any, config: PathConfig) -> Result:
    """Path patching from sender heads to receivers (q/k/v of later heads, or the logits).

    Returns:
        Result ``patching.edges`` with rows (method ``"path"``, direction, metric, ``src``,
        ``dst``, ``dst_input`` (q|k|v|logits|joint), ``src_layer``, ``dst_layer``, ``value``):
        the metric after patching that path, in the units of
        :func:`~interp.patching.activation_patching` (normalised: 1 = clean, 0 = corrupted).
        With ``joint`` and several q/k/v receivers, extra rows with ``dst = "+".join(receivers)``
        and ``dst_input = "joint"`` hold the value with all of them patched together.
    """
    t0 = time.perf_counter()
    pairs = prepare_pairs(model, data)
    n_b, n_layers, n_heads = len(pairs), model.cfg.n_layers, model.cfg.n_heads
    n_kv = getattr(model.cfg, "n_key_value_heads", None) or n_heads
    rep = n_heads // n_kv
    recv = [parse_receiver(r) for r in config.receivers]
    for _, l, h, _ in recv:
        if l >= n_layers or h >= n_heads:
            raise ConfigError(f"receiver L{l}.H{h} out of range ({n_layers} layers, {n_heads} heads)")
    top = max((l for _, l, _, inp in recv if inp != "logits"), default=-1)
    top = n_layers if any(inp == "logits" for *_, inp in recv) else top
    if config.senders is None:
        senders = [(l, h) for l in range(min(top, n_layers)) for h in range(n_heads)]
    else:
        senders = sorted((parse_node_id(s)["layer"], parse_node_id(s)["head"]) for s in config.senders)
    if not senders:
        raise ConfigError("no sender heads precede the receivers")
    counter = Counter()
    z_sites = [Site("z", l) for l in range(n_layers)]
    base, acts = run_baseline(model, pairs, z_sites, counter, with_logp=config.metric == "kl")
    noising = config.direction == "noising"
    base_tokens = pairs.clean if noising else pairs.corrupted
    z_base = {l: acts[Site("z", l)][:n_b] if noising else acts[Site("z", l)][n_b:] for l in range(n_layers)}
    z_src = {l: acts[Site("z", l)][n_b:] if noising else acts[Site("z", l)][:n_b] for l in range(n_layers)}
    metrics = (config.metric,)
    qkv_layers = sorted({l for _, l, _, inp in recv if inp != "logits"})
    per_chunk = max(1, config.max_rows // n_b - 1)

    # step 2: sender blocks; record q/k/v at receiver layers and the logits metric
    recorded: dict[tuple[int, int], dict[tuple[int, str], torch.Tensor]] = {}
    logits_vals: dict[tuple[int, int], float] = {}
    groups = [[r] for r in recv if r[3] != "logits"]
    qkv = [r for r in recv if r[3] != "logits"]
    if config.joint and len(qkv) > 1:
        groups.append(qkv)
    blocks = [(s, g) for g in groups for s in senders if s[0] < min(r[1] for r in g)]
    blocks.sort(key=lambda b: min(r[1] for r in b[1]))
    from tqdm.auto import tqdm

    bar = tqdm(total=-(-len(senders) // per_chunk) + -(-len(blocks) // per_chunk), desc="path patching",
               unit="pass", disable=not config.progress)
    rec_sites = [Site(comp, l) for l in qkv_layers for comp in ("q", "k", "v")]
    logp = base.logp_clean if config.metric == "kl" else None

    def values(hid: torch.Tensor) -> list[float]:
        st = row_stats(final_logits(model, hid.reshape(-1, hid.shape[-1])), pairs, logp)
        return block_values(st, n_b, base, metrics)[config.metric].tolist()

    with torch.inference_mode():
        for c0 in range(0, len(senders), per_chunk):
            chunk = senders[c0:c0 + per_chunk]
            out = run(model, base_tokens, [_sender_world(s, z_base, z_src, n_layers) for s in chunk],
                      positions=pairs.last, readout="hidden", record=rec_sites, with_base=True, counter=counter)
            for k, (s, v) in enumerate(zip(chunk, values(out.worlds))):
                logits_vals[s] = v
                recorded[s] = {(site.layer, site.component): t for site, t in out.recorded[k].items()}
            bar.update(1)
    # step 3: (sender, receiver group) blocks with only the receivers' q/k/v replaced
    block_vals: list[float] = []
    with torch.inference_mode():
        for c0 in range(0, len(blocks), per_chunk):
            chunk = blocks[c0:c0 + per_chunk]
            out = run(model, base_tokens, [_receiver_world(g, recorded[s], rep) for s, g in chunk],
                      positions=pairs.last, readout="hidden", with_base=True, counter=counter)
            block_vals += values(out.worlds)
            bar.update(1)
    bar.close()
    rows = []

    def row(s: tuple[int, int], dst: str, inp: str, dl: int, v: float) -> dict[str, Any]:
        return {"method": "path", "direction": config.direction, "metric": config.metric,
                "src": node_id("head", layer=s[0], head=s[1]), "dst": dst, "dst_input": inp, "src_layer": s[0],
                "dst_layer": dl, "value": v}

    for (s, g), v in zip(blocks, block_vals):
        if len(g) == 1:
            rows.append(row(s, g[0][0], g[0][3], g[0][1], v))
        else:
            rows.append(row(s, "+".join(f"{r[0]}.{r[3]}" for r in g), "joint", min(r[1] for r in g), v))
    if any(r[3] == "logits" for r in recv):
        rows += [row(s, "LOGITS", "logits", n_layers, logits_vals[s]) for s in senders]
    extra = {"ld_clean": base.mean_clean, "ld_corr": base.mean_corr, "n_prompts": n_b,
             "forward_passes": counter.forward, "rows": counter.rows, "seconds": round(time.perf_counter() - t0, 3),
             "receivers": list(config.receivers)}
    meta = run_meta(model, dataset=pairs.dataset.name, data=list(zip(pairs.texts, pairs.corrupted_texts)),
                    config=config, **extra)
    table = add_effect(pd.DataFrame(rows), base.reference(config.direction))
    return Result("patching.edges", table, meta, name=f"path-{config.direction}")


def _sender_world(sender: tuple[int, int], z_base: dict, z_src: dict, n_layers: int) -> World:
    """Step 2 for one sender: rows enter at its layer; every head frozen to base except the sender from source."""
    sl, sh = sender
    freeze = [Intervention("restore", Site("z", l), z_base[l]) for l in range(sl, n_layers)]
    return World((*freeze, Intervention("restore", Site("z", sl, sh), z_src[sl])), enter=sl)


def _receiver_world(group: list, recorded: dict, rep: int) -> World:
    """Step 3 for one (sender, receiver group): rows enter at the group's first layer; the receivers'
    q/k/v take their step-2 values (k/v of the KV head a query head reads, under GQA)."""
    writes = [Intervention("restore", Site(inp, l, h if inp == "q" else h // rep), recorded[(l, inp)])
              for _, l, h, inp in group]
    return World(tuple(writes), enter=min(r[1] for r in group))
