"""leaderboard.html renders offline in headless Chromium, showing the tables and the embedded plots.

Needs Debian's `chromium` package (.ci/run installs it); the test installs nothing and skips without it.
"""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import CHROMIUM, run_chromium

from spam_bench.reports.build import write_leaderboard

pytestmark = pytest.mark.slow  # end-to-end runs: `make test` runs them, `make test-fast` skips them

FIXTURE = Path(__file__).parent / "fixtures" / "report_runs" / "runs"
BEST_ROW = np.array([227, 244, 225])  # tr.best background (#e3f4e1) in reports/html.py
PLOT_BLUE = np.array([31, 119, 180])  # matplotlib's first colour: the first optimizer's markers and lines


def _near(pixels: np.ndarray, rgb: np.ndarray, tol: int = 6) -> int:
    return int((np.abs(pixels - rgb).max(axis=-1) <= tol).sum())


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not found (Debian: apt-get install chromium; .ci/run installs it)"
)
def test_html_page_renders_tables_and_plots_in_headless_chromium(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "runs")
    _, report_dir = write_leaderboard(tmp_path, all_code=True)
    page = (report_dir / "leaderboard.html").read_text()
    # 7 figures of the fixture's problems and profiles, and the robust section's score distribution
    assert page.count("<table>") >= 5 and page.count('src="data:image/png;base64,') == 8
    assert not re.search(r"(src|href)=[\"']?(https?:|//|file:)", page)  # self-contained: nothing to fetch

    shot = tmp_path / "shot.png"
    proc = run_chromium(
        report_dir / "leaderboard.html", tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2000"
    )
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]

    import matplotlib.image

    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).round().astype(int)
    assert pixels.shape[:2] == (2000, 1280)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # text, tables and figures, not a blank page
    assert _near(pixels, BEST_ROW) > 2000  # the highlighted best rows of the tables were laid out
    assert _near(pixels, PLOT_BLUE, tol=10) > 200  # the embedded figures were decoded and drawn
