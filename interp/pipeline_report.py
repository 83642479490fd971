"""``report.md`` of a pipeline run (:func:`interp.pipeline.run_pipeline`): stages with failures and
traceback paths first, budgets, circuit faithfulness, head gating (roles, validation verdict,
disagreements with exact patching), comparisons, files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from interp._fs import atomic_write_bytes

__all__ = ["write_report"]


def _md_table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _gating_section(job: Any) -> list[str]:
    """Head gating: roles, steps per stage, the validation verdict and every disagreement with exact patching."""
    out: list[str] = []
    for task, results in job.results.items():
        chg = next((r for r in results if r.kind == "gating.chg"), None)
        if chg is None:
            continue
        if not out:
            out += ["## Head gating (CHG)", ""]
        roles = chg.table["role"].value_counts().to_dict()
        stages = "; ".join(f"{k}: {v['steps']} steps, " + ("converged" if v["converged"] else "**not converged**")
                           for k, v in chg.meta.extra.get("stages", {}).items())
        out += [f"### {task}", "", f"Roles {roles}. Stages: {stages}.", ""]
        val = next((r for r in results if r.kind == "gating.validation"), None)
        if val is None:
            out += ["**Not validated** (gating.validate = false): the roles are unchecked.", ""]
            continue
        rows = [r for r in val.table.to_dict("records") if not str(r["what"]).startswith("disagreement")]
        out += [_md_table(rows, ["what", "n_heads", "metric", "metric_value", "baseline_mean", "baseline_std",
                                 "frac_random_lower", "p_value"]), ""]
        ex = val.meta.extra
        out += [f"**Validation verdict: {ex.get('verdict', 'unknown').upper()}**", ""]
        out += [f"- {r}" for r in ex.get("verdict_reasons", [])]
        found = ex.get("disagreements", [])
        if found:
            out += ["", f"**Disagreements between CHG roles and exact patching ({len(found)})**:", ""]
            out += [f"- {d['why']}" for d in found]
        elif ex.get("patching_kind"):
            out.append("- no disagreement between CHG roles and exact patching")
        out.append("")
    return out


def write_report(job: Any, total: float) -> Path:
    """Write ``<out>/report.md`` for a finished pipeline job (stages, failures, faithfulness, files)."""

    cfg = job.cfg
    out = [f"# {cfg.name}", "", f"Model `{cfg.model}`, tasks {', '.join(cfg.tasks)}, seed {cfg.seed}. "
           f"Total time {total:.1f} s (model loading included).", ""]
    bad = [r for r in job.records if r.status not in ("ok", "disabled")]
    if bad:
        out += [f"**FAILED**: {', '.join(f'{r.name} ({r.status})' for r in bad)}. Tracebacks: "
                + (", ".join(f"`{r.traceback}`" for r in bad if r.traceback) or "none") + ".", ""]
    out += ["## Stages", ""]
    out.append(_md_table([{"stage": r.name, "status": r.status, "seconds": round(r.seconds, 1),
                           "cpu_seconds": round(r.cpu_seconds, 1), "note": r.note}
                          for r in job.records], ["stage", "status", "seconds", "cpu_seconds", "note"]))
    out += ["", "`seconds` is wall-clock time; `cpu_seconds` the process CPU time over all threads (on a shared, "
            "loaded machine wall time can be many times the unloaded time).", ""]
    out += ["", "## Budgets (frozen config)", "", "```json",
            json.dumps(dataclasses.asdict(cfg), indent=1, default=str), "```", ""]
    if job.faith:
        out += ["## Circuit faithfulness", "",
                "Metric: mean logit difference (answer - counterfactual) at the last token; every head outside "
                "the circuit ablated through `z` " + ("to its per-position mean over the corrupted prompts of the same "
                "template" if cfg.graph.ablation == "mean" else "to its value on the paired corrupted prompt") +
                (" and every MLP outside it through `mlp_out`" if cfg.graph.ablate_mlps else " (MLPs kept)") +
                ". faithfulness = LD(circuit) / LD(full); normalized = (LD(circuit) - LD(all ablated)) / "
                "(LD(full) - LD(all ablated)). Random circuits have the same numbers of heads and MLPs.", ""]
        for task, r in job.faith.items():
            t = r.table
            rows = t.to_dict("records")
            rand = t[t.circuit.str.startswith("random")]
            out += [f"### {task}", "", _md_table(rows, ["circuit", "n_heads", "n_mlps", "n_edges", "ld_full",
                                                        "ld_circuit", "ld_ablated", "faithfulness", "normalized"]), ""]
            if len(rand):
                out.append(f"Circuit faithfulness {t.faithfulness.iloc[0]:.3f} vs random "
                           f"{rand.faithfulness.mean():.3f} +/- {rand.faithfulness.std(ddof=0):.3f} "
                           f"(n={len(rand)}).")
            if task in job.sweeps:
                out += ["", "Faithfulness against circuit size (nodes of the top-k edges):", "",
                        _md_table(job.sweeps[task].table.to_dict("records"),
                                  ["circuit", "n_heads", "n_mlps", "n_edges", "ld_circuit", "faithfulness",
                                   "normalized"])]
            heads = sorted(job.circuits[task].nodes_of("head"), key=lambda n: tuple(map(int, n[1:].split(".H"))))
            out += ["", f"Circuit heads ({len(heads)}): " + ", ".join(heads), ""]
    out += _gating_section(job)
    if job.compare:
        out += ["## Circuit comparison", ""]
        for r in job.compare:
            out += [f"### {r.name}", "", _md_table(r.table.to_dict("records"),
                                                   ["what", "cls", "n_a", "n_b", "intersection", "union", "jaccard",
                                                    "overlap"]), ""]
    if bad:
        out += ["## Failed or not run", ""]
        out += [f"- **{r.name}** {r.status}: {r.note}" + (f" — traceback: `{r.traceback}`" if r.traceback else "")
                for r in bad] + [""]
    out += ["## Files", ""] + [f"- `{p.relative_to(job.out) if p.is_relative_to(job.out) else p}`"
                               for p in sorted(set(job.files))] + ["- `results/` (every Result: parquet + json)", ""]
    path = job.out / "report.md"
    atomic_write_bytes(path, "\n".join(out).encode())
    return path
