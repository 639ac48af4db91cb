"""Config loading: presets, inheritance, overrides and the messages bad input gets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from helpers import CONFIGS
from layerwise.config.loader import (
    _coerce,
    config_hash,
    dump_config,
    experiment_differences,
    load_config,
    parse_override,
)
from layerwise.config.schema import Config, batch_plan, total_steps, warmup_steps
from layerwise.util.errors import UserError

SHAPES = ("isotropic", "vanilla", "framed", "reverse", "crown")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


MINIMAL = """
batch:
  global_batch: 8
  micro_batch: 4
train:
  steps: 10
"""


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_loads(path: Path) -> None:
    assert isinstance(load_config(path), Config)


@pytest.mark.parametrize("shape", SHAPES)
def test_paper_presets_are_the_study_setup(shape: str) -> None:
    config = load_config(CONFIGS / f"paper-18l-{shape}.yaml")
    assert config.model.profile == f"paper-18l-{shape}"
    assert config.data.seq_len == 1024
    assert (config.batch.global_batch, config.batch.micro_batch) == (384, 48)
    assert batch_plan(config, world_size=4).accum_steps == 2
    assert batch_plan(config, world_size=4).tokens_per_step == 384 * 1024
    assert total_steps(config) == 13_000
    optim = config.optim
    assert (optim.lr, optim.betas, optim.eps, optim.weight_decay, optim.grad_clip) == (
        6e-4,
        (0.9, 0.95),
        1e-8,
        0.01,
        1.0,
    )
    assert optim.schedule == "cosine"
    assert config.model.vocab_size == 50304
    assert config.run.dir == f"runs/paper-18l-{shape}"


@pytest.mark.parametrize("shape", SHAPES)
def test_tiny_presets_share_one_base(shape: str) -> None:
    config = load_config(CONFIGS / f"tiny-{shape}.yaml")
    assert config.model.profile == shape
    assert (config.model.n_layers, config.model.d_model, config.data.seq_len) == (6, 128, 128)
    assert config.data.dir == "data/python-docs"
    assert config.model.vocab_size is None
    others = load_config(CONFIGS / "tiny-isotropic.yaml")
    assert experiment_differences(others, config) == (
        [] if shape == "isotropic" else ["model.profile"]
    )


def test_inherit_is_relative_to_the_including_file(tmp_path: Path) -> None:
    write(tmp_path / "bases" / "base.yaml", MINIMAL + "optim:\n  lr: 1.0e-3\n  warmup_steps: 2\n")
    write(tmp_path / "bases" / "mid.yaml", "inherit: base.yaml\noptim:\n  lr: 2.0e-3\n")
    child = write(
        tmp_path / "runs" / "x.yaml", "inherit: ../bases/mid.yaml\ndata:\n  seq_len: 64\n"
    )
    config = load_config(child)
    assert config.optim.lr == 2e-3
    assert config.optim.warmup_steps == 2
    assert config.data.seq_len == 64
    assert config.batch.global_batch == 8


def test_inherit_cycle_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "inherit: b.yaml\n")
    write(tmp_path / "b.yaml", "inherit: a.yaml\n")
    with pytest.raises(UserError, match=r"loops"):
        load_config(tmp_path / "a.yaml")


def test_overrides_are_parsed_as_yaml(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL)
    config = load_config(
        path,
        [
            "optim.lr=3e-4",
            "model.ffn=[0.5, 4]",
            "model.vocab_size=null",
            "train.steps=null",
            "train.tokens=5.1B",
            "model.profile=paper-18l-crown",
            "optim.betas=[0.8, 0.9]",
        ],
    )
    assert config.optim.lr == 3e-4
    assert config.model.ffn == [0.5, 4.0]
    assert config.model.vocab_size is None
    assert config.train.tokens == 5_100_000_000
    assert config.model.profile == "paper-18l-crown"
    assert config.optim.betas == (0.8, 0.9)
    assert parse_override("run.dir=a=b") == ("run", "dir", "a=b")


def test_unknown_key_names_the_file_and_lists_valid_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL + "model:\n  n_layer: 3\n")
    with pytest.raises(UserError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "model.n_layer" in message and "n_layers" in message and "d_model" in message


def test_unknown_section_and_override_key(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL)
    with pytest.raises(UserError, match=r"unknown section 'optimizer'.*valid sections: model"):
        load_config(path, ["optimizer.lr=1"])
    with pytest.raises(UserError, match=r"override 'optim.learning_rate=1'.*valid keys in optim"):
        load_config(path, ["optim.learning_rate=1"])
    with pytest.raises(UserError, match=r"section\.key=value"):
        load_config(path, ["lr=1"])


def test_wrong_type_names_key_value_and_expected_type(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL + "model:\n  n_layers: six\n")
    with pytest.raises(UserError, match=r"c\.yaml: model\.n_layers = 'six' \(str\).*an integer"):
        load_config(path)
    with pytest.raises(UserError, match=r"optim\.schedule = 'linear'.*one of 'cosine'"):
        load_config(path, ["model.n_layers=6", "optim.schedule=linear"])
    with pytest.raises(UserError, match=r"run\.compile = 'yes please' \(str\).*true or false"):
        load_config(path, ["model.n_layers=6", "run.compile=yes please"])


def test_out_of_range_values(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL)
    with pytest.raises(UserError, match=r"batch\.micro_batch = 0 must be at least 1"):
        load_config(path, ["batch.micro_batch=0"])
    with pytest.raises(UserError, match=r"optim\.lr = -1\.0 must be greater than 0"):
        load_config(path, ["optim.lr=-1"])
    with pytest.raises(UserError, match=r"optim.betas .* must be in \[0, 1\)"):
        load_config(path, ["optim.betas=[0.9, 1.5]"])
    with pytest.raises(UserError, match=r"warmup_steps=10 must be less than the run's 10 steps"):
        load_config(path, ["optim.warmup_steps=10"])


def test_impossible_batch_split_gives_the_numbers(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL.replace("global_batch: 8", "global_batch: 12"))
    config = load_config(path)
    assert batch_plan(config, world_size=3).accum_steps == 1
    with pytest.raises(UserError) as info:
        batch_plan(config, world_size=2)
    assert "12 sequences" in str(info.value) and "4 x 2 = 8" in str(info.value)
    with pytest.raises(UserError, match=r"micro-batches of 5"):
        load_config(path, ["batch.micro_batch=5"])


def test_batch_and_length_in_tokens(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL)
    config = load_config(
        path,
        [
            "data.seq_len=128",
            "batch.global_batch=null",
            "batch.global_batch_tokens=2048",
            "train.steps=null",
            "train.tokens=100k",
        ],
    )
    plan = batch_plan(config, world_size=1)
    assert (plan.global_batch, plan.accum_steps, plan.tokens_per_step) == (16, 4, 2048)
    assert total_steps(config) == 49
    with pytest.raises(UserError, match=r"whole number of sequences"):
        load_config(
            path, ["data.seq_len=100", "batch.global_batch=null", "batch.global_batch_tokens=2048"]
        )
    replaced = load_config(path, ["batch.global_batch_tokens=8192"])  # the later word
    assert replaced.batch.global_batch is None and batch_plan(replaced, 1).global_batch == 8
    with pytest.raises(UserError, match=r"exactly one of train\.steps"):
        load_config(path, ["train.steps=null"])
    with pytest.raises(UserError, match=r"target_params or model\.match"):
        load_config(path, ["model.target_params=2M", "model.match=isotropic"])


def test_saved_config_loads_back_identically(tmp_path: Path) -> None:
    config = load_config(CONFIGS / "tiny-crown.yaml", ["optim.lr=1e-3", "model.ffn=[1, 2]"])
    saved = write(tmp_path / "config.yaml", dump_config(config))
    assert load_config(saved) == config


def test_hash_ignores_operational_settings() -> None:
    base = load_config(CONFIGS / "tiny-crown.yaml")
    moved = load_config(CONFIGS / "tiny-crown.yaml", ["run.dir=elsewhere", "checkpoint.keep=5"])
    changed = load_config(CONFIGS / "tiny-crown.yaml", ["optim.lr=1e-3"])
    assert config_hash(base) == config_hash(moved)
    assert config_hash(base) != config_hash(changed)
    assert experiment_differences(base, changed) == ["optim.lr"]


def test_a_missing_inherited_file_names_the_file_that_inherits_it(tmp_path: Path) -> None:
    child = write(tmp_path / "child.yaml", "inherit: nowhere.yaml\n")
    with pytest.raises(UserError, match=rf"{child}: `inherit:` names .*nowhere.yaml"):
        load_config(child)


def test_warmup_as_a_fraction_scales_with_the_run() -> None:
    """The tiny presets used to refuse runs of 30 steps or fewer unless warmup was overridden."""
    short = load_config(CONFIGS / "tiny-crown.yaml", ["train.steps=10"])
    assert warmup_steps(short.optim, total_steps(short)) == 1
    assert warmup_steps(load_config(CONFIGS / "tiny-crown.yaml").optim, 300) == 30


def test_the_command_line_is_the_later_word_for_keys_that_say_one_thing_two_ways(
    tmp_path: Path,
) -> None:
    """Issue 21: an override of warmup_steps on a config that gives warmup_fraction (every
    tiny preset) used to be refused; it replaces the file's choice, as a file replaces what it
    inherits. One layer giving both is still refused."""
    steps = load_config(CONFIGS / "tiny-crown.yaml", ["optim.warmup_steps=5"])
    assert steps.optim.warmup_fraction is None and warmup_steps(steps.optim, 300) == 5
    tokens = load_config(CONFIGS / "tiny-crown.yaml", ["train.tokens=100k"])
    assert tokens.train.steps is None and tokens.train.tokens == 100_000
    child = write(
        tmp_path / "child.yaml",
        f"inherit: {CONFIGS / 'tiny-crown.yaml'}\noptim:\n  warmup_steps: 7\n",
    )
    assert load_config(child).optim.warmup_steps == 7
    with pytest.raises(UserError, match="not both"):
        load_config(
            CONFIGS / "tiny-crown.yaml", ["optim.warmup_steps=5", "optim.warmup_fraction=0.1"]
        )
    both = write(
        tmp_path / "both.yaml", MINIMAL + "optim:\n  warmup_steps: 5\n  warmup_fraction: 0.1\n"
    )
    with pytest.raises(
        UserError, match=rf"{both}: give optim.warmup_steps or optim.warmup_fraction"
    ):
        load_config(both)


def test_experiment_keys_are_decided_per_field() -> None:
    base = load_config(CONFIGS / "tiny-crown.yaml")
    operational = load_config(
        CONFIGS / "tiny-crown.yaml",
        ["batch.micro_batch=8", "parallel.activation_checkpointing=true", "run.compile=true"],
    )
    assert config_hash(base) == config_hash(operational)
    precision = load_config(CONFIGS / "tiny-crown.yaml", ["run.precision=bf16"])
    assert experiment_differences(base, precision) == ["run.precision"]


def test_mappings_and_lists_of_mappings_are_typed_values() -> None:
    """Later features keep task lists, variants and search spaces in configs."""
    variants = [{"name": "12l", "overrides": {"model.n_layers": 12}}]
    assert _coerce(variants, list[dict[str, Any]], {}, "x.variants", "t.yaml") == variants
    assert _coerce({"a": 1}, dict[str, int], {}, "x.sizes", "t.yaml") == {"a": 1}
    with pytest.raises(UserError, match=r"t\.yaml: x\.variants = .* must be a list of mappings"):
        _coerce(variants[0], list[dict[str, Any]], {}, "x.variants", "t.yaml")
    config = load_config(CONFIGS / "tiny-crown.yaml", ["eval.tasks=[arc_easy, piqa]"])
    assert config.eval.tasks == ["arc_easy", "piqa"]
    assert config_hash(config) == config_hash(load_config(CONFIGS / "tiny-crown.yaml"))
