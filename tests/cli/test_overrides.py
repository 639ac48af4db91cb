"""Overrides as people type them, and hints for misspelled flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from layerwise.cli import build_parser, main, parse


@pytest.mark.parametrize("command", ["train", "plan", "search", "compare"])
@pytest.mark.parametrize(
    "spelling",
    [["optim.lr=1e-3"], ["--optim.lr=1e-3"], ["--optim.lr", "1e-3"]],
)
def test_each_spelling_is_the_same_override(command: str, spelling: list[str]) -> None:
    extra = ["--out", "cmp"] if command in ("compare", "search") else []
    args = parse(build_parser(), [command, "cfg.yaml", *extra, *spelling, "train.steps=5"])
    assert args.overrides == ["optim.lr=1e-3", "train.steps=5"]


def test_dotted_flag_after_an_option_joins_the_overrides() -> None:
    args = parse(build_parser(), ["train", "cfg.yaml", "--resume", "--run.dir", "runs/x"])
    assert args.resume and args.overrides == ["run.dir=runs/x"]


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["train", "cfg.yaml", "--ovewrite"], "did you mean --overwrite?"),
        (["train", "cfg.yaml", "--steps", "5"], "did you mean the config key train.steps=VALUE?"),
        (["plan", "cfg.yaml", "--seq-len=64"], "did you mean the config key data.seq_len=VALUE?"),
    ],
)
def test_an_unknown_flag_gets_the_right_spelling(
    argv: list[str], hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(build_parser(), argv)
    assert exit_info.value.code == 2
    assert hint in capsys.readouterr().err


def test_a_misspelled_dotted_flag_gets_the_loaders_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  profile: crown\n", encoding="utf-8")
    assert main(["plan", str(config), "--optim.lrr", "1e-3"]) == 2
    assert "unknown key optim.lrr (did you mean 'lr'?)" in capsys.readouterr().err
