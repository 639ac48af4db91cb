"""`torchrun -m layerwise train` on 2 CPU processes (gloo) against a single process.

Every run here is a real `torchrun --standalone --nproc_per_node 2` subprocess on a tiny model.
The runs are shared by the tests through module-scoped fixtures, so the whole file costs a
handful of launches.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import write_token_dir
from layerwise.runs.files import read_records
from layerwise.training.checkpoint import list_checkpoints

pytestmark = pytest.mark.slow

VOCAB = 61
STEPS, CHECKPOINT_INTERVAL = 24, 4
TINY = f"""
model:
  profile: crown
  n_layers: 2
  d_model: 32
  head_dim: 8
  gqa_group: 2
  ffn_divisor: 16
  vocab_size: null
data:
  seq_len: 16
  val_windows: 9
batch:
  global_batch: 8
  micro_batch: 2
optim:
  lr: 3.0e-3
  warmup_steps: 2
train:
  steps: {STEPS}
  seed: 3
  val_interval: 6
checkpoint:
  interval: {CHECKPOINT_INTERVAL}
  keep: 2
run:
  device: cpu
  progress: false
"""
"""Global batch 8 as micro-batches of 2: 4 accumulation steps on 1 process, 2 on each of 2;
9 validation windows do not split evenly over 2 ranks."""

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TIMEOUT_S = 180


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny config over random tokens in the `data prepare` format."""
    directory = tmp_path_factory.mktemp("distributed")
    rng = np.random.default_rng(0)
    splits = {"train": rng.integers(0, VOCAB, 3000), "val": rng.integers(0, VOCAB, 400)}
    write_token_dir(directory, {k: v.astype(np.uint16) for k, v in splits.items()}, VOCAB)
    path = directory / "tiny.yaml"
    path.write_text(TINY.replace("data:\n", f"data:\n  dir: {directory}\n"))
    return path


def train_command(config: Path, run_dir: Path, processes: int, *settings: str) -> list[str]:
    """`layerwise train` under torchrun for several processes, as a plain process for one."""
    launcher = [sys.executable, "-m", "layerwise"]
    if processes > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
            "-m",
            "layerwise",
        ]
    return [*launcher, "train", str(config), f"run.dir={run_dir}", *settings]


def run_to_end(command: list[str]) -> None:
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-4000:]


def losses(run_dir: Path, kind: str = "train") -> list[tuple[int, float]]:
    records = read_records(run_dir / "metrics.jsonl")
    return [(r["step"], r["loss"]) for r in records if r["type"] == kind]


