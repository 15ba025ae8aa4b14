"""The paper's published numbers (docs/spam.md#published-results), shown beside ours for paper-scale runs.

Only numbers the publications state are here, with their source; '~' marks values read off a figure.
Our optimizer names map to the paper's rows: `adamw` is the paper's "Adam" (the GaLore pipeline the
paper uses runs torch AdamW with weight decay 0), and Adam/AdamW with the task's global-norm
clipping on is "Adam + GradClip". Comparable only when a run used the scale's full budget (its
problem settings are 'defaults'); the table says so otherwise.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from spam_bench.reports.blocks import Block, Table, fmt

# Stable-SPAM (arXiv 2502.17055) Table 2: BF16, C4, validation perplexity.
BF16 = {
    "Adam-mini": {"60m": 34.10, "130m": 24.85, "350m": 19.05, "1b": 16.07},
    "Adam": {"60m": 34.09, "130m": 24.91, "350m": 18.77, "1b": 16.13},
    "Adam + GradClip": {"60m": 33.33, "130m": 24.88, "350m": 18.51, "1b": 15.22},
    "Adafactor": {"60m": 32.57, "130m": 23.98, "350m": 17.74, "1b": 15.19},
    "SPAM": {"60m": 30.46, "130m": 23.36, "350m": 17.42, "1b": 14.66},
    "Stable-SPAM": {"60m": 28.84, "130m": 22.21, "350m": 16.85, "1b": 13.90},
    "GaLore": {"60m": 34.88, "130m": 25.36, "350m": 18.95, "1b": 15.64},  # GaLore paper Table 2 (1B: 13.1B tokens)
}
BF16_SOURCE = "Stable-SPAM, arXiv 2502.17055, Table 2 (GaLore row: GaLore paper, arXiv 2403.03507, Table 2)"

# Stable-SPAM (arXiv 2502.17055) Table 1: C4, 2.2B tokens, perplexity.
LOW_BIT = {
    "int4": {
        "Adam": {"130m": 26.4, "350m": 24.14, "1b": 21.59},
        "Adam + GradClip": {"130m": 26.30, "350m": 21.64, "1b": 19.74},
        "Adafactor": {"130m": 25.11, "350m": 20.45, "1b": 20.65},
        "SPAM": {"130m": 25.03, "350m": 20.19, "1b": 19.98},
        "Stable-SPAM": {"130m": 24.33, "350m": 17.76, "1b": 17.42},
    },
    "fp4": {
        "Adam": {"130m": 28.9, "350m": 24.59, "1b": 22.01},
        "Adam + GradClip": {"130m": 28.27, "350m": 20.84, "1b": 20.25},
        "Adafactor": {"130m": 26.89, "350m": 20.53, "1b": 20.03},
        "SPAM": {"130m": 26.78, "350m": 20.35, "1b": 19.74},
        "Stable-SPAM": {"130m": 26.31, "350m": 19.49, "1b": 18.48},
    },
}
LOW_BIT_SOURCE = "Stable-SPAM, arXiv 2502.17055, Table 1"
# SPAM paper (arXiv 2501.06842) Figure 1, middle row (20K steps), read off: the 8-bit curves, and 4-bit at 60M
# (which Stable-SPAM's table does not have).
FIGURE1 = {
    "int4": {"Adam": {"60m": 32.1, "130m": 25.0, "350m": 21.8}, "SPAM": {"60m": 29.0, "130m": 23.6, "350m": 20.3}},
    "int8": {"Adam": {"60m": 31.2, "130m": 24.5, "350m": 21.4}, "SPAM": {"60m": 27.9, "130m": 23.1, "350m": 19.9}},
}
FIGURE1_SOURCE = "SPAM paper, arXiv 2501.06842, Figure 1, read off (~)"
# The llm4bit task's format names -> the paper's.
FORMATS = {"w4a4": "int4", "int4": "int4", "fp4": "fp4", "w8a8": "int8", "int8": "int8"}

# SPAM paper (arXiv 2501.06842), PPO on MuJoCo figure: approximate final test reward at epoch 100.
RL = {
    "Hopper": {"Adam": 2900, "SPAM": 3300},
    "Ant": {"Adam": 3800, "SPAM": 4200},
    "HalfCheetah": {"Adam": 5800, "SPAM": 7500},
}
RL_SOURCE = "SPAM paper, arXiv 2501.06842, PPO figure, read off (~)"

NAMES = {
    "adam": "Adam",
    "adamw": "Adam",
    "adam_clip": "Adam + GradClip",
    "spam": "SPAM",
    "adam_mini": "Adam-mini",
    "adam-mini": "Adam-mini",
    "adafactor": "Adafactor",
    "stable_spam": "Stable-SPAM",
    "stablespam": "Stable-SPAM",
    "galore": "GaLore",
}


def paper_name(optimizer: str, grad_clip: Any = None) -> str | None:
    name = NAMES.get(optimizer.lower())
    if name == "Adam" and grad_clip not in (None, 0) and not pd.isna(grad_clip):
        return "Adam + GradClip"
    return name


def published(task: str, scale: str, task_config: dict) -> tuple[dict[str, float], str, bool] | None:
    """(paper row -> value, source, approximate?) for this task and scale, or None if the paper has none."""
    size = scale.removeprefix("paper-")
    if task in ("llm", "llm4bit") and scale.startswith("paper-"):
        fmt = next((FORMATS[str(v).lower()] for v in task_config.values() if str(v).lower() in FORMATS), None)
        for table, source, approx in (
            (LOW_BIT.get(fmt or "", {}), LOW_BIT_SOURCE, False),
            (FIGURE1.get(fmt or "", {}), FIGURE1_SOURCE, True),
        ):
            numbers = {k: v[size] for k, v in table.items() if size in v}
            if numbers:
                return numbers, f"{source}, {fmt.upper()}", approx
        if fmt is None:
            return {k: v[size] for k, v in BF16.items() if size in v}, BF16_SOURCE, False
    if task == "rl" and scale == "paper":
        env = str(task_config.get("env", "")).split("-")[0]
        if env in RL:
            return RL[env], f"{RL_SOURCE}, {env}", True
    return None


def blocks(task: str, scale: str, problem: str, entries: pd.DataFrame) -> list:
    """A 'paper vs ours' table for one problem, or nothing if the paper has no number for it."""

    config = json.loads(entries["task_config"].iloc[0] or "{}")
    found = published(task, scale, config)
    if not found:
        return []
    numbers, source, approx = found
    ours: dict[str, str] = {}
    for _, e in entries.iterrows():
        name = paper_name(e["optimizer"], e.get("grad_clip"))
        if name in numbers and name not in ours:  # entries are in rank order: the best recipe speaks
            ours[name] = (
                f"{fmt(e['mean'])} ({e['optimizer']}, {e['n']} seed{'s' if e['n'] > 1 else ''})"
                if e["n"]
                else f"diverged ({e['optimizer']})"
            )
    if not ours:
        return []
    rows = [
        [name, ("~" if approx else "") + f"{value:g}", ours.get(name, "not run")] for name, value in numbers.items()
    ]
    note = f"Published numbers ({source}) beside ours."
    if problem != "defaults":
        note += f" Our runs changed the scale's settings ({problem}), so they are not the paper's budget."
    return [Block("p", note), Block("table", table=Table(["paper row", "paper", "ours"], rows))]
