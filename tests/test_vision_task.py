"""The vision task on the bundled digits: training through the run contract, determinism, resume, divergence."""

import sys
import types

import numpy as np
import pytest
import torch

from spam_bench.runners.cli import main
from spam_bench.suite.config import build_config
from spam_bench.suite.errors import ConfigError
from spam_bench.suite.results import read_json, read_metrics
from spam_bench.tasks.vision import TASK
from spam_bench.tasks.vision.config import VisionConfig
from spam_bench.tasks.vision.data import Batches, load_cifar10, load_digits, random_crop
from spam_bench.tasks.vision.model import ResNet, model_info

pytestmark = pytest.mark.slow  # end-to-end runs: `make test` runs them, `make test-fast` skips them

pytest.importorskip("sklearn", reason="the vision task's tiny scale needs scikit-learn (the [vision] extra)")

# A ~10k-parameter ResNet that learns the digits in a few seconds on one thread.
SMALL = {
    "width": "8",
    "blocks": "1,1",
    "steps": "100",
    "batch_size": "32",
    "lr": "1e-2",
    "lr_warmup_steps": "5",
    "eval_every": "25",
    "checkpoint_every": "5",
    "threads": "1",
}


def small_sets(**changes: object) -> list[str]:
    return [f"{k}={v}" for k, v in {**SMALL, **{k: str(v) for k, v in changes.items()}}.items()]


def _argv(out_dir, sets, opt="adamw", extra=()):
    argv = ["run", "--task", "vision", "--opt", opt, "--out", str(out_dir), *extra]
    for s in sets:
        argv += ["--set", s]
    return argv


def _run(out_dir, *sets, opt="adamw"):
    return main(_argv(out_dir, sets, opt))


def _only_run_dir(out_dir):
    (run_dir,) = (out_dir / "runs" / "vision").iterdir()
    return run_dir


def _curve(run_dir):
    return [(m["step"], m["split"], m["name"], m["value"]) for m in read_metrics(run_dir)]


def test_a_small_run_learns_and_the_summary_carries_the_suites_measurements(out_dir):
    assert _run(out_dir, *small_sets()) == 0
    run_dir = _only_run_dir(out_dir)
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "complete" and summary["steps"] == 100
    assert summary["primary_metric"] == "test_acc" and summary["direction"] == "max"
    assert summary["value"] > 0.5  # chance is 0.1
    assert 0 < summary["test_loss"] < 2.3 and summary["train_samples_per_s"] > 0
    for key in ("grad_clip", "spike_events", "optimizer_state_bytes", "n_params", "peak_memory_bytes"):
        assert key in summary
    assert summary["optimizer_state_bytes"] >= 2 * 4 * summary["n_params"]  # AdamW: m and v in fp32
    curve = _curve(run_dir)
    accs = [(step, v) for step, split, name, v in curve if (split, name) == ("test", "acc")]
    assert [step for step, _ in accs] == [0, 25, 50, 75, 100] and accs[-1][1] == summary["value"]
    losses = [v for _, split, name, v in curve if (split, name) == ("train", "loss")]
    assert len(losses) == 100 and sum(losses[-10:]) < sum(losses[:10]) / 2