def assert_close_losses(actual: Path, expected: Path) -> None:
    """The same steps, each loss within 1e-5 (float32 sums taken in another order)."""
    for kind in ("train", "val"):
        got, want = losses(actual, kind), losses(expected, kind)
        assert [s for s, _ in got] == [s for s, _ in want]
        np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=0, atol=1e-5)


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid`: torchrun starts each worker in a session of its own."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in children.read_text().split()] if children.exists() else []


def kill_job(launcher: subprocess.Popen) -> None:
    """SIGKILL torchrun and every worker at once, as a node failure would.

    Killing torchrun alone is not enough: its workers live in their own sessions and would
    finish the run on their own.
    """
    for pid in [*child_pids(launcher.pid), launcher.pid]:
        os.killpg(pid, signal.SIGKILL)
    launcher.wait()


def kill_after_first_checkpoint(command: list[str], run_dir: Path) -> int:
    """Start `command`, SIGKILL the whole job once a checkpoint exists; the step it was at."""
    launcher = subprocess.Popen(
        command,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not list_checkpoints(run_dir) and launcher.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint before the timeout"
        time.sleep(0.002)
    assert launcher.poll() is None, "the run ended before it could be killed"
    kill_job(launcher)
    return list_checkpoints(run_dir)[-1][0]


@pytest.fixture(scope="module")
def single(config_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("single") / "run"
    run_to_end(train_command(config_file, run_dir, 1))
    return run_dir


@pytest.fixture(scope="module")
def fsdp(config_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("fsdp") / "run"
    run_to_end(train_command(config_file, run_dir, 2, "parallel.strategy=fsdp"))
    return run_dir


@pytest.fixture(scope="module")
def killed_fsdp(config_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """An FSDP run on 2 processes, killed after its first checkpoint."""
    run_dir = tmp_path_factory.mktemp("killed") / "run"
    command = train_command(config_file, run_dir, 2, "parallel.strategy=fsdp")
    return run_dir, kill_after_first_checkpoint(command, run_dir)


def test_ddp_on_two_processes_matches_one_process(
    config_file: Path, single: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    run_to_end(train_command(config_file, run_dir, 2, "parallel.strategy=ddp"))
    assert_close_losses(run_dir, single)
    assert len(losses(run_dir)) == STEPS, "only rank 0 writes the log"


def test_fsdp_on_two_processes_matches_one_process(fsdp: Path, single: Path) -> None:
    assert_close_losses(fsdp, single)
    assert len(losses(fsdp)) == STEPS, "only rank 0 writes the log"


def test_killed_two_process_run_resumes_exactly(
    config_file: Path, fsdp: Path, killed_fsdp: tuple[Path, int], tmp_path: Path
) -> None:
    killed_dir, _ = killed_fsdp
    run_dir = tmp_path / "run"
    shutil.copytree(killed_dir, run_dir)
    run_to_end(train_command(config_file, run_dir, 2, "parallel.strategy=fsdp", "--resume"))
    assert losses(run_dir) == losses(fsdp)
    assert losses(run_dir, "val") == losses(fsdp, "val")


def test_two_process_checkpoint_resumes_on_one_process(
    config_file: Path, single: Path, killed_fsdp: tuple[Path, int], tmp_path: Path
) -> None:
    """FSDP shards written by 2 ranks load into one unsharded process (DCP reshards)."""
    killed_dir, killed_at = killed_fsdp
    run_dir = tmp_path / "run"
    shutil.copytree(killed_dir, run_dir)
    run_to_end(train_command(config_file, run_dir, 1, "parallel.strategy=fsdp", "--resume"))
    assert_close_losses(run_dir, single)
    assert list_checkpoints(run_dir)[-1][0] == STEPS > killed_at


def test_ddp_and_fsdp_agree_in_bf16(config_file: Path, tmp_path: Path) -> None:
    """One mixed-precision mechanism (autocast) for every layout: FSDP once stacked a bf16
    param_dtype on autocast and ran the residual stream and norm gains in bf16 where DDP did not."""
    runs = {}
    for strategy in ("ddp", "fsdp"):
        runs[strategy] = tmp_path / strategy
        settings = (f"parallel.strategy={strategy}", "run.precision=bf16", "train.steps=8")
        run_to_end(train_command(config_file, runs[strategy], 2, *settings))
    ddp, fsdp = losses(runs["ddp"]), losses(runs["fsdp"])
    assert [s for s, _ in ddp] == [s for s, _ in fsdp] == list(range(1, 9))
    np.testing.assert_allclose([v for _, v in fsdp], [v for _, v in ddp], rtol=0, atol=1e-4)


def test_a_mixture_on_two_processes_matches_one_process(config_file: Path, tmp_path: Path) -> None:
    """data.sources shards as one directory does: each rank its share of the same global batch,
    and per-source validation split over the ranks."""
    rng = np.random.default_rng(1)
    splits = {"train": rng.integers(0, VOCAB, 2000), "val": rng.integers(0, VOCAB, 300)}
    other = write_token_dir(
        tmp_path / "other", {k: v.astype(np.uint16) for k, v in splits.items()}, VOCAB
    )
    mixture = (
        f"data.sources=[{{dir: {config_file.parent}, weight: 2}}, {{dir: {other}, weight: 1}}]"
    )
    run_to_end(train_command(config_file, tmp_path / "one", 1, mixture))
    run_to_end(train_command(config_file, tmp_path / "two", 2, mixture, "parallel.strategy=ddp"))
    assert_close_losses(tmp_path / "two", tmp_path / "one")
    by_source = [
        r["sources"] for r in read_records(tmp_path / "two" / "metrics.jsonl") if r["type"] == "val"
    ]
    assert by_source and set(by_source[-1]) == {config_file.parent.name, "other"}
