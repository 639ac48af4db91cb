"""A single process needs no process group, and bad launches or devices fail with one line."""

from __future__ import annotations

import pytest
import torch

from layerwise.distributed.env import (
    DistInfo,
    all_reduce_sum,
    barrier,
    init_distributed,
    launch_env,
    parse_device,
    shutdown,
    worker_device,
)
from layerwise.util.errors import UserError


@pytest.fixture
def plain_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process not started by torchrun, even when pytest itself runs under one."""
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


def test_plain_process_is_rank_zero_of_one_without_a_group(plain_process: None) -> None:
    info = init_distributed("cpu")
    assert info == DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    assert info.is_main
    assert not torch.distributed.is_initialized()


def test_collectives_are_identity_in_a_single_process(plain_process: None) -> None:
    tensor = torch.tensor([1.5, 2.0])
    assert all_reduce_sum(tensor) is tensor
    assert tensor.tolist() == [1.5, 2.0]
    barrier()
    shutdown()


def test_launch_env_reads_torchrun_variables() -> None:
    env = launch_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert env is not None
    assert (env.rank, env.local_rank, env.world_size) == (3, 1, 4)
    assert launch_env({}) is None
    assert launch_env({"RANK": "2", "WORLD_SIZE": "4"}).local_rank == 2


@pytest.mark.parametrize(
    "environ",
    [
        {"RANK": "x", "WORLD_SIZE": "2"},
        {"RANK": "2", "WORLD_SIZE": "2"},
        {"RANK": "0", "WORLD_SIZE": "0"},
        {"RANK": "0", "LOCAL_RANK": "-1", "WORLD_SIZE": "2"},
    ],
)
def test_launch_env_rejects_inconsistent_variables(environ: dict[str, str]) -> None:
    with pytest.raises(UserError, match="torchrun"):
        launch_env(environ)


def test_auto_device_falls_back_to_cpu_without_a_gpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert parse_device("auto").type == expected
    assert parse_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "meta", ""])
def test_bad_device_names_are_user_errors(name: str) -> None:
    with pytest.raises(UserError, match="device"):
        parse_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_a_gpu_is_a_user_error() -> None:
    with pytest.raises(UserError, match="no CUDA GPU"):
        parse_device("cuda")


def test_workers_refuse_a_fixed_gpu_index_and_non_collective_devices() -> None:
    assert worker_device(torch.device("cpu"), 1) == torch.device("cpu")
    with pytest.raises(UserError, match="LOCAL_RANK"):
        worker_device(torch.device("cuda", 0), 0)
    with pytest.raises(UserError, match="cpu and cuda"):
        worker_device(torch.device("mps"), 0)
