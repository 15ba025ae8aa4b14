"""LR sensitivity (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training
instabilities", arXiv 2309.14322): how much an optimizer's final metric depends on the learning rate.

An *LR study* is the runs of one task, scale and problem (reports/summary.py) and one optimizer with
the same opt.* values that differ only in their learning rate (the effective lr, leaderboard.effective_lr),
at MIN_LRS or more learning rates; `spambench sensitivity` makes them. Everything is computed on the
loss l = sign * value (reports/stats.sign), so a higher-is-better metric is mirrored, and reported back
in the metric's own units:

- cap (Wortsman's "initial loss"): the mean of the primary metric at step 0 (before training) over
  the problem's study runs. Every task logs it (RunContext.log_initial); runs made by older code
  did not (rl excepted), and for a problem with none of them the cap falls back to the worst finite
  final value of any run in the problem's studies (every optimizer, lr and seed), which the report
  says. That fallback is weak where a metric has no ceiling: a blown-up forecast's MSE can be 1e10
  and still finite, and then it, not the optimizers, sets the sensitivity. One cap per problem,
  shared by its optimizers, so their sensitivities compare.
- capped value of a run: min(l, cap); a diverged run (no finite final value) counts as the cap.
- curve: per lr, the mean of the capped values over its seeds (a seed run twice: its mean), with a
  95% percentile-bootstrap CI (reports/stats.bootstrap_ci).
- LR sensitivity = mean over the lrs tested of the curve - the curve's best (min) value. 0 = every lr
  as good as the best; it is at most |cap - best|. With --lrs A..B:N the lrs are log-spaced, so the
  mean is Wortsman's expectation over a log-uniform lr in [A, B].
- best lr: the lr of the curve's best value (the smaller lr on a tie).
- CIs of a width and a sensitivity, and of one optimizer's minus another's (`differences`): 95%
  percentile bootstrap, each lr's seeds resampled with replacement (each optimizer's independently).
- good range: the contiguous run of tested lrs around the best lr whose curve values are within
  WITHIN_BEST of the best (l <= best + WITHIN_BEST * |best|); width = log10(its highest / lowest lr) in
  decades: 0 when only the best lr qualifies, log10(B / A) when all do. Measured between tested lrs,
  so it is resolved to the grid's spacing.

Pure functions on the runs table of summary.load_runs (and its long table for step-0 values); the
figure is drawn by reports/sensitivity_plot.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence, Set
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from spam_bench.reports import stats
from spam_bench.reports.blocks import Block, Table, fmt
from spam_bench.reports.leaderboard import effective_lr, problem_label, problem_slug

MIN_LRS = 3  # distinct learning rates an optimizer needs for an LR study
WITHIN_BEST = 0.05  # an lr is in the good range when its mean is within 5% of the best lr's
STUDY_KEYS = ["task", "scale", "problem"]
CURVE_RESAMPLES = 2000  # bootstrap resamples behind the CIs of a width and an LR sensitivity
CAP_STEP0 = "the mean {metric} at step 0 (before training)"
CAP_WORST = "the worst finite final {metric} of any run in this study (no step-0 value logged)"
_EVAL_SKIP = ("train", "optim", "final")  # per-step and final splits: not an evaluation at step 0


# ---------------------------------------------------------------------------------------------- the math
def capped(losses: ArrayLike, cap: float) -> np.ndarray:
    """min(loss, cap) per value; a NaN or infinite loss (a diverged run) counts as the cap."""
    x = np.asarray(losses, dtype=float)
    return np.where(np.isfinite(x), np.minimum(x, cap), cap)


def lr_sensitivity(curve: ArrayLike) -> float:
    """Mean over the lrs of the (capped, seed-averaged) loss curve minus its best value; NaN if empty."""
    x = np.asarray(curve, dtype=float)
    if x.size == 0 or not np.isfinite(x).all():
        return math.nan
    return float(x.mean() - x.min())


def best_index(curve: ArrayLike) -> int:
    """Index of the best (lowest loss) point; the first one (the smaller lr) on a tie."""
    return int(np.argmin(np.asarray(curve, dtype=float)))


def good_range(lrs: Sequence[float], curve: ArrayLike, within: float = WITHIN_BEST) -> tuple[float, float]:
    """(lowest, highest) lr of the contiguous run of lrs (sorted ascending) around the best whose loss is
    within `within` of the best: loss <= best + within * |best|."""
    x = np.asarray(curve, dtype=float)
    i = best_index(x)
    bound = x[i] + within * abs(x[i])
    lo = hi = i
    while lo > 0 and x[lo - 1] <= bound:
        lo -= 1
    while hi < len(x) - 1 and x[hi + 1] <= bound:
        hi += 1
    return float(lrs[lo]), float(lrs[hi])


def width_decades(lrs: Sequence[float], curve: ArrayLike, within: float = WITHIN_BEST) -> float:
    """Width of `good_range` in decades of lr: log10(highest / lowest)."""
    lo, hi = good_range(lrs, curve, within)
    return float(math.log10(hi / lo))


def bootstrap_curves(per_lr: Sequence[np.ndarray], resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, lrs) loss curves: at each lr, the mean of its seeds' values drawn with replacement.

    Seeds are resampled within each lr, since each lr's runs are separate runs; every summary of a
    curve (its width, its sensitivity) then gets a percentile CI from the resampled curves."""
    out = np.empty((resamples, len(per_lr)))
    for j, values in enumerate(per_lr):
        v = np.asarray(values, dtype=float)
        out[:, j] = v[rng.integers(0, len(v), size=(resamples, len(v)))].mean(axis=1)
    return out


