"""`RunContext`: what the suite hands a task's `run`, and everything that must be equal across tasks.

A task asks the context for its optimizer (built through the registry, with the run's instruments
and the one clip rule around it), logs through it, checkpoints through it and reads its stop flag.
The context owns:
- the optimizer's construction (`build_optimizer`), after `resolve` has checked capabilities;
- the instruments (suite/instruments.py), created with the optimizer;
- checkpoints: one file holding the suite's part (instruments, RNG states) and the task's part,
  written atomically by the recorder;
- the run folder: tasks write nothing there themselves; a library that insists on writing files
  (Lightning's checkpoint round trip) gets `scratch`, a private temporary folder;
- what the summary says about the optimizer (state bytes) and the process (peak memory).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from spam_bench.suite.distributed import SINGLE, World
from spam_bench.suite.instruments import Instruments
from spam_bench.suite.interrupt import StopRequest
from spam_bench.suite.model_info import ModelInfo
from spam_bench.suite.phase_clock import PhaseClock
from spam_bench.suite.resolve import ResolvedRun
from spam_bench.suite.results import RunRecorder
from spam_bench.suite.seeding import rng_state, rng_untouched, set_rng_state
from spam_bench.suite.spikes import SAMPLES_RAW
from spam_bench.suite.telemetry import optimizer_state_bytes, peak_memory_bytes


class RunContext:
    def __init__(
        self,
        run: ResolvedRun,
        recorder: RunRecorder | None,
        stop: StopRequest,
        config: Any = None,
        world: World = SINGLE,
    ):
        self.run, self.recorder, self._stop = run, recorder, stop
        self.world = world  # a data-parallel run's processes (suite/distributed.py); rank 0 records
        self.spec, self.config = run.spec, config if config is not None else run.config
        self.seed: int = run.spec.seed
        self.device = torch.device(run.spec.device)
        self.optimizer: torch.optim.Optimizer | None = None
        self.instruments: Instruments | None = None
        self.n_params = 0
        self._suite_state: dict[str, Any] | None = None  # from a checkpoint, until the instruments exist
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        self.clock = PhaseClock()  # where the run's time goes (suite/phase_clock.py)

    # --- the optimizer ---
    def build_optimizer(
        self, model: torch.nn.Module, info: ModelInfo, *, lr: float, step_hooks: bool = False
    ) -> torch.optim.Optimizer:
        """The run's optimizer for `model`, with the instruments and the clip rule around its steps.

        `step_hooks=True` is for libraries that call `optimizer.step()` themselves (SB3): the
        instruments then run as step pre/post hooks. Otherwise the task calls
        `ctx.instruments.before_step()` before and `after_step(loss)` after each step.
        May raise `NotApplicable` (the factory found nothing to act on in this model).
        """
        if self.optimizer is not None:
            raise RuntimeError("a run has one optimizer: build_optimizer was called twice")
        self.optimizer = self.run.make_optimizer(model, info, lr=lr)
        self.n_params = sum(p.numel() for p in model.parameters())
        self.instruments = Instruments(
            model,
            info,
            self.config,
            seed=self.seed,
            optimizer=self.optimizer,
            clip=self.run.clip,
            log=self.log,
            samples_path=self.recorder.dir / SAMPLES_RAW if self.recorder is not None else None,
            clock=self.clock,
        )
        if self._suite_state is not None:
            self.instruments.load_state_dict(self._suite_state["instruments"])
        if step_hooks:
            self.instruments.hook_into(self.optimizer)
        return self.optimizer

    def replica(self, config: Any) -> RunContext:
        """A silent context for a second model trained within the same run (e.g. a clean twin without
        spike injection): the same optimizer spec and clip rule, its own instruments configured by
        `config`, and nothing logged, checkpointed or summarised."""
        return RunContext(self.run, None, self._stop, config)

    def step(self, loss: float, scheduler: Any = None) -> None:
        """One update the suite's way, for loops that own their loop (after `loss.backward()`): the
        instruments and the clip rule, the optimizer's step (skipped on a non-finite loss, which the
        task records as a divergence), zeroed gradients, the scheduler, and the step's telemetry."""
        assert self.optimizer is not None and self.instruments is not None, "build_optimizer first"
        self.instruments.before_step()
        if math.isfinite(loss):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
        self.instruments.after_step(loss)

    def timed(self, phase: str) -> contextlib.AbstractContextManager[None]:
        """Count the time in the block as `phase` ("data" or "forward_backward") in the run's time split."""
        return self.clock.timed(phase)

    # --- files ---
    def log(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        if self.recorder is not None:
            self.recorder.log(step, split, metrics)

    def log_initial(self, split: str, evaluate: Callable[[], Mapping[str, float]]) -> None:
        """Log `evaluate()`'s metrics at step 0, before the first update, on a fresh start.

        Why: an LR study caps every run's final metric at the value before training (Wortsman et
        al. 2023; reports/sensitivity.py), so every task logs its primary metric at step 0. The
        evaluation runs with the global RNGs restored afterwards (seeding.rng_untouched), so the
        training that follows is bit-identical to a run without it; a resumed run skips it (its
        step 0 is already in metrics.jsonl). Its time falls in the time split's "other"."""
        with rng_untouched():
            metrics = evaluate()
        self.log(0, split, metrics)

    @property
    def scratch(self) -> Path:
        """A private temporary folder for files a library insists on writing; removed after the run."""
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="spambench-")
        return Path(self._scratch.name)

    def close(self) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    # --- checkpoints ---
    def save_checkpoint(self, task_state: dict[str, Any], step: int) -> None:
        """One checkpoint: the suite's part (instruments, RNG) and the task's part, atomically.

        `step` is the task's progress in the unit its evaluations are logged in (for schedulers)."""
        if self.recorder is None:  # a replica keeps nothing
            return
        suite = {"instruments": self.instruments.state_dict() if self.instruments else None, "rng": rng_state()}
        self.recorder.save_checkpoint({"suite": suite, "task": task_state}, step)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The task's part of the last checkpoint (None: start from scratch); restores the suite's part.

        RNG states are restored here, so a task calls this after building its model and optimizer
        (which consume random numbers) and before training, exactly where it saved.
        """
        state = self.recorder.load_checkpoint() if self.recorder is not None else None
        if self.world.active:  # rank 0 read (or set aside) the checkpoint: every rank resumes from it
            state = self.world.broadcast(state)
        if state is None:
            return None
        self._suite_state = state["suite"]
        if self.instruments is not None and self._suite_state["instruments"] is not None:
            self.instruments.load_state_dict(self._suite_state["instruments"])
        set_rng_state(self._suite_state["rng"])
        return state["task"]

    # --- control ---
    @property
    def stop_requested(self) -> bool:
        """Ctrl-C was pressed: checkpoint at the next boundary, then `raise KeyboardInterrupt`."""
        return self._stop.requested

    def progress(self, total: int, initial: int = 0, unit: str = "step") -> Any:
        # One bar per run: rank 0's. `disable` is passed only to turn a bar off, so that tqdm's own
        # TQDM_DISABLE (read for arguments left unset) still works.
        off: dict[str, Any] = {} if self.world.is_main else {"disable": True}
        return tqdm(
            total=total,
            initial=initial,
            unit=unit,
            dynamic_ncols=True,
            mininterval=1.0,
            desc=f"{self.spec.task} {self.spec.optimizer}",
            **off,
        )

    # --- for the summary ---
    def measurements(self) -> dict[str, Any]:
        """What the suite measures the same way on every task."""
        out: dict[str, Any] = {
            "optimizer_state_bytes": optimizer_state_bytes(self.optimizer) if self.optimizer else 0,
            "peak_memory_bytes": peak_memory_bytes(self.device),
            "n_params": self.n_params,
            **self.run.clip.record(),
            "time_split_s": self.clock.split(),
            "world_size": self.world.size,
        }
        if self.instruments is not None and self.recorder is not None:
            out.update(self.instruments.summary(self.recorder.dir))
        return out
