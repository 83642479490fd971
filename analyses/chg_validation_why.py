"""Why does CHG's validation fail on SmolLM2/IOI? Evidence from one ``interp gate`` output folder.

    python analyses/chg_validation_why.py OUT_DIR [--metric-patching] [--more-prompts N]

Reads the ``gating.chg``, ``gating.head_patching`` and ``gating.validation`` Results of ``interp gate``
and prints: (1) how tied CHG's scores are (heads at a gate bound) and what that does to Spearman;
(2) agreement on the heads that patching says matter (top-k by |effect|: sign of the effect vs role);
(3) each flagged disagreement with its gates, borderline / unsettled status and patching rank;
(4) with ``--metric-patching``: exact head patching redone on the same prompts with CHG's own metric
(log-prob of the answer, noising) instead of the logit difference, and the Spearman / disagreements
against that (one SmolLM2 forward per layer: about a minute on one thread); (5) with ``--more-prompts N``: exact
patching (logit difference, as the validation) on N IOI prompts of the same builder, to see whether the
8-prompt effects, and the sign of each disagreeing head's effect, hold on a larger set.

Written for ``interp gate`` folders from before 30 Nov 2026, whose saved ``gating.head_patching`` and
verdict used the logit difference. Since then they use CHG's own metric (answer log-prob) and the
logit-difference agreement is in ``gating.validation`` ``meta.extra["secondary_agreement"]``; on such a
folder the "logit-difference" labels of (1)-(4) below refer to answer log-prob patching.
"""

from __future__ import annotations

import sys

import numpy as np
from scipy.stats import spearmanr


def main(out: str, metric_patching: bool, more: int = 0) -> None:
    from interp.results import load_results

    res = {r.kind: r for r in load_results(out).values()}
    chg, patch, val = res["gating.chg"], res["gating.head_patching"], res["gating.validation"]
    t = chg.table.set_index("node")
    p = patch.table.set_index("node").loc[t.index]
    support = -p["effect"].to_numpy()                    # noising: supports the answer when effect < 0
    signed = (t["facilitation"] - t["interference"]).to_numpy()
    fac = t["facilitation"].to_numpy()
    print(f"verdict {val.meta.extra['verdict']}: " + "; ".join(val.meta.extra["verdict_reasons"]))
    print(f"stages {chg.meta.extra['stages']['plus_minus']['steps']} steps, converged "
          f"{chg.meta.extra['stages']['plus_minus']['converged']}; unsettled {chg.meta.extra.get('unsettled')}")
    # (1) ties
    at_bound = ((t.g_plus > 0.98) & (t.g_minus < 0.02)).sum()
    print(f"(1) {at_bound} of {len(t)} heads sit at both bounds (G+ ~0.982, G- ~0.018): one tied score; "
          f"distinct signed scores {len(np.unique(np.round(signed, 4)))}")
    rho_all = spearmanr(signed, support)
    off = ~((t.g_plus > 0.98) & (t.g_minus < 0.02)).to_numpy()
    rho_off = spearmanr(signed[off], support[off])
    print(f"    Spearman(signed, support) all heads {rho_all[0]:+.3f} (p {rho_all[1]:.2g}); "
          f"heads off the bounds ({off.sum()}) {rho_off[0]:+.3f} (p {rho_off[1]:.2g})")
    mag = np.abs(support)
    for q in (0.5, 0.9):
        sel = mag >= np.quantile(mag, q)
        r = spearmanr(signed[sel], support[sel])
        print(f"    heads with |effect| >= its {q:.0%} quantile ({sel.sum()}): Spearman {r[0]:+.3f} (p {r[1]:.2g})")
    # (2) top-k agreement
    order = np.argsort(-mag)
    for k in (5, 10, 20, 27):
        idx = order[:k]
        ok = sum(1 for i in idx if (support[i] > 0 and t.role.iloc[i] != "interfering")
                 or (support[i] < 0 and t.role.iloc[i] != "facilitating"))
        fac_ok = sum(1 for i in idx if support[i] > 0 and t.role.iloc[i] == "facilitating")
        print(f"(2) top {k} by |effect|: {ok} labelled consistently with their sign; {fac_ok} of the "
              f"{sum(support[idx] > 0)} supporters facilitating; |effect| of #{k}: {mag[order[k - 1]]:.3f} "
              f"(max {mag.max():.3f})")
    # (3) disagreements
    for d in val.meta.extra["disagreements"]:
        n = d["node"]
        flags = [f for f in ("borderline", "unsettled") if any(x.startswith(n) for x in chg.meta.extra.get(f, []))]
        print(f"(3) {n}: {d['role']}, G+ {t.loc[n, 'g_plus']:.2f} G- {t.loc[n, 'g_minus']:.2f}, effect "
              f"{d['effect']:+.3f} (rank {d['rank']}), {' '.join(flags) or 'neither borderline nor unsettled'}")
    if metric_patching:
        _metric_patching(chg, t, val, signed)
    if more:
        _more_prompts(chg, t, p, val, signed, more)