def _percentiles(x: np.ndarray) -> tuple[float, float]:
    tail = 100 * (1 - stats.CONFIDENCE) / 2
    lo, hi = np.percentile(x, [tail, 100 - tail])
    return float(lo), float(hi)


def _resampled(curve: Curve, rng: np.random.Generator) -> np.ndarray | None:
    """Bootstrap curves of `curve`, or None where an lr has fewer than 2 seeds (no spread to resample)."""
    if not curve.per_lr or min(len(v) for v in curve.per_lr) < 2:
        return None
    return bootstrap_curves(curve.per_lr, CURVE_RESAMPLES, rng)


def _curve_cis(curve: Curve) -> None:
    boots = _resampled(curve, np.random.default_rng(stats.BOOTSTRAP_SEED))
    if boots is None:
        return
    curve.width_ci = _percentiles(np.array([width_decades(curve.lrs, b) for b in boots]))
    curve.sensitivity_ci = _percentiles(np.array([lr_sensitivity(b) for b in boots]))


@dataclass(frozen=True)
class Difference:
    """A curve summary of optimizer A minus B's, with a 95% percentile-bootstrap CI (NaN: not comparable)."""

    value: float
    lo: float
    hi: float

    @property
    def resolved(self) -> bool:
        """Whether the CI excludes 0: the data separate A from B on this summary."""
        return bool(self.lo > 0 or self.hi < 0)


def differences(a: Curve, b: Curve) -> dict[str, Difference]:
    """A's width and LR sensitivity minus B's, each with a bootstrap CI over seeds (each optimizer's seeds
    resampled independently, within each lr). Comparable only on the same lrs, with 2+ seeds at each."""
    nan = Difference(math.nan, math.nan, math.nan)
    if len(a.lrs) != len(b.lrs) or not np.allclose(a.lrs, b.lrs):
        return {"width": nan, "sensitivity": nan}
    rng = np.random.default_rng(stats.BOOTSTRAP_SEED)
    boots_a, boots_b = _resampled(a, rng), _resampled(b, rng)
    if boots_a is None or boots_b is None:
        return {"width": nan, "sensitivity": nan}
    summaries = {"width": lambda c: width_decades(a.lrs, c), "sensitivity": lr_sensitivity}
    points = {"width": a.width - b.width, "sensitivity": a.sensitivity - b.sensitivity}
    out = {}
    for name, summary in summaries.items():
        diff = np.array([summary(x) for x in boots_a]) - np.array([summary(y) for y in boots_b])
        out[name] = Difference(float(points[name]), *_percentiles(diff))
    return out


# ------------------------------------------------------------------------------------- the runs -> studies
@dataclass
class Curve:
    """One optimizer's LR study on one problem: per lr (ascending), in the metric's units."""

    optimizer: str
    opt_hparams: str  # the opt.* values the study holds fixed ("" at defaults)
    lrs: np.ndarray
    mean: np.ndarray  # mean capped value over seeds
    ci_lo: np.ndarray
    ci_hi: np.ndarray
    seeds: np.ndarray  # seeds per lr
    diverged: np.ndarray  # diverged seeds per lr
    sensitivity: float = math.nan  # in the metric's units (>= 0 for either direction)
    best_lr: float = math.nan
    best_value: float = math.nan
    good_lo: float = math.nan
    good_hi: float = math.nan
    width: float = math.nan  # decades
    width_ci: tuple[float, float] = (math.nan, math.nan)  # 95% bootstrap CI over seeds
    sensitivity_ci: tuple[float, float] = (math.nan, math.nan)
    per_lr: list[np.ndarray] = field(default_factory=list, repr=False)  # capped loss per seed, per lr

    @property
    def label(self) -> str:
        return self.optimizer + (f" ({self.opt_hparams})" if self.opt_hparams else "")


