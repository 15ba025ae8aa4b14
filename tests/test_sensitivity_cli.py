"""`spambench sensitivity`: `--lrs` and its one-line errors, and a study end to end into the report,
checked in headless Chromium as tests/test_report_html.py checks the page."""

import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import CHROMIUM, run_chromium
from hypothesis import given, settings
from hypothesis import strategies as st

from spam_bench.runners.cli import main
from spam_bench.suite.errors import ConfigError
from spam_bench.suite.lr_grid import parse_lrs
from spam_bench.suite.results import read_json

PARSED = [
    ("1e-4..1e-1:7", [1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2, 3.16e-2, 1e-1]),
    ("1e-3..1e-1:3", [1e-3, 1e-2, 1e-1]),
    (" 1e-3 .. 1e-2 : 2 ", [1e-3, 1e-2]),
    ("1.5e-4..0.1:4", [1.5e-4, 1.31e-3, 1.14e-2, 0.1]),  # rounded to 3 significant digits
    ("0.01,1e-3,3e-3", [1e-3, 3e-3, 1e-2]),  # a comma list: as written, ascending
]

BAD_LRS = [
    ("1e-4..1e-1:1", "lrs: invalid value '1e-4..1e-1:1' (allowed: N between 2 and 50 in A..B:N"),
    ("1e-4..1e-1:51", "(allowed: N between 2 and 50 in A..B:N"),
    ("1e-4..1e-1:x", "(allowed: an int N between 2 and 50 in A..B:N"),
    ("1e-1..1e-4:3", "lrs: invalid value '1e-1..1e-4:3' (allowed: A < B in A..B:N"),
    ("1e-3..1e-3:3", "(allowed: A < B"),
    ("0..1e-1:3", "(allowed: finite lrs > 0 (0 is not))"),
    ("-1e-3..1e-1:3", "(allowed: finite lrs > 0 (-1e-3 is not))"),
    ("1e-4..inf:3", "(allowed: finite lrs > 0 (inf is not))"),
    ("nan,1e-3", "(allowed: finite lrs > 0 (nan is not))"),
    ("1e-4..1e-1", "lrs: invalid value '1e-4..1e-1' (allowed: A..B:N (N log-spaced lrs"),
    ("1e-3", "(allowed: 2 to 50 lrs (1 given), or A..B:N)"),
    ("1e-3,,1e-2", "(allowed: a comma list with no empty values"),
    ("1e-3,abc", "(allowed: lrs that are numbers ('abc' is not)"),
    ("1e-3,0.001", "(allowed: each lr once (0.001 is listed twice))"),
    ("1e-3..1.001e-3:20", "(allowed: 20 lrs that stay distinct at 3 significant digits"),
    ("1e-3..1.797e308:3", "(allowed: lrs that stay finite at 3 significant digits)"),
    ("1.0..1.7976931348622105e+308:2", "(allowed: lrs that stay finite"),  # 10 ** log10(B) overflowed
]


@pytest.mark.parametrize("text,lrs", PARSED)
def test_lrs_parse(text, lrs):
    assert parse_lrs(text) == pytest.approx(lrs, rel=1e-12)


