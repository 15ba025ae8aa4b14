"""Train PPO with any registered optimizer, evaluate it, and checkpoint at rollout boundaries.

SB3's `learn()` runs the loop. A callback marks each rollout boundary (after an update, before the
next rollout), where this module logs the update's statistics, evaluates when due and checkpoints
when due: the policy, the optimizer state, VecNormalize's statistics, the training envs' full
simulator state, PPO's counters and last observation, and every RNG. A run resumed from a boundary
is therefore bit-identical on CPU to one that never stopped.

A checkpoint holds tensors and plain data only (it is loaded with a weights-only unpickler, see
suite/results.py), so the env snapshot's two library objects are stored as arrays and numbers:
MuJoCo's MjData as its model-sized arrays, VecNormalize's RunningMeanStd as mean, var and count.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import mujoco
import numpy as np
import torch
from mujoco.introspect import mjxmacro
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import VecEnv

from spam_bench.suite.context import RunContext
from spam_bench.suite.contract import TaskResult
from spam_bench.suite.seeding import seed_everything
from spam_bench.tasks.rl.config import RLConfig
from spam_bench.tasks.rl.envs import env_state, make_eval_env, make_train_env, normalizer, restore_env_state
from spam_bench.tasks.rl.evaluate import curve_auc, evaluate
from spam_bench.tasks.rl.ppo import (
    ACTIVATIONS,
    BenchPPO,
    is_diverged_policy_error,
    policy_model_info,
    update_grad_stats,
)

# What PPO carries from one rollout to the next (the rollout buffer is refilled from scratch).
_PPO_STATE = (
    "num_timesteps",
    "_n_updates",
    "_episode_num",
    "_last_obs",
    "_last_episode_starts",
    "_last_original_obs",
    "_current_progress_remaining",
)
# SB3's logger keys of one update -> our metric names.
_UPDATE_METRICS = {
    "train/loss": "loss",
    "train/policy_gradient_loss": "policy_loss",
    "train/value_loss": "value_loss",
    "train/entropy_loss": "entropy_loss",
    "train/approx_kl": "approx_kl",
    "train/clip_fraction": "clip_fraction",
    "train/explained_variance": "explained_variance",
    "train/std": "action_std",
    "train/learning_rate": "lr",
}
_RECENT_EPISODES = 10


def _crossed(prev: int, now: int, every: int) -> bool:
    return now // every > prev // every


# --- the env snapshot (tasks/rl/envs.py) as tensors and plain data, and back ---
def _mjdata_fields(model: mujoco.MjModel) -> list[str]:
    """MjData's arrays whose size the model fixes (MuJoCo's own table of mjData fields, `mjxmacro.MJDATA`).

    Together with the time they hold every input of the next mj_step (qpos, qvel, act, warm start,
    ctrl, applied forces, ...) and every derived quantity an env may read before stepping:
    gymnasium's Ant reads body positions left by the previous mj_step, so restoring the integration
    state alone (mj_setState) would not resume Ant bit for bit. The arrays sized by the contact and
    constraint counts live in MjData's arena, which mj_step rebuilds from scratch (mj_collision,
    mj_makeConstraint) before anything reads it."""
    return [name for name, (rows, _) in mjxmacro.MJDATA.items() if hasattr(model, rows)]


def _mjdata_to_plain(data: mujoco.MjData) -> dict[str, Any]:
    fields = _mjdata_fields(data.model)
    return {
        "time": float(data.time),
        "energy": np.array(data.energy),
        "arrays": {name: np.array(getattr(data, name)) for name in fields},
    }


def _mjdata_from_plain(model: mujoco.MjModel, saved: dict[str, Any]) -> mujoco.MjData:
    data = mujoco.MjData(model)
    for name in _mjdata_fields(model):
        target, value = getattr(data, name), saved["arrays"][name]
        if target.shape != value.shape or target.dtype != value.dtype:
            raise ValueError(
                f"checkpoint's MjData.{name} is {value.dtype}{value.shape}, this model's {target.dtype}{target.shape}"
            )
        target[...] = value
    data.time = saved["time"]
    data.energy[:] = saved["energy"]
    return data


_RMS = ("obs_rms", "ret_rms")  # VecNormalize's running statistics (RunningMeanStd)


def _plain_env_state(state: dict[str, Any]) -> dict[str, Any]:
    """`env_state`'s snapshot with MjData and RunningMeanStd replaced by arrays and numbers."""
    envs = [{**env, "mjdata": _mjdata_to_plain(env["mjdata"])} for env in state["envs"]]
    norm = state["vecnormalize"]
    if norm is not None:
        # The return statistics are numpy float64 scalars after an update: stored as 0-d arrays (and the
        # count as a float), the same doubles come back.
        norm = {
            k: {"mean": np.asarray(v.mean), "var": np.asarray(v.var), "count": float(v.count)}
            if isinstance(v, RunningMeanStd)
            else v
            for k, v in norm.items()
        }
    return {"envs": envs, "vecnormalize": norm}


