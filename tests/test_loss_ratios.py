"""The loss-ratio evidence (runners/loss_ratios.py) applies the suite's own loss-spike rule."""

import numpy as np

from spam_bench.runners.loss_ratios import ratios
from spam_bench.suite.spikes import LossSpikeDetector


def test_ratios_above_the_factor_are_exactly_the_detectors_loss_spikes():
    rng = np.random.default_rng(0)
    losses = list(4.0 + rng.standard_normal(600) * 0.3)
    for step in (50, 200, 201, 450):  # spikes, one of them two steps long
        losses[step] *= 2.5
    detector = LossSpikeDetector(factor=2.0)
    flagged = [detector.observe(x) for x in losses]
    r = ratios(losses)
    assert len(r) == len(losses) - 10  # judged from the 10th loss on, as the detector
    assert [x > 2.0 for x in r] == flagged[10:]
    assert sum(flagged) == 4
