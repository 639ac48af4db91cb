"""Training windows over memory-mapped token files, in a seeded, shardable, resumable order.

A window is `seq_len + 1` consecutive tokens (input = window[:-1], target = window[1:]);
windows start every `seq_len` tokens so each token is predicted once per epoch. The order is
a function of (seed, epoch, cursor) alone, which is what lets a resumed run, or a run on a
different number of processes, see exactly the same sequences at each step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, TypeGuard

import numpy as np
import torch

from layerwise.data.checks import guard_token_file
from layerwise.data.meta import META_FILE, read_meta
from layerwise.util.errors import UserError


class TokenWindows:
    """The windows of one split, read through a memory map (the file is never loaded whole)."""

    def __init__(self, path: str | Path, seq_len: int, dtype: np.dtype | str) -> None:
        if seq_len < 1:
            raise UserError(f"seq_len must be >= 1, got {seq_len}")
        self.path = Path(path)
        self.seq_len = seq_len
        self.dtype = np.dtype(dtype)
        self.n_tokens = _token_count(self.path, self.dtype)
        self._tokens: np.ndarray | None = None

    def __len__(self) -> int:
        return max(self.n_tokens - 1, 0) // self.seq_len

    def get(self, indices: np.ndarray) -> torch.Tensor:
        """Windows `indices` as int64 [len(indices), seq_len + 1], in one vectorised gather."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.ndim != 1:
            raise ValueError(f"indices must be one-dimensional, got shape {indices.shape}")
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"window index out of range [0, {len(self)}) for {self.path}")
        offsets = indices[:, None] * self.seq_len + np.arange(self.seq_len + 1)
        return torch.from_numpy(self._memmap()[offsets].astype(np.int64))

    def _memmap(self) -> np.ndarray:
        """Opened lazily so that a pickled copy (a DataLoader worker) maps the file anew."""
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.n_tokens,))
        return self._tokens

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None}


def _token_count(path: Path, dtype: np.dtype) -> int:
    """Tokens in `path`, refusing a file whose size is not a whole number of tokens."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UserError(f"cannot read token file {path}: {exc.strerror or exc}") from exc
    if size % dtype.itemsize:
        raise UserError(
            f"{path} is {size} bytes, not a whole number of {dtype.name} tokens: truncated?"
        )
    return size // dtype.itemsize


def open_split(data_dir: str | Path, split: str, seq_len: int) -> TokenWindows:
    """The windows of `split` in a `data prepare` directory, checked against its meta.json."""
    meta = read_meta(data_dir)
    path = meta.split_path(split)
    windows = TokenWindows(path, seq_len, meta.dtype)
    expected = meta.splits[split].tokens
    if windows.n_tokens != expected:
        raise UserError(
            f"{path} holds {windows.n_tokens} tokens but {meta.data_dir / 'meta.json'} says "
            f"{expected}: the directory was modified; prepare it again"
        )
    if len(windows) == 0:
        raise UserError(
            f"fewer than seq_len+1 = {seq_len + 1} tokens in {path} ({windows.n_tokens}): "
            "use more data, a larger validation split, or a shorter seq_len"
        )
    guard_token_file(
        path, windows.dtype, windows.n_tokens, meta.vocab_size, meta.data_dir / META_FILE
    )
    return windows


class WindowSampler:
    """Which windows each rank reads at each step: deterministic, sharded and resumable.

    Every step takes the next `global_batch` windows of the epoch's permutation, and rank r
    reads its contiguous share, so the set of sequences per step does not depend on the
    number of processes. An epoch's leftover (< global_batch windows) is skipped so that every
    step is a full batch.
    """

    def __init__(
        self, n_windows: int, global_batch: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is not in a world of size {world_size}")
        if global_batch < 1 or global_batch % world_size:
            raise UserError(
                f"global batch {global_batch} must be a positive multiple of the "
                f"{world_size} processes"
            )
        if n_windows < global_batch:
            raise UserError(
                f"only {n_windows} training windows, fewer than one global batch of "
                f"{global_batch}: use more data, a shorter seq_len or a smaller batch"
            )
        if seed < 0:
            raise UserError(f"seed must be >= 0, got {seed}")
        self.n_windows = n_windows
        self.global_batch = global_batch
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.cursor = 0
        self._order: tuple[int, np.ndarray] | None = None

    def next_indices(self) -> np.ndarray:
        """This rank's window indices for the next step (and advance the position)."""
        if self.cursor + self.global_batch > self.n_windows:
            self.epoch += 1
            self.cursor = 0
        batch = self._permutation()[self.cursor : self.cursor + self.global_batch]
        self.cursor += self.global_batch
        share = self.global_batch // self.world_size
        return batch[self.rank * share : (self.rank + 1) * share]

    def _permutation(self) -> np.ndarray:
        """The current epoch's order, cached: one permutation per epoch, not per step."""
        if self._order is None or self._order[0] != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._order = (self.epoch, rng.permutation(self.n_windows))
        return self._order[1]

    def state_dict(self) -> dict:
        return {"epoch": int(self.epoch), "cursor": int(self.cursor)}

    def load_state_dict(self, state: dict) -> None:
        """Resume at a saved position; refuse one that cannot come from this data and batch."""
        epoch, cursor = state.get("epoch"), state.get("cursor")
        if (
            not (is_count(epoch) and is_count(cursor))
            or epoch < 0
            or not 0 <= cursor <= self.n_windows
        ):
            raise UserError(
                f"sampler state {state!r} does not fit {self.n_windows} windows: "
                "was the checkpoint made with other data?"
            )
        self.epoch, self.cursor = epoch, cursor


