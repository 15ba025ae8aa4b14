"""The leaderboard: per-problem tables and the across-task comparison, as renderer-neutral blocks.

A *problem* is a task at a scale with its problem settings (task overrides other than the
learning rate: summary.RECIPE_KEYS); an *entry* is one optimizer with one recipe (its lr and
opt.* values) on a problem, averaged over its seeds. Diverged runs are counted, never averaged.
Across tasks each optimizer is represented on a problem by its best entry (as after tuning).

`build(runs)` returns a list of blocks that reports/markdown (here) and reports/html render the
same way, so the Markdown and the HTML page can never disagree. Nothing here draws or writes files.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from spam_bench.reports import paper, robust_section, spikes, stats
from spam_bench.reports.blocks import Block, Table, fmt, fmt_bytes, md_cell, md_text
from spam_bench.reports.summary import MALFORMED_ATTR

BASELINE = "adamw"
PROFILE_TAUS = (1.0, 1.01, 1.05, 1.1, 1.25, 1.5, 2.0)
PROBLEM_KEYS = ["task", "scale", "problem"]


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


def entries(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per problem x optimizer x recipe: mean, bootstrap CI, seeds, diverged, speed, memory, rank."""
    if runs.empty:
        return pd.DataFrame()
    rows = []
    for (task, scale, problem, optimizer, recipe), g in runs.groupby([*PROBLEM_KEYS, "optimizer", "recipe"], sort=True):
        ok = g[(g.status == "complete") & g["value"].notna()]
        values = ok["value"].astype(float).to_numpy()
        lo, hi = stats.bootstrap_ci(values)
        timed = ok if len(ok) else g
        speed = (timed["steps"].astype(float) / timed["wall_time_s"].astype(float)).replace([np.inf], np.nan).mean()
        rows.append(
            {
                "task": task,
                "scale": scale,
                "problem": problem,
                "optimizer": optimizer,
                "recipe": recipe,
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
            }
        )
    out = pd.DataFrame(rows)
    out["rank"] = 0.0
    for _, g in out.groupby(PROBLEM_KEYS, sort=False):
        out.loc[g.index, "rank"] = stats.ranks(g["mean"].to_numpy(), g["direction"].iloc[0])
    out["best"] = (out["rank"] == out.groupby(PROBLEM_KEYS)["rank"].transform("min")) & out["mean"].notna()
    return out.sort_values([*PROBLEM_KEYS, "rank", "optimizer", "recipe"]).reset_index(drop=True)


@dataclass
class Across:
    """The across-task view: each optimizer's best entry per problem."""

    problems: list[tuple[str, str, str]]
    optimizers: list[str]
    rank: pd.DataFrame  # optimizer x problem label
    mean_rank: pd.Series
    ratios: dict[str, dict[str, float]]  # problem label -> optimizer -> ratio
    profile: dict[str, np.ndarray]
    poi: dict[str, tuple[float, int]]  # optimizer -> (P(better than baseline), problems compared)


def across(table: pd.DataFrame) -> Across:
    best = table.sort_values(["rank", "recipe"], kind="stable").groupby([*PROBLEM_KEYS, "optimizer"], sort=True).head(1)
    problems = sorted({tuple(k) for k in best[PROBLEM_KEYS].to_numpy()})
    labels = short_labels(problems)
    optimizers = sorted(best["optimizer"].unique())
    rank = pd.DataFrame(np.nan, index=optimizers, columns=labels)
    ratio_table, outcomes = {}, {}
    for p, label in zip(problems, labels):
        g = best[(best.task == p[0]) & (best.scale == p[1]) & (best.problem == p[2])]
        direction = g["direction"].iloc[0]
        rank.loc[g["optimizer"].to_numpy(), label] = stats.ranks(g["mean"].to_numpy(), direction)
        ratio_table[label] = stats.ratios(dict(zip(g["optimizer"], g["mean"])), direction)
        outcomes[label] = (direction, dict(zip(g["optimizer"], g["outcomes"])))
    poi = {}
    for o in optimizers:
        if o == BASELINE:
            continue
        ps = [
            stats.probability_of_improvement(runs[o], runs[BASELINE], d)
            for d, runs in outcomes.values()
            if o in runs and BASELINE in runs
        ]
        poi[o] = (float(np.mean(ps)) if ps else float("nan"), len(ps))
    mean_rank = rank.mean(axis=1, skipna=True).sort_values(kind="stable")
    return Across(
        problems, optimizers, rank, mean_rank, ratio_table, stats.performance_profile(ratio_table, optimizers), poi
    )


