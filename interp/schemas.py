"""Result schemas: every Result kind declares its columns, their units and meaning.

A :class:`Schema` lists the columns of one Result kind (``"patching.nodes"`` ...): name,
type, unit and meaning, whether NaN is a legal value there ("not applicable") and
whether the column may be absent. :func:`validate` checks a table against its kind's
schema; :meth:`interp.results.Result.save` and :func:`interp.results.load_result` call it,
so a file whose columns do not match its kind is refused with the missing and extra
columns named, and a non-finite number where the schema does not allow one is refused
naming the column and the first row.

**The evidence vocabulary.** Every node or edge *effect* kind (``patching.nodes``,
``patching.edges``, ``gating.head_patching``) carries the same five columns:

* ``metric``: what was measured (a name of :data:`interp.metrics` / patching metrics),
* ``direction``: ``denoising`` (clean into corrupted) or ``noising`` (corrupted into clean),
* ``reference``: the run intervened on, ``"corrupted"`` or ``"clean"``,
* ``value``: the metric of the intervened run (for estimates such as AtP, EAP and EAP-IG,
  ``reference_value + effect``: the metric the estimate predicts),
* ``effect``: ``value - reference_value``, the change the intervention causes, in the
  metric's units. Exact patching measures it; AtP / EAP / EAP-IG estimate it.

The circuit graph reads only ``effect`` (signed) as node score and edge weight.

Example:
    >>> import pandas as pd
    >>> schema_for("sinks.layers").names()[:2]
    ('layer', 'sink_rate')
    >>> validate("sinks.layers", pd.DataFrame({"layer": [0], "sink_rate": [0.5]}))
    Traceback (most recent call last):
    ...
    interp.errors.SchemaError: Result kind 'sinks.layers': missing column(s) ['n_prompts', 'sink_rate_std']
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from interp.errors import SchemaError, nearest

__all__ = ["Column", "Schema", "SCHEMAS", "schema_for", "register", "validate", "EFFECT_KINDS", "DTYPES",
           "reference_of", "add_effect"]

#: column types: ``int``, ``float``, ``str``, ``bool``, ``list`` (list / tuple / array cells), ``any``
DTYPES = ("int", "float", "str", "bool", "list", "any")


@dataclass(frozen=True)
class Column:
    """One column of a Result table.

    Attributes:
        name: column name.
        dtype: one of :data:`DTYPES`.
        unit: unit of the numbers (``"logits"``, ``"nats"``, ``"probability"``, ``"fraction"``,
            ``"1 = clean"`` ...), ``""`` for ids and labels.
        meaning: one line.
        nan_ok: NaN / inf is a legal value (it then means "not applicable", as documented).
        optional: the column may be absent.
    """

    name: str
    dtype: str
    unit: str = ""
    meaning: str = ""
    nan_ok: bool = False
    optional: bool = False


@dataclass(frozen=True)
class Schema:
    """The columns of one Result kind.

    Attributes:
        kind: the Result kind.
        doc: one line on what one row is.
        columns: the declared columns.
        extra_prefixes: extra columns whose names start with one of these are allowed (for
            tables whose columns depend on the run, e.g. SAE-Lens's loss terms).
    """

    kind: str
    doc: str
    columns: tuple[Column, ...]
    extra_prefixes: tuple[str, ...] = field(default=())

    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise SchemaError(f"Result kind {self.kind!r} has no column {name!r}.{nearest(name, self.names())}")

    def describe(self) -> pd.DataFrame:
        """The schema as a table (name, dtype, unit, meaning, nan_ok, optional)."""
        return pd.DataFrame([c.__dict__ for c in self.columns])


def _C(name: str, dtype: str, unit: str = "", meaning: str = "", *, nan_ok: bool = False,
       optional: bool = False) -> Column:
    if dtype not in DTYPES:
        raise SchemaError(f"column {name!r}: unknown dtype {dtype!r}; expected one of {DTYPES}")
    return Column(name, dtype, unit, meaning, nan_ok, optional)


# ----------------------------------------------------------------------------- shared column groups
_LAYER = _C("layer", "int", "", "block index")
_HEAD = _C("head", "int", "", "head index (-1 = not per head)")
_NODE = _C("node", "str", "", "circuit-graph node id (interp.nodes)")
_EFFECT = (
    _C("method", "str", "", "exact, path, atp, eap, eap-ig, ..."),
    _C("direction", "str", "", "denoising (clean into corrupted) or noising (corrupted into clean)"),
    _C("metric", "str", "", "the metric measured (logit_diff, logit_diff_norm, prob, kl)"),
    _C("reference", "str", "", "the run intervened on: corrupted (denoising) or clean (noising)"),
    _C("reference_value", "float", "metric units", "the metric of the reference run"),
    _C("value", "float", "metric units", "the metric of the intervened run (estimates: reference_value + effect)"),
    _C("effect", "float", "metric units", "value - reference_value: the change the intervention causes"),
)
#: kinds whose rows are node or edge effects in the evidence vocabulary
EFFECT_KINDS = ("patching.nodes", "patching.edges")

_SCHEMAS: list[Schema] = [
    # --------------------------------------------------------------- patching
    Schema("patching.nodes", "one patched (or estimated) node at one position, for one metric", (
        *_EFFECT,
        _C("component", "str", "", "head, mlp, attn (whole attention layer) or resid"),
        _C("site", "str", "", "the patched component (z, mlp_out, attn_out, resid_pre, resid_post)"),
        _LAYER, _HEAD,
        _C("pos", "int", "", "position patched (-1 = all positions; for named positions, its index)"),
        _C("pos_label", "str", "", "token at that position, 'all', or the named position"),
        _C("node", "str", "", "circuit-graph node id ('' for a whole attention layer)"),
    )),
    Schema("patching.edges", "one sender -> receiver-input edge, for one metric", (
        *_EFFECT,
        _C("src", "str", "", "sender node id"),
        _C("dst", "str", "", "receiver node id, or several joined by '+' for a joint receiver set"),
        _C("dst_input", "str", "", "the receiver's input: q, k, v, mlp, logits, or joint"),
        _C("src_layer", "int", "", "sender layer (-1 = EMBED)", optional=True),
        _C("dst_layer", "int", "", "receiver layer (n_layers = LOGITS)", optional=True),
        _C("kv_head", "int", "", "KV head of a k/v receiver under GQA (-1 = not applicable)", optional=True),
        _C("first_in_group", "bool", "", "first query head of its KV group (count k/v edges once)", optional=True),
    )),
    # --------------------------------------------------------------- tracing
    Schema("tracing.grid", "one restored (site kind, token, layer) cell of one fact", (
        _C("fact", "int", "", "fact index"), _C("site_kind", "str", "", "hidden, mlp or attn"),
        _C("token_index", "int", "", "restored position"), _C("token", "str", "", "token at that position"),
        _C("is_subject", "bool"), _C("is_last_subject", "bool"), _C("category", "str", "", "ROME token category"),
        _LAYER, _C("p_restored", "float", "probability", "answer probability with the cell restored"),
        _C("indirect_effect", "float", "probability", "p_restored - p_corrupt"),
    )),
    Schema("tracing.summary", "one fact's clean and corrupted runs", (
        _C("fact", "int"), _C("prompt", "str"), _C("subject", "str"), _C("answer", "str", "", "model's answer"),
        _C("dataset_answer", "str"), _C("subject_start", "int"), _C("subject_end", "int"), _C("n_tokens", "int"),
        _C("p_clean", "float", "probability"), _C("p_corrupt", "float", "probability"),
        _C("total_effect", "float", "probability", "p_clean - p_corrupt"),
    )),
    # --------------------------------------------------------------- gating
    Schema("gating.chg", "one head's causal head gating scores", (
        _LAYER, _HEAD, _NODE,
        _C("g_plus", "float", "gate", "gate maximising the metric"), _C("g_minus", "float", "gate", "gate minimising it"),
        _C("g_plus_std", "float", "gate", nan_ok=True, optional=True),
        _C("g_minus_std", "float", "gate", nan_ok=True, optional=True),
        _C("g_base", "float", "gate", optional=True),
        _C("facilitation", "float", "fraction"), _C("interference", "float", "fraction"),
        _C("irrelevance", "float", "fraction"), _C("irrelevance_std", "float", "fraction", nan_ok=True, optional=True),
        _C("role", "str", "", "facilitating, interfering or irrelevant"),
    )),
    Schema("gating.contrastive", "one head's contrastive CHG gate", (
        _LAYER, _HEAD, _NODE, _C("g", "float", "gate"), _C("g_std", "float", "gate", nan_ok=True),
        _C("removed", "bool", "", "the head is removed by the contrastive mask"),
    )),
    Schema("gating.head_patching", "one head patched (clean into corrupted), for gating validation", (
        _LAYER, _HEAD, _NODE, _C("metric", "str"),
        _C("metric_value", "float", "metric units", "metric with the head patched"),
        _C("clean_value", "float", "metric units"), _C("corrupted_value", "float", "metric units"),
        _C("effect", "float", "metric units", "metric_value - clean_value"),
        _C("normalized", "float", "1 = corrupted", "(metric_value - corrupted) / (clean - corrupted)", nan_ok=True),
    )),
    Schema("gating.validation", "one validation check of a gating verdict", (
        _C("what", "str"), _C("n_heads", "int"), _C("metric", "str"),
        _C("metric_value", "float", "metric units", nan_ok=True),
        _C("baseline_mean", "float", "metric units", nan_ok=True), _C("baseline_std", "float", "metric units", nan_ok=True),
        _C("frac_random_lower", "float", "fraction", nan_ok=True), _C("p_value", "float", "probability", nan_ok=True),
        _C("heads", "str", "", "node ids, space separated"),
    )),
    Schema("gating.ablation", "one named set of ablated sites", (
        _C("name", "str"), _C("method", "str", "", "zero, mean or resample"), _C("n_sites", "int"),
        _C("sites", "str"), _C("metric", "str"), _C("metric_value", "float", "metric units"),
        _C("clean_value", "float", "metric units"), _C("delta", "float", "metric units", "metric_value - clean_value"),
    )),
    # --------------------------------------------------------------- graph
    Schema("graph.compare", "overlap of two graphs for one node class", (
        _C("what", "str"), _C("cls", "str"), _C("n_a", "int"), _C("n_b", "int"), _C("intersection", "int"),
        _C("union", "int"), _C("jaccard", "float", "fraction", nan_ok=True),
        _C("overlap", "float", "fraction", nan_ok=True), _C("shared", "list"),
    )),
    Schema("graph.faithfulness", "one circuit's faithfulness under ablation of the rest", (
        _C("circuit", "str"), _C("n_heads", "int"), _C("n_mlps", "int"), _C("n_edges", "int"),
        _C("ld_full", "float", "logits"), _C("ld_circuit", "float", "logits"), _C("ld_ablated", "float", "logits"),
        _C("faithfulness", "float", "1 = full model", "ld_circuit / ld_full", nan_ok=True),
        _C("normalized", "float", "1 = full model", "(ld_circuit - ld_ablated) / (ld_full - ld_ablated)", nan_ok=True),
    ), extra_prefixes=("random_",)),
    # --------------------------------------------------------------- sinks and massive activations
    Schema("sinks.heads", "one head's attention-sink statistics", (
        _LAYER, _HEAD, _NODE, _C("alpha_first", "float", "attention", "mean attention to position 0"),
        _C("is_sink", "bool"), _C("top_pos", "int"), _C("top_alpha", "float", "attention"),
        _C("alpha_first_std", "float", "attention", nan_ok=True), _C("sink_mass", "float", "attention"),
    )),
    Schema("sinks.layers", "one layer's sink rate", (
        _LAYER, _C("sink_rate", "float", "fraction"), _C("sink_rate_std", "float", "fraction", nan_ok=True),
        _C("n_prompts", "int"),
    )),
    Schema("sinks.model", "the model's sink rate at one threshold", (
        _C("eps", "float", "attention"), _C("sink_rate", "float", "fraction"),
        _C("sink_rate_std", "float", "fraction", nan_ok=True), _C("n_prompts", "int"), _C("n_heads_total", "int"),
    )),
    Schema("sinks.drain", "one head's value-state drain", (
        _LAYER, _HEAD, _NODE, _C("value_norm_sink", "float", "norm"), _C("value_norm_other", "float", "norm"),
        _C("ratio", "float", "ratio", nan_ok=True),
    )),
    Schema("sinks.peak", "one layer's residual norm at the sink vs the rest", (
        _LAYER, _C("norm_sink", "float", "norm"), _C("norm_other", "float", "norm"),
        _C("ratio", "float", "ratio", nan_ok=True),
    )),
    Schema("sinks.dormancy", "one head in one domain: active or dormant", (
        _LAYER, _HEAD, _NODE, _C("domain", "str"), _C("sink_mass", "float", "attention"),
        _C("out_norm", "float", "norm"), _C("dormancy", "float", "fraction", nan_ok=True), _C("switches", "bool"),
    )),
    Schema("sinks.secondary", "one secondary-sink token", (
        _C("prompt", "int"), _C("pos", "int"), _C("token", "str"), _C("creation_layer", "int"), _C("lifetime", "int"),
        _C("class", "str"), _C("mlp_cos", "float", "cosine", nan_ok=True), _C("level", "int", optional=True),
    )),
    Schema("sinks.interventions", "one intervention's next-token loss change", (
        _C("intervention", "str"), _C("target", "str"), _C("loss_before", "float", "nats"),
        _C("loss_after", "float", "nats"), _C("delta", "float", "nats", "loss_after - loss_before"),
    )),
    Schema("massive.layers", "one of the top residual activations of one prompt and layer", (
        _C("prompt", "int"), _LAYER, _C("rank", "int"), _C("value", "float", "activation"),
        _C("abs_value", "float", "activation"), _C("pos", "int"), _C("token", "str"), _C("dim", "int"),
        _C("median", "float", "activation"), _C("ratio", "float", "ratio", nan_ok=True), _C("is_massive", "bool"),
    )),
    Schema("massive.dims", "one residual dimension that carries massive activations", (
        _C("dim", "int"), _C("n_layers", "int"), _C("first_layer", "int"), _C("last_layer", "int"),
        _C("fraction", "float", "fraction"),
    )),
    # --------------------------------------------------------------- SAEs
    Schema("sae.training", "one logged SAE training step", (
        _C("site", "str"), _LAYER, _C("step", "int"), _C("tokens", "int"), _C("loss", "float"),
        _C("l0", "float", "features"), _C("explained_variance", "float", "fraction", nan_ok=True),
        _C("dead_features", "int"), _C("lr", "float"), _C("time_s", "float", "seconds"),
    ), extra_prefixes=("mse", "auxiliary", "l1", "l2", "topk", "sparsity", "fvu", "dead", "aux", "jump", "pre")),
    Schema("sae.eval", "one SAE evaluation metric", (
        _C("site", "str"), _LAYER, _C("metric", "str"), _C("value", "float", "metric units", nan_ok=True),
    )),
    Schema("sae.features", "one SAE feature's statistics", (
        _C("feature", "int"), _LAYER, _C("site", "str"), _C("density", "float", "fraction"),
        _C("max_act", "float", "activation"), _C("mean_act", "float", "activation", nan_ok=True),
        _C("top_tokens", "list"), _C("top_logits", "list", optional=True), _C("bottom_logits", "list", optional=True),
    )),
    Schema("sae.examples", "one top-activating context of one feature", (
        _C("feature", "int"), _LAYER, _C("rank", "int"), _C("row", "int"), _C("pos", "int"),
        _C("value", "float", "activation"), _C("token", "str"), _C("left", "list"), _C("right", "list"),
    )),
    Schema("sae.histogram", "one histogram bin of one feature's activations", (
        _C("feature", "int"), _LAYER, _C("bin_left", "float", "activation"), _C("bin_right", "float", "activation"),
        _C("count", "int"),
    )),
    Schema("sae.logits", "one of a feature's top or bottom logit effects", (
        _C("feature", "int"), _LAYER, _C("side", "str", "", "top or bottom"), _C("rank", "int"),
        _C("token_id", "int"), _C("token", "str"), _C("effect", "float", "logits"),
    )),
    Schema("sae.dfa", "one head's direct feature attribution to one feature", (
        _C("feature", "int"), _LAYER, _HEAD, _NODE, _C("value", "float", "activation"), _C("src", "str"),
        _C("dst", "str"), _C("share", "float", "fraction", nan_ok=True), _C("n_active", "int"),
    )),
    Schema("sae.dfa_source", "one head and source position's contribution to one feature activation", (
        _C("feature", "int"), _LAYER, _HEAD, _NODE, _C("key_pos", "int"), _C("token", "str"),
        _C("value", "float", "activation"),
    )),
    # --------------------------------------------------------------- steering
    Schema("steering.axes", "one fitted axis", (
        _C("name", "str"), _C("method", "str"), _LAYER, _C("site", "str"), _NODE, _C("norm", "float", "norm"),
        _C("accuracy", "float", "fraction", nan_ok=True), _C("control_accuracy", "float", "fraction", nan_ok=True,
                                                               optional=True),
        _C("d_prime", "float", "", nan_ok=True, optional=True), _C("data_hash", "str", optional=True),
    )),
    Schema("steering.probe", "one layer's probe", (
        _LAYER, _NODE, _C("accuracy", "float", "fraction"), _C("control_accuracy", "float", "fraction"),
        _C("selectivity", "float", "fraction"), _C("train_accuracy", "float", "fraction"),
    )),
    Schema("steering.projection", "one example projected on one axis", (
        _LAYER, _NODE, _C("method", "str"), _C("index", "int"), _C("label", "int"), _C("projection", "float"),
    )),
    Schema("steering.sweep", "one axis at one steering strength", (
        _C("name", "str"), _C("method", "str"), _LAYER, _NODE, _C("alpha", "float"),
        _C("alpha_norm", "float", "norm"), _C("target_prob", "float", "probability"),
        _C("negative_prob", "float", "probability", optional=True),
        _C("target_share", "float", "fraction", optional=True), _C("perplexity", "float", "perplexity"),
        _C("probe_score", "float", "fraction", optional=True), _C("example", "str", optional=True),
    )),
    Schema("steering.examples", "one steered continuation", (
        _C("alpha", "float"), _C("prompt", "str"), _C("continuation", "str"),
    )),
    Schema("steering.lens", "one layer's logit-lens decoding and steering accuracy", (
        _C("task", "str"), _LAYER, _C("decode_acc", "float", "fraction"), _C("steer_acc", "float", "fraction"),
    )),
    Schema("steering.fv", "one head's average indirect effect for a function vector", (
        _LAYER, _HEAD, _NODE, _C("aie", "float", "probability"), _C("top", "bool"),
    )),
    Schema("steering.fv_sweep", "a function vector added at one layer", (
        _C("task", "str"), _LAYER, _NODE, _C("accuracy", "float", "fraction"), _C("baseline", "float", "fraction"),
        _C("alpha", "float"),
    )),
    Schema("steering.fv_alpha", "a function vector at one strength", (
        _LAYER, _NODE, _C("alpha", "float"), _C("accuracy", "float", "fraction"),
    )),
    Schema("steering.cylinder", "one rotation angle of a cylindrical axis", (
        _C("angle_deg", "float", "degrees"), _LAYER, _NODE, _C("alpha", "float"), _C("cos", "float"),
        _C("effect", "float"),
    )),
]

from interp.schemas_extra import KINDS as _MORE  # noqa: E402 - needs the helpers above

_SCHEMAS += _MORE
SCHEMAS: dict[str, Schema] = {s.kind: s for s in _SCHEMAS}


def register(schema: Schema, *, replace: bool = False) -> Schema:
    """Declare the schema of a new Result kind (for your own analyses).

    Raises:
        SchemaError: the kind has a schema already (pass ``replace=True`` to change it).
    """
    if schema.kind in SCHEMAS and not replace:
        raise SchemaError(f"Result kind {schema.kind!r} already has a schema; pass replace=True to change it")
    SCHEMAS[schema.kind] = schema
    return schema


def schema_for(kind: str) -> Schema:
    """The schema of ``kind``.

    Raises:
        SchemaError: no schema for the kind (nearest kinds named; declare one with :func:`register`).
    """
    s = SCHEMAS.get(kind)
    if s is None:
        raise SchemaError(f"no schema for Result kind {kind!r}.{nearest(kind, SCHEMAS)} Declare one with "
                          "interp.schemas.register(Schema(...)) before saving Results of a new kind")
    return s


_ID_COLUMNS = ("node", "src", "dst", "site", "fact", "prompt", "feature", "layer", "head", "pos", "metric", "name")


def _py(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _row_label(table: pd.DataFrame, i: int) -> str:
    parts = [f"{c}={_py(table[c].iloc[i])!r}" for c in _ID_COLUMNS if c in table.columns]
    return f"row {i} ({', '.join(parts[:4])})" if parts else f"row {i}"


def _dtype_ok(series: pd.Series, dtype: str) -> bool:
    kind = series.dtype.kind
    if dtype == "any" or len(series) == 0:
        return True
    if dtype == "float":
        return kind in "fiu" or (kind == "O" and all(isinstance(v, (int, float, np.number)) and
                                                    not isinstance(v, bool) for v in series))
    if dtype == "int":
        return kind in "iu" or (kind == "O" and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                                    for v in series))
    if dtype == "bool":
        return kind == "b" or (kind == "O" and all(isinstance(v, (bool, np.bool_)) for v in series))
    if dtype == "str":
        return kind in "OUS" and all(isinstance(v, str) for v in series)
    if dtype == "list":
        return kind == "O" and all(isinstance(v, (list, tuple, np.ndarray)) for v in series)
    return True


def validate(kind: str, table: pd.DataFrame, *, where: str = "", allow_nonfinite: bool = False) -> Schema:
    """Check ``table`` against the schema of ``kind``.

    Args:
        where: the file or object named in errors (e.g. the parquet path).
        allow_nonfinite: accept NaN / inf in columns whose schema does not allow them.

    Raises:
        SchemaError: unknown kind, missing or extra columns (named), a column of the wrong type,
            or a non-finite number where none is allowed (column and first row named).
    """
    schema = schema_for(kind)
    at = f" in {where}" if where else ""
    have = [str(c) for c in table.columns]
    missing = sorted(c.name for c in schema.columns if not c.optional and c.name not in have)
    declared = set(schema.names())
    extra = sorted(c for c in have if c not in declared and not c.startswith(schema.extra_prefixes or ("\0",)))
    if missing or extra:
        parts = ([f"missing column(s) {missing}"] if missing else []) + ([f"extra column(s) {extra}"] if extra else [])
        raise SchemaError(f"Result kind {kind!r}{at}: {'; '.join(parts)}")
    for col in schema.columns:
        if col.name not in have:
            continue
        series = table[col.name]
        if not _dtype_ok(series, col.dtype):
            raise SchemaError(f"Result kind {kind!r}{at}: column {col.name!r} should hold {col.dtype} values, got "
                              f"dtype {series.dtype} (first value {_py(series.iloc[0])!r})")
        if col.dtype in ("float", "int") and not col.nan_ok and not allow_nonfinite and series.dtype.kind in "fO":
            bad = ~np.isfinite(pd.to_numeric(series, errors="coerce").to_numpy(dtype=float))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise SchemaError(f"Result kind {kind!r}{at}: column {col.name!r} holds {int(bad.sum())} non-finite "
                                  f"value(s) ({_py(series.iloc[i])!r} first at {_row_label(table, i)}); NaN/inf there "
                                  "means the analysis broke (a NaN weight or activation upstream). Pass "
                                  "allow_nonfinite=True to keep them")
    return schema


# ----------------------------------------------------------------------------- effects
def reference_of(direction: str) -> str:
    """The run a patch is applied to: ``"corrupted"`` for denoising, ``"clean"`` for noising."""
    if direction not in ("denoising", "noising"):
        raise SchemaError(f"direction must be 'denoising' or 'noising', got {direction!r}")
    return "corrupted" if direction == "denoising" else "clean"


def add_effect(table: pd.DataFrame, reference_values: dict[str, float], *, level: str = "value",
               estimated: bool = False) -> pd.DataFrame:
    """Add ``reference``, ``reference_value``, ``value`` and ``effect`` to an effect table.

    Args:
        table: rows with ``direction`` and ``metric`` columns, and ``level`` holding either the metric
            of the intervened run (``estimated=False``: effect = level - reference) or, for estimates,
            the estimated change (``estimated=True``: value = reference + change).
        reference_values: metric name -> the metric of the reference run, for the table's direction.

    Returns:
        a new table (the input is not changed) with the evidence columns.
    """
    out = table.copy()
    missing = sorted(set(out["metric"]) - set(reference_values))
    if missing:
        raise SchemaError(f"no reference value for metric(s) {missing}; have {sorted(reference_values)}")
    ref = out["metric"].map(lambda m: float(reference_values[m])).astype(float)
    level_values = out[level].astype(float)
    out["reference"] = out["direction"].map(reference_of)
    out["reference_value"] = ref
    if estimated:
        out["effect"] = level_values
        out["value"] = ref + level_values
    else:
        out["value"] = level_values
        out["effect"] = level_values - ref
    return out


def finite_or_raise(values: Iterable[float], what: str) -> None:
    """Raise SchemaError if any of ``values`` is NaN / inf, naming ``what``."""
    vals = list(values)
    bad = [i for i, v in enumerate(vals) if not math.isfinite(float(v))]
    if bad:
        raise SchemaError(f"{what}: {len(bad)} non-finite value(s), first at index {bad[0]} ({vals[bad[0]]!r})")
