"""How spiky a run's training loss was: the evidence behind docs/spiky-regime.md.

    python -m spam_bench.runners.loss_ratios OUT [OUT ...]

For every run folder under each results store OUT, one line: the training steps logged, the last
loss, the largest ratio of a step's loss to the median of the previous (up to) 100 losses, and how
many steps exceeded 1.1, 1.25, 1.5 and 2 times that median. The window and the median are the suite's
own loss-spike rule (suite/spikes.py LossSpikeDetector, which counts a spike above
`loss_spike_factor`, 2 by default); the lower thresholds show how close a run came. Reads partial
runs too (metrics.jsonl is append-only), so a search can be read while it runs.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import deque
from pathlib import Path

WINDOW, FIRST = 100, 10  # LossSpikeDetector's window, and the history it needs before judging
THRESHOLDS = (1.1, 1.25, 1.5, 2.0)


def ratios(losses: list[float]) -> list[float]:
    """Each loss over the median of the previous WINDOW losses, from the FIRST-th step on."""
    history: deque[float] = deque(maxlen=WINDOW)
    out = []
    for loss in losses:
        if len(history) >= FIRST:
            out.append(loss / statistics.median(history))
        history.append(loss)
    return out


def train_losses(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.jsonl") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return [float(r["value"]) for r in rows if r.get("split") == "train" and r.get("name") == "loss"]


def describe(run_dir: Path) -> str:
    losses = train_losses(run_dir)
    r = ratios(losses)
    over = " ".join(f">{t:g}: {sum(x > t for x in r)}" for t in THRESHOLDS)
    last = f"{losses[-1]:.3f}" if losses else "-"
    return f"{run_dir.parent.name}/{run_dir.name}: {len(losses)} steps, last loss {last}, max ratio {max(r, default=float('nan')):.3f}, {over}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    for out in args:
        for metrics in sorted(Path(out).glob("runs/*/*/metrics.jsonl")):
            print(describe(metrics.parent))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
