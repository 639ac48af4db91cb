"""The GPU path's code on the CPU: per-block torch.compile and bf16 autocast through the trainer.

Every real run compiles up to a dozen distinct block shapes under bf16; these tests train tiny
heterogeneous models that way on the CPU, so a GPU session finds few surprises: each block shape
compiles once per mode, nothing falls back to eager or breaks the graph, two runs in one process
(a comparison, a search) each compile their own shapes, and compiled and eager runs agree and
share checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from layerwise.config.loader import load_config
from layerwise.distributed.parallelize import count_block_shapes, transformer_blocks
from layerwise.launch import train
from layerwise.runs.files import read_records
from layerwise.training.trainer import setup_run

pytestmark = pytest.mark.slow


@pytest.fixture()
def config_file(tiny_run: Callable[..., Path]) -> Path:
    return tiny_run(
        {
            "data": {"val_windows": 6},
            "optim": {"warmup_steps": 1},
            "train": {"steps": 4, "val_interval": 2},
            "checkpoint": {"interval": 2},
        }
    )


@pytest.fixture(autouse=True)
def strict_dynamo() -> Iterator[None]:
    """Falling back to eager past the recompile limit is an error here, not a warning."""
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield
    torch._dynamo.reset()


def losses(run_dir: Path, kind: str = "train") -> list[float]:
    return [r["loss"] for r in read_records(run_dir / "metrics.jsonl") if r["type"] == kind]


def compiled_run(config_file: Path, run_dir: Path, *overrides: str) -> tuple[Path, int, int]:
    """Train with compile and bf16; (run dir, graphs compiled, distinct block shapes)."""
    counters.clear()
    settings = ["run.compile=true", "run.precision=bf16", f"run.dir={run_dir}", *overrides]
    config = load_config(config_file, settings)
    train(config)
    assert not counters["graph_break"], dict(counters["graph_break"])
    return run_dir, counters["stats"]["unique_graphs"], block_shapes(config_file, settings)


def block_shapes(config_file: Path, settings: list[str]) -> int:
    from layerwise.distributed.env import DistInfo
    from layerwise.training.build import with_data_vocab

    config = with_data_vocab(load_config(config_file, [*settings, "run.compile=false"]))
    run = setup_run(config, DistInfo(0, 0, 1, torch.device("cpu")), None)
    return count_block_shapes(transformer_blocks(run.model))


def test_two_compiled_runs_in_one_process_each_compile_their_own_shapes(
    config_file: Path, tmp_path: Path
) -> None:
    """One graph per block shape for training and one for evaluation, in each run: the second
    run's new shapes are not counted against the first run's graphs."""
    for index, (profile, n_layers) in enumerate((("crown", 5), ("reverse", 4))):
        overrides = (f"model.profile={profile}", f"model.n_layers={n_layers}")
        _, graphs, shapes = compiled_run(config_file, tmp_path / f"run{index}", *overrides)
        assert shapes == (2, 3)[index]
        assert graphs == 2 * shapes


def test_compiled_bf16_matches_eager_float32_within_bf16_tolerance(
    config_file: Path, tmp_path: Path
) -> None:
    compiled, _, _ = compiled_run(config_file, tmp_path / "compiled")
    eager = Path(train(load_config(config_file, [f"run.dir={tmp_path / 'eager'}"])).run_dir)
    np.testing.assert_allclose(losses(compiled), losses(eager), rtol=0.02)
    np.testing.assert_allclose(losses(compiled, "val"), losses(eager, "val"), rtol=0.02)


@pytest.mark.parametrize("first_compiled", [True, False])
def test_checkpoints_move_between_compiled_and_eager_runs(
    config_file: Path, tmp_path: Path, first_compiled: bool
) -> None:
    """Same parameter names either way: a run compiled until step 2 resumes eagerly, and back."""
    run_dir = tmp_path / "run"
    first, second = ("run.compile=true", "run.compile=false")[:: 1 if first_compiled else -1]
    common = [f"run.dir={run_dir}", "run.precision=bf16", "optim.schedule=constant"]
    train(load_config(config_file, [*common, first, "train.steps=2"]))
    # Extending a constant-rate run keeps its past, so the second half is a true resumption.
    resumed = train(load_config(config_file, [*common, second, "run.resume=auto"]))
    assert resumed.steps == 4
    assert len(losses(run_dir)) == 4
