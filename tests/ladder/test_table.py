"""The table of runs a ladder is fitted on: read and written back, rungs and budgets found
without labels, and every bad table refused with a message that says what to fix, through the
API and through `layerwise ladder fit` (exit status 2, nothing written)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from layerwise.cli import main
from layerwise.ladder import law
from layerwise.ladder.fit import fit_ladder
from layerwise.ladder.synthetic import SyntheticProfile, synthetic_points
from layerwise.ladder.table import check_ladder, point_record, read_table, write_table
from layerwise.util.errors import UserError

PROFILES = [SyntheticProfile("isotropic"), SyntheticProfile("crown", 1.2, size_ratio=1.01)]
SIZES = (1e6, 2e6, 4e6)


def records(sizes: tuple[float, ...] = SIZES, budgets: tuple[float, ...] = (10.0, 40.0)) -> list:
    points = synthetic_points(PROFILES, sizes, budgets, 2)
    return [point_record(p) for p in points]


def test_a_written_table_reads_back_to_the_same_points(tmp_path: Path) -> None:
    rows = [{**r, "lr": 0.003, "loss:web": r["loss"] + 0.1} for r in records()]
    path = write_table(tmp_path / "ladder.csv", rows)
    points = read_table(path)
    assert [point_record(p) for p in points] == [
        {**r, "lr": "0.003", "loss:web": repr(r["loss:web"])} for r in rows
    ]
    assert {p.rung for p in points} == {"s1", "s2", "s3"}
    assert points[0].extra["lr"] == "0.003"  # other columns are kept as written


def test_without_a_rung_column_rungs_are_ranks_of_n_and_budgets_ranks_of_d(
    tmp_path: Path,
) -> None:
    """crown's N is 1% off isotropic's at every size: ranks, not equal N, pair them."""
    rows = [{k: v for k, v in r.items() if k != "rung"} for r in records()]
    points = read_table(write_table(tmp_path / "runs.csv", rows))
    for point in points:
        size = min(SIZES, key=lambda s: abs(math.log(point.N / s)))
        assert point.rung == f"r{SIZES.index(size) + 1}"
        assert point.rung_index == SIZES.index(size)
        assert point.budget == (0 if point.D / point.N < 20 else 1)
    check_ladder(points, "isotropic")  # every profile has every size


def bad_tables(good: list) -> dict[str, tuple[list | str, str]]:
    """A table's text or rows, and the words its error must contain."""
    header = ",".join(good[0])

    def line(row: dict) -> str:
        return ",".join(str(v if v is not None else "") for v in row.values())

    def text(*rows: dict, head: str = header) -> str:
        return "\n".join([head, *[line(r) for r in rows]]) + "\n"

    replaced = {**good[1], "loss": "abc"}
    return {
        "missing column": (
            text(
                *[{k: v for k, v in r.items() if k != "seed"} for r in good[:3]],
                head=header.replace(",seed", ""),
            ),
            "missing column(s) seed",
        ),
        "not a number": (text(good[0], replaced), "line 3, column loss: 'abc' is not a number"),
        "zero N": (text({**good[0], "N": 0}), "column N: 0 is not a positive finite number"),
        "negative loss": (text({**good[0], "loss": -1.5}), "column loss: -1.5 is not a positive"),
        "NaN loss": (text({**good[0], "loss": "nan"}), "column loss: nan is not a positive"),
        "duplicate": (text(good[0], good[1], good[0]), "line 4: the same run as line 2"),
        "two sizes": (
            [r for r in good if r["rung"] != "s3"],
            "at least 3 distinct sizes per profile: add runs at 1 more size",
        ),
        "one budget": (
            [r for r in good if r["tokens_per_param"] < 20],
            "one token budget per size; add runs at a second budget",
        ),
        "one profile": ([r for r in good if r["profile"] == "isotropic"], "only one profile"),
        "a profile missing a size": (
            [r for r in good if not (r["profile"] == "crown" and r["rung"] == "s2")],
            "profile crown has no runs at rung(s) s2 that isotropic has",
        ),
    }


CASES = list(bad_tables(records()))


def write_case(tmp_path: Path, case: str) -> Path:
    table, _ = bad_tables(records())[case]
    path = tmp_path / "bad.csv"
    if isinstance(table, str):
        path.write_text(table, encoding="utf-8")
        return path
    return write_table(path, table)


@pytest.mark.parametrize("case", CASES)
def test_a_bad_table_is_a_user_error_through_the_api(tmp_path: Path, case: str) -> None:
    path = write_case(tmp_path, case)
    _, words = bad_tables(records())[case]
    with pytest.raises(UserError, match=f"^table {path}") as caught:
        fit_ladder(read_table(path), source=f"table {path}")
    assert words in str(caught.value)


@pytest.mark.parametrize("case", CASES)
def test_a_bad_table_exits_2_with_the_message_and_writes_nothing(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_case(tmp_path, case)
    _, words = bad_tables(records())[case]
    out = tmp_path / "fit"
    assert main(["ladder", "fit", str(path), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"layerwise: error: table {path}") and words in " ".join(error.split())
    assert not (out / "fit.json").exists()


def test_an_unknown_reference_names_the_profiles_there_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_table(tmp_path / "ladder.csv", records())
    assert main(["ladder", "fit", str(path), "--out", str(tmp_path), "--reference", "iso"]) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "no runs of the reference profile 'iso' (profiles in it: isotropic, crown)" in error
    assert "pass --reference with one of them" in error


def test_a_missing_table_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        read_table(tmp_path / "absent.csv")


def test_a_target_without_a_colon_is_refused_by_the_parser(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["ladder", "fit", "t.csv", "--out", str(tmp_path), "--target", "1B"])
    assert caught.value.code == 2


def test_without_scipy_the_fit_says_which_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        law.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "scipy" else real(name, *a),
    )
    path = write_table(tmp_path / "ladder.csv", records())
    assert main(["ladder", "fit", str(path), "--out", str(tmp_path / "fit")]) == 2
    assert "pip install 'layerwise[ladder]'" in capsys.readouterr().err
