"""The findings of `spambench publish` (RESULTS.md), in words the statistics support.

Computed from the same statistics the leaderboard ranks with, never written by hand: for each problem,
each optimizer against AdamW at declared defaults by the paired test on shared seeds (reports/stats.py),
stated as "cannot separate" when the test cannot, with the seeds a resolution would need; the LR
studies' stable-range widths and LR sensitivities (reports/sensitivity.py); the loss spikes each
optimizer met without injection; and `headline`, the three questions the published results exist to
answer (does SPAM widen the stable LR range, what does it do where spikes happen, where does it stand
across tasks), each answered from those same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import pandas as pd

from spam_bench.reports import robust_section, sensitivity, stats
from spam_bench.reports.leaderboard import _json
from spam_bench.reports.robust_stats import seeds_needed

BASELINE = "adamw"
SUBJECT = "spam"  # the optimizer the headline asks about


def _fmt(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4g}"


def _entry_text(e: pd.Series) -> str:
    return f"{_fmt(e['mean'])} [{_fmt(e['ci_lo'])}, {_fmt(e['ci_hi'])}] (n={int(e['n'])})"


def _verdict(p: float, diff: float, subject: str) -> str | None:
    """The paired test's verdict in one word for every finding: None when it could not run (too few
    shared seeds), "cannot separate" when p >= ALPHA, else the optimizer the sign of the difference
    favours (`diff` is signed so that negative favours `subject`, as stats.paired_test returns it)."""
    if not math.isfinite(p):
        return None
    if p >= stats.ALPHA:
        return "cannot separate"
    return subject if diff < 0 else BASELINE


def compare(e: pd.Series, base: pd.Series) -> str:
    """One optimizer's defaults entry against AdamW's on the same problem, in words the test supports."""
    direction = str(e["direction"])
    p, shared, diff = stats.paired_test(e["seeds"], base["seeds"], direction)
    head = f"{e['optimizer']} {_entry_text(e)} vs {BASELINE} {_entry_text(base)}"
    verdict = _verdict(p, diff, str(e["optimizer"]))
    if verdict is None:
        return f"{head}: not tested ({shared} shared complete seeds; the paired test needs {stats.MIN_SEEDS})"
    if verdict != "cannot separate":
        return f"{head}: **{verdict} better** (paired t-test on {shared} seeds, p = {p:.3g})"
    need = _seeds_to_resolve(e["seeds"], base["seeds"], direction)
    return f"{head}: **cannot separate** (paired t-test on {shared} seeds, p = {p:.3g}; {need})"


def _seeds_to_resolve(a: Mapping[Any, float], b: Mapping[Any, float], direction: str) -> str:
    shared = [k for k in a if k in b]
    diffs = [stats.sign(direction) * (a[k] - b[k]) for k in shared]
    n = seeds_needed(diffs)
    if n is None:
        return "no difference observed, or more than 10,000 seeds needed to resolve it"
    return f"about {n} seeds would resolve the observed difference at 80% power"


def findings(
    table: pd.DataFrame, studies: list[sensitivity.Study], figures: Mapping[str, str] | None = None
) -> list[str]:
    """The Markdown lines of the Findings section; `figures` maps an LR study's image name to the path
    RESULTS.md links it by."""
    lines: list[str] = []
    if table.empty:
        return ["No complete runs in the store."]
    defaults = table[table["protocol"] == "defaults"]
    for (task, scale, problem), g in defaults.groupby(["task", "scale", "problem"], sort=True):
        base = g[g["optimizer"] == BASELINE]
        label = _label(task, scale, problem)
        metric = f"{g['metric'].iloc[0]} ({'lower' if g['direction'].iloc[0] == 'min' else 'higher'} is better)"
        lines.append(f"- {label}, {metric}:")
        if base.empty:
            lines.append(f"  - no {BASELINE} entry to compare with")
            continue
        for _, e in g[g["optimizer"] != BASELINE].sort_values("optimizer").iterrows():
            lines.append(f"  - {compare(e, base.iloc[0])}")
    for study in studies:
        lines.append(f"- LR sensitivity, `{study.task}` at `{study.scale}`:")
        lines += [f"  - {line}" for line in study_lines(study)]
        if figures and study.image in figures:
            lines.append(
                f"  - final {study.metric} against lr: ![LR sensitivity, {study.task}]({figures[study.image]})"
            )
    return lines


def natural_spike_lines(runs: pd.DataFrame) -> list[str]:
    """Loss spikes met without injection, per problem at declared defaults: each optimizer's loss spikes
    per run (the suite's own telemetry, summary spike_events) with a 95% bootstrap CI, and SPAM against
    AdamW by the paired test on shared seeds. Then the conclusion they support about a spiky regime."""
    lines: list[str] = []
    calm: list[str] = []  # problems where AdamW met no loss spike: not a spiky regime
    for (task, scale, problem), per_opt in _natural_spikes(runs):
        parts = []
        for optimizer, seeds in sorted(per_opt.items()):
            lo, hi = stats.bootstrap_ci(list(seeds.values()))
            mean = sum(seeds.values()) / len(seeds)
            parts.append(f"{optimizer} {_fmt(mean)} [{_fmt(lo)}, {_fmt(hi)}] (n={len(seeds)})")
        lines.append(f"- {_label(task, scale, problem)}, loss spikes per run: " + "; ".join(parts))
        if _calm(per_opt):
            calm.append(f"`{task}`")
        if per_opt.get(BASELINE) and SUBJECT in per_opt:
            lines.append(f"  - {SUBJECT} vs {BASELINE}: {_count_test(per_opt[SUBJECT], per_opt[BASELINE])}")
    if not lines:
        return ["No complete run without injected spikes in this snapshot."]
    if calm:
        lines.append(
            f"- {BASELINE} met no loss spike without injection on {', '.join(calm)}: not a spiky regime, so "
            "SPAM's effect on natural spikes cannot be measured there."
        )
    return lines


def _natural_spikes(runs: pd.DataFrame) -> Iterator[tuple[tuple[Any, Any, Any], dict[str, dict[Any, int]]]]:
    """Each problem's loss spikes met without injection: complete runs at declared defaults, each
    optimizer's count per seed from the suite's telemetry (runs whose summary lacks the count left out).
    Problems with injected spikes, or with no count at all, are skipped."""
    natural = runs[(runs["recipe"] == "defaults") & (runs["status"] == "complete")] if len(runs) else runs
    for key, g in natural.groupby(["task", "scale", "problem"], sort=True):
        if _injected(g):
            continue  # injected spikes are the spikes task's own finding
        counts = g.assign(loss_spikes=[_loss_spikes(_json(v)) for v in g["spike_events"]]).dropna(
            subset=["loss_spikes"]
        )
        if not counts.empty:
            per_opt = {
                str(o): dict(zip(c["seed"], c["loss_spikes"], strict=True)) for o, c in counts.groupby("optimizer")
            }
            yield key, per_opt


def _calm(per_opt: Mapping[str, Mapping[Any, int]]) -> bool:
    """AdamW met no loss spike on any seed: not a spiky regime, so SPAM's effect cannot be measured."""
    base = per_opt.get(BASELINE, {})
    return bool(base) and not any(base.values())


def _count_test(a: Mapping[Any, float], b: Mapping[Any, float]) -> str:
    p, shared, diff = stats.paired_test(a, b, "min")
    verdict = _verdict(p, diff, SUBJECT)
    if verdict is None:
        return f"not tested ({shared} shared seeds; the paired test needs {stats.MIN_SEEDS})"
    if verdict != "cannot separate":
        return f"**{verdict} has fewer** (paired t-test on {shared} seeds, p = {p:.3g})"
    return f"**cannot separate** (paired t-test on {shared} seeds, p = {p:.3g}; {_seeds_to_resolve(a, b, 'min')})"


def _loss_spikes(events: Mapping[str, Any]) -> int | None:
    count = events.get("loss_spikes")
    return int(count) if isinstance(count, int | float) else None


def study_lines(study: sensitivity.Study) -> list[str]:
    """Each optimizer's best lr, stable-range width and LR sensitivity in one LR study (with bootstrap CIs),
    then each optimizer against AdamW on both: wider or narrower, less or more sensitive, or cannot separate."""
    lines = [
        f"{c.label}: best lr {_fmt(c.best_lr)}, within {sensitivity.WITHIN_BEST:.0%} of its best from lr "
        f"{_fmt(c.good_lo)} to {_fmt(c.good_hi)} ({_fmt(c.width)} decades {_ci(c.width_ci)}), LR sensitivity "
        f"{_fmt(c.sensitivity)} {_ci(c.sensitivity_ci)} ({int(c.seeds.min())}-{int(c.seeds.max())} seeds per lr, "
        f"{int(c.diverged.sum())} diverged)"
        for c in study.curves
    ]
    base = [c for c in study.curves if c.optimizer == BASELINE and not c.opt_hparams]
    for c in study.curves:
        if base and c is not base[0]:
            lines.append(f"{c.label} vs {BASELINE}: {_study_comparison(sensitivity.differences(c, base[0]))}")
    return lines


def _ci(ci: tuple[float, float]) -> str:
    lo, hi = ci
    return f"[{_fmt(lo)}, {_fmt(hi)}]" if math.isfinite(lo) and math.isfinite(hi) else "[no CI: an lr has < 2 seeds]"


def _study_comparison(diff: Mapping[str, sensitivity.Difference]) -> str:
    width, sens = diff["width"], diff["sensitivity"]
    if not math.isfinite(width.lo):
        return "not compared (different lrs, or an lr with fewer than 2 seeds)"
    ranged = (
        f"stable range **{'wider' if width.value > 0 else 'narrower'}** by {_fmt(abs(width.value))} decades"
        if width.resolved
        else "stable range: **cannot separate**"
    )
    sensed = (
        f"LR sensitivity **{'lower' if sens.value < 0 else 'higher'}**"
        if sens.resolved
        else "LR sensitivity: **cannot separate**"
    )
    return (
        f"{ranged} (difference {_fmt(width.value)} decades [{_fmt(width.lo)}, {_fmt(width.hi)}]); {sensed} "
        f"(difference {_fmt(sens.value)} [{_fmt(sens.lo)}, {_fmt(sens.hi)}]); 95% bootstrap CIs over seeds"
    )


def _label(task: Any, scale: Any, problem: Any) -> str:
    return f"`{task}` at `{scale}`" + ("" if problem == "defaults" else f" ({problem})")


def _injected(g: pd.DataFrame) -> bool:
    return any(_json(v).get("injected", 0) for v in g["spike_events"])


def headline(table: pd.DataFrame, runs: pd.DataFrame, studies: list[sensitivity.Study]) -> list[str]:
    """RESULTS.md's "In short": SPAM's stable LR range against AdamW's in each LR study, SPAM against
    AdamW where spikes are injected and whether any problem spikes without injection, and the IQM
    ranking across tasks; each line says where the data cannot separate the optimizers."""
    lines = ["- **Does SPAM widen the stable LR range?**"]
    found = False
    for study in studies:
        mine = [c for c in study.curves if c.optimizer == SUBJECT and not c.opt_hparams]
        base = [c for c in study.curves if c.optimizer == BASELINE and not c.opt_hparams]
        if mine and base:
            found = True
            lines.append(
                f"  - {_label(study.task, study.scale, study.problem)}: {SUBJECT} {_fmt(mine[0].width)} decades vs "
                f"{BASELINE} {_fmt(base[0].width)} ({int(mine[0].seeds.min())}+ seeds per lr): "
                + _study_comparison(sensitivity.differences(mine[0], base[0]))
            )
    if not found:
        lines.append(f"  - no LR study of both {SUBJECT} and {BASELINE} in this snapshot yet")

    lines.append("- **What does SPAM do where gradients spike?**")
    asked = len(lines)
    defaults = table[table["protocol"] == "defaults"] if len(table) else table
    natural = runs[(runs["recipe"] == "defaults") & (runs["status"] == "complete")] if len(runs) else runs
    for (task, scale, problem), g in natural.groupby(["task", "scale", "problem"], sort=True):
        if _injected(g):
            entries = defaults[
                (defaults["task"] == task) & (defaults["scale"] == scale) & (defaults["problem"] == problem)
            ]
            e, b = (entries[entries["optimizer"] == o] for o in (SUBJECT, BASELINE))
            if len(e) and len(b):
                lines.append(f"  - injected spikes, {_label(task, scale, problem)}: {compare(e.iloc[0], b.iloc[0])}")
    calm = [_label(*key) for key, per_opt in _natural_spikes(runs) if _calm(per_opt)]
    if calm:
        lines.append(
            f"  - without injection, {BASELINE} met no loss spike on {', '.join(calm)}: no naturally spiky "
            "regime to test SPAM in there (docs/spiky-regime.md lists the tiny configurations tried); "
            "per-task counts under *Natural loss spikes*"
        )
    if len(lines) == asked:
        lines.append("  - no problem with spike counts, injected or natural, in this snapshot yet")

    lines.append(
        f"- **Where does SPAM stand across tasks?** IQM of the score against {BASELINE} (defaults; +0.05 = 5% "
        "better), best first, with its stratified bootstrap CI, then the paired tests per problem (with 3 "
        "seeds a bootstrap CI is narrow, so the paired tests are the stricter check):"
    )
    aggs = robust_section.aggregates(runs)
    for a in aggs:
        lines.append(
            f"  - {a.optimizer} {a.iqm:+.3f} [{a.iqm_lo:+.3f}, {a.iqm_hi:+.3f}] over {a.problems} problems "
            f"({a.runs} runs): IQM **{a.verdict}**; {_paired_tally(defaults, a.optimizer)}"
        )
    if not aggs:
        lines.append(f"  - no problem where an optimizer and {BASELINE} both have {stats.MIN_SEEDS}+ seeds yet")
    return lines


def _paired_tally(defaults: pd.DataFrame, optimizer: str) -> str:
    """How the paired test against AdamW came out on each problem both have defaults entries on."""
    tally = {"better": 0, "worse": 0, "cannot separate": 0, "not tested": 0}
    for _, g in defaults.groupby(["task", "scale", "problem"], sort=True):
        mine, base = g[g["optimizer"] == optimizer], g[g["optimizer"] == BASELINE]
        if mine.empty or base.empty:
            continue
        e = mine.iloc[0]
        p, _, diff = stats.paired_test(e["seeds"], base.iloc[0]["seeds"], str(e["direction"]))
        verdict = _verdict(p, diff, optimizer)
        words = {None: "not tested", "cannot separate": "cannot separate", optimizer: "better", BASELINE: "worse"}
        tally[words[verdict]] += 1
    return "paired tests: " + ", ".join(f"{k} on {v}" for k, v in tally.items() if v)
