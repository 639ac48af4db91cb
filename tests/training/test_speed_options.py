"""The speed levers of `run.*` on the CPU: each trains the same model as the default path, or is
refused with a message that says what it needs.

GPU sessions measure whether a lever pays (benchmarks/gpu.sh); these tests make sure that
switching one on never breaks a run: the compiled tails and the whole-model graph trace without
graph breaks and keep parameter names, pinned attention kernels compute the same attention, and
CUDA-only levers fail before anything is built. Compiled runs use the aot_eager backend: dynamo's
tracing, graph breaks and autograd are what these tests check, and inductor's CPU code generation
(covered by test_compile.py) would make each compile many times slower.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo
import torch.distributed.checkpoint as dcp
from torch._dynamo.utils import counters

from layerwise.config.loader import load_config
from layerwise.distributed.env import DistInfo
from layerwise.distributed.parallelize import check_fp8
from layerwise.launch import train
from layerwise.nn.model import causal_attention
from layerwise.runs.files import read_records
from layerwise.training.build import with_data_vocab
from layerwise.training.load import load_model
from layerwise.training.trainer import setup_run
from layerwise.util.errors import UserError

CPU = DistInfo(0, 0, 1, torch.device("cpu"))


@pytest.fixture()
def config_file(tiny_run: Callable[..., Path]) -> Path:
    return tiny_run(
        {
            "data": {"val_windows": 4},
            "batch": {"global_batch": 4},
            "optim": {"warmup_steps": 1},
            "train": {"steps": 3, "seed": 5, "val_interval": 3},
            "checkpoint": {"interval": 3},
        }
    )


@pytest.fixture()
def aot_eager(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """torch.compile (and so Module.compile) with the aot_eager backend, and a fresh dynamo."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    counters.clear()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield
    torch._dynamo.reset()


def run_losses(config_file: Path, run_dir: Path, *overrides: str) -> dict[str, list[float]]:
    """Train the tiny model; its train and validation losses."""
    train(load_config(config_file, [f"run.dir={run_dir}", *overrides]))
    records = read_records(run_dir / "metrics.jsonl")
    return {kind: [r["loss"] for r in records if r["type"] == kind] for kind in ("train", "val")}


def assert_same_run(got: dict[str, list[float]], want: dict[str, list[float]], rtol: float) -> None:
    assert len(got["train"]) == len(want["train"]) == 3
    for kind in ("train", "val"):
        np.testing.assert_allclose(got[kind], want[kind], rtol=rtol)


@pytest.mark.parametrize("backend", ["math", "flash"])
def test_pinned_cpu_attention_kernels_compute_auto_attention(backend: str) -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 16, 8), torch.randn(2, 2, 16, 8), torch.randn(2, 2, 16, 8)
    torch.testing.assert_close(
        causal_attention(q, k, v, backend=backend), causal_attention(q, k, v)
    )


@pytest.mark.parametrize("backend", ["math", "flash"])
def test_training_with_a_pinned_cpu_attention_kernel_matches_auto(
    config_file: Path, tmp_path: Path, backend: str
) -> None:
    auto = run_losses(config_file, tmp_path / "auto")
    pinned = run_losses(config_file, tmp_path / backend, f"run.attention={backend}")
    assert_same_run(pinned, auto, rtol=1e-4)


@pytest.mark.parametrize("backend", ["cudnn", "efficient"])
def test_cuda_only_attention_kernel_on_cpu_is_a_clear_user_error(
    config_file: Path, tmp_path: Path, backend: str
) -> None:
    config = with_data_vocab(
        load_config(config_file, [f"run.dir={tmp_path}", f"run.attention={backend}"])
    )
    with pytest.raises(UserError, match=f"run.attention={backend} is a CUDA kernel.*cpu"):
        setup_run(config, CPU, None)


def test_fp8_on_cpu_is_a_clear_user_error(config_file: Path, tmp_path: Path) -> None:
    """Whether or not torchao is installed, the message names what is missing."""
    config = with_data_vocab(load_config(config_file, [f"run.dir={tmp_path}", "run.fp8=true"]))
    with pytest.raises(UserError, match=r"run.fp8=true needs (torchao|a CUDA GPU)"):
        setup_run(config, CPU, None)


@pytest.mark.parametrize(
    ("installed", "message"),
    [(False, r"needs torchao: pip install 'layerwise\[fp8\]'"), (True, "needs a CUDA GPU")],
)
def test_fp8_names_the_missing_requirement(
    monkeypatch: pytest.MonkeyPatch, installed: bool, message: str
) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object() if installed else None)
    with pytest.raises(UserError, match=message):
        check_fp8(torch.device("cpu"))


@pytest.mark.slow
@pytest.mark.usefixtures("aot_eager")
def test_compiled_loss_traces_in_one_graph_and_matches_eager(
    config_file: Path, tmp_path: Path
) -> None:
    """Final norm + head + chunked loss compile without graph breaks: one graph for training,
    one for validation, and the run's losses are those of the eager run."""
    eager = run_losses(config_file, tmp_path / "eager")
    counters.clear()
    compiled = run_losses(config_file, tmp_path / "compiled", "run.compile_loss=true")
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 2
    assert_same_run(compiled, eager, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.usefixtures("aot_eager")
def test_whole_model_compile_keeps_names_and_matches_eager(
    config_file: Path, tmp_path: Path
) -> None:
    """compile_mode=model: one graph for training and one for validation, however many block
    shapes; parameter names unchanged, so its checkpoints load in a per-block or eager run."""
    eager = run_losses(config_file, tmp_path / "eager")
    counters.clear()
    overrides = ("run.compile=true", "run.compile_mode=model", "run.compile_loss=true")
    compiled = run_losses(config_file, tmp_path / "model", *overrides)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 2
    assert_same_run(compiled, eager, rtol=1e-4)
    trained = load_model(tmp_path / "model")
    reader = dcp.FileSystemReader(trained.checkpoint)
    saved = {key for key in reader.read_metadata().state_dict_metadata if key.startswith("model.")}
    assert saved == {f"model.{name}" for name in trained.model.state_dict()}