def _more_prompts(chg, t, p, val, signed, n) -> None:
    import torch

    from interp.datasets.registry import build_task
    from interp.gating.validate import ValidationConfig, disagreements, patching_for
    from interp.models import load_model

    torch.set_num_threads(1)
    model = load_model("smollm2")
    ds = build_task("ioi", model=model, n=n, seed=chg.meta.seed or 0)
    big = patching_for(model, ds, ValidationConfig(progress=False)).table.set_index("node").loc[t.index]
    r8 = spearmanr(p["effect"], big["effect"])
    n0 = chg.meta.extra["n_prompts"]
    print(f"(5) exact patching on {len(ds)} prompts vs the {n0} of the run: Spearman of the effects "
          f"{r8[0]:+.3f}; Spearman(CHG signed, support on {len(ds)}) {spearmanr(signed, -big['effect'].to_numpy())[0]:+.3f}")
    for d in val.meta.extra["disagreements"]:
        print(f"    {d['node']}: effect {d['effect']:+.3f} on {n0} prompts, {big.loc[d['node'], 'effect']:+.3f} "
              f"on {len(ds)}")
    from interp.results import Result

    res = Result("gating.head_patching", big.reset_index(), chg.meta, name="more")
    found = disagreements(chg, res)
    print(f"    disagreements against the {len(ds)}-prompt patching: {len(found)}: "
          + ", ".join(f"{d['node']} ({d['role']}, {d['effect']:+.3f})" for d in found))


def _metric_patching(chg, t, val, signed) -> None:
    import torch

    from interp.datasets.registry import build_task
    from interp.gating.ablation import batch_metric
    from interp.gating.validate import disagreements, head_patching
    from interp.models import load_model

    torch.set_num_threads(1)
    model = load_model("smollm2")
    ds = build_task("ioi", model=model, n=chg.meta.extra["n_prompts"], seed=chg.meta.seed or 0)
    assert len(ds) == chg.meta.extra["n_prompts"]           # the same builder, n and seed as interp gate
    hp = head_patching(model, ds, metric=batch_metric("logprob", counterfactual=False), metric_name="answer_logprob",
                       progress=False)
    q = hp.table.set_index("node").loc[t.index]
    support = -q["effect"].to_numpy()
    r = spearmanr(signed, support)
    print(f"(4) patching with CHG's metric (answer log-prob, noising, same prompts): Spearman(signed, support) "
          f"{r[0]:+.3f} (p {r[1]:.2g}); clean {q['clean_value'].iloc[0]:+.3f}")
    found = disagreements(chg, hp)
    print(f"    disagreements against it: {len(found)}: " + ", ".join(f"{d['node']} ({d['role']}, {d['effect']:+.3f})"
                                                              for d in found))
    old = {d["node"] for d in val.meta.extra["disagreements"]}
    rank = {n: k + 1 for k, n in enumerate(q["effect"].abs().sort_values(ascending=False).index)}
    for n in sorted(old):
        print(f"    {n}: answer log-prob effect {q.loc[n, 'effect']:+.3f} (|effect| rank {rank[n]} of {len(q)})")
    print(f"    of the {len(old)} logit-difference disagreements, still flagged: {sorted(old & {d['node'] for d in found})}")


if __name__ == "__main__":
    args = sys.argv[2:]
    main(sys.argv[1], "--metric-patching" in args, int(args[args.index("--more-prompts") + 1])
         if "--more-prompts" in args else 0)
