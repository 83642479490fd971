"""``report.md`` of a pipeline run (:func:`interp.pipeline.run_pipeline`): stages with failures and
traceback paths first, budgets, the edge-level circuit (chosen size, faithfulness curve with random
baselines and the complement), method agreement, node-level faithfulness (when configured), head
gating (roles, convergence, validation verdict, disagreements with exact patching), comparisons, files."""

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
        cap = chg.meta.config.get("max_steps", "?") if isinstance(chg.meta.config, dict) else "?"
        stages = "; ".join(f"{k}: {v['steps']} of at most {cap} steps, " + (
            f"converged (no change after step {v.get('last_change', '?')})" if v["converged"] else
            "**not converged** (role changes in its last 10 steps: "
            f"{list(v.get('changes', ()))[-10:]})") for k, v in chg.meta.extra.get("stages", {}).items())
        loose = chg.meta.extra.get("unsettled", [])
        out += [f"### {task}", "", f"Roles {roles}. Stages: {stages}." + (
            f" Unsettled (the stage loss still pushes the gate towards its threshold): {', '.join(loose)}." if loose
            else ""), ""]
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
        from interp.gating.validate import agreement_lines

        out += [""] + [f"- {line}" for line in agreement_lines(val)]
        out.append("")
    return out


def _edge_circuit_section(job: Any) -> list[str]:
    """The edge-level circuit per task: chosen size, faithfulness, the curve (table, AUC, figure), baselines."""
    if not job.edge:
        return []
    c = job.cfg.graph
    out = ["## Circuit (edge level)", "",
           f"Circuits are sets of edges `(sender, receiver, receiver input)` chosen from the EAP edge scores by "
           f"`{c.selection}` (largest `|effect|`" + (", grown from the logits" if c.selection == "greedy" else "") +
           f"), evaluated on {c.faithfulness_prompts} clean prompts with every edge outside the circuit patched "
           "(the receiver reads the sender's output " + ("on the paired corrupted prompt" if c.edge_ablation ==
           "patching" else "averaged over the corrupted prompts, per position") + "). faithfulness = (LD(circuit) - "
           "LD(corrupted)) / (LD(clean) - LD(corrupted)), LD = mean logit difference answer - counterfactual: "
           "1 = clean behaviour, 0 = corrupted. `random` = circuits of as many edges drawn uniformly from the "
           "model's graph (mean +/- std), `complement` = every edge but the circuit. AUC = mean height of the "
           "curve over log(1 + edges).", ""]
    for task, ec in job.edge.items():
        curve, size = ec["curve"], ec["size"]
        t, ex = curve.table, curve.meta.extra
        row = t[t["n_edges"] == size["n_edges"]]
        out += [f"### {task}", ""]
        target = ec["target"]
        verdict = ("" if ec["reached"] is None else
                   f" It is the smallest evaluated circuit reaching the target {target}." if ec["reached"] else
                   f" **No evaluated circuit reaches the target {target}**: this is the most faithful one; the "
                   "curve below is the evidence of how spread out the behaviour is.")
        out.append(f"**Chosen circuit: {size['n_edges']} edges, {size['n_heads']} heads, {size['n_mlps']} MLPs "
                   f"(of {ex['n_model_edges']} edges in the model's graph); faithfulness {ec['faithfulness']:.3f}**"
                   f" (re-evaluated on its own; {ex['n_prompts']} prompts, LD clean {ex['ld_clean']:.3f}, "
                   f"corrupted {ex['ld_corrupted']:.3f}).{verdict}")
        if len(row):
            r = row.iloc[0]
            out.append(f"At that size: random circuits {r['random_mean']:.3f} +/- {r['random_std']:.3f}, the "
                       f"complement {r['complement']:.3f}.")
        out += ["", f"Faithfulness curve ({ex.get('forward_passes', '?')} forward passes, {ex.get('seconds', 0):.1f} s): "
                f"AUC {ex['auc']:.3f}, random {ex['auc_random']:.3f}, complement {ex['auc_complement']:.3f}.", "",
                _md_table(t.to_dict("records"), ["n_edges", "n_nodes", "faithfulness", "random_mean", "random_std",
                                                 "complement"]), ""]
        figs = [f"figures/{curve.id}.{e}" for e in c.figures]
        out.append(f"Figure: {', '.join(f'`{f}`' for f in figs)}; the curve Result is `results/{curve.id}`, the "
                   f"circuit's edges `graph/{task}_circuit_edges.json` (and `results/{ec['eval'].id}`, "
                   "meta.extra.edges).")
        heads = sorted((n for n in job.circuits[task].nodes_of("head")),
                       key=lambda n: tuple(map(int, n[1:].split(".H"))))
        out += ["", f"Circuit heads ({len(heads)}): " + ", ".join(heads), ""]
    return out


def _agreement_section(job: Any) -> list[str]:
    """Spearman and top-k overlap of AtP / EAP(-IG) head effects with exact head patching."""
    from interp.pipeline_circuit import method_agreement

    out: list[str] = []
    for task, results in job.results.items():
        t = method_agreement(results, job.cfg.patching.metric)
        if not len(t):
            continue
        if not out:
            out += ["## Method agreement (heads)", "",
                    "Per-head effects of each method against exact head patching (`z`, "
                    f"{job.cfg.patching.exact_prompts} prompts): Spearman over heads (EAP: edge effects summed over "
                    "each head's out-edges) and the share of exact patching's top-10 heads by |effect| among the "
                    "method's top 10.", ""]
        out += [f"### {task}", "", _md_table(t.to_dict("records"), list(t.columns)), ""]
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
    if job.faith:
        out += ["## Circuit faithfulness (node level)", "",
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
    out += _edge_circuit_section(job)
    out += _agreement_section(job)
    out += _gating_section(job)
    if job.compare:
        out += ["## Circuit comparison", ""]
        for r in job.compare:
            out += [f"### {r.name}", "", _md_table(r.table.to_dict("records"),
                                                   ["what", "cls", "n_a", "n_b", "intersection", "union", "jaccard",
                                                    "overlap"]), ""]
    out += ["## Budgets (frozen config)", "", "```json", json.dumps(dataclasses.asdict(cfg), indent=1, default=str),
            "```", ""]
    if bad:
        out += ["## Failed or not run", ""]
        out += [f"- **{r.name}** {r.status}: {r.note}" + (f" — traceback: `{r.traceback}`" if r.traceback else "")
                for r in bad] + [""]
    out += ["## Files", ""] + [f"- `{p.relative_to(job.out) if p.is_relative_to(job.out) else p}`"
                               for p in sorted(set(job.files))] + ["- `results/` (every Result: parquet + json)", ""]
    path = job.out / "report.md"
    atomic_write_bytes(path, "\n".join(out).encode())
    return path
