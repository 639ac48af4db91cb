"""`layerwise demo`: what it checks before the minutes of data preparation start."""

from __future__ import annotations

from pathlib import Path

import pytest

from layerwise.cli import main
from layerwise.compare.demo import demo_config, demo_evals_dir, demo_overrides
from layerwise.config.loader import load_config


def test_bad_overrides_are_refused_before_any_data_is_prepared(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "optim.lrr=1e-3"]) == 2
    assert "unknown key optim.lrr (did you mean 'lr'?)" in capsys.readouterr().err
    assert not out.exists()


def test_the_demo_scores_downstream_tasks_only_where_the_sets_are(tmp_path: Path) -> None:
    config = load_config(demo_config(), demo_overrides(tmp_path, ()))
    if demo_evals_dir() is None:
        assert config.eval.tasks is None
    else:
        assert config.eval.tasks == ["core"] and config.eval.limit == 50
    assert config.data.dir == str(tmp_path / "data")
