"""The report's robust aggregates across tasks (rliable's toolkit; reports/robust_stats.py).

Scores are relative to AdamW on the same problem, so that tasks with different metrics pool:
score = (AdamW's mean - value) / |AdamW's mean| where lower is better, and (value - AdamW's mean) /
|AdamW's mean| where higher is better; 0 is "as good as AdamW", 0.05 is "5% better". A diverged run
scores -1 (it lost everything it had). Only runs at each optimizer's defaults enter (one protocol,
never mixed with tuned or hand-picked settings), and only problems where AdamW has a finite mean over
at least stats.MIN_SEEDS complete seeds; an optimizer enters a problem only with at least MIN_SEEDS
runs there (complete or diverged), the rule the leaderboard ranks by, so two lucky seeds cannot carry
an aggregate.

For each optimizer: the IQM of its scores with a stratified bootstrap CI (strata: problems), and the
probability that one of its runs beats one of AdamW's, with its CI. The performance profile: for
each optimizer (AdamW included), the fraction of its runs whose score exceeds tau, per problem and
averaged over the problems it ran, with a stratified bootstrap CI band (a table at a few taus, and a
figure, SCORE_PROFILE_IMAGE, drawn by reports/plots.py). Per problem and optimizer: the
number of shared seeds a paired t-test would need to resolve the observed difference from AdamW at
80% power; a CI that contains 0 (or a P(improvement) CI that contains 0.5) means the data cannot
tell the two apart, and the table says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from spam_bench.reports import robust_stats, stats
from spam_bench.reports.blocks import Block, Table, fmt

BASELINE = "adamw"
PROBLEM = ["task", "scale", "problem"]
DIVERGED_SCORE = -1.0
PROFILE_TAUS = np.linspace(-0.5, 0.5, 101)  # the figure's thresholds: scores from 50% worse to 50% better
TABLE_TAUS = (-0.25, -0.1, -0.05, 0.0, 0.05, 0.1)  # the table's
SCORE_PROFILE_IMAGE = "score-distribution.png"


def _scores(runs: pd.DataFrame) -> pd.DataFrame:
    """Per run: its problem, optimizer, seed and score relative to AdamW's mean on that problem."""
    runs = runs[runs.recipe == "defaults"]
    rows = []
    for key, g in runs.groupby(PROBLEM, sort=True):
        base = g[(g.optimizer == BASELINE) & (g.status == "complete")]["value"].astype(float)
        mean = float(base.mean()) if len(base) >= stats.MIN_SEEDS else math.nan
        if not math.isfinite(mean) or mean == 0:
            continue
        flip = 1.0 if g.direction.iloc[0] == "min" else -1.0
        counted = g[g.status.isin(["complete", "diverged"])]
        enough = {o for o, c in counted.groupby("optimizer") if c.seed.nunique() >= stats.MIN_SEEDS}
        for r in counted[counted.optimizer.isin(enough)].itertuples():
            value = float(r.value) if r.value is not None and r.status == "complete" else math.nan
            score = flip * (mean - value) / abs(mean) if math.isfinite(value) else DIVERGED_SCORE
            rows.append(
                {
                    "problem": " · ".join(map(str, key)),
                    "optimizer": r.optimizer,
                    "seed": r.seed,
                    "score": score,
                    "value": value,
                }
            )
    return pd.DataFrame(rows, columns=["problem", "optimizer", "seed", "score", "value"])


def _by_problem(scores: pd.DataFrame, optimizer: str) -> dict[str, list[float]]:
    sel = scores[scores.optimizer == optimizer]
    return {p: list(g.score) for p, g in sel.groupby("problem")}


def _interval(lo: float, hi: float) -> str:
    return "–" if not (math.isfinite(lo) and math.isfinite(hi)) else f"[{fmt(lo, 3)}, {fmt(hi, 3)}]"


def _seeds_needed(scores: pd.DataFrame, optimizer: str) -> list[list[str]]:
    rows = []
    for problem, g in scores.groupby("problem", sort=True):
        mine = g[g.optimizer == optimizer].set_index("seed").score
        base = g[g.optimizer == BASELINE].set_index("seed").score
        shared = sorted(set(mine.index) & set(base.index))
        if optimizer == BASELINE or len(shared) < 2:
            continue
        diffs = (mine.loc[shared] - base.loc[shared]).to_numpy()
        n = robust_stats.seeds_needed(diffs)
        needed = "no difference seen" if n is None and not np.any(diffs) else ("> 10,000" if n is None else str(n))
        rows.append([problem, optimizer, str(len(shared)), fmt(float(np.mean(diffs)), 3), needed])
    return rows


@dataclass(frozen=True)
class Aggregate:
    """One optimizer's scores against AdamW pooled over the problems both ran: IQM and P(improvement)."""

    optimizer: str
    problems: int
    runs: int
    iqm: float
    iqm_lo: float
    iqm_hi: float
    poi: float
    poi_lo: float
    poi_hi: float

    @property
    def verdict(self) -> str:
        """'better' or 'worse' only when neither CI holds the no-difference value (0, or 0.5)."""
        if (self.iqm_lo <= 0 <= self.iqm_hi) or (self.poi_lo <= 0.5 <= self.poi_hi):
            return "cannot tell from AdamW"
        return "better" if self.iqm > 0 else "worse"


