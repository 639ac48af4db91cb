"""Training windows from several sources at fixed shares: the `data.sources` mixture.

The sources' windows form one index space (source i's window j is `offsets[i] + j`), so the
trainer's `DeviceBatches` reads a mixture as it reads one split. Each step's global batch is
split between the sources by largest remainder on what each is owed so far (its weight times
all windows drawn, minus what it got), so every source's running share stays within one window
of its weight: a deterministic interleaving, not a random draw whose shares wander. Within a
source, windows come in a fresh seeded permutation per pass. The position is the step and the
windows drawn from each source; like `WindowSampler`, it is all a checkpoint needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from layerwise.config.schema import DataSource
from layerwise.data.loader import TokenWindows, WindowSampler, is_count, open_split
from layerwise.data.meta import META_FILE, read_meta
from layerwise.util.errors import UserError


def source_key(index: int, mixture: bool) -> str:
    """The config key that names a source in messages: `data.sources[1]`, or `data.dir`."""
    return f"data.sources[{index}].dir" if mixture else "data.dir"


def open_sources(
    sources: Sequence[DataSource], split: str, seq_len: int, mixture: bool
) -> list[TokenWindows]:
    """Each source's windows of `split`, refusing sources whose tokenizers or token types differ
    (their ids would mean different text to one embedding)."""
    opened, first = [], None
    for i, source in enumerate(sources):
        key = source_key(i, mixture)
        try:
            meta = read_meta(source.dir)
            windows = open_split(source.dir, split, seq_len)
        except UserError as exc:
            raise UserError(f"{key} = {source.dir!r}: {exc}") from None
        if first is None:
            first = meta
        elif (meta.tokenizer_sha256, meta.dtype) != (first.tokenizer_sha256, first.dtype):
            raise UserError(
                f"{key}: {Path(source.dir) / META_FILE} is tokenized with {meta.tokenizer} "
                f"(sha256 {meta.tokenizer_sha256[:12]}, {meta.dtype}) but {sources[0].dir} with "
                f"{first.tokenizer} (sha256 {first.tokenizer_sha256[:12]}, {first.dtype}); "
                "prepare every source with the same tokenizer"
            )
        opened.append(windows)
    return opened


class MixedWindows:
    """Several sources' windows as one index space, for `DeviceBatches`."""

    def __init__(self, sources: Sequence[TokenWindows]) -> None:
        self.sources = list(sources)
        self.seq_len = self.sources[0].seq_len
        self.offsets = np.cumsum([0, *(len(windows) for windows in self.sources)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def get(self, indices: np.ndarray) -> torch.Tensor:
        """Windows `indices` as int64 [len(indices), seq_len + 1], in the order given."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"window index out of range [0, {len(self)}) of the mixture")
        which = np.searchsorted(self.offsets, indices, side="right") - 1
        # assembled in numpy: a torch index_put per source costs milliseconds on a busy CPU
        batch = np.empty((len(indices), self.seq_len + 1), dtype=np.int64)
        for i, windows in enumerate(self.sources):
            rows = np.flatnonzero(which == i)
            if rows.size:
                batch[rows] = windows.get(indices[rows] - self.offsets[i]).numpy()
        return torch.from_numpy(batch)


class MixtureSampler:
    """Which windows of the mixture each rank reads at each step: deterministic (a function of
    seed and position), sharded like `WindowSampler` (rank r reads its contiguous share of the
    step's shuffled global batch) and resumable."""

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float],
        global_batch: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        # the checks of rank, batch and seed are WindowSampler's
        WindowSampler(global_batch, global_batch, seed, rank, world_size)
        self.sizes, self.weights = list(sizes), list(weights)
        self.offsets = np.cumsum([0, *self.sizes])
        self.global_batch, self.seed = global_batch, seed
        self.rank, self.world_size = rank, world_size
        self.step = 0
        self.drawn = [0] * len(self.sizes)
        self._orders: dict[int, tuple[int, np.ndarray]] = {}

    def counts(self) -> list[int]:
        """The next step's windows per source: largest remainder on what each is owed."""
        batch = self.global_batch
        owed = [
            (self.step + 1) * batch * w - d for w, d in zip(self.weights, self.drawn, strict=True)
        ]
        counts = [max(math.floor(o), 0) for o in owed]
        order = sorted(range(len(owed)), key=lambda i: (counts[i] - owed[i], i))
        for k in range(batch - sum(counts)):  # the largest remainders get one more window
            counts[order[k % len(order)]] += 1
        for i in reversed(order):  # a source owed less than nothing made the others overshoot
            if sum(counts) > batch and counts[i]:
                counts[i] -= 1
        return counts

    def next_indices(self) -> np.ndarray:
        """This rank's window indices for the next step (and advance the position)."""
        parts = []
        for i, count in enumerate(self.counts()):
            parts.append(self.offsets[i] + self._take(i, self.drawn[i], count))
            self.drawn[i] += count
        rng = np.random.default_rng([self.seed, self.step])
        batch = np.concatenate(parts)[rng.permutation(self.global_batch)]
        self.step += 1
        share = self.global_batch // self.world_size
        return batch[self.rank * share : (self.rank + 1) * share]

    def _take(self, source: int, start: int, count: int) -> np.ndarray:
        """Positions start .. start+count of the source's passes, each pass a new permutation."""
        size, taken = self.sizes[source], []
        position = start
        while position < start + count:
            epoch, cursor = divmod(position, size)
            end = min(size, cursor + start + count - position)
            taken.append(self._permutation(source, epoch)[cursor:end])
            position += end - cursor
        return np.concatenate(taken) if taken else np.zeros(0, dtype=np.int64)

    def _permutation(self, source: int, epoch: int) -> np.ndarray:
        cached = self._orders.get(source)
        if cached is None or cached[0] != epoch:
            rng = np.random.default_rng([self.seed, source, epoch])
            cached = self._orders[source] = (epoch, rng.permutation(self.sizes[source]))
        return cached[1]

    def state_dict(self) -> dict:
        return {"step": int(self.step), "drawn": [int(d) for d in self.drawn]}

    def load_state_dict(self, state: dict) -> None:
        """Resume at a saved position; refuse one that cannot come from these sources."""
        step, drawn = state.get("step"), state.get("drawn")
        if (
            not is_count(step)
            or not isinstance(drawn, list)
            or len(drawn) != len(self.sizes)
            or not all(is_count(d) and d >= 0 for d in drawn)
            or sum(drawn) != step * self.global_batch
        ):
            raise UserError(
                f"sampler state {state!r} does not fit a mixture of {len(self.sizes)} sources: "
                "was the checkpoint made with other data.sources?"
            )
        self.step, self.drawn = step, list(drawn)


def repetition(
    sources: Sequence[DataSource],
    sizes: Sequence[int],
    windows_needed: int,
    max_epochs: float | None,
    mixture: bool,
) -> list[str]:
    """Notes for sources the run reads more than once; a UserError where one would need more
    passes than `data.max_epochs` allows (repeated data is a different experiment than fresh
    data, so exceeding a declared limit is refused, not warned about)."""
    notes = []
    for i, (source, size) in enumerate(zip(sources, sizes, strict=True)):
        needed = math.ceil(windows_needed * source.weight)
        passes = needed / size
        numbers = (
            f"source {source.name!r} ({source.dir}) needs {needed:,} training windows, holds "
            f"{size:,}: {passes:.2f} passes"
        )
        if max_epochs is not None and passes > max_epochs:
            key = source_key(i, mixture)
            raise UserError(
                f"data.max_epochs = {max_epochs:g}: {numbers} ({key}); add data, lower its "
                "weight, shorten the run, or raise data.max_epochs"
            )
        if passes > 1:
            notes.append(f"{numbers}, repeated")
    return notes