def is_count(value: object) -> TypeGuard[int]:
    """A whole number from the saved state: an int, but not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def validation_indices(n_windows: int, n: int) -> np.ndarray:
    """The first min(n, n_windows) windows in file order: the same for every profile and run."""
    return np.arange(min(max(n, 0), n_windows), dtype=np.int64)


class Windows(Protocol):
    """What `DeviceBatches` reads: one split's windows, or a mixture's (data.mixture)."""

    def get(self, indices: np.ndarray) -> torch.Tensor: ...


class Sampler(Protocol):
    """What `DeviceBatches` draws from: `WindowSampler`, or a mixture's (data.mixture)."""

    def next_indices(self) -> np.ndarray: ...

    def state_dict(self) -> dict: ...


class DeviceBatches:
    """Each step's windows on the training device, the next step's already on their way.

    While step N runs, step N+1's windows are gathered from the memory map and, on CUDA, copied
    from pinned memory with `non_blocking=True`, so the copy overlaps the GPU's work instead of
    stalling the step that needs it. Prefetching draws from the sampler one step ahead, so the
    position to checkpoint is the one before the prefetched batch: `state_dict` returns that.
    """

    def __init__(self, windows: Windows, sampler: Sampler, device: torch.device):
        self.windows, self.sampler, self.device = windows, sampler, device
        self._pin = device.type == "cuda"
        self._next: tuple[dict, torch.Tensor] | None = None

    def next(self) -> torch.Tensor:
        """This step's windows [rank's share, seq_len + 1] on the device; prefetches the next."""
        _, batch = self._next if self._next is not None else self._fetch()
        self._next = self._fetch()
        return batch

    def _fetch(self) -> tuple[dict, torch.Tensor]:
        position = self.sampler.state_dict()
        batch = self.windows.get(self.sampler.next_indices())
        if self._pin:
            batch = batch.pin_memory()
        return position, batch.to(self.device, non_blocking=True)

    def state_dict(self) -> dict:
        """The sampler's position after the batches handed out so far (not the prefetched one)."""
        if self._next is None:
            return self.sampler.state_dict()
        return self._next[0]
