"""Windows and sampler: exact windows, a seeded order, sharding without overlap, exact resume."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import write_token_dir
from layerwise.data.loader import TokenWindows, WindowSampler, open_split, validation_indices
from layerwise.util.errors import UserError


def write_split_dir(directory: Path, train: np.ndarray, val: np.ndarray) -> Path:
    vocab = 80_000 if train.dtype == np.uint32 else 1000
    return write_token_dir(directory, {"train": train, "val": val}, vocab)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_windows_overlap_by_one_token(tmp_path: Path, dtype: type) -> None:
    tokens = (np.arange(1001) * 7 % 997).astype(dtype)
    tokens.tofile(tmp_path / "t.bin")
    windows = TokenWindows(tmp_path / "t.bin", seq_len=10, dtype=dtype)
    assert len(windows) == 100
    batch = windows.get(np.array([0, 99, 5]))
    assert batch.dtype == torch.int64 and batch.shape == (3, 11)
    assert batch[0].tolist() == tokens[0:11].tolist()
    assert batch[1].tolist() == tokens[990:1001].tolist()
    assert batch[2].tolist() == tokens[50:61].tolist()
    with pytest.raises(IndexError):
        windows.get(np.array([100]))


def test_windows_pickle_without_their_data(tmp_path: Path) -> None:
    np.arange(100_001, dtype=np.uint16).tofile(tmp_path / "t.bin")
    windows = TokenWindows(tmp_path / "t.bin", seq_len=100, dtype="uint16")
    windows.get(np.array([3]))
    payload = pickle.dumps(windows)
    assert len(payload) < 2000
    assert torch.equal(pickle.loads(payload).get(np.array([3, 7])), windows.get(np.array([3, 7])))


def test_open_split_reads_dtype_from_meta(tmp_path: Path) -> None:
    train = np.arange(70_000, 70_041, dtype=np.uint32)
    data_dir = write_split_dir(tmp_path / "d", train, np.arange(5, dtype=np.uint32))
    windows = open_split(data_dir, "train", seq_len=8)
    assert len(windows) == 5
    assert windows.get(np.array([4]))[0].tolist() == list(range(70_032, 70_041))


def test_open_split_refuses_too_few_tokens(tmp_path: Path) -> None:
    data_dir = write_split_dir(
        tmp_path, np.arange(50, dtype=np.uint16), np.arange(8, dtype=np.uint16)
    )
    with pytest.raises(UserError, match=r"fewer than seq_len\+1 = 9 tokens in .*val\.bin"):
        open_split(data_dir, "val", seq_len=8)
    with pytest.raises(UserError, match="no split 'test'"):
        open_split(data_dir, "test", seq_len=8)


def test_open_split_refuses_a_modified_file(tmp_path: Path) -> None:
    data_dir = write_split_dir(
        tmp_path, np.arange(50, dtype=np.uint16), np.arange(9, dtype=np.uint16)
    )
    np.arange(40, dtype=np.uint16).tofile(data_dir / "train.bin")
    with pytest.raises(UserError, match=r"holds 40 tokens but .*meta\.json says 50"):
        open_split(data_dir, "train", seq_len=8)
    (data_dir / "train.bin").write_bytes(b"\0" * 101)
    with pytest.raises(UserError, match="not a whole number of uint16 tokens"):
        open_split(data_dir, "train", seq_len=8)


def steps(sampler: WindowSampler, n: int) -> list[list[int]]:
    return [sampler.next_indices().tolist() for _ in range(n)]


def test_order_is_fixed_by_the_seed() -> None:
    assert steps(WindowSampler(50, 8, seed=1), 20) == steps(WindowSampler(50, 8, seed=1), 20)
    assert steps(WindowSampler(50, 8, seed=1), 20) != steps(WindowSampler(50, 8, seed=2), 20)


def test_each_epoch_is_a_permutation_without_its_leftover() -> None:
    sampler = WindowSampler(10, 4, seed=0)
    epoch0 = steps(sampler, 2)
    assert len(set(epoch0[0] + epoch0[1])) == 8
    assert sampler.state_dict() == {"epoch": 0, "cursor": 8}
    epoch1 = steps(sampler, 2)
    assert sampler.state_dict() == {"epoch": 1, "cursor": 8}
    assert len(set(epoch1[0] + epoch1[1])) == 8 and epoch1 != epoch0


def test_ranks_split_the_single_process_batch() -> None:
    single = WindowSampler(37, 6, seed=5)
    ranks = [WindowSampler(37, 6, seed=5, rank=r, world_size=3) for r in range(3)]
    for _ in range(15):
        whole = single.next_indices()
        shares = [sampler.next_indices() for sampler in ranks]
        assert all(share.size == 2 for share in shares)
        assert np.array_equal(np.concatenate(shares), whole)
        assert len(set(np.concatenate(shares).tolist())) == 6


def test_state_round_trip_resumes_exactly() -> None:
    reference = WindowSampler(23, 4, seed=9, rank=1, world_size=2)
    expected = steps(reference, 14)
    first = WindowSampler(23, 4, seed=9, rank=1, world_size=2)
    done = steps(first, 6)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = WindowSampler(23, 4, seed=9, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert done + steps(resumed, 8) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_windows": 100, "global_batch": 6, "world_size": 4}, "multiple of the 4 processes"),
        ({"n_windows": 3, "global_batch": 4}, "only 3 training windows"),
        ({"n_windows": 10, "global_batch": 4, "rank": 2, "world_size": 2}, "rank 2"),
    ],
)
def test_sampler_refuses_impossible_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        WindowSampler(seed=0, **kwargs)


def test_sampler_refuses_a_foreign_state() -> None:
    sampler = WindowSampler(10, 2, seed=0)
    for state in ({"epoch": 0, "cursor": 11}, {"epoch": -1, "cursor": 0}, {"cursor": 2}):
        with pytest.raises(UserError, match="does not fit 10 windows"):
            sampler.load_state_dict(state)


def test_validation_indices_are_the_first_windows() -> None:
    assert validation_indices(100, 4).tolist() == [0, 1, 2, 3]
    assert validation_indices(3, 10).tolist() == [0, 1, 2]
