"""The uninterrupted run every fault test compares its resumed run with."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import tiny_run_config
from layerwise.cli import main as cli_main


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, markov_data: Path) -> Path:
    """TINY_RUN trained once without interruption; its run directory."""
    root = tmp_path_factory.mktemp("reference")
    assert (
        cli_main(["train", str(tiny_run_config(root / "t.yaml", markov_data, root / "run"))]) == 0
    )
    return root / "run"
