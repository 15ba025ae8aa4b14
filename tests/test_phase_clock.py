"""The run's time split: phases add up, nested phases are not counted twice, unknown names refused."""

from __future__ import annotations

import time

import pytest

from spam_bench.suite.phase_clock import PHASES, PhaseClock


def test_a_nested_phase_is_taken_out_of_the_block_around_it():
    clock = PhaseClock()
    with clock.timed("forward_backward"):
        time.sleep(0.06)
        clock.add("optimizer", 0.04)  # what the instruments report from inside a library's update
    split = clock.split()
    assert split["optimizer"] == 0.04
    assert 0.015 < split["forward_backward"] < 0.06  # the block's 0.06 s less the 0.04 s claimed inside
    clock = PhaseClock()
    with clock.timed("forward_backward"):
        with clock.timed("data"):
            time.sleep(0.03)
        time.sleep(0.03)
    split = clock.split()
    assert 0.025 < split["data"] < split["total"] and 0.025 < split["forward_backward"] < split["total"]
    assert split["data"] + split["forward_backward"] <= split["total"]
    assert set(split) == {*PHASES, "other", "total"}


def test_an_unknown_phase_is_refused():
    with pytest.raises(ValueError, match="not one of"), PhaseClock().timed("backward"):
        pass
