"""Property-based: whatever the command line says, the suite either resolves it or refuses it in one
line (ConfigError), and nothing touches the disk before that decision.

Hypothesis generates `--set` keys (real task and optimizer fields, near misses, noise) and values
(numbers in every spelling, other scripts' digits, text), seeds, devices and `--out` paths. Tasks
whose configs build in microseconds (spikes, llm) keep 200 examples to a few seconds.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from spam_bench.runners import local
from spam_bench.runners.cli import main
from spam_bench.suite.errors import ConfigError
from spam_bench.suite.registry import OPTIMIZERS, TASKS
from spam_bench.suite.resolve import ResolvedRun, resolve

TASK_NAMES = ("spikes", "llm")
OPT_NAMES = ("adamw", "spam")
FIELDS = sorted(
    {f.name for t in TASK_NAMES for f in dataclasses.fields(TASKS.get(t).config_cls)}
    | {f"opt.{f.name}" for o in OPT_NAMES for f in dataclasses.fields(OPTIMIZERS.get(o).config_cls)}
)
# Text without lone surrogates (a real argv decodes undecodable bytes to those, and Python's stderr
# escapes them; capsys's buffer would not).
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
NUMBER_TEXT = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["٣", "1_0", "0x10", "1e3", " 7 ", "+3", "-0", "nan", "inf", "None", "true", "", "9" * 5000]),
)
VALUES = st.one_of(NUMBER_TEXT, TEXT, st.sampled_from(["c4", "bpe", "t5-base", "../x", "/nonexistent", "logistic"]))


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """`good` 4 times in 5: most examples get past the first field, so later ones are exercised too."""
    # Hypothesis favours an integer range's ends (0 and 4), so the bad branch sits in the middle.
    return st.tuples(st.integers(0, 4), good, bad).map(lambda t: t[2] if t[0] == 3 else t[1])


KEYS = mostly(st.sampled_from(FIELDS), st.one_of(TEXT, st.sampled_from(FIELDS).map(lambda k: k.upper())))
SEEDS = mostly(st.integers(0, 2**32 - 1).map(str), st.one_of(st.integers(-5, 2**33).map(str), NUMBER_TEXT, TEXT))
DEVICES = mostly(
    st.just("cpu"), st.one_of(st.sampled_from(["cuda", "cuda:0", "cuda:99", "cpu\n", "cuda:٣", " cpu", "CPU"]), TEXT)
)
SETS = st.lists(st.tuples(KEYS, VALUES), max_size=4)


def _one_line(err: ConfigError) -> None:
    assert "\n" not in str(err) and str(err).startswith(f"{err.field}: invalid value ")


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*"))


@settings(max_examples=200, deadline=None)
@given(task=st.sampled_from(TASK_NAMES), opt=st.sampled_from(OPT_NAMES), seed=SEEDS, sets=SETS, device=DEVICES)
def test_resolve_either_resolves_or_refuses_in_one_line_and_writes_nothing(task, opt, seed, sets, device):
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        try:
            run = resolve(task=task, optimizer=opt, seed=seed, sets=dict(sets), device=device)
        except ConfigError as err:
            _one_line(err)
            event(f"refused: {err.field}"[:40])
        else:
            event("resolved")
            assert isinstance(run, ResolvedRun) and 0 <= run.spec.seed < 2**32
            assert run.spec.device in ("cpu", "cuda") or run.spec.device.startswith("cuda:")
        assert _files(Path(tmp)) == []


class _Resolved(Exception):
    """Raised by the stand-in for `execute`: the command line was accepted, nothing was run."""


OUT_PATHS = st.one_of(
    st.sampled_from(["out", "~/out", "a-file", "a-file/sub", "/proc/sb", "/sys/sb", "x" * 300, "~nouser-sb/x", "."]),
    TEXT.map(lambda t: "p" + t),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    task=st.sampled_from(TASK_NAMES),
    opt=mostly(st.sampled_from(OPT_NAMES), TEXT),
    seed=SEEDS,
    sets=st.lists(st.tuples(KEYS, VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"), max_size=4),
    device=DEVICES,
    out=OUT_PATHS,
)
def test_the_cli_accepts_or_refuses_in_one_line_and_touches_nothing(task, opt, seed, sets, device, out):
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        root = Path(tmp)
        (root / "home").mkdir()
        (root / "a-file").write_text("a file, not a folder\n")
        before = _files(root)
        mp.chdir(root)
        mp.setenv("HOME", str(root / "home"))
        mp.delenv("SPAMBENCH_OUT", raising=False)

        def accepted(*args, **kwargs):
            raise _Resolved

        mp.setattr(local, "execute", accepted)
        argv = ["run", f"--task={task}", f"--opt={opt}", f"--seed={seed}", f"--device={device}", f"--out={out}"]
        argv += [f"--set={s}" for s in sets]
        err = _run(argv)
        assert _files(root) == before, "nothing may be written before a run is accepted"
        if err is not None:
            assert err.count("\n") == 1 and err.startswith("spambench: error: "), err


def _run(argv: list[str]) -> str | None:
    """None if `main` accepted argv (reached `execute`), else what it printed on stderr."""
    import contextlib
    import io

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
    except _Resolved:
        event("accepted")
        return None
    except SystemExit as stop:  # argparse's one-line usage error
        code = stop.code
    assert code == 2
    event("refused: " + stderr.getvalue().partition(": error: ")[2].partition(":")[0][:30])
    assert "Traceback" not in stderr.getvalue()
    return stderr.getvalue()


@settings(max_examples=200, deadline=None)
@given(
    seeds=mostly(
        st.lists(st.integers(0, 20), min_size=1, max_size=3, unique=True).map(lambda xs: ",".join(map(str, xs))),
        st.one_of(
            st.lists(st.integers(0, 2**33), min_size=1, max_size=4).map(lambda xs: ",".join(map(str, xs))),
            st.tuples(st.integers(0, 2**33), st.integers(0, 2**33)).map(lambda ab: f"{ab[0]}-{ab[1]}"),
            NUMBER_TEXT,
            TEXT,
        ),
    ),
    opts=mostly(
        st.permutations(OPT_NAMES).map(",".join),
        st.lists(st.sampled_from([*OPT_NAMES, "nope", ""]), min_size=1, max_size=3).map(",".join),
    ),
    grid=st.lists(st.tuples(KEYS, st.lists(VALUES, min_size=1, max_size=3)), max_size=2),
    cpus=mostly(st.sampled_from(["1", "0.5", "2"]), st.one_of(NUMBER_TEXT, st.sampled_from(["nan", "-1"]))),
)
def test_sweep_flags_are_refused_in_one_line_before_ray_or_accepted(seeds, opts, grid, cpus):
    """Sweeps stop where Ray would start: ray_tune.sweep is replaced, so an accepted sweep runs nothing."""
    from spam_bench.runners import ray_tune

    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        root = Path(tmp)
        mp.chdir(root)

        def accepted(*args, **kwargs):
            raise _Resolved

        mp.setattr(ray_tune, "sweep", accepted)
        argv = ["sweep", "--task=spikes", f"--opt={opts}", f"--seeds={seeds}", f"--cpus-per-trial={cpus}"]
        argv += [f"--grid={k}={','.join(v)}" for k, v in grid] + ["--out=out"]
        err = _run(argv)
        assert not (root / "out").exists() or os.listdir(root / "out") == []
        if err is not None:
            assert err.count("\n") == 1 and err.startswith("spambench: error: "), err
