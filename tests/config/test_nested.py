"""Sections inside sections (`run.wandb`): written as mappings, overridden as dotted keys,
checked with the same hints, saved and reloaded, and hashed by their metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers import CONFIGS
from layerwise.cli import build_parser, main, parse
from layerwise.config.loader import (
    _experiment,
    _leaves,
    config_hash,
    config_keys,
    config_value,
    dump_config,
    experiment_differences,
    load_config,
    parse_override,
)
from layerwise.util.errors import UserError

TINY = CONFIGS / "tiny-crown.yaml"

TINY_HASH = "3719cc4f5f236e3f"
"""tiny-crown.yaml's config hash before `run.wandb` existed: runs hashed then still match."""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_a_nested_section_is_a_mapping_and_inherits_key_by_key(tmp_path: Path) -> None:
    write(
        tmp_path / "base.yaml", f"inherit: {TINY}\nrun:\n  wandb:\n    project: p\n    tags: [a]\n"
    )
    child = write(tmp_path / "child.yaml", "inherit: base.yaml\nrun:\n  wandb:\n    entity: me\n")
    config = load_config(child, ["run.wandb.enabled=true", "run.wandb.tags=[b, c]"])
    wandb = config.run.wandb
    assert (wandb.enabled, wandb.project, wandb.entity, wandb.tags) == (True, "p", "me", ["b", "c"])
    assert config.run.device == "cpu", "the rest of the run section is inherited as before"


def test_a_section_may_be_overridden_as_a_mapping() -> None:
    config = load_config(TINY, ["run.wandb={enabled: true, mode: offline}"])
    assert (config.run.wandb.enabled, config.run.wandb.mode) == (True, "offline")
    assert parse_override("run.wandb.project=x") == ("run", "wandb.project", "x")


def test_nested_keys_round_trip_through_the_saved_config(tmp_path: Path) -> None:
    config = load_config(TINY, ["run.wandb.project=p", "run.wandb.tags=[x]", "optim.lr=1e-3"])
    saved = write(tmp_path / "config.yaml", dump_config(config))
    assert load_config(saved) == config
    assert config_value(config, "run.wandb.tags") == ["x"]


def test_wandb_settings_leave_the_experiment_hash_as_it_was() -> None:
    plain = load_config(TINY)
    watched = load_config(
        TINY,
        [
            "run.wandb.enabled=true",
            "run.wandb.project=p",
            "run.wandb.group=g",
            "run.wandb.mode=offline",
        ],
    )
    assert config_hash(plain) == config_hash(watched) == TINY_HASH
    assert experiment_differences(plain, watched) == []
    changed = load_config(TINY, ["run.wandb.enabled=true", "optim.lr=1e-3"])
    assert experiment_differences(plain, changed) == ["optim.lr"]


@dataclass
class Inner:
    size: int = 1
    place: str = field(default="here", metadata={"operational": True})


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    watched: Inner = field(default_factory=Inner, metadata={"operational": True})


def test_a_nested_section_is_hashed_by_its_fields_metadata() -> None:
    """`run.wandb` is operational as a whole; a nested section that is not keeps its experiment
    keys and drops its operational ones, and its keys are compared as dotted keys."""
    body = {"inner": {"size": 2, "place": "there"}, "watched": {"size": 3, "place": "x"}}
    assert _experiment(Outer, body) == {"inner": {"size": 2}}
    assert _leaves(Outer, _experiment(Outer, body)) == {"inner.size": 2}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "run.wandb.projct=x",
            r"override 'run.wandb.projct=x': unknown key run.wandb.projct \(did you mean "
            r"'project'\?\); valid keys in run.wandb: enabled, project",
        ),
        ("wandb.project=x", r"unknown section 'wandb' \(did you mean 'run.wandb.project'\?\)"),
        ("run.wandb.mode=cloud", r"run.wandb.mode = 'cloud' .* one of 'online', 'offline'"),
        ("run.wandb=3", r"section 'run.wandb' must be a mapping of keys to values, got 3"),
        ("optim.lr.x=1", r"optim.lr is a value, not a section"),
        ("run.wandb..project=x", r"must look like section.key=value"),
    ],
)
def test_bad_nested_keys_get_the_loaders_messages(override: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_config(TINY, [override])


def test_an_unknown_nested_key_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", f"inherit: {TINY}\nrun:\n  wandb:\n    entitty: me\n")
    with pytest.raises(UserError) as info:
        load_config(path)
    assert f"{path}: unknown key run.wandb.entitty (did you mean 'entity'?)" in str(info.value)
    top = write(tmp_path / "top.yaml", f"inherit: {TINY}\nwandb:\n  project: p\n")
    with pytest.raises(UserError, match=r"unknown section 'wandb' \(did you mean 'run.wandb'\?\)"):
        load_config(top)


@pytest.mark.parametrize(
    "spelling",
    [["run.wandb.project=foo"], ["--run.wandb.project=foo"], ["--run.wandb.project", "foo"]],
)
def test_each_spelling_of_a_nested_override(spelling: list[str]) -> None:
    args = parse(build_parser(), ["train", "cfg.yaml", *spelling])
    assert args.overrides == ["run.wandb.project=foo"]
    assert load_config(TINY, args.overrides).run.wandb.project == "foo"


def test_the_flag_hint_finds_nested_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert "run.wandb.entity" in config_keys() and "run.wandb" not in config_keys()
    with pytest.raises(SystemExit):
        parse(build_parser(), ["train", "cfg.yaml", "--entity", "me"])
    assert "did you mean the config key run.wandb.entity=VALUE?" in capsys.readouterr().err
    assert main(["plan", str(TINY), "--run.wandb.enabld", "true"]) == 2
    assert "unknown key run.wandb.enabld (did you mean 'enabled'?)" in capsys.readouterr().err
