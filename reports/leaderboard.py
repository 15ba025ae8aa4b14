"""The leaderboard: per-problem tables and the across-task comparison, as renderer-neutral blocks.

A *problem* is a task at a scale with its problem settings (task overrides other than the
learning rate: summary.RECIPE_KEYS); an *entry* is one optimizer with one recipe (its lr and
opt.* values) on a problem, averaged over its seeds. Diverged runs are counted, never averaged.
Every entry has a *protocol*: "defaults" (the optimizer's declared defaults, its lr the task's times
the lr scale it declares, registry.OptimizerSpec.lr_scale),
"tuned" (the configuration `spambench tune` saved for its task, scale and optimizer, re-run on
fresh seeds with `spambench sweep --from-tuning`) or "hand-set" (any other lr / opt.* values).

Ranks within a problem come from paired tests on shared seeds (stats.rank_groups): entries with
fewer than stats.MIN_SEEDS complete seeds are shown but not ranked, and entries the data cannot
separate share a rank. Across tasks, one table per protocol ranks only that protocol's entries
(defaults with defaults, tuned with tuned), never each optimizer's best of several configurations,
and says how many configurations each optimizer tried.

`build(runs)` returns a list of blocks that reports/markdown (here) and reports/html render the
same way, so the Markdown and the HTML page can never disagree. Nothing here draws or writes files.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from spam_bench.reports import paper, robust_section, spikes, stats
from spam_bench.reports.blocks import Block, Table, fmt, fmt_bytes, md_cell, md_text
from spam_bench.reports.summary import MALFORMED_ATTR, RECIPE_KEYS
from spam_bench.suite.tuning import TUNING_SEED_BASE

BASELINE = "adamw"
PROFILE_TAUS = (1.0, 1.01, 1.05, 1.1, 1.25, 1.5, 2.0)
PROBLEM_KEYS = ["task", "scale", "problem"]
UNRANKED = f"n<{stats.MIN_SEEDS}"  # the rank cell of an entry with too few complete seeds to rank


def problem_label(task: str, scale: str, problem: str) -> str:
    return f"{task}/{scale}" + ("" if problem == "defaults" else f" [{problem}]")


def short_labels(problems: list[tuple[str, str, str]], width: int = 36) -> list[str]:
    """Column names for the across-task table: task/scale, plus only the settings that tell the
    problems of one task and scale apart (the section headings give them in full)."""
    labels = []
    for task, scale, problem in problems:
        siblings = [set(q.split(", ")) for t, s, q in problems if (t, s) == (task, scale)]
        if len(siblings) == 1:
            labels.append(f"{task}/{scale}")
            continue
        own = [part for part in problem.split(", ") if not all(part in sib for sib in siblings)] or [problem]
        text = ", ".join(own)
        labels.append(f"{task}/{scale} [{text if len(text) <= width else text[: width - 1] + '…'}]")
    return [lab if labels.count(lab) == 1 else f"{lab} #{labels[:i].count(lab) + 1}" for i, lab in enumerate(labels)]


def problem_slug(task: str, scale: str, problem: str) -> str:
    """A stable file-name stem for a problem's plots."""
    stem = re.sub(r"[^A-Za-z0-9]+", "-", f"{task}-{scale}").strip("-")
    if problem == "defaults":
        return stem
    return f"{stem}-{hashlib.sha256(problem.encode()).hexdigest()[:8]}"


# (task, scale, optimizer) -> what `spambench tune` saved: {"sets": {key: value}, "trials": n, ...}
TuningRecords = Mapping[tuple[str, str, str], Mapping[str, Any]]
PROTOCOLS = {
    "defaults": "every optimizer at its declared defaults (the task's lr times the optimizer's declared lr scale)",
    "tuned": "every optimizer at the configuration `spambench tune` chose, re-run on fresh seeds (`--from-tuning`)",
}