def _entry_table(g: pd.DataFrame) -> Table:
    metric, direction = g["metric"].iloc[0], g["direction"].iloc[0]
    better = "lower" if direction == "min" else "higher"
    header = [
        "rank",
        "optimizer",
        "hyperparameters",
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
                fmt(e["rank"], 3) + (" ★" if e["best"] else ""),
                e["optimizer"],
                e["recipe"],
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


def _across_blocks(a: Across) -> list[Block]:
    labels = list(a.rank.columns)
    header = ["optimizer", *labels, "mean rank", "problems", "profile score", f"P(better than {BASELINE})"]
    rows = []
    for o in a.mean_rank.index:
        p, k = a.poi.get(o, (float("nan"), 0))
        rows.append(
            [
                o,
                *[fmt(a.rank.loc[o, lab], 3) for lab in labels],
                fmt(a.mean_rank[o], 3),
                str(int(a.rank.loc[o].notna().sum())),
                f"{stats.profile_score(a.profile[o]):.2f}",
                "–" if o == BASELINE else (f"{p:.2f} ({k} problem{'s' if k > 1 else ''})" if k else "–"),
            ]
        )
    best_rank = a.mean_rank.min()
    ranks = Table(header, rows, {i for i, o in enumerate(a.mean_rank.index) if a.mean_rank[o] == best_rank})
    idx = [int(np.argmin(np.abs(stats.TAU_GRID - t))) for t in PROFILE_TAUS]
    prof = Table(
        ["optimizer", *[f"τ={t:g}" for t in PROFILE_TAUS]],
        [[o, *[f"{a.profile[o][i]:.2f}" for i in idx]] for o in a.mean_rank.index],
    )
    return [
        Block("h2", "Across tasks"),
        Block(
            "p",
            "Rank of each optimizer's best entry on each problem (1 = best; ties share the average rank; "
            "an entry whose seeds all diverged ranks last), the mean over the problems it ran, "
            f"the performance-profile score and the probability that one of its runs beats one of {BASELINE}'s.",
        ),
        Block("table", table=ranks),
        Block("h3", "Performance profile"),
        Block(
            "p",
            "Fraction of problems on which the optimizer is within a factor τ of the best: ratio "
            "r = 1 + (gap to the best mean) / |best mean|, i.e. value / best for a positive lower-is-better "
            f"metric; missing or diverged entries have r = ∞. Score = area under the profile over τ in [1, {stats.TAU_MAX:g}], "
            "normalised to [0, 1].",
        ),
        Block("table", table=prof),
        Block("img", "profile.png"),
    ]


def method_note() -> str:
    return (
        f"Mean over the seeds that completed; 95% CI = percentile bootstrap of that mean "
        f"({stats.BOOTSTRAP_RESAMPLES:,} resamples, RNG seed {stats.BOOTSTRAP_SEED}; '–' below 2 seeds; with 3 seeds "
        "it spans about the seeds' range). Diverged runs are counted in 'diverged', never averaged. steps/s = "
        "optimizer steps per wall-clock second of the whole run (evaluation included). Optimizer state = bytes "
        "of optimizer state tensors. ★ = best mean on the problem. Probability of improvement: P(run of A beats "
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
) -> list[Block]:
    """The whole leaderboard as blocks; `images` names the PNGs that exist (others are not linked);
    `inapplicable` holds the runs an optimizer refused (status not_applicable), named per task;
    `malformed` counts the run folders `summary.load_runs` skipped (default: what it recorded in
    `runs.attrs`), said in the header so that a reader knows the tables are missing runs."""
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
    table = entries(runs)
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
    blocks += [b for b in _across_blocks(across(table)) if b.kind != "img" or b.text in images]
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
    for task, refused in inapplicable[~inapplicable.task.isin(table.task)].groupby("task", sort=True):
        blocks += [Block("h2", task), Block("p", _inapplicable_text(refused))]

    blocks += robust_section.blocks(runs)
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