def test_the_same_spec_twice_gives_identical_metrics(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run(a, *small_sets(steps=30)) == 0 and _run(b, *small_sets(steps=30)) == 0
    ra, rb = _only_run_dir(a), _only_run_dir(b)
    sa, sb = read_json(ra / "summary.json"), read_json(rb / "summary.json")
    assert (sa["value"], sa["test_loss"]) == (sb["value"], sb["test_loss"])
    assert _curve(ra) == _curve(rb)


def test_a_diverging_learning_rate_is_recorded_as_diverged_not_a_crash(out_dir):
    # 1e30, not 1e6: BatchNorm makes the convolutions scale-invariant, so lr 1e6 leaves a finite loss
    # (and chance accuracy) rather than a non-finite one.
    assert _run(out_dir, *small_sets(lr=1e30, lr_warmup_steps=0)) == 0
    summary = read_json(_only_run_dir(out_dir) / "summary.json")
    assert summary["status"] == "diverged" and summary["value"] is None
    assert 1 <= summary["diverged_step"] <= 100


def test_an_optimizer_with_nothing_to_act_on_is_not_applicable(out_dir):
    # GaLore projects 2-D attention/MLP matrices; a CNN's are 4-D kernels and its 2-D head is `output`.
    assert _run(out_dir, *small_sets(steps=10), opt="galore") == 0
    assert read_json(_only_run_dir(out_dir) / "summary.json")["status"] == "not_applicable"


def test_batches_depend_only_on_seed_and_step():
    data = load_digits(0.2)
    config = build_config(VisionConfig, {"batch_size": 32})
    walked = Batches(data, config, seed=3)
    seq = [walked.batch(s) for s in range(50)]  # crosses the epoch boundary at 44
    for step in (0, 43, 44, 49):
        x, y = Batches(data, config, seed=3).batch(step)
        assert torch.equal(x, seq[step][0]) and torch.equal(y, seq[step][1])
    assert not torch.equal(Batches(data, config, seed=4).batch(0)[1], seq[0][1])


def test_random_crop_shifts_with_zero_padding():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(random_crop(x, torch.tensor([[1, 1]]), 1), x)  # centred: the image itself
    shifted = random_crop(x, torch.tensor([[0, 2]]), 1)  # one row down, one column left
    assert torch.equal(shifted[0, 0, 1:, :3], x[0, 0, :3, 1:]) and shifted[0, 0, 0].eq(0).all()


def test_resnet18_shape_and_roles():
    model = ResNet(3, 10, width=64, blocks=(2, 2, 2, 2))
    assert sum(p.numel() for p in model.parameters()) == 11_173_962  # the standard CIFAR ResNet-18
    roles = model_info(model).roles
    assert roles["conv1.weight"] == "mlp" and roles["layers.2.shortcut.0.weight"] == "mlp"
    assert roles["bn1.weight"] == roles["layers.0.bn2.bias"] == "norm"
    assert (roles["fc.weight"], roles["fc.bias"]) == ("output", "bias")
    assert set(roles) == {n for n, _ in model.named_parameters()}


def test_config_rejects_flipped_digits_and_both_scales_parse():
    with pytest.raises(ConfigError, match="flip"):
        build_config(VisionConfig, {"flip": True})
    for scale in TASK.scales():
        build_config(VisionConfig, TASK.scale_values(scale))
    assert build_config(VisionConfig, TASK.scale_values("paper")).dataset == "cifar10"


def test_cifar10_without_torchvision_is_one_line(out_dir, capsys):
    try:
        import torchvision  # noqa: F401

        pytest.skip("torchvision imports here: the paper scale would download CIFAR-10")
    except Exception:
        pass
    assert main(["run", "--task", "vision", "--scale", "paper", "--opt", "adamw", "--out", str(out_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "dataset: invalid value 'cifar10'" in err and "torchvision" in err


def test_the_cifar10_loader_and_augmentation_on_a_stand_in_for_torchvision(tmp_path, monkeypatch):
    """torchvision cannot import beside this torch: a stand-in with CIFAR10's documented attributes
    (.data (N, 32, 32, 3) uint8, .targets a list) runs the paper scale's loading and augmentation code."""

    class CIFAR10:
        def __init__(self, root, train, download):
            n = 64 if train else 16
            self.data = np.random.default_rng(int(train)).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
            self.targets = [i % 10 for i in range(n)]

    tv = types.ModuleType("torchvision")
    tv.datasets = types.SimpleNamespace(CIFAR10=CIFAR10)
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", tv.datasets)
    data = load_cifar10(str(tmp_path))
    assert data.train_x.shape == (64, 3, 32, 32) and data.test_y.tolist()[:3] == [0, 1, 2]
    assert torch.equal(data.train_x[5, :, 7, 9], torch.from_numpy(CIFAR10("", True, False).data[5, 7, 9]))
    config = build_config(VisionConfig, {"dataset": "cifar10", "crop_padding": 4, "flip": True, "batch_size": 16})
    x, y = Batches(data, config, seed=0).batch(5)
    assert x.shape == (16, 3, 32, 32) and y.shape == (16,)
    assert abs(float(data.normalize(data.train_x).mean())) < 1e-4  # standardised by the train split
