"""The data.sources mixture: shares, determinism, resumption, sharding and bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import markov_tokens, write_token_dir
from layerwise.config.loader import config_from_dict, config_hash, config_to_dict, experiment_dict
from layerwise.config.schema import DataSource, data_sources
from layerwise.data.mixture import MixedWindows, MixtureSampler, open_sources, repetition
from layerwise.util.errors import UserError

SIZES, WEIGHTS, BATCH = [300, 120, 45], [0.6, 0.3, 0.1], 16


def source_of(sampler: MixtureSampler, indices: np.ndarray) -> np.ndarray:
    return np.searchsorted(sampler.offsets, indices, side="right") - 1


def test_each_source_gets_its_weight_within_half_a_percent() -> None:
    sampler = MixtureSampler(SIZES, WEIGHTS, BATCH, seed=0)
    drawn = np.concatenate([sampler.next_indices() for _ in range(50)])
    shares = np.bincount(source_of(sampler, drawn), minlength=3) / drawn.size
    assert np.all(np.abs(shares - WEIGHTS) < 0.005), shares
    # and after every single step, no source is more than one window off its share
    sampler = MixtureSampler(SIZES, [0.55, 0.44, 0.01], BATCH, seed=0)
    for step in range(1, 40):
        sampler.next_indices()
        owed = np.array([0.55, 0.44, 0.01]) * step * BATCH
        assert np.all(np.abs(np.array(sampler.drawn) - owed) < 1.0)


def test_order_is_a_function_of_seed_and_position() -> None:
    first, second = (MixtureSampler(SIZES, WEIGHTS, BATCH, seed=5) for _ in range(2))
    run = [first.next_indices() for _ in range(30)]
    assert all(np.array_equal(a, second.next_indices()) for a in run)
    other = MixtureSampler(SIZES, WEIGHTS, BATCH, seed=6)
    assert not np.array_equal(run[0], other.next_indices())


def test_resumes_exactly_from_its_state() -> None:
    whole = MixtureSampler(SIZES, WEIGHTS, BATCH, seed=1)
    expected = [whole.next_indices() for _ in range(40)]
    killed = MixtureSampler(SIZES, WEIGHTS, BATCH, seed=1)
    for _ in range(17):
        killed.next_indices()
    resumed = MixtureSampler(SIZES, WEIGHTS, BATCH, seed=1)
    resumed.load_state_dict(killed.state_dict())
    assert all(np.array_equal(a, resumed.next_indices()) for a in expected[17:])
    with pytest.raises(UserError, match=r"other data\.sources"):
        resumed.load_state_dict({"step": 3, "drawn": [1, 2]})


def test_ranks_read_disjoint_shares_of_the_same_global_batch() -> None:
    single = MixtureSampler(SIZES, WEIGHTS, BATCH, seed=2)
    ranks = [MixtureSampler(SIZES, WEIGHTS, BATCH, 2, rank, 2) for rank in range(2)]
    for _ in range(10):
        joined = np.concatenate([rank.next_indices() for rank in ranks])
        assert np.array_equal(joined, single.next_indices())


def test_every_window_of_a_source_is_read_once_per_pass() -> None:
    sampler = MixtureSampler([40, 40], [0.5, 0.5], 8, seed=0)
    drawn = np.concatenate([sampler.next_indices() for _ in range(10)])
    assert sorted(drawn.tolist()) == list(range(80))


@pytest.fixture(scope="module")
def two_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    base = tmp_path_factory.mktemp("sources")
    return [
        write_token_dir(
            base / name,
            {"train": markov_tokens(n, seed), "val": markov_tokens(200, seed + 10)},
            61,
        )
        for name, n, seed in (("a", 1000, 0), ("b", 500, 1))
    ]


def test_mixed_windows_read_each_source_in_the_order_asked(two_dirs: list[Path]) -> None:
    sources = [DataSource(d.name, str(d), 0.5) for d in two_dirs]
    opened = open_sources(sources, "train", 16, mixture=True)
    mixed = MixedWindows(opened)
    last_a = len(opened[0]) - 1
    batch = mixed.get(np.array([len(opened[0]) + 2, 0, last_a]))
    assert batch[0].equal(opened[1].get(np.array([2]))[0])
    assert batch[1].equal(opened[0].get(np.array([0]))[0])
    assert batch[2].equal(opened[0].get(np.array([last_a]))[0])


def test_missing_dirs_and_other_tokenizers_are_refused_naming_the_key(
    two_dirs: list[Path], tmp_path: Path
) -> None:
    missing = [DataSource("a", str(two_dirs[0]), 0.5), DataSource("x", str(tmp_path / "x"), 0.5)]
    with pytest.raises(UserError, match=r"data.sources\[1\].dir .*meta.json not found"):
        open_sources(missing, "train", 16, mixture=True)
    other = write_token_dir(tmp_path / "big", {"train": markov_tokens(500, 2)}, 70_000)
    mixed = [DataSource("a", str(two_dirs[0]), 0.5), DataSource("big", str(other), 0.5)]
    with pytest.raises(UserError, match=r"data.sources\[1\].dir: .*meta.json is tokenized"):
        open_sources(mixed, "train", 16, mixture=True)


def test_more_passes_than_max_epochs_are_refused_with_the_numbers() -> None:
    sources = [DataSource("a", "a", 0.75), DataSource("b", "b", 0.25)]
    notes = repetition(sources, [100, 10], 80, None, mixture=True)
    assert notes == ["source 'b' (b) needs 20 training windows, holds 10: 2.00 passes, repeated"]
    with pytest.raises(UserError, match=r"'b' .*needs 20 .*holds 10: 2.00 passes.*sources\[1\]"):
        repetition(sources, [100, 10], 80, 1.5, mixture=True)


def mixture_config(sources: object, **data: object) -> dict:
    return {
        "batch": {"global_batch": 8},
        "train": {"steps": 3},
        "data": {"sources": sources, **data},
    }


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ([{"dir": "a", "weight": -1}], r"data.sources\[0\].weight = -1 must be"),
        ([{"dir": "a", "weight": 1}, {"dir": "b", "weight": float("nan")}], r"sources\[1\].weight"),
        ([{"dir": "a", "weight": 0}], "every data.sources weight is 0"),
        ([{"dir": "a", "weight": 1}, {"dir": "x/a", "weight": 1}], r"sources\[1\] is named 'a'"),
        ([{"dir": "a", "wieght": 1}], r"data.sources\[0\].wieght \(did you mean 'weight'"),
        ([{"weight": 1}], r"data.sources\[0\].dir must name"),
        ([], "data.sources is empty"),
    ],
)
def test_bad_sources_are_refused_naming_the_key(sources: object, message: str) -> None:
    with pytest.raises(UserError, match=message):
        config_from_dict(mixture_config(sources), default_source="run.yaml")


def test_sources_are_part_of_the_experiment_but_leave_old_hashes_alone() -> None:
    plain = config_from_dict({"batch": {"global_batch": 8}, "train": {"steps": 3}})
    one = config_from_dict(mixture_config([{"dir": "a", "weight": 1}]))
    other = config_from_dict(mixture_config([{"dir": "a", "weight": 1}, {"dir": "b", "weight": 1}]))
    assert len({config_hash(plain), config_hash(one), config_hash(other)}) == 3
    assert "sources" not in experiment_dict(plain)["data"]
    assert [s.weight for s in data_sources(other.data)] == [0.5, 0.5]


def test_data_dir_beside_sources_in_one_file_is_refused_but_a_saved_config_loads() -> None:
    both = mixture_config([{"dir": "a", "weight": 1}], dir="elsewhere")
    with pytest.raises(UserError, match=r"run.yaml: give data.dir or data.sources, not both"):
        config_from_dict(both, default_source="run.yaml")
    saved = config_to_dict(config_from_dict(mixture_config([{"dir": "a", "weight": 1}])))
    assert config_from_dict(saved).data.sources == [{"dir": "a", "weight": 1}]
