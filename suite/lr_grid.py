"""`--lrs` of `spambench sensitivity`: the learning rates of an LR-sensitivity study.

`A..B:N` is N log-spaced values from A to B inclusive, each rounded to LR_DIGITS significant digits
(1e-4..1e-1:7 -> 0.0001, 0.000316, 0.001, 0.00316, 0.01, 0.0316, 0.1); a comma list (1e-3,3e-3,1e-2)
is taken as written. Either way: positive finite floats, between MIN_LRS and MAX_LRS distinct values,
returned ascending. A bad value is a one-line ConfigError naming `lrs`, the value and what is allowed.
"""

from __future__ import annotations

import math
import re

from spam_bench.suite.errors import ConfigError

MIN_LRS, MAX_LRS = 2, 50
LR_DIGITS = 3  # significant digits of a log-spaced lr (readable run names and table cells)
LRS_ALLOWED = (
    f"A..B:N (N log-spaced lrs from A to B inclusive, 0 < A < B, {MIN_LRS} <= N <= {MAX_LRS}) "
    f"or a comma list of {MIN_LRS} to {MAX_LRS} lrs > 0, e.g. 1e-4..1e-1:7 or 1e-3,3e-3,1e-2"
)
_RANGE = re.compile(r"\s*([^.:,\s][^:,\s]*?)\s*\.\.\s*([^.:,\s][^:,\s]*)\s*:\s*([^:,\s]+)\s*")


def _lr(text: str, whole: str) -> float:
    """One lr: a finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        raise ConfigError("lrs", whole, f"lrs that are numbers ({text.strip()!r} is not); {LRS_ALLOWED}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError("lrs", whole, f"finite lrs > 0 ({text.strip()} is not)")
    return value


def log_spaced(lo: float, hi: float, n: int, digits: int = LR_DIGITS) -> list[float]:
    """n values from lo to hi inclusive, evenly spaced in log, each rounded to `digits` significant digits."""
    step = (math.log10(hi) - math.log10(lo)) / (n - 1)
    return [float(f"{10 ** (math.log10(lo) + i * step):.{digits}g}") for i in range(n)]


def parse_lrs(text: str) -> list[float]:
    """`--lrs` -> the learning rates, ascending (see the module's docstring)."""
    whole = str(text)
    m = _RANGE.fullmatch(whole)
    if m:
        lo, hi = _lr(m.group(1), whole), _lr(m.group(2), whole)
        try:
            n = int(m.group(3))
        except ValueError:
            raise ConfigError(
                "lrs", whole, f"an int N between {MIN_LRS} and {MAX_LRS} in A..B:N (the number of lrs)"
            ) from None
        if not MIN_LRS <= n <= MAX_LRS:
            raise ConfigError("lrs", whole, f"N between {MIN_LRS} and {MAX_LRS} in A..B:N (the number of lrs)")
        if not lo < hi:
            raise ConfigError("lrs", whole, "A < B in A..B:N (from the smallest lr to the largest)")
        try:
            lrs = log_spaced(lo, hi, n)
        except OverflowError:  # B within rounding of the largest float
            lrs = [math.inf]
        if not all(math.isfinite(x) and x > 0 for x in lrs):  # B near the largest float rounds up to inf
            raise ConfigError("lrs", whole, f"lrs that stay finite at {LR_DIGITS} significant digits")
        if len(set(lrs)) < n:
            raise ConfigError(
                "lrs", whole, f"{n} lrs that stay distinct at {LR_DIGITS} significant digits (a wider range or fewer)"
            )
        return lrs
    if ".." in whole or ":" in whole:
        raise ConfigError("lrs", whole, LRS_ALLOWED)
    parts = whole.split(",")
    if not all(p.strip() for p in parts):
        raise ConfigError("lrs", whole, "a comma list with no empty values, e.g. 1e-3,3e-3,1e-2")
    lrs = [_lr(p, whole) for p in parts]
    if not MIN_LRS <= len(lrs) <= MAX_LRS:
        raise ConfigError("lrs", whole, f"{MIN_LRS} to {MAX_LRS} lrs ({len(lrs)} given), or A..B:N")
    if len(set(lrs)) < len(lrs):
        twice = next(x for x in lrs if lrs.count(x) > 1)
        raise ConfigError("lrs", whole, f"each lr once ({twice:g} is listed twice)")
    return sorted(lrs)
