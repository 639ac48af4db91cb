"""`layerwise runs` and `layerwise plot`: single runs seen on their own, without torch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import PNG_MAGIC, TINY_COMPARE
from layerwise.cli import main
from layerwise.runs.listing import list_runs, plot_runs
from layerwise.util.errors import UserError


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, markov_data: Path) -> Path:
    """A directory of four runs: finished, interrupted at step 2 of 4, not started, unreadable."""
    root = tmp_path_factory.mktemp("runs")
    config = root / "tiny.yaml"
    config.write_text(TINY_COMPARE.replace("data:\n", f"data:\n  dir: {markov_data}\n", 1))
    finished = root / "finished"
    assert main(["train", str(config), f"run.dir={finished}", "train.steps=4"]) == 0

    interrupted = root / "group" / "interrupted"
    shutil.copytree(finished, interrupted)
    (interrupted / "summary.json").unlink()
    log = interrupted / "metrics.jsonl"
    kept = [line for line in log.read_text().splitlines() if json.loads(line)["step"] <= 2]
    log.write_text("\n".join(kept) + "\n")

    for name, text in [
        ("not_started", (finished / "config.yaml").read_text()),
        ("unreadable", "model: [\n"),
    ]:
        (root / name).mkdir()
        (root / name / "config.yaml").write_text(text)
    return root


def test_runs_lists_every_run_with_its_state(runs: Path) -> None:
    statuses = {Path(s.run_dir).name: s for s in list_runs(runs)}
    assert set(statuses) == {"finished", "interrupted", "not_started", "unreadable"}
    finished = statuses["finished"]
    assert (finished.state, finished.step, finished.steps) == ("finished", 4, 4)
    assert finished.train_loss is not None and finished.val_ppl is not None
    records = [json.loads(line) for line in (runs / "finished" / "metrics.jsonl").open()]
    last_val = [r for r in records if r["type"] == "val"][-1]
    assert (finished.val_loss, finished.val_ppl) == (last_val["loss"], last_val["ppl"])

    assert statuses["interrupted"].description == "interrupted at step 2 of 4"
    assert statuses["not_started"].state == "not started"
    unreadable = statuses["unreadable"]
    assert unreadable.state == "unreadable" and "config.yaml" in unreadable.description


def test_runs_cli_prints_a_table_or_json(
    runs: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # one table row per run, for the test to read
    assert main(["runs", str(runs)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "interrupted" in line]
    assert len(rows) == 1 and "interrupted at step 2 of 4" in rows[0] and "2/4" in rows[0]
    assert main(["runs", str(runs / "group"), "--json"]) == 0
    [only] = json.loads(capsys.readouterr().out)
    assert only["state"] == "interrupted" and only["step"] == 2 and only["steps"] == 4
    assert main(["runs", str(runs / "missing")]) == 2
    assert f"{runs / 'missing'} not found" in capsys.readouterr().err


def test_plot_draws_the_curves_of_several_runs(runs: Path, tmp_path: Path) -> None:
    finished, interrupted = runs / "finished", runs / "group" / "interrupted"
    assert main(["plot", str(finished), str(interrupted)]) == 0
    default = finished / "curves.png"
    assert default.read_bytes()[:8] == PNG_MAGIC and default.stat().st_size > 20_000
    chosen = plot_runs([interrupted], tmp_path / "one.png")
    assert chosen.read_bytes()[:8] == PNG_MAGIC


def test_plot_names_a_path_that_is_not_a_run(
    runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plot", str(runs / "nowhere")]) == 2
    assert f"{runs / 'nowhere' / 'metrics.jsonl'} not found" in capsys.readouterr().err
    with pytest.raises(UserError, match="holds no records yet"):
        (runs / "not_started" / "metrics.jsonl").touch()
        plot_runs([runs / "not_started"])