def _json(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def effective_lr(task_config: Any, overrides: Any) -> float:
    """The lr a run trained with: its resolved task config's (spec.json), else its override, else NaN."""
    for source in (_json(task_config), _json(overrides)):
        lr = source.get("lr")
        if isinstance(lr, int | float) and not isinstance(lr, bool):
            return float(lr)
    return math.nan


def _same(a: Any, b: Any) -> bool:
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    return str(a) == str(b)


def is_tuned(overrides: Mapping[str, Any], opt_hparams: Mapping[str, Any], sets: Mapping[str, Any]) -> bool:
    """Whether a run's recipe (its lr and opt.* values) is exactly the tuned `--set` values: every tuned
    key at its tuned value, and no other recipe value changed."""
    recipe = {k: v for k, v in overrides.items() if k in RECIPE_KEYS}
    recipe |= {f"opt.{k}": v for k, v in opt_hparams.items()}
    wanted: dict[str, Any] = {}
    for key, value in sets.items():
        if key.startswith("opt.") or key in RECIPE_KEYS:
            wanted[key] = value
        elif key in overrides:  # a task field other than the lr: part of the problem, compared there
            if not _same(overrides[key], value):
                return False
        else:  # an optimizer field given without its prefix (`--set beta2=...`)
            wanted[f"opt.{key}"] = value
    return set(recipe) == set(wanted) and all(_same(recipe[k], wanted[k]) for k in wanted)


def _protocol(g: pd.DataFrame, recipe: str, record: Mapping[str, Any] | None) -> str:
    if recipe == "defaults":
        return "defaults"
    if record is not None and isinstance(record.get("sets"), dict) and "overrides" in g and "opt_hparams" in g:
        fresh = (pd.to_numeric(g["seed"], errors="coerce") < TUNING_SEED_BASE).all() if "seed" in g else True
        if fresh and is_tuned(_json(g["overrides"].iloc[0]), _json(g["opt_hparams"].iloc[0]), record["sets"]):
            return "tuned"
    return "hand-set"


def _trials(record: Mapping[str, Any] | None) -> int:
    trials = (record or {}).get("trials")
    return trials if isinstance(trials, int) and not isinstance(trials, bool) and trials > 0 else 0


def entries(runs: pd.DataFrame, tuned: TuningRecords | None = None) -> pd.DataFrame:
    """One row per problem x optimizer x recipe: mean, bootstrap CI, seeds, diverged, speed, memory, the
    effective lr, the protocol, the configurations the optimizer tried on the problem, rank and best.

    `tuned` holds the tuning records (see `TuningRecords`) that mark entries of the tuned protocol;
    rank is NaN for an entry with fewer than stats.MIN_SEEDS complete seeds (shown, not ranked)."""
    if runs.empty:
        return pd.DataFrame()
    tuned = tuned or {}
    rows = []
    for (task, scale, problem, optimizer, recipe), g in runs.groupby([*PROBLEM_KEYS, "optimizer", "recipe"], sort=True):
        ok = g[(g.status == "complete") & g["value"].notna()]
        values = ok["value"].astype(float).to_numpy()
        lo, hi = stats.bootstrap_ci(values)
        timed = ok if len(ok) else g
        speed = (timed["steps"].astype(float) / timed["wall_time_s"].astype(float)).replace([np.inf], np.nan).mean()
        record = tuned.get((task, scale, optimizer))
        first = (ok if len(ok) else g).iloc[0]
        rows.append(
            {
                "task": task,
                "scale": scale,
                "problem": problem,
                "optimizer": optimizer,
                "recipe": recipe,
                "lr": effective_lr(first.get("task_config"), first.get("overrides")),
                "protocol": _protocol(g, recipe, record),
                "trials": _trials(record),
                "metric": g["primary_metric"].iloc[0],
                "direction": g["direction"].iloc[0],
                "mean": float(values.mean()) if len(values) else float("nan"),
                "ci_lo": lo,
                "ci_hi": hi,
                "n": len(values),
                "diverged": int((g.status == "diverged").sum()),
                "steps_per_s": speed,
                "state_bytes": timed["optimizer_state_bytes"].astype(float).mean(),
                "grad_clip": g["grad_clip"].iloc[0] if "grad_clip" in g else None,
                "task_config": g["task_config"].iloc[0] if "task_config" in g else "{}",
                # every seed's outcome, NaN for a diverged run: what the probability of improvement compares
                "outcomes": [
                    float("nan") if s != "complete" or v is None or pd.isna(v) else float(v)
                    for s, v in zip(g["status"], g["value"])
                ],
                # seed -> value of each complete seed (repeats of a seed averaged): what the paired tests pair
                "seeds": {int(k): float(v) for k, v in ok.groupby("seed")["value"].mean().items()}
                if "seed" in ok
                else dict(enumerate(values.tolist())),
            }
        )
    out = pd.DataFrame(rows)
    # configurations the optimizer tried on the problem: its recipes here, plus its tuning trials (the
    # tuned recipe, re-run here, is one of them)
    per = out.groupby([*PROBLEM_KEYS, "optimizer"])
    out["configs"] = (
        per["recipe"].transform("size")
        + out["trials"]
        - per["protocol"].transform(lambda p: int((p == "tuned").any())) * (out["trials"] > 0)
    ).astype(int)
    out["rank"], out["best"] = np.nan, False
    for _, g in out.groupby(PROBLEM_KEYS, sort=False):
        rank, best = stats.rank_groups(list(g["seeds"]), list(g["mean"]), g["direction"].iloc[0])
        out.loc[g.index, "rank"], out.loc[g.index, "best"] = rank, best
    out["best"] = out["best"].astype(bool)
    loss = out["mean"] * np.where(out["direction"] == "min", 1.0, -1.0)
    out = out.assign(_unranked=out["rank"].isna(), _loss=loss.fillna(np.inf))
    out = out.sort_values([*PROBLEM_KEYS, "_unranked", "rank", "_loss", "optimizer", "recipe"], kind="stable")
    return out.drop(columns=["_unranked", "_loss"]).reset_index(drop=True)


@dataclass
class Across:
    """The across-task view of one protocol: its entries only, one per optimizer and problem."""

    protocol: str
    problems: list[tuple[str, str, str]]
    optimizers: list[str]  # every optimizer with an entry of the protocol, ranked or not
    rank: pd.DataFrame  # optimizer x problem label: rank, NaN where absent or not ranked
    shown: pd.DataFrame  # optimizer x problem label: the cell text (rank, "n<3" or "–")
    mean_rank: pd.Series  # over the problems where it is ranked; NaN (last) where it is ranked nowhere
    configs: dict[str, str]  # optimizer -> configurations tried per problem of the view ("1", or "1–4")
    ratios: dict[str, dict[str, float]]  # problem label -> optimizer -> ratio (ranked entries only)
    profile: dict[str, np.ndarray]  # ranked optimizers only
    poi: dict[str, tuple[float, int]]  # optimizer -> (P(better than baseline), problems compared)


def _span(counts: list[int]) -> str:
    lo, hi = min(counts), max(counts)
    return str(lo) if lo == hi else f"{lo}–{hi}"


def across(table: pd.DataFrame, protocol: str = "defaults") -> Across:
    """The across-task view of `protocol`'s entries, re-ranked among themselves on each problem.

    Per problem, each optimizer has at most one entry of a protocol (its defaults, or its tuned
    configuration); should a store hold two, the one with more seeds is used, never the better one."""
    sel = table[table["protocol"] == protocol] if len(table) else table
    sel = sel.sort_values([*PROBLEM_KEYS, "optimizer", "n", "recipe"], ascending=[True] * 4 + [False, True])
    sel = sel.groupby([*PROBLEM_KEYS, "optimizer"], sort=True).head(1)
    problems = sorted({tuple(k) for k in sel[PROBLEM_KEYS].to_numpy()})
    labels = short_labels(problems)
    optimizers = sorted(sel["optimizer"].unique())
    rank = pd.DataFrame(np.nan, index=optimizers, columns=labels)
    shown = pd.DataFrame("–", index=optimizers, columns=labels)
    ratio_table, outcomes, configs = {}, {}, {}
    for p, label in zip(problems, labels):
        g = sel[(sel.task == p[0]) & (sel.scale == p[1]) & (sel.problem == p[2])]
        direction = g["direction"].iloc[0]
        r, _ = stats.rank_groups(list(g["seeds"]), list(g["mean"]), direction)
        ranked = g[~np.isnan(r)]
        rank.loc[ranked["optimizer"].to_numpy(), label] = r[~np.isnan(r)]
        for o, value in zip(g["optimizer"], r):
            shown.loc[o, label] = fmt(value, 3) if not np.isnan(value) else UNRANKED
        if len(ranked):
            ratio_table[label] = stats.ratios(dict(zip(ranked["optimizer"], ranked["mean"])), direction)
            outcomes[label] = (direction, dict(zip(ranked["optimizer"], ranked["outcomes"])))
    # configurations tried, on every problem of the view where the optimizer ran anything (any protocol)
    tried = table.groupby([*PROBLEM_KEYS, "optimizer"])["configs"].first() if len(table) else pd.Series()
    for p in problems:
        for o in optimizers:
            if (*p, o) in tried.index:
                configs.setdefault(o, []).append(int(tried[(*p, o)]))
    ranked_optimizers = sorted(o for o in optimizers if rank.loc[o].notna().any())
    poi = {}
    for o in ranked_optimizers:
        if o == BASELINE:
            continue
        ps = [
            stats.probability_of_improvement(runs[o], runs[BASELINE], d)
            for d, runs in outcomes.values()
            if o in runs and BASELINE in runs
        ]
        poi[o] = (float(np.mean(ps)) if ps else float("nan"), len(ps))
    # ties in mean rank: the optimizer ranked on more problems first, then by name
    counts = rank.notna().sum(axis=1)
    order = sorted(optimizers, key=lambda o: (math.isnan(m := rank.loc[o].mean()), m, -counts[o], o))
    mean_rank = rank.mean(axis=1, skipna=True).loc[order]
    return Across(
        protocol,
        problems,
        optimizers,
        rank,
        shown,
        mean_rank,
        {o: _span(k) for o, k in configs.items()},
        ratio_table,
        stats.performance_profile(ratio_table, ranked_optimizers),
        poi,
    )


def acrosses(table: pd.DataFrame) -> dict[str, Across]:
    """One across-task view per protocol that has entries (defaults first, then tuned)."""
    if table.empty:
        return {}
    return {p: across(table, p) for p in PROTOCOLS if (table["protocol"] == p).any()}


def _protocol_cell(e: Mapping[str, Any]) -> str:
    if e["protocol"] == "tuned" and e["trials"]:
        return f"tuned ({e['trials']} trials)"
    return str(e["protocol"])


def _entry_table(g: pd.DataFrame) -> Table:
    metric, direction = g["metric"].iloc[0], g["direction"].iloc[0]
    better = "lower" if direction == "min" else "higher"
    header = [
        "rank",
        "optimizer",
        "hyperparameters",
        "lr",
        "protocol",
        f"{metric} mean ({better} is better)",
        "95% CI",
        "seeds",
        "diverged",
        "steps/s",
        "optimizer state",
    ]
    rows, highlight = [], set()
    for i, (_, e) in enumerate(g.iterrows()):
        failed = math.isnan(e["mean"])
        rows.append(
            [
                (UNRANKED if math.isnan(e["rank"]) else fmt(e["rank"], 3)) + (" ★" if e["best"] else ""),
                e["optimizer"],
                e["recipe"],
                fmt(e["lr"], 3),
                _protocol_cell(e),
                "diverged" if failed else fmt(e["mean"]),
                "–" if math.isnan(e["ci_lo"]) else f"[{fmt(e['ci_lo'])}, {fmt(e['ci_hi'])}]",
                str(e["n"]),
                str(e["diverged"]),
                fmt(e["steps_per_s"], 3),
                fmt_bytes(e["state_bytes"]),
            ]
        )
        if e["best"]:
            highlight.add(i)
    return Table(header, rows, highlight)


def _across_title(protocol: str) -> str:
    return "Across tasks: " + ("defaults" if protocol == "defaults" else "tuned (spambench tune, then --from-tuning)")


def _across_blocks(a: Across, images: set[str]) -> list[Block]:
    labels = list(a.rank.columns)
    header = [
        "optimizer",
        *labels,
        "mean rank",
        "problems ranked",
        "configs tried",
        "profile score",
        f"P(better than {BASELINE})",
    ]
    rows = []
    for o in a.mean_rank.index:
        p, k = a.poi.get(o, (float("nan"), 0))
        ranked = int(a.rank.loc[o].notna().sum())
        rows.append(
            [
                o,
                *[a.shown.loc[o, lab] for lab in labels],
                fmt(a.mean_rank[o], 3),
                str(ranked),
                a.configs.get(o, "–"),
                f"{stats.profile_score(a.profile[o]):.2f}" if o in a.profile else "–",
                "–" if o == BASELINE else (f"{p:.2f} ({k} problem{'s' if k > 1 else ''})" if k else "–"),
            ]
        )
    finite = a.mean_rank.dropna()
    best_rank = finite.min() if len(finite) else math.nan
    # bold: the lowest mean rank, shared when tied; none when every ranked optimizer ties
    lowest = {i for i, o in enumerate(a.mean_rank.index) if a.mean_rank[o] == best_rank}
    ranks = Table(header, rows, lowest if len(lowest) < len(finite) else set())
    profiled = [o for o in a.mean_rank.index if o in a.profile]
    idx = [int(np.argmin(np.abs(stats.TAU_GRID - t))) for t in PROFILE_TAUS]
    prof = Table(
        ["optimizer", *[f"τ={t:g}" for t in PROFILE_TAUS]],
        [[o, *[f"{a.profile[o][i]:.2f}" for i in idx]] for o in profiled],
    )
    image = profile_image(a.protocol)
    return [
        Block("h2", _across_title(a.protocol)),
        Block(
            "p",
            f"Protocol: {PROTOCOLS[a.protocol]}. Only entries of this protocol are compared, one per optimizer "
            "and problem, re-ranked among themselves by the rule in Method (paired tests on shared seeds; "
            f"entries the data cannot separate share a rank; '{UNRANKED}' = fewer than {stats.MIN_SEEDS} "
            "complete seeds, shown but not ranked; '–' = no entry of this protocol). No optimizer is represented "
            "by the best of several configurations. Mean rank over the problems where it is ranked (bold: the "
            "lowest, shared when tied; none when all tie). Configs tried = the configurations of the optimizer "
            "on a problem of this table, whatever their protocol: its lr / opt.* settings in this store plus its "
            "`spambench tune` trials (a range when problems differ); more configurations tried means more chances to look good elsewhere in this report. "
            f"Then the performance-profile score and the probability that one of its runs beats one of {BASELINE}'s.",
        ),
        Block("table", table=ranks),
        Block("h3", "Performance profile"),
        Block(
            "p",
            "Fraction of problems on which the optimizer is within a factor τ of the best: ratio "
            "r = 1 + (gap to the best mean) / |best mean|, i.e. value / best for a positive lower-is-better "
            f"metric; missing, unranked or diverged entries have r = ∞. Score = area under the profile over τ in "
            f"[1, {stats.TAU_MAX:g}], normalised to [0, 1].",
        ),
        Block("table", table=prof),
        *([Block("img", image)] if image in images else []),
    ]


def profile_image(protocol: str) -> str:
    """The performance-profile figure's file name for a protocol's across-task view."""
    return "profile.png" if protocol == "defaults" else f"profile-{protocol}.png"


def method_note() -> str:
    return (
        f"Mean over the seeds that completed; 95% CI = percentile bootstrap of that mean "
        f"({stats.BOOTSTRAP_RESAMPLES:,} resamples, RNG seed {stats.BOOTSTRAP_SEED}; '–' below 2 seeds; with 3 seeds "
        "it spans about the seeds' range). Diverged runs are counted in 'diverged', never averaged. "
        f"Rank: only entries with at least {stats.MIN_SEEDS} complete seeds are ranked ('{UNRANKED}' otherwise). "
        "They are sorted by mean, best first; walking down, an entry takes a new, worse rank (1 + the number of "
        "ranked entries above it) only if it is significantly worse than the best entry of the current rank "
        "group, and otherwise shares that group's rank. Significantly worse = a two-sided paired t-test on the "
        f"seeds both entries completed rejects equal means at alpha {stats.ALPHA:g} and its mean on those seeds "
        f"is worse in the metric's direction; fewer than {stats.MIN_SEEDS} shared seeds never separate. "
        "★ (bold) = a rank-1 entry significantly better, by the same test, than every ranked entry outside "
        "rank 1 (rank-1 entries that tie share it; nothing is starred when no ranked entry is outside rank 1). "
        "Overlapping CIs alone neither separate nor tie entries: the paired test does. lr = the learning rate "
        "the run trained with (its resolved task config); at 'defaults' that is the task's lr times the lr "
        "scale the optimizer declares (1 unless it declares one, e.g. for a sign-based update). Protocol: "
        "defaults (declared defaults), tuned (the configuration `spambench tune` saved for the task, scale "
        "and optimizer, re-run on fresh seeds) or hand-set (any other lr / opt.* values). steps/s = "
        "optimizer steps per wall-clock second of the whole run (evaluation included). Optimizer state = bytes "
        "of optimizer state tensors. Probability of improvement: P(run of A beats "
        f"run of {BASELINE}), ties 1/2, a diverged run loses, averaged over problems (Agarwal et al. 2021)."
    )


def _duration(seconds: float) -> str:
    """Seconds as the largest unit that keeps the number readable."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _inapplicable_text(refused: pd.DataFrame) -> str:
    """One sentence naming the optimizers that refused a task's model, with their reasons."""
    parts = [
        f"{opt} ({g.reason.iloc[0]}; {len(g)} run{'s' if len(g) > 1 else ''})"
        for opt, g in refused.groupby("optimizer", sort=True)
    ]
    return "Not applicable here, so not ranked: " + "; ".join(parts) + "."


def build(
    runs: pd.DataFrame,
    filters: str = "",
    images: set[str] | None = None,
    inapplicable: pd.DataFrame | None = None,
    malformed: int | None = None,
    tuned: TuningRecords | None = None,
    task_sections: Mapping[str, list[Block]] | None = None,
) -> list[Block]:
    """The whole leaderboard as blocks; `images` names the PNGs that exist (others are not linked);
    `inapplicable` holds the runs an optimizer refused (status not_applicable), named per task;
    `malformed` counts the run folders `summary.load_runs` skipped (default: what it recorded in
    `runs.attrs`), said in the header so that a reader knows the tables are missing runs; `tuned`
    holds the tuning records that mark the tuned protocol's entries (`entries`); `task_sections` adds blocks
    at the end of a task's section (the LR-sensitivity studies of reports/sensitivity.py)."""
    images = images if images is not None else set()
    inapplicable = inapplicable if inapplicable is not None else pd.DataFrame(columns=["task"])
    malformed = int(runs.attrs.get(MALFORMED_ATTR, 0)) if malformed is None else malformed
    skipped = (
        f" {malformed} malformed run folder{'s' if malformed != 1 else ''} skipped (named on stderr)."
        if malformed
        else ""
    )
    blocks = [Block("h1", "spam-bench leaderboard")]
    if runs.empty:
        blocks.append(
            Block("p", f"No complete runs{' match ' + filters if filters else ''}: try `make bench`.{skipped}")
        )
        by_task = inapplicable.groupby("task") if "task" in inapplicable else []
        return blocks + [Block("p", f"{task}: {_inapplicable_text(g)}") for task, g in by_task]
    table = entries(runs, tuned)
    n_div = int((runs.status == "diverged").sum())
    run_time = pd.to_numeric(runs.wall_time_s, errors="coerce").sum()
    blocks.append(
        Block(
            "p",
            f"{len(runs)} complete runs ({n_div} diverged) of {runs.task.nunique()} tasks and "
            f"{runs.optimizer.nunique()} optimizers; {_duration(run_time)} of run time (the runs' "
            f"wall-clock times added up)"
            + (f"; filters: {filters}" if filters else "")
            + "."
            + (f" {len(inapplicable)} runs were not applicable (named per task)." if len(inapplicable) else "")
            + skipped,
        )
    )
    views = acrosses(table)
    for view in views.values():
        blocks += _across_blocks(view, images)
    if not views:
        blocks.append(Block("p", "No entry at defaults or from the tuning protocol: no across-task ranking."))
    for task, tg in table.groupby("task", sort=True):
        blocks.append(Block("h2", task))
        refused = inapplicable[inapplicable.task == task]
        if not refused.empty:
            blocks.append(Block("p", _inapplicable_text(refused)))
        for (scale, problem), g in tg.groupby(["scale", "problem"], sort=True):
            slug = problem_slug(task, scale, problem)
            blocks += [Block("h3", f"{task} · {scale} · {problem}"), Block("table", table=_entry_table(g))]
            blocks += [Block("img", name) for name in (f"curves-{slug}.png", f"final-{slug}.png") if name in images]
            blocks += paper.blocks(task, scale, problem, g)
        blocks += (task_sections or {}).get(task, [])
    for task, refused in inapplicable[~inapplicable.task.isin(table.task)].groupby("task", sort=True):
        blocks += [Block("h2", task), Block("p", _inapplicable_text(refused))]

    blocks += robust_section.blocks(runs, images)
    blocks += spikes.blocks(runs, images)
    blocks += [Block("h2", "Method"), Block("p", method_note())]
    return blocks


def to_markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            lines += ["#" * int(b.kind[1]) + " " + md_text(b.text), ""]
        elif b.kind == "p":
            lines += [md_text(b.text), ""]
        elif b.kind == "img":
            lines += [f"![{b.text}]({b.text})", ""]
        elif b.kind == "table":
            t = b.table
            lines += ["| " + " | ".join(md_cell(c) for c in t.header) + " |", "|" + "---|" * len(t.header)]
            for i, row in enumerate(t.rows):
                cells = [f"**{md_cell(c)}**" if i in t.highlight and c not in ("", "–") else md_cell(c) for c in row]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)