@pytest.mark.parametrize("text,expected", BAD_LRS, ids=[t for t, _ in BAD_LRS])
def test_bad_lrs_are_one_line_exit_2_and_write_nothing(text, expected, out_dir, capsys):
    with pytest.raises(ConfigError):
        parse_lrs(text)
    code = main(["sensitivity", "--task", "spikes", "--opt", "adamw", f"--lrs={text}", "--out", str(out_dir)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("spambench: error: ")
    assert expected in err
    assert not out_dir.exists()


@pytest.mark.parametrize(
    "extra,expected",
    [
        (["--set", "lr=1e-3"], "--set: invalid value 'lr=1e-3' (allowed: no lr: --lrs gives the lrs)"),
        (["--opt", "adamw,nope"], "optimizer: invalid value 'nope'"),
        (["--seeds", "2-1"], "seeds: invalid value '2-1'"),
        (["--set", "steps=0"], "steps: invalid value 0"),
    ],
)
def test_other_bad_input_fails_like_a_sweep_before_ray_starts(extra, expected, out_dir, capsys):
    argv = ["sensitivity", "--task", "spikes", "--scale", "smoke", "--opt", "adamw", "--lrs", "1e-3..1e-1:3"]
    assert main([*argv, *extra, "--out", str(out_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err
    assert not out_dir.exists()


def test_lrs_is_required(out_dir, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sensitivity", "--task", "spikes", "--opt", "adamw", "--out", str(out_dir)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "--lrs" in err
    assert not out_dir.exists()


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(alphabet="0123456789.e-+,: naifx", max_size=24),
        st.builds(
            lambda a, b, n: f"{a}..{b}:{n}",
            st.floats(allow_nan=True, allow_infinity=True),
            st.floats(allow_nan=True, allow_infinity=True),
            st.integers(-3, 60),
        ),
    )
)
def test_any_lrs_text_parses_to_valid_lrs_or_is_a_config_error(text):
    try:
        lrs = parse_lrs(text)
    except ConfigError as err:
        assert str(err).startswith(f"lrs: invalid value {text!r} (allowed: ") and "\n" not in str(err)
        return
    assert 2 <= len(lrs) <= 50 and lrs == sorted(set(lrs))
    assert all(math.isfinite(x) and x > 0 for x in lrs)


def test_an_accepted_study_is_a_sweep_of_the_lr_with_seeds_0_2_by_default(out_dir, monkeypatch, capsys):
    from spam_bench.runners import ray_tune

    swept = []
    monkeypatch.setattr(ray_tune, "sweep", lambda runs, options: swept.extend(runs) or [])
    argv = ["sensitivity", "--task", "spikes", "--scale", "smoke", "--opt", "adamw,spam", "--lrs", "1e-3..1e-1:3"]
    assert main([*argv, "--set", "steps=50", "--out", str(out_dir)]) == 0
    assert "sensitivity: lr in 0.001, 0.01, 0.1 (3 lrs)" in capsys.readouterr().out
    assert sorted((r.spec.optimizer, r.config.lr, r.spec.seed, r.config.steps) for r in swept) == [
        (o, lr, seed, 50) for o in ("adamw", "spam") for lr in (0.001, 0.01, 0.1) for seed in (0, 1, 2)
    ]


def _chromium(page: Path, tmp: Path, *mode: str) -> subprocess.CompletedProcess:
    return run_chromium(page, tmp / "profile", *mode)


def _find(shot: np.ndarray, figure: np.ndarray, tol: int = 8) -> tuple[int, int] | None:
    """Top-left (y, x) where `figure` is drawn pixel for pixel in `shot` (within `tol` per channel), or None.

    Anchored on the figure colour that is rarest in the screenshot: each place it occurs there is a
    candidate, checked on a sample of pixels first and then whole."""
    h, w, _ = figure.shape
    code = lambda img: (img[..., 0] << 16) | (img[..., 1] << 8) | img[..., 2]
    shot_codes, fig_codes = code(shot), code(figure)
    values, counts = np.unique(shot_codes, return_counts=True)
    in_shot = dict(zip(values.tolist(), counts.tolist()))
    rare = min((c for c in np.unique(fig_codes).tolist() if c in in_shot), key=in_shot.__getitem__)
    ay, ax = (int(v[0]) for v in np.nonzero(fig_codes == rare))
    rng = np.random.default_rng(0)
    sample = (rng.integers(0, h, 400), rng.integers(0, w, 400))
    for sy, sx in zip(*np.nonzero(shot_codes == rare)):
        y, x = int(sy) - ay, int(sx) - ax
        if y < 0 or x < 0 or y + h > shot.shape[0] or x + w > shot.shape[1]:
            continue
        region = shot[y : y + h, x : x + w]
        if np.abs(region[sample] - figure[sample]).max() <= tol and np.abs(region - figure).max() <= tol:
            return y, x
    return None


@pytest.mark.slow
def test_a_study_end_to_end_lands_in_the_report_and_renders_in_headless_chromium(tmp_path, capsys):
    out = tmp_path / "out"
    # The command of the docs, without the spikes task's clean twin (a second training per run for its
    # robustness score, which a learning-rate study does not read): it halves the sweep's time.
    argv = ["sensitivity", "--task", "spikes", "--scale", "smoke", "--opt", "adamw,spam", "--lrs", "1e-3..1e-1:3"]
    # Two seeds: the fewest a bootstrap CI band can be drawn from.
    assert main([*argv, "--seeds", "0-1", "--set", "with_clean_twin=false", "--out", str(out)]) == 0
    assert "sensitivity: lr in 0.001, 0.01, 0.1 (3 lrs)" in capsys.readouterr().out
    summaries = [read_json(p) for p in out.glob("runs/spikes/*/summary.json")]
    # lr 0.01 is the spikes task's own: those runs are the defaults runs, with no lr override
    assert len(summaries) == 12 and {s["overrides"].get("lr") for s in summaries} == {0.001, None, 0.1}

    assert main(["report", "--out", str(out)]) == 0
    report = out / "report"
    markdown = (report / "leaderboard.md").read_text()
    # the problem's label names the override: spikes/smoke [with_clean_twin=False]
    section = markdown.split("### LR sensitivity · spikes/smoke [with_clean_twin=False]\n", 1)[1].split("\n## ", 1)[0]
    rows = {r.split(" | ")[0].strip("| "): r.split(" | ") for r in section.splitlines() if r.startswith("| ")}
    for optimizer in ("adamw", "spam"):
        assert rows[optimizer][1:3] == ["3 (0.001–0.1)", "2"]
        assert float(rows[optimizer][4]) >= 0 and float(rows[optimizer][6]) in (0.001, 0.01, 0.1)
    (image,) = re.findall(r"!\[(lr-sensitivity-spikes-smoke-[0-9a-f]{8}\.png)\]\(\1\)", section)
    heading = "<h3>LR sensitivity · spikes/smoke [with_clean_twin=False]</h3>"
    page = report / "leaderboard.html"
    assert heading in page.read_text()

    if CHROMIUM is None:
        pytest.skip("headless Chromium not found (Debian: apt-get install chromium; .ci/run installs it)")
    dom = _chromium(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    parsed = dom.stdout.split(heading, 1)[1].split("<h2>", 1)[0]
    assert f'<img alt="{image}" src="data:image/png;base64,' in parsed
    assert "<td>adamw</td>" in parsed and "<td>spam</td>" in parsed and "LR sensitivity (lower is better)" in parsed

    shot = tmp_path / "shot.png"
    proc = _chromium(page, tmp_path, f"--screenshot={shot}", "--window-size=1280,6000")
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    import matplotlib.image

    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).round().astype(np.int64)
    figure = (matplotlib.image.imread(report / image)[..., :3] * 255).round()
    assert _find(pixels, figure.astype(np.int64)) is not None  # the figure was decoded and laid out whole