def _has_baseline(scores: pd.DataFrame) -> bool:
    """Whether some problem has AdamW's runs to score against (else the section has nothing to say)."""
    return not scores.empty and BASELINE in set(scores.optimizer)


def aggregates(runs: pd.DataFrame) -> list[Aggregate]:
    """Every optimizer's Aggregate, best IQM first (none when no problem has an AdamW baseline)."""
    return _aggregates(_scores(runs))


def _aggregates(scores: pd.DataFrame) -> list[Aggregate]:
    if not _has_baseline(scores):
        return []
    base = _by_problem(scores, BASELINE)
    out = []
    for optimizer in sorted(set(scores.optimizer) - {BASELINE}):
        shared = {p: v for p, v in _by_problem(scores, optimizer).items() if p in base}
        if not shared:
            continue
        point, lo, hi = robust_stats.stratified_bootstrap_ci(shared)
        poi, plo, phi = robust_stats.probability_of_improvement(shared, {p: base[p] for p in shared})
        out.append(
            Aggregate(optimizer, len(shared), sum(len(v) for v in shared.values()), point, lo, hi, poi, plo, phi)
        )
    return sorted(out, key=lambda a: (-a.iqm, a.optimizer))


def _profiles(scores: pd.DataFrame, taus: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    if not _has_baseline(scores):
        return {}
    return {o: robust_stats.score_distribution(_by_problem(scores, o), taus) for o in sorted(set(scores.optimizer))}


def profiles(
    runs: pd.DataFrame, taus: np.ndarray = PROFILE_TAUS
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per optimizer (AdamW included): (fraction of runs scoring above each tau, CI low, CI high) over
    the problems it ran; empty when no problem has an AdamW baseline."""
    return _profiles(_scores(runs), taus)


def _profile_rows(scores: pd.DataFrame, order: list[str]) -> list[list[str]]:
    table = _profiles(scores, np.asarray(TABLE_TAUS))
    problems = scores.groupby("optimizer").problem.nunique()
    return [
        [o, str(problems[o])] + [f"{point:.2f} [{low:.2f}, {high:.2f}]" for point, low, high in zip(*table[o])]
        for o in order
        if o in table
    ]


def blocks(runs: pd.DataFrame, images: set[str] | None = None) -> list[Block]:
    """The section, or nothing when no problem has an AdamW baseline at defaults; `images` names the
    figures that exist (the score distribution is linked only if drawn)."""
    scores = _scores(runs)
    aggs = _aggregates(scores)
    rows = [
        [
            a.optimizer,
            str(a.problems),
            str(a.runs),
            fmt(a.iqm, 3),
            _interval(a.iqm_lo, a.iqm_hi),
            fmt(a.poi, 3),
            _interval(a.poi_lo, a.poi_hi),
            a.verdict,
        ]
        for a in aggs
    ]
    seed_rows = [row for a in sorted(aggs, key=lambda a: a.optimizer) for row in _seeds_needed(scores, a.optimizer)]
    if not rows:
        return []
    out = [
        Block("h2", "Robust aggregates across tasks (vs AdamW, defaults only)"),
        Block(
            "p",
            "Score = improvement over AdamW's mean on the same problem (0.05 = 5% better; a "
            "diverged run scores -1). IQM and its 95% stratified bootstrap CI over all runs, and "
            "P(a run beats one of AdamW's) with its CI (Agarwal et al. 2021), best IQM first. Where a CI "
            "contains 0 (or 0.5), the data cannot separate the optimizer from AdamW. A problem enters only "
            f"where AdamW and the optimizer each have {stats.MIN_SEEDS}+ seeds.",
        ),
        Block(
            "table",
            table=Table(
                ["optimizer", "problems", "runs", "IQM score", "95% CI", "P(better)", "95% CI", "verdict"], rows
            ),
        ),
    ]
    out += [
        Block(
            "p",
            "Performance profile (rliable's score distribution): the fraction of an optimizer's runs whose "
            "score exceeds τ, taken per problem and averaged over the problems it ran, with its 95% "
            "stratified bootstrap CI. A curve above another over a range of τ is better there; where the "
            "bands overlap the data cannot order them. AdamW's own runs score around 0.",
        ),
        Block(
            "table",
            table=Table(
                ["optimizer", "problems", *[f"τ={fmt(t, 3)}" for t in TABLE_TAUS]],
                _profile_rows(scores, [BASELINE] + [a.optimizer for a in aggs]),
            ),
        ),
        *([Block("img", SCORE_PROFILE_IMAGE)] if SCORE_PROFILE_IMAGE in (images or set()) else []),
    ]
    if seed_rows:
        out += [
            Block(
                "p",
                "Shared seeds a paired t-test needs to resolve the observed mean score difference "
                "from AdamW at 80% power (alpha 0.05), per problem:",
            ),
            Block(
                "table",
                table=Table(["problem", "optimizer", "shared seeds", "mean difference", "seeds needed"], seed_rows),
            ),
        ]
    return out
