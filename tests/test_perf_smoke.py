"""`spambench perf` runs end to end on tiny shapes and writes its table and JSON."""

from __future__ import annotations

import json

import pytest

from spam_bench.optimizers import perf

pytestmark = pytest.mark.slow  # end-to-end runs: `make test` runs them, `make test-fast` skips them


def test_perf_small_shapes_prints_table_and_json(tmp_path, capsys) -> None:
    out = tmp_path / "perf.json"
    assert perf.main(["--small", "--steps", "2", "--warmup", "22", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| spam dense |" in table and "| torch AdamW fused | " in table
    rows = {r["optimizer"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["spam dense"]["bytes_per_param"] == 8.0
    sparse = rows["spam density 0.25 (attn/MLP)"]
    assert sparse["bytes_per_masked_param"] <= 8 * 0.25 + 1 + 0.05  # 12d B at d = 1/4: moments + int32 index
