"""The metrics log read back: a torn last line is a kill's trace; a damaged line inside is said."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from layerwise.runs.files import read_records


def test_a_torn_last_line_is_left_out_quietly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "metrics.jsonl"
    log.write_text(json.dumps({"step": 1}) + "\n" + '{"step": 2, "lo')
    assert read_records(log) == [{"step": 1}]
    assert capsys.readouterr().err == ""


def test_a_damaged_line_inside_the_log_is_reported_with_its_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "metrics.jsonl"
    log.write_text("\n".join([json.dumps({"step": 1}), "garbage", json.dumps({"step": 3})]) + "\n")
    assert read_records(log) == [{"step": 1}, {"step": 3}]
    assert f"{log}: 1 damaged line(s) left out (line 2)" in capsys.readouterr().err