def _live_env_state(venv: VecEnv, state: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `_plain_env_state`, for `restore_env_state`, built against `venv`'s own models."""
    models = [env.unwrapped.model for env in venv.unwrapped.envs]
    envs = [
        {**env, "mjdata": _mjdata_from_plain(model, env["mjdata"])}
        for model, env in zip(models, state["envs"], strict=True)
    ]
    norm = state["vecnormalize"]
    if norm is not None:
        norm = dict(norm)
        for k in _RMS:
            if isinstance(norm.get(k), dict):
                mean, var = (a[()] if a.ndim == 0 else a for a in (norm[k]["mean"], norm[k]["var"]))
                rms = RunningMeanStd(shape=mean.shape)
                rms.mean, rms.var, rms.count = mean, var, norm[k]["count"]
                norm[k] = rms
    return {"envs": envs, "vecnormalize": norm}


class _Boundaries(BaseCallback):
    def __init__(self, trainer: Trainer):
        super().__init__()
        self.trainer = trainer

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            if "episode" in info:  # Monitor's summary of a finished episode, raw rewards
                self.trainer.on_episode(self.model.num_timesteps, info["episode"])
        return True

    def _on_rollout_start(self) -> None:
        self.trainer.boundary(final=False)
        self._rollout_from = time.perf_counter()

    def _on_rollout_end(self) -> None:
        # Collecting a rollout (simulation and policy inference) is the run's "data" time.
        self.trainer.ctx.clock.add("data", time.perf_counter() - self._rollout_from)


class Trainer:
    """One run of the rl task."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        c: RLConfig = ctx.config
        self.config, self.seed = c, ctx.seed
        torch.set_num_threads(1)  # faster for these MLPs, and lets trials share a machine
        seed_everything(self.seed)
        self.env = make_train_env(c, self.seed)
        hidden = list(c.hidden_sizes)
        self.model = BenchPPO(
            "MlpPolicy",
            self.env,
            learning_rate=c.lr,
            n_steps=c.n_steps,
            batch_size=c.batch_size,
            n_epochs=c.n_epochs,
            gamma=c.gamma,
            gae_lambda=c.gae_lambda,
            clip_range=c.clip_range,
            ent_coef=c.ent_coef,
            vf_coef=c.vf_coef,
            max_grad_norm=math.inf,
            policy_kwargs=dict(
                log_std_init=c.log_std_init,
                ortho_init=c.ortho_init,
                activation_fn=ACTIVATIONS[c.activation],
                net_arch=dict(pi=hidden, vf=hidden),
            ),
            seed=self.seed,
            device=ctx.spec.device,
            verbose=0,
        )
        # A logger with no outputs: SB3's default one makes an empty /tmp/SB3-<time> folder per run;
        # the run's metrics come from name_to_value and go to the suite's recorder.
        self.model.set_logger(Logger(folder=None, output_formats=[]))
        # SB3 calls optimizer.step() itself: the run's instruments and clip rule go in as step hooks.
        self.optimizer = ctx.build_optimizer(
            self.model.policy, policy_model_info(self.model.policy), lr=c.lr, step_hooks=True
        )
        self.model.use_optimizer(self.optimizer, c.lr)
        self.model.timed = ctx.timed
        self.eval_env = make_eval_env(c)
        self.evals: list[tuple[int, float]] = []  # (env steps, mean return)
        self.last_eval_returns: list[float] = []
        self.recent_returns: list[float] = []
        self.train_episodes = 0
        self.boundary_step = -1  # env steps at the last boundary handled (logged, evaluated, saved)
        self.bar: Any = None

    # --- checkpoint ---
    def state(self) -> dict[str, Any]:
        m = self.model
        return {
            "policy": m.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ppo": {k: copy.deepcopy(getattr(m, k)) for k in _PPO_STATE},
            "env": _plain_env_state(env_state(self.env)),
            "trainer": {
                "evals": self.evals,
                "last_eval_returns": self.last_eval_returns,
                "recent_returns": self.recent_returns,
                "train_episodes": self.train_episodes,
                "boundary_step": self.boundary_step,
            },
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.model.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        for k, v in state["ppo"].items():
            setattr(self.model, k, v)
        restore_env_state(self.env, _live_env_state(self.env, state["env"]))
        t = state["trainer"]
        self.evals, self.last_eval_returns = t["evals"], t["last_eval_returns"]
        self.recent_returns, self.train_episodes = t["recent_returns"], t["train_episodes"]
        self.boundary_step = t["boundary_step"]

    # --- events ---
    def on_episode(self, step: int, episode: dict[str, Any]) -> None:
        self.train_episodes += 1
        self.recent_returns = ([*self.recent_returns, float(episode["r"])])[-_RECENT_EPISODES:]
        self.ctx.log(step, "train", {"episode_return": float(episode["r"]), "episode_length": float(episode["l"])})

    def boundary(self, *, final: bool) -> None:
        """After an update (or at the start/end): log it, evaluate and checkpoint when due."""
        c, step, prev = self.config, self.model.num_timesteps, self.boundary_step
        if step == prev:
            return  # a resumed run starts exactly where its checkpoint was taken
        self.boundary_step = step
        norms = self.ctx.instruments.take_grad_norms()
        if norms:  # an update happened since the last boundary
            logged = self.model.logger.name_to_value
            update = {name: logged[key] for key, name in _UPDATE_METRICS.items() if key in logged}
            self.ctx.log(step, "train", update | update_grad_stats(norms, self.ctx.run.clip.effective))
            if "train/loss" in logged:
                self.ctx.instruments.observe_loss(float(logged["train/loss"]))
        if self.model.diverged:
            return
        if final or _crossed(prev, step, c.eval_every):
            try:
                self.last_eval_returns = evaluate(
                    self.model.policy, normalizer(self.env), self.eval_env, c.eval_episodes, self.seed
                )
            except ValueError as err:
                if not is_diverged_policy_error(err):
                    raise
                self.model.diverged = True
                return
            mean = float(np.mean(self.last_eval_returns))
            self.evals.append((step, mean))
            self.ctx.log(step, "eval", {"return": mean, "return_std": float(np.std(self.last_eval_returns))})
        if final or self.ctx.stop_requested or (step > 0 and _crossed(prev, step, c.checkpoint_every)):
            self.ctx.save_checkpoint(self.state(), step)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(eval_return=f"{self.evals[-1][1]:.1f}" if self.evals else "n/a", refresh=False)
        if self.ctx.stop_requested and not final:
            raise KeyboardInterrupt

    def fit(self) -> TaskResult:
        c = self.config
        state = self.ctx.load_checkpoint()
        if state is not None:
            self.restore(state)
        start_step, t0 = self.model.num_timesteps, time.perf_counter()
        self.bar = self.ctx.progress(c.total_timesteps, start_step)
        try:
            remaining = c.total_timesteps - self.model.num_timesteps
            if remaining > 0:
                # reset_num_timesteps=False: count on from a restored checkpoint (a fresh model is at 0)
                self.model.learn(remaining, callback=_Boundaries(self), reset_num_timesteps=False)
            self.boundary(final=True)
        finally:
            self.bar.close()
        elapsed = time.perf_counter() - t0
        return self.summary((self.model.num_timesteps - start_step) / elapsed if elapsed > 0 else None)

    def summary(self, steps_per_s: float | None) -> TaskResult:
        diverged = self.model.diverged
        returns = self.last_eval_returns
        return TaskResult(
            value=None if diverged else float(np.mean(returns)),
            steps=self.model.num_timesteps,
            diverged_step=self.model.num_timesteps if diverged else None,
            metrics={
                "eval_return_std": None if diverged else float(np.std(returns)),
                "eval_returns": returns,
                "eval_auc": None if diverged else curve_auc([s for s, _ in self.evals], [v for _, v in self.evals]),
                "eval_curve": self.evals,
                "train_episode_return": float(np.mean(self.recent_returns)) if self.recent_returns else None,
                "train_episodes": self.train_episodes,
                "env": self.config.env,
                "updates": self.model._n_updates,
                "env_steps_per_s": steps_per_s,
            },
        )
