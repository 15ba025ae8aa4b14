"""RunSpec identity: the run_id is stable and depends on meaning, not spelling or order."""

from spam_bench.suite.resolve import resolve
from spam_bench.suite.spec import RunSpec
from spam_bench.suite.sweep import expand


def test_run_id_ignores_argument_order_and_number_spelling():
    a = resolve(task="llm", optimizer="adamw", sets={"lr": "1e-3", "steps": "20"})
    b = resolve(task="llm", optimizer="adamw", sets={"steps": "20", "lr": "0.001"})
    assert a.spec.run_id == b.spec.run_id


def test_run_id_changes_with_seed_optimizer_hparams_and_overrides():
    base = resolve(task="llm", optimizer="adamw", sets={"steps": "20"}).spec.run_id
    assert resolve(task="llm", optimizer="adamw", seed=1, sets={"steps": "20"}).spec.run_id != base
    assert resolve(task="llm", optimizer="adamw", sets={"steps": "21"}).spec.run_id != base
    assert resolve(task="llm", optimizer="adamw", sets={"steps": "20", "opt.beta2": "0.95"}).spec.run_id != base


def test_run_id_is_a_pure_function_of_the_canonical_spec():
    spec = RunSpec(task="llm", optimizer="adamw", seed=3, overrides={"steps": 5}, opt_hparams={"eps": 1e-6})
    assert RunSpec.from_canonical(spec.canonical()).run_id == spec.run_id
    assert spec.run_id.startswith("adamw-s3-tiny-")


def test_unprefixed_optimizer_key_goes_to_the_optimizer():
    run = resolve(task="llm", optimizer="adamw", sets={"beta2": "0.95"})
    assert run.spec.opt_hparams == {"beta2": 0.95} and run.opt_config.beta2 == 0.95


def _scaled(name: str, lr_scale: float):
    import dataclasses

    from spam_bench.suite.registry import OPTIMIZERS

    return dataclasses.replace(OPTIMIZERS.get("adamw"), name=name, lr_scale=lr_scale)


def test_a_declared_lr_scale_moves_only_the_recipe_lr(monkeypatch):
    from spam_bench.suite.registry import OPTIMIZERS

    monkeypatch.setattr(OPTIMIZERS, "_items", {**OPTIMIZERS._items, "adamw_tenth": _scaled("adamw_tenth", 0.1)})
    recipe = resolve(task="llm", optimizer="adamw").config.lr
    scaled = resolve(task="llm", optimizer="adamw_tenth")
    assert scaled.config.lr == recipe * 0.1 and scaled.lr_scale == 0.1
    assert scaled.record()["task_config"]["lr"] == recipe * 0.1 and scaled.record()["lr_scale"] == 0.1
    assert scaled.spec.overrides == {}  # the scale belongs to the optimizer's code, not to the run's settings
    chosen = resolve(task="llm", optimizer="adamw_tenth", sets={"lr": "0.002"})  # an lr the user sets is absolute
    assert chosen.config.lr == 0.002 and chosen.lr_scale == 1.0 and chosen.record()["lr_scale"] == 1.0

    # An LR grid: the value the optimizer has at its defaults (the scaled one) *is* the defaults run;
    # the recipe's own lr is an ordinary hand-set run for this optimizer.
    at_default, at_recipe = expand(
        task="llm", optimizers=["adamw_tenth"], seeds=[0], grid={"lr": [repr(recipe * 0.1), repr(recipe)]}
    )
    assert at_default.spec.run_id == scaled.spec.run_id and at_default.config.lr == recipe * 0.1
    assert at_recipe.spec.overrides == {"lr": recipe} and at_recipe.config.lr == recipe


def test_an_lr_scale_that_is_not_a_positive_finite_number_is_refused_in_one_line():
    import pytest

    from spam_bench.suite.errors import ConfigError

    for bad in (0.0, -1.0, float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(ConfigError) as err:
            _scaled("bad", bad)
        message = str(err.value)
        assert "lr_scale" in message and "finite float > 0" in message and "\n" not in message


def test_a_scale_file_is_read_again_once_edited_and_each_caller_gets_its_own_copy(tmp_path):
    from spam_bench.suite.config import load_yaml

    path = tmp_path / "mine.yaml"
    path.write_text("steps: 5\n")
    first = load_yaml(path)
    first["steps"] = 99  # a caller changing what it got changes nothing for the next one
    assert load_yaml(path) == {"steps": 5}
    path.write_text("steps: 7\nlr: 0.1\n")
    assert load_yaml(path) == {"steps": 7, "lr": 0.1}
