"""`layerwise ladder fit` end to end on a small synthetic table: fit.json, the report in both
formats, the figures, `--json`, named targets and a caller's extra sections; and the fit half
imports no scipy until it fits."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from layerwise.cli import main
from layerwise.ladder.answer import Estimate, Multiplier, ProfileAnswer
from layerwise.ladder.report import files_of, write_ladder_report
from layerwise.ladder.synthetic import SyntheticProfile, synthetic_points
from layerwise.ladder.table import point_record, write_table
from layerwise.util.render import Paragraph, Section

POINTS = synthetic_points(
    [SyntheticProfile("isotropic"), SyntheticProfile("crown", 1.3, size_ratio=1.01)],
    (1e6, 2e6, 4e6, 8e6),
    (10.0, 40.0),
    2,
)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    """One CLI fit shared by the tests: (out, exit status, what it printed)."""
    tmp = tmp_path_factory.mktemp("ladder")
    table = write_table(tmp / "ladder.csv", [point_record(p) for p in POINTS])
    out = tmp / "fit"
    command = ["ladder", "fit", str(table), "--out", str(out), "--bootstrap", "50"]
    result = subprocess.run(
        [sys.executable, "-m", "layerwise", *command, "--target", "500M:10B", "--seed", "3"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out, result.returncode, result.stdout


def test_the_fit_writes_fit_json_the_report_and_the_figures(fitted: tuple) -> None:
    out, status, printed = fitted
    assert status == 0
    files = files_of(out)
    for path in (files.fit_json, files.markdown, files.html, *files.figures):
        assert path.stat().st_size > 0, path
    fit = json.loads(files.fit_json.read_text())
    assert fit["reference"] == "isotropic" and fit["profiles"] == ["isotropic", "crown"]
    assert fit["bootstrap"]["replicates"] == 50 and fit["bootstrap"]["seed"] == 3
    (answer,) = fit["answer"]
    assert [m["at"] for m in answer["multiplier"]] == ["the largest rung (s4)", "1B", "7B"]
    assert answer["multiplier"][2]["guess"]  # 7B is ~870x the largest trained N
    assert [(t["N"], t["D"]) for t in answer["targets"]] == [(5e8, 1e10)]
    assert fit["likelihood_ratio"]["df"] == 3
    assert fit["held_out"]["rung"] == "s4" and len(fit["held_out"]["cells"]) == 4
    assert set(fit["joint"]["intervals"]) >= {"E", "B", "beta", "A[crown]", "alpha[crown]"}
    assert "crown is better than isotropic" in " ".join(printed.split())
    assert "report:" in printed


def test_the_report_leads_with_the_answer_and_links_every_figure(fitted: tuple) -> None:
    out = fitted[0]
    report = files_of(out).markdown.read_text()
    assert report.index("## The answer against isotropic") < report.index("## The joint law")
    for title in ("Predicted at the targets", "Each profile's own law", "Held-out rung"):
        assert f"## {title}" in report
    assert "a guess" in report  # the 7B column
    for figure in files_of(out).figures:
        assert f"]({figure.relative_to(out).as_posix()})" in report
    assert "<table>" in files_of(out).html.read_text()


def test_json_prints_fit_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = write_table(tmp_path / "ladder.csv", [point_record(p) for p in POINTS])
    out = tmp_path / "fit"
    command = ["ladder", "fit", str(table), "--out", str(out), "--bootstrap", "20", "--json"]
    assert main(command) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "fit.json").read_text())


def test_extra_sections_are_in_both_formats(tmp_path: Path) -> None:
    plan = Section("The plan", (Paragraph("4 rungs x 2 budgets x 2 seeds"),))
    write_ladder_report(POINTS, tmp_path, bootstrap=20, extra_sections=[plan])
    assert "## The plan\n\n4 rungs x 2 budgets x 2 seeds" in (tmp_path / "report.md").read_text()
    assert "<h2>The plan</h2>" in (tmp_path / "report.html").read_text()


def test_the_fit_half_imports_no_scipy_until_it_fits() -> None:
    modules = ["layerwise.ladder.report", "layerwise.ladder.table", "layerwise.cli.ladder"]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "assert 'scipy' not in sys.modules, 'scipy imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (Estimate(math.inf, math.nan, math.nan), "no finite multiplier"),
        (Estimate(1.2, None, None), "one seed per cell"),
        (Estimate(1.2, math.nan, math.nan), "give no interval"),
    ],
)
def test_an_unjudged_answer_says_why(value: Estimate, why: str) -> None:
    answer = ProfileAnswer(
        "crown", "isotropic", (Multiplier("the largest rung", 1e5, 1.0, value),), value, ()
    )
    assert answer.verdict == "not judged (no interval)"
    assert why in answer.sentences()[0]


def test_fit_json_is_strict_json_when_the_law_is_degenerate() -> None:
    from layerwise.ladder.report import finite

    assert json.loads(
        json.dumps(finite({"m": [math.inf, 1.0], "x": math.nan}), allow_nan=False)
    ) == {
        "m": [None, 1.0],
        "x": None,
    }
