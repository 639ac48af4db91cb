"""`layerwise report` from the files a comparison left: per-run numbers, the run details, damaged
files named instead of a traceback, and no torch import."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from helpers import TINY_COMPARE
from layerwise.cli import main
from layerwise.runs.files import RunSummary

PROFILES = ("isotropic", "crown")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, markov_data: Path) -> Path:
    """A finished comparison of two profiles x two seeds, 4 steps each; copy it to change it."""
    root = tmp_path_factory.mktemp("report")
    config = root / "tiny.yaml"
    config.write_text(TINY_COMPARE.replace("data:\n", f"data:\n  dir: {markov_data}\n", 1))
    out = root / "cmp"
    argv = ["compare", str(config), "--profiles", ",".join(PROFILES), "--seeds", "0,1"]
    assert main([*argv, "--out", str(out), "train.steps=4"]) == 0
    return out


@pytest.fixture()
def comparison(finished: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "cmp"))


def test_runs_csv_has_one_row_per_run(finished: Path) -> None:
    with open(finished / "runs.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["profile"], r["seed"]) for r in rows] == [
        (profile, str(seed)) for seed in (0, 1) for profile in PROFILES
    ]
    for row in rows:
        summary = RunSummary.load(finished / row["run_dir"] / "summary.json")
        assert (summary.profile, str(summary.seed)) == (row["profile"], row["seed"])
        assert float(row["final_val_ppl"]) == summary.final_val_ppl
        assert float(row["final_val_loss"]) == summary.final_val_loss
        assert float(row["tokens_per_s"]) == summary.mean_tokens_per_s
        assert (int(row["params"]), int(row["steps"])) == (summary.params, 4)
        assert int(row["tokens"]) == summary.tokens
        assert row["mfu"] == ""  # not defined on a CPU: empty, NaN in pandas


def test_the_html_report_has_the_run_details(finished: Path) -> None:
    page = (finished / "report.html").read_text()
    assert "Each run: 4 steps" in page and "Hardware:" in page
    assert "Each run: 4 steps" in (finished / "report.md").read_text()


@pytest.mark.parametrize(
    "text", ["{not json", '{"profiles": "crown"}', json.dumps({"config": 1, "profiles": []})]
)
def test_a_damaged_manifest_names_the_file_and_the_fix(
    comparison: Path, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (comparison / "comparison.json").write_text(text)
    assert main(["report", str(comparison)]) == 2
    err = capsys.readouterr().err
    assert str(comparison / "comparison.json") in err and "rerun the `layerwise compare" in err


def test_a_damaged_summary_names_the_file(
    comparison: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = comparison / "crown" / "seed1" / "summary.json"
    summary.write_text('{"run_dir": "x"}')
    assert main(["report", str(comparison)]) == 2
    assert f"{summary} is unreadable or not a run summary" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("key", "value"),
    [("steps", "x"), ("params", "x"), ("final_val_loss", "x"), ("layers", "x"), ("seed", True)],
)
def test_a_summary_field_of_the_wrong_type_names_the_file_and_the_field(
    comparison: Path, key: str, value: object, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = comparison / "crown" / "seed1" / "summary.json"
    fields = json.loads(summary.read_text())
    summary.write_text(json.dumps({**fields, key: value}))
    assert main(["report", str(comparison)]) == 2
    err = capsys.readouterr().err
    assert f"{summary} is unreadable or not a run summary" in err and f"{key!r}" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "content", [b"\xff\xfe binary \x00", b'{"type": "train", "step": 1}\n', b"[1, 2]\n", b""]
)
def test_an_unreadable_metrics_log_names_the_file(
    comparison: Path, content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    log = comparison / "isotropic" / "seed0" / "metrics.jsonl"
    log.write_bytes(content)
    assert main(["report", str(comparison)]) == 2
    err = capsys.readouterr().err
    assert str(log) in err and "rerun the compare command" in err


def test_rerunning_compare_repairs_a_damaged_manifest(
    finished: Path, comparison: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (comparison / "comparison.json").write_text("{not json")
    config = finished.parent / "tiny.yaml"
    argv = ["compare", str(config), "--profiles", ",".join(PROFILES), "--seeds", "0,1"]
    assert main([*argv, "--out", str(comparison), "train.steps=4"]) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 4
    assert main(["report", str(comparison)]) == 0


def test_downstream_scores_get_their_section_in_both_formats(comparison: Path) -> None:
    """Runs that scored tasks in the loop (here written into their files as the trainer does)
    add a downstream table and figure to the comparison's report."""
    for seed in (0, 1):
        for profile, accuracy in (("isotropic", 0.30), ("crown", 0.34)):
            run_dir = comparison / profile / f"seed{seed}"
            score = {"n": 500, "primary": "acc", "acc": accuracy, "len_norm": accuracy}
            score |= {"bpb": 1.0, "chance": 0.25, "majority": 0.25}
            record = {"type": "downstream", "step": 4, "tokens": 4096, "tasks": {"sciq": score}}
            with open(run_dir / "metrics.jsonl", "a") as log:
                log.write(json.dumps(record) + "\n")
            summary = json.loads((run_dir / "summary.json").read_text())
            summary["downstream"] = {k: record[k] for k in ("step", "tokens", "tasks")}
            (run_dir / "summary.json").write_text(json.dumps(summary))
    assert main(["report", str(comparison)]) == 0
    markdown = (comparison / "report.md").read_text()
    assert "## Downstream tasks" in markdown and "| sciq | acc |" in markdown
    assert "<h2>Downstream tasks</h2>" in (comparison / "report.html").read_text()


def test_report_analyze_adds_the_layer_analysis(comparison: Path) -> None:
    assert main(["report", str(comparison), "--analyze"]) == 0
    assert (comparison / "analysis" / "analysis.json").is_file()
    markdown = (comparison / "report.md").read_text()
    assert "## Layer analysis" in markdown and "](analysis/logit_lens.png)" in markdown
    assert "<h2>Layer analysis</h2>" in (comparison / "report.html").read_text()


def test_runs_on_several_sources_get_a_table_of_their_validation(comparison: Path) -> None:
    """Per-source validation (written into the summaries as the trainer does for data.sources)
    gives the report a row x source table; runs on one data directory get none (above)."""
    assert "Validation by source" not in (comparison / "report.md").read_text()
    for seed in (0, 1):
        for profile, web in (("isotropic", 4.0), ("crown", 3.0)):
            path = comparison / profile / f"seed{seed}" / "summary.json"
            summary = json.loads(path.read_text())
            summary["final_val_sources"] = {
                "web": {"loss": web + seed, "ppl": 1.0},
                "wiki": {"loss": 5.0, "ppl": 1.0},
            }
            path.write_text(json.dumps(summary))
    assert main(["report", str(comparison)]) == 0
    markdown = (comparison / "report.md").read_text()
    assert "## Validation by source" in markdown
    assert "| web | wiki |" in markdown
    assert "| 3.5000 | 5.0000 |" in markdown and "| 4.5000 | 5.0000 |" in markdown