@dataclass
class Study:
    """The LR studies of one task, scale and problem, under one shared cap."""

    task: str
    scale: str
    problem: str
    metric: str
    direction: str
    cap: float  # in the metric's units
    cap_source: str  # "step 0" or "worst final"
    curves: list[Curve] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return problem_slug(self.task, self.scale, self.problem)

    @property
    def image(self) -> str:
        return f"lr-sensitivity-{self.slug}.png"


def _opt_label(opt_hparams: object) -> str:
    try:
        values = json.loads(opt_hparams) if isinstance(opt_hparams, str) else {}
    except ValueError:
        values = {}
    return ", ".join(f"opt.{k}={v}" for k, v in sorted(values.items())) if isinstance(values, dict) else ""


def study_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that belong to an LR study, with columns `lr` (effective, rounded to 10 significant
    digits so that 1e-3 and 0.001 meet) and `loss` (sign * value; NaN unless complete and finite)."""
    if runs.empty or "status" not in runs:
        return runs.iloc[0:0].assign(lr=[], loss=[])
    runs = runs[runs.status != "not_applicable"]
    lr = [
        effective_lr(c, o)
        for c, o in zip(
            runs.get("task_config", pd.Series("{}", index=runs.index)),
            runs.get("overrides", pd.Series("{}", index=runs.index)),
        )
    ]
    value = pd.to_numeric(runs["value"], errors="coerce").to_numpy(dtype=float)
    sign = np.where(runs["direction"].to_numpy() == "max", -1.0, 1.0)
    ok = (runs["status"].to_numpy() == "complete") & np.isfinite(value)
    runs = runs.assign(
        lr=[float(f"{x:.10g}") if math.isfinite(x) and x > 0 else math.nan for x in lr],
        loss=np.where(ok, sign * value, np.nan),
        opt_hparams=runs.get("opt_hparams", pd.Series("{}", index=runs.index)).fillna("{}"),
    )
    runs = runs[runs["lr"].notna()]
    n_lrs = runs.groupby([*STUDY_KEYS, "optimizer", "opt_hparams"])["lr"].transform("nunique")
    return runs[n_lrs >= MIN_LRS].reset_index(drop=True)


def step0_values(long: pd.DataFrame | None, task: str, run_ids: set[str], metric: str) -> np.ndarray:
    """The primary metric's values at step 0 in evaluation splits (split_name or name = metric) of these runs."""
    if long is None or long.empty:
        return np.empty(0)
    sel = long[(long["task"] == task) & (long["step"] == 0) & long["run_id"].isin(run_ids)]
    if sel.empty:
        return np.empty(0)
    split, name = sel["split"].astype(str), sel["name"].astype(str)
    match = ~split.isin(_EVAL_SKIP) & ((name == metric) | (split + "_" + name == metric))
    values = pd.to_numeric(sel.loc[match, "value"], errors="coerce").to_numpy(dtype=float)
    return values[np.isfinite(values)]


def _curve(g: pd.DataFrame, optimizer: str, opt_hparams: str, cap_loss: float, sign: float) -> Curve:
    lrs: list[float] = []
    means: list[float] = []
    los: list[float] = []
    his: list[float] = []
    seeds: list[int] = []
    diverged: list[int] = []
    per_lr: list[np.ndarray] = []
    for lr, at in g.groupby("lr", sort=True):
        at = at.assign(capped=capped(at["loss"].to_numpy(dtype=float), cap_loss))
        per_seed = at.groupby("seed")["capped"].mean().to_numpy(dtype=float)
        per_lr.append(per_seed)
        lo, hi = stats.bootstrap_ci(per_seed.tolist())
        lrs.append(float(lr))  # type: ignore[arg-type]  # the group key: one of the float lrs
        means.append(float(np.mean(per_seed)))
        # a CI of losses mirrors into a CI of values for a higher-is-better metric
        los.append(lo if sign > 0 else -hi)
        his.append(hi if sign > 0 else -lo)
        seeds.append(len(per_seed))
        diverged.append(int(at["loss"].isna().sum()))
    loss_curve = np.array(means)
    i = best_index(loss_curve)
    good_lo, good_hi = good_range(lrs, loss_curve)
    curve = Curve(
        optimizer=optimizer,
        opt_hparams=_opt_label(opt_hparams),
        lrs=np.array(lrs),
        mean=sign * loss_curve,
        ci_lo=np.array(los),
        ci_hi=np.array(his),
        seeds=np.array(seeds),
        diverged=np.array(diverged),
        sensitivity=lr_sensitivity(loss_curve),
        best_lr=float(lrs[i]),
        best_value=float(sign * loss_curve[i]),
        good_lo=good_lo,
        good_hi=good_hi,
        width=float(math.log10(good_hi / good_lo)),
        per_lr=per_lr,
    )
    _curve_cis(curve)
    return curve


