"""`layerwise profile`: what a user sees and what scripts parse."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import CONFIGS
from layerwise.cli import main
from layerwise.config.loader import load_config
from layerwise.profiles.shape import flops_per_token, total_params
from layerwise.training.shape import config_shape


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["profile", "show", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_show_json_has_the_documented_fields(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_json(capsys, "paper-18l-crown")
    assert set(report) == {"layers", "total_params", "non_embedding_params", "flops_per_token"}
    assert set(report["layers"][0]) == {"index", "d_ffn", "n_heads", "n_kv_heads", "params"}
    assert [row["d_ffn"] for row in report["layers"]][:3] == [3072, 768, 1024]
    assert round(report["total_params"] / 1e6, 2) == 181.91


def test_show_table_lists_every_layer_and_total(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "show", "paper-18l-reverse"]) == 0
    out = capsys.readouterr().out
    assert "179.35M parameters" in out
    assert out.count("│") > 18 * 6


def test_custom_recipe_with_budget_reports_distance(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--layers",
        "12",
        "--d-model",
        "512",
        "--ffn",
        "1,4",
        "--qkv",
        "0.5,1",
        "--vocab",
        "32000",
        "--target-params",
        "80M",
    ]
    report = run_json(capsys, *argv)
    assert len(report["layers"]) == 12
    assert abs(report["budget"]["relative_error"]) <= 0.005
    assert abs(report["total_params"] - 80_000_000) <= 0.005 * 80_000_000
    assert main(["profile", "show", *argv]) == 0
    assert "landed at" in capsys.readouterr().out


def test_match_another_preset(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_json(capsys, "crown", "--match", "paper-18l-isotropic")
    assert abs(report["total_params"] - 183_477_504) <= 0.005 * 183_477_504


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["nonsense"], "unknown profile 'nonsense'"),
        (["crown", "--target-params", "10M"], "below the embedding"),
        (["--ffn", "1,x", "--qkv", "1,1"], "--ffn '1,x'"),
        ([], "name a preset or shape"),
    ],
)
def test_bad_input_is_a_message_not_a_traceback(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    assert main(["profile", "show", *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err


def test_bad_flag_exits_non_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["profile", "show", "crown", "--layers", "many"])
    assert exc.value.code == 2


def test_plot_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "alloc.png"
    assert main(["profile", "plot", "paper-18l-isotropic", "paper-18l-crown", "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000


def test_unwritable_output_is_a_message_naming_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tests run as root, where a read-only mode does not stop writes: refuse them directly."""
    import errno
    import tempfile

    def refuse(*args: object, dir: str = "", **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", dir)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    out = tmp_path / "locked" / "alloc.png"
    assert main(["profile", "plot", "paper-18l-crown", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"-o {out}: cannot create files in {tmp_path} (Permission denied)" in err
    assert "make it writable" in err and "Traceback" not in err
    assert not out.exists()


def test_sizes_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["profile", "show", "isotropic", "--seq-len", "0"])
    assert info.value.code == 2
    assert "--seq-len: 0 must be at least 1" in capsys.readouterr().err


def test_show_a_config_file_shows_the_shape_it_trains(
    tiny_run: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The tests' run: a 3-layer Crown model, its vocabulary from the data's meta.json."""
    config = tiny_run()
    expected, _ = config_shape(load_config(config), 64)  # the Markov data's 61 ids, rounded up
    report = run_json(capsys, str(config))
    assert [row["d_ffn"] for row in report["layers"]] == [layer.d_ffn for layer in expected.layers]
    assert [row["n_heads"] for row in report["layers"]] == [
        layer.n_heads for layer in expected.layers
    ]
    assert report["total_params"] == total_params(expected)
    assert report["flops_per_token"] == flops_per_token(expected, 16)  # the config's seq_len
    assert main(["profile", "show", str(config)]) == 0
    out = capsys.readouterr().out
    assert config.name in out and f"{total_params(expected) / 1e6:.2f}M parameters" in out


def test_show_a_config_of_the_repository_with_its_own_vocabulary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = CONFIGS / "paper-18l-crown.yaml"
    expected, _ = config_shape(load_config(path), 50304)
    assert run_json(capsys, str(path))["total_params"] == total_params(expected)


def test_show_a_config_whose_vocabulary_is_unknown_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(
        f"inherit: {CONFIGS / 'tiny-crown.yaml'}\ndata:\n  dir: {tmp_path / 'nodata'}\n"
    )
    assert main(["profile", "show", str(config)]) == 2
    err = capsys.readouterr().err
    assert "model.vocab_size is null" in err and str(tmp_path / "nodata" / "meta.json") in err
    assert str(config) in err and "Traceback" not in err


def test_recipe_flags_do_not_apply_to_a_config_file(
    tiny_run: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["profile", "show", str(tiny_run()), "--layers", "4"]) == 2
    err = capsys.readouterr().err
    assert "--layers" in err and "config" in err and "Traceback" not in err


def test_a_missing_config_file_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.yaml"
    assert main(["profile", "show", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"{missing} not found" in err and "unknown profile" not in err
