"""`layerwise analyze` on tiny trained runs: outputs, the comparison section, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import tiny_run_config
from layerwise.analysis import analyze_comparison
from layerwise.cli import main
from layerwise.compare.cells import ComparisonPlan, cell_path, write_manifest
from layerwise.config.loader import load_config
from layerwise.launch import train

FAST = ["--windows", "10", "--cka-tokens", "32", "--entropy-windows", "2"]


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory, markov_data: Path) -> Path:
    """A two-profile comparison laid out as `layerwise compare` leaves it, trained directly."""
    out = tmp_path_factory.mktemp("cmp")
    changes = {"train": {"steps": 6, "seed": 0, "val_interval": 6}}
    changes |= {"checkpoint": {"interval": 6, "keep": 1}}
    config = tiny_run_config(out / "tiny.yaml", markov_data, out / "unused", changes)
    profiles = ("isotropic", "crown")
    for profile in profiles:
        run_dir = out / cell_path({"profile": profile, "seed": 0})
        overrides = [f"model.profile={profile}", f"run.dir={run_dir}"]
        if profile == "isotropic":
            overrides.append("model.n_layers=2")  # different depths and widths are fine
        train(load_config(config, overrides))
    write_manifest(ComparisonPlan(str(config), profiles, (0,), None, "params", out, ()))
    return out


def test_analyze_writes_json_figures_and_words(
    comparison: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    crown, iso = comparison / "crown" / "seed0", comparison / "isotropic" / "seed0"
    out = tmp_path / "analysis"
    assert (
        main(["analyze", str(crown), str(iso), "--against", str(iso), "--out", str(out), *FAST])
        == 0
    )
    result = json.loads((out / "analysis.json").read_text())
    crown_run, iso_run = result["runs"]
    summary = json.loads((crown / "summary.json").read_text())
    assert crown_run["val_loss"] == pytest.approx(summary["final_val_loss"], rel=1e-5)
    assert crown_run["logit_lens_loss"][-1] == pytest.approx(crown_run["val_loss"], rel=1e-6)
    assert (crown_run["n_layers"], iso_run["n_layers"]) == (3, 2)
    for run in result["runs"]:
        for key, value in run.items():
            if isinstance(value, list) and key != "layers":
                assert len(value) == run["n_layers"], key
    assert [len(row) for row in result["cross"][0]["cka"]] == [2, 2, 2]
    assert len(result["cross"]) == 1  # the reference is not compared with itself
    for name in (
        "logit_lens",
        "importance",
        "update_ratios",
        "cka",
        "cka_cross",
        "attention_entropy",
    ):
        assert (out / f"{name}.png").stat().st_size > 1000
    words = (out / "analysis.md").read_text()
    assert "## crown" in words and "![CKA across runs](cka_cross.png)" in words
    assert "analysis.md" in capsys.readouterr().out


def test_analyze_comparison_returns_a_section_with_links_under_out(comparison: Path) -> None:
    from layerwise.analysis import AnalysisOptions

    section = analyze_comparison(comparison, AnalysisOptions(windows=4, cka_tokens=16))
    assert section.startswith("## Layer analysis")
    assert "(analysis/logit_lens.png)" in section and "crown vs isotropic" in section
    assert (comparison / "analysis" / "analysis.json").is_file()


def test_a_run_without_checkpoints_is_refused(
    comparison: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(comparison / "crown" / "seed0" / "config.yaml", empty / "config.yaml")
    assert main(["analyze", str(empty), *FAST]) == 2
    assert f"{empty} has no checkpoint" in capsys.readouterr().err


def test_against_a_run_of_another_tokenizer_is_refused(
    comparison: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    shutil.copytree(comparison / "isotropic" / "seed0", other)
    meta_path = other / "tokenizer" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["tokenizer"]["sha256"] = "f" * 64
    meta_path.write_text(json.dumps(meta))
    crown = comparison / "crown" / "seed0"
    assert (
        main(["analyze", str(crown), "--against", str(other), "--out", str(tmp_path), *FAST]) == 2
    )
    err = capsys.readouterr().err
    assert f"--against {other}" in err and "same tokenizer" in err