def studies(runs: pd.DataFrame, long: pd.DataFrame | None = None) -> list[Study]:
    """Every problem's LR studies (none when no optimizer has runs at MIN_LRS or more lrs)."""
    sel = study_runs(runs)
    out: list[Study] = []
    if sel.empty:
        return out
    for (task, scale, problem), g in sel.groupby(STUDY_KEYS, sort=True):
        metric, direction = str(g["primary_metric"].iloc[0]), str(g["direction"].iloc[0])
        sign = stats.sign(direction)
        task, scale, problem = str(task), str(scale), str(problem)
        initial = step0_values(long, task, set(g["run_id"]), metric)
        finite = g["loss"].dropna().to_numpy(dtype=float)
        if initial.size:
            cap_loss, source = float(np.mean(sign * initial)), "step 0"
        elif finite.size:
            cap_loss, source = float(finite.max()), "worst final"
        else:  # every run diverged: nothing to measure against
            continue
        study = Study(task, scale, problem, metric, direction, sign * cap_loss, source)
        for (optimizer, opt_hparams), c in g.groupby(["optimizer", "opt_hparams"], sort=True):
            study.curves.append(_curve(c, str(optimizer), str(opt_hparams), cap_loss, sign))
        study.curves.sort(key=lambda c: (c.optimizer, c.opt_hparams))  # at defaults first
        out.append(study)
    return out


# ------------------------------------------------------------------------------------------ the section
def _lr_span(lrs: np.ndarray) -> str:
    return f"{len(lrs)} ({fmt(lrs.min(), 3)}–{fmt(lrs.max(), 3)})"


def _table(study: Study) -> Table:
    better = "lower" if study.direction == "min" else "higher"
    header = [
        "optimizer",
        "lrs tested",
        "seeds",
        "diverged",
        "LR sensitivity (lower is better)",
        "95% CI",
        "best lr",
        f"{study.metric} at best lr ({better} is better)",
        f"lrs within {WITHIN_BEST:.0%} of best",
        "width (decades)",
        "95% CI",
    ]
    rows = [
        [
            c.label,
            _lr_span(c.lrs),
            str(int(c.seeds.max())) if len(c.seeds) else "0",
            f"{int(c.diverged.sum())} of {int(c.seeds.sum())}",
            fmt(c.sensitivity, 3),
            _ci(c.sensitivity_ci, 3),
            fmt(c.best_lr, 3),
            fmt(c.best_value, 4),
            fmt(c.good_lo, 3) if c.good_lo == c.good_hi else f"{fmt(c.good_lo, 3)}–{fmt(c.good_hi, 3)}",
            f"{c.width:.2f}",
            _ci(c.width_ci, 3),
        ]
        for c in study.curves
    ]
    return Table(header, rows)


def _ci(ci: tuple[float, float], digits: int) -> str:
    lo, hi = ci
    return "–" if not (math.isfinite(lo) and math.isfinite(hi)) else f"[{fmt(lo, digits)}, {fmt(hi, digits)}]"


def method_text(study: Study) -> str:
    cap = (CAP_STEP0 if study.cap_source == "step 0" else CAP_WORST).format(metric=study.metric)
    mirrored = "" if study.direction == "min" else " (higher is better here, so min becomes max, mirrored)"
    return (
        f"LR sensitivity (Wortsman et al. 2023, arXiv 2309.14322): the mean over the lrs tested of "
        f"min(final {study.metric}, cap) minus the best such value{mirrored}, per optimizer; a diverged run "
        f"counts at the cap. Cap = {cap} = {fmt(study.cap, 4)}. Each point is the mean over seeds of the capped "
        f"values (band: 95% percentile-bootstrap CI; x = a diverged seed, drawn at the cap). Width = decades of "
        f"lr, between tested lrs, of the contiguous range around the best lr whose mean is within "
        f"{WITHIN_BEST:.0%} of the best. CIs of the width and the sensitivity: 95% percentile bootstrap, seeds "
        f"resampled within each lr ({CURVE_RESAMPLES} resamples; '–' where an lr has fewer than 2 seeds)."
    )


def blocks(found: list[Study], images: Set[str] = frozenset()) -> dict[str, list[Block]]:
    """Per task: the LR-sensitivity sub-sections of its problems (heading, method, figure, table)."""
    out: dict[str, list[Block]] = {}
    for study in found:
        out.setdefault(study.task, []).extend(
            [
                Block("h3", f"LR sensitivity · {problem_label(study.task, study.scale, study.problem)}"),
                Block("p", method_text(study)),
                *([Block("img", study.image)] if study.image in images else []),
                Block("table", table=_table(study)),
            ]
        )
    return out
