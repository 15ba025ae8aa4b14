"""RunSpec identity: the run_id is stable and depends on meaning, not spelling or order."""

from spam_bench.suite.resolve import resolve
from spam_bench.suite.spec import RunSpec


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
