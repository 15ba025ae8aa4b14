"""Renderer-neutral report blocks (headings, paragraphs, tables, images) and number formatting.

A leaf module: the leaderboard, its sections (paper, spikes) and both renderers (Markdown, HTML)
share these types, so none of them needs to import another to build or draw a block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    highlight: set[int] = field(default_factory=set)  # row indices shown as best


@dataclass
class Block:
    kind: str  # "h1" | "h2" | "h3" | "p" | "table" | "img"
    text: str = ""
    table: Table | None = None


def md_text(text: Any) -> str:
    """Text for one Markdown line (a heading, a paragraph): line breaks become spaces.

    Names and settings come from run folders, so they can hold any text; the blocks keep it raw
    (the HTML renderer escapes for HTML) and only the Markdown renderers call these."""
    return " ".join(str(text).splitlines())


def md_cell(text: Any) -> str:
    """Text for a Markdown table cell: one line, and `|` escaped (it would end the cell and shift
    every later column of the row)."""
    return md_text(text).replace("|", "\\|")


def fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}"


def fmt_bytes(n: Any) -> str:
    if n is None or (isinstance(n, float) and not math.isfinite(n)):
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
