"""Process-group setup for data-parallel runs, and the few collectives the trainer needs.

A run launched by `torchrun` learns its place from the RANK / LOCAL_RANK / WORLD_SIZE variables
and joins one process group (NCCL on CUDA, gloo on CPU); a run started directly is a plain single
process with no group at all. Every helper here degrades to a no-op in that case, so the trainer
has a single code path whatever the launch and never tests `is_initialized` itself.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as torch_dist

from layerwise.util.errors import UserError

T = TypeVar("T")

DEVICE_TYPES = ("cpu", "cuda", "mps")
"""Device types a run may ask for; anything else torch accepts (meta, xpu...) is untested here."""

BACKENDS = {"cuda": "nccl", "cpu": "gloo"}
"""The collective backend for each device type that can run data-parallel."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job; a single process is rank 0 of a world of 1."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only the main process writes logs, reports, checkpoints' metadata and progress bars."""
        return self.rank == 0


@dataclass(frozen=True)
class LaunchEnv:
    """The placement torchrun hands every worker through its environment."""

    rank: int
    local_rank: int
    world_size: int


def launch_env(environ: Mapping[str, str]) -> LaunchEnv | None:
    """The torchrun placement, or None for a process that was started directly.

    RANK and WORLD_SIZE together mark a torchrun worker (or any launcher following its contract,
    such as `srun` with those variables exported); LOCAL_RANK defaults to RANK for launchers that
    only run one node.
    """
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return None
    try:
        rank = int(environ["RANK"])
        world_size = int(environ["WORLD_SIZE"])
        local_rank = int(environ.get("LOCAL_RANK", environ["RANK"]))
    except ValueError:
        raise UserError(
            "RANK, LOCAL_RANK and WORLD_SIZE must be integers; launch with torchrun, which sets them"
        ) from None
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise UserError(
            f"inconsistent launch environment RANK={rank} LOCAL_RANK={local_rank} "
            f"WORLD_SIZE={world_size}; launch with torchrun, which sets them"
        )
    return LaunchEnv(rank=rank, local_rank=local_rank, world_size=world_size)


def parse_device(name: str) -> torch.device:
    """The device a user asked for by name, with `auto` meaning the GPU when there is one.

    Availability is checked here, at start-up, so that a typo or a missing GPU is one clear line
    instead of a CUDA traceback on the first tensor.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type not in DEVICE_TYPES:
        raise UserError(f"device {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"device {name!r} was asked for but no CUDA GPU is visible; use cpu or auto"
        )
    if (
        device.type == "cuda"
        and device.index is not None
        and device.index >= torch.cuda.device_count()
    ):
        raise UserError(
            f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA GPU(s) are visible"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {name!r} was asked for but MPS is not available; use cpu or auto")
    return device


def worker_device(requested: torch.device, local_rank: int) -> torch.device:
    """The device of one torchrun worker: its own GPU by local rank, or the CPU.

    A fixed GPU index makes no sense when several workers share a node, so `cuda:N` is refused
    rather than silently putting every worker on the same card.
    """
    if requested.type not in BACKENDS:
        raise UserError(f"multi-process runs support cpu and cuda only, not {requested.type}")
    if requested.type == "cpu":
        return requested
    if requested.index is not None:
        raise UserError(
            f"device {requested} names one GPU, but under torchrun each worker takes the GPU of "
            "its LOCAL_RANK; use cuda or auto (restrict GPUs with CUDA_VISIBLE_DEVICES)"
        )
    if local_rank >= torch.cuda.device_count():
        raise UserError(
            f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA GPU(s) are "
            "visible; use --nproc_per_node at most the number of GPUs per node"
        )
    return torch.device("cuda", local_rank)


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if launched by torchrun, else describe a single process.

    Calling it again in a process that already joined returns the same placement, so tests and
    notebooks can call the trainer repeatedly.
    """
    requested = parse_device(device)
    env = launch_env(os.environ)
    if env is None:
        return DistInfo(rank=0, local_rank=0, world_size=1, device=requested)
    placed = worker_device(requested, env.local_rank)
    if placed.type == "cuda":
        torch.cuda.set_device(placed)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(
            backend=BACKENDS[placed.type],
            device_id=placed if placed.type == "cuda" else None,
        )
    return DistInfo(
        rank=torch_dist.get_rank(),
        local_rank=env.local_rank,
        world_size=torch_dist.get_world_size(),
        device=placed,
    )


def is_distributed() -> bool:
    """Whether this process belongs to a process group (a torchrun worker after init)."""
    return torch_dist.is_available() and torch_dist.is_initialized()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks in place and return it; the identity for a single process.

    Reducing sums (of losses and token counts) rather than means keeps ranks with unequal shares
    exact: the caller divides once, after the reduction.
    """
    if is_distributed():
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    """Wait for every rank, e.g. before rank 0 reads what all ranks just wrote."""
    if is_distributed():
        torch_dist.barrier()


def shutdown() -> None:
    """Leave the process group, so that NCCL does not warn about a leaked group at exit."""
    if is_distributed():
        torch_dist.destroy_process_group()


def decide_on_main(decide: Callable[[], T]) -> T:
    """Run `decide` on rank 0 only and give every rank its result (or its UserError).

    For decisions that read or change shared files (which checkpoint to resume, clearing a run
    directory): one rank does the work once, and a refusal stops every rank with the same
    message instead of leaving the others waiting in a collective.
    """
    if not is_distributed():
        return decide()
    outcome: list[Any] = [None]
    if torch_dist.get_rank() == 0:
        try:
            outcome[0] = ("ok", decide())
        except UserError as exc:
            outcome[0] = ("error", str(exc))
    torch_dist.broadcast_object_list(outcome, src=0)
    kind, value = outcome[0]
    if kind == "error":
        raise UserError(value)
    return value


@contextlib.contextmanager
def held_by_main(resource: contextlib.AbstractContextManager[Any]) -> Iterator[None]:
    """Hold `resource` (a directory lock) on rank 0 for the block; a refusal there stops every
    rank with the same message, as `decide_on_main` does."""

    def enter() -> None:
        resource.__enter__()

    decide_on_main(enter)
    try:
        yield
    finally:
        if not is_distributed() or torch_dist.get_rank() == 0:
            resource.__exit__(*sys.exc_info())
