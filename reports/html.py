"""The leaderboard as one self-contained HTML page: inline CSS, PNGs embedded as base64 data URIs,
no script and no external reference, so it opens offline and can be published as it is.
Renders the same blocks as the Markdown (reports/leaderboard.py).
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from spam_bench.reports.blocks import Block

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2329;
       max-width: 1200px; margin: 24px auto; padding: 0 16px; background: #fff; }
h1 { font-size: 26px; border-bottom: 3px solid #2f6fb3; padding-bottom: 6px; }
h2 { font-size: 20px; margin-top: 32px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
h3 { font-size: 16px; margin-top: 22px; color: #2f4b66; }
table { border-collapse: collapse; margin: 8px 0 14px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: 4px 9px; text-align: left; }
th { background: #eef3f8; }
tr:nth-child(even) td { background: #f8fafc; }
tr.best td { background: #e3f4e1; font-weight: 600; }
img { max-width: 100%; border: 1px solid #e3e7eb; margin: 6px 0 12px; display: block; }
code { background: #f0f2f4; padding: 1px 4px; border-radius: 3px; }
p { max-width: 980px; }
"""


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _image(folder: Path, name: str) -> str:
    data = base64.b64encode((folder / name).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'


def render(blocks: list[Block], images_dir: Path) -> str:
    body = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            body.append(f"<{b.kind}>{_inline(b.text)}</{b.kind}>")
        elif b.kind == "p":
            body.append(f"<p>{_inline(b.text)}</p>")
        elif b.kind == "img":
            body.append(_image(images_dir, b.text))
        elif b.kind == "table":
            t = b.table
            head = "".join(f"<th>{_inline(h)}</th>" for h in t.header)
            rows = "".join(
                f"<tr{' class=best' if i in t.highlight else ''}>"
                + "".join(f"<td>{_inline(c)}</td>" for c in row)
                + "</tr>"
                for i, row in enumerate(t.rows)
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    title = html.escape(blocks[0].text if blocks else "spam-bench leaderboard")
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<meta name=viewport content='width=device-width, initial-scale=1'><title>{title}</title>"
        f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
