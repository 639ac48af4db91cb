"""A ladder's table of runs: one CSV row per trained run, read into `Point`s and written back.

The table is the only thing a fit reads, so a ladder made elsewhere (another tool's runs, a
paper's table) is fitted the same way as one `layerwise ladder` trained. Required columns are
`N` (the parameter count to fit on), `D` (training tokens), `loss`, `profile` and `seed`;
`rung` (a label of the size step), `tokens_per_param` and `flops_per_token` are used when
present, and every other column is kept on the point as text.

Without a `rung` column a point's rung is the rank of its N among its profile's distinct N
values: profiles matched to one size land on slightly different parameter counts, so equal N
cannot be what groups them. A point's budget is always the rank of its D within its (profile,
rung), which pairs the k-th budget of every profile at a rung.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerwise.util.errors import UserError
from layerwise.util.files import atomic_write_text

REQUIRED = ("N", "D", "loss", "profile", "seed")
OPTIONAL_NUMBERS = ("tokens_per_param", "flops_per_token")


@dataclass(frozen=True)
class Point:
    """One run: what it was fitted on (N, D), what it reached (loss), and where it sits."""

    profile: str
    seed: int
    N: float
    D: float
    loss: float
    rung: str
    """The size step's label: the table's `rung` column, else `r1`, `r2`, ... by N."""
    rung_index: int
    """0 for the smallest rung; rungs are ordered by their median N."""
    budget: int
    """Rank of D within (profile, rung), 0 for the smallest budget."""
    tokens_per_param: float | None = None
    flops_per_token: float | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    """The table's other columns (lr, ppl, `loss:<source>`, ...), as written."""

    @property
    def compute(self) -> float:
        """Training FLOPs: the recorded FLOPs per token times D, else the usual 6 N D."""
        per_token = self.flops_per_token if self.flops_per_token is not None else 6.0 * self.N
        return per_token * self.D


@dataclass(frozen=True)
class _Row:
    line: int
    profile: str
    seed: int
    N: float
    D: float
    loss: float
    rung: str | None
    numbers: dict[str, float | None]
    extra: dict[str, str]


def read_table(path: str | Path) -> list[Point]:
    """The runs of a ladder CSV; a UserError naming the file, line and column of bad input."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"table {path}: no such file; give the CSV of runs to fit") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"table {path}: cannot be read ({exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    return points_from_records(list(reader), f"table {path}", reader.fieldnames or [], 2)


def points_from_records(
    records: Sequence[Mapping[Any, Any]],
    source: str,
    header: Sequence[str] | None = None,
    first_line: int = 1,
) -> list[Point]:
    """Points from rows of a table (a CSV's lines, or dicts made in code: values are read as
    their text); `source` and the line numbers from `first_line` name bad input in errors."""
    header = list(dict.fromkeys(k for r in records for k in r if k)) if header is None else header
    missing = [name for name in REQUIRED if name not in header]
    if missing:
        raise UserError(
            f"{source}: missing column(s) {', '.join(missing)}; a ladder table needs "
            f"{', '.join(REQUIRED)} (one row per run; optional: rung, tokens_per_param)"
        )
    rows = [
        _parse_row(f"{source}, line {line}", line, r) for line, r in enumerate(records, first_line)
    ]
    if not rows:
        raise UserError(f"{source}: no runs; add one row per trained run")
    _refuse_duplicates(source, rows)
    return _points(rows, "rung" in header)


def _parse_row(at: str, line: int, record: Mapping[Any, Any]) -> _Row:
    def where(column: str) -> str:
        return f"{at}, column {column}"

    if None in record:  # more cells than header names
        raise UserError(f"{at}: more cells than columns; fix the row")
    values = {str(k): "" if v is None else str(v).strip() for k, v in record.items()}
    for column in ("profile", "seed"):
        if not values.get(column):
            raise UserError(f"{where(column)}: empty; every run needs its {column}")
    seed_text = values["seed"]
    try:
        seed = int(seed_text)
    except ValueError:
        raise UserError(f"{where('seed')}: {seed_text!r} is not a whole number") from None

    def positive(column: str) -> float:
        text = values.get(column, "")
        try:
            value = float(text)
        except ValueError:
            raise UserError(f"{where(column)}: {text!r} is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise UserError(
                f"{where(column)}: {text} is not a positive finite number; "
                f"{column} must be above 0 (drop or rerun the run)"
            )
        return value

    numbers = {
        column: positive(column) if values.get(column) else None
        for column in OPTIONAL_NUMBERS
        if column in values
    }
    known = (*REQUIRED, "rung", *OPTIONAL_NUMBERS)
    extra = {key: value for key, value in values.items() if key not in known}
    rung = values.get("rung")
    if rung is not None and not rung:
        raise UserError(f"{where('rung')}: empty; label every run's size step or drop the column")
    return _Row(
        line,
        values["profile"],
        seed,
        positive("N"),
        positive("D"),
        positive("loss"),
        rung,
        numbers,
        extra,
    )


def _refuse_duplicates(source: str, rows: Sequence[_Row]) -> None:
    seen: dict[tuple[str, int, float, float], int] = {}
    for row in rows:
        key = (row.profile, row.seed, row.N, row.D)
        if key in seen:
            raise UserError(
                f"{source}, line {row.line}: the same run as line {seen[key]} (profile "
                f"{row.profile}, seed {row.seed}, N {row.N:g}, D {row.D:g}); keep one of them"
            )
        seen[key] = row.line


def _points(rows: Sequence[_Row], labelled: bool) -> list[Point]:
    """Rungs and budgets for every row: labels from the table or ranks of N, then ranks of D."""
    if labelled:
        labels = {row.line: str(row.rung) for row in rows}
    else:
        labels = {}
        for profile in dict.fromkeys(row.profile for row in rows):
            sizes = sorted({row.N for row in rows if row.profile == profile})
            for row in rows:
                if row.profile == profile:
                    labels[row.line] = f"r{sizes.index(row.N) + 1}"
    median_n = {
        label: statistics.median(row.N for row in rows if labels[row.line] == label)
        for label in set(labels.values())
    }
    order = sorted(median_n, key=lambda label: (median_n[label], label))
    budgets: dict[int, int] = {}
    for key in {(row.profile, labels[row.line]) for row in rows}:
        members = [row for row in rows if (row.profile, labels[row.line]) == key]
        tokens = sorted({row.D for row in members})
        budgets |= {row.line: tokens.index(row.D) for row in members}
    return [
        Point(
            profile=row.profile,
            seed=row.seed,
            N=row.N,
            D=row.D,
            loss=row.loss,
            rung=labels[row.line],
            rung_index=order.index(labels[row.line]),
            budget=budgets[row.line],
            tokens_per_param=row.numbers.get("tokens_per_param"),
            flops_per_token=row.numbers.get("flops_per_token"),
            extra=row.extra,
        )
        for row in rows
    ]


def write_table(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write runs as a ladder CSV, atomically: the columns of the first row in its order, then
    any new ones later rows bring; None is an empty cell and floats keep every digit, so the
    table read back fits to the same numbers."""
    if not rows:
        raise ValueError("write_table needs at least one row")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    missing = [name for name in REQUIRED if name not in columns]
    if missing:
        raise ValueError(f"ladder rows need the columns {', '.join(missing)}")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(row.get(key)) for key in columns})
    return atomic_write_text(path, buffer.getvalue())


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def point_record(point: Point) -> dict[str, Any]:
    """A point as a table row (`write_table`), the inverse of `read_table` for one row."""
    return {
        "rung": point.rung,
        "profile": point.profile,
        "seed": point.seed,
        "N": point.N,
        "D": point.D,
        "loss": point.loss,
        "tokens_per_param": point.tokens_per_param,
        "flops_per_token": point.flops_per_token,
        **point.extra,
    }


MIN_SIZES = 3
MIN_CELLS = 6
"""A profile's own law has 5 parameters: fewer distinct (N, D) cells than 6 fit it exactly."""


def profiles_of(points: Sequence[Point]) -> list[str]:
    """The profiles in table order."""
    return list(dict.fromkeys(point.profile for point in points))


def check_ladder(points: Sequence[Point], reference: str, source: str = "the table") -> None:
    """Refuse a table a law cannot be fitted to honestly, saying what runs to add: the
    reference's runs, a second profile, 3 sizes, 2 budgets, the same sizes for every profile."""
    profiles = profiles_of(points)
    if reference not in profiles:
        raise UserError(
            f"{source}: no runs of the reference profile {reference!r} (profiles in it: "
            f"{', '.join(profiles)}); pass --reference with one of them, or add its runs"
        )
    if len(profiles) < 2:
        raise UserError(
            f"{source}: only one profile ({reference}); add runs of a second profile at the same "
            "sizes and budgets to compare with it"
        )
    rungs = {p: {point.rung for point in points if point.profile == p} for p in profiles}
    order = {point.rung: point.rung_index for point in points}
    if len(rungs[reference]) < MIN_SIZES:
        raise UserError(
            f"{source}: {len(rungs[reference])} size(s) of {reference} "
            f"({', '.join(sorted(rungs[reference], key=order.__getitem__))}); a scaling law needs "
            f"at least {MIN_SIZES} distinct sizes per profile: add runs at "
            f"{MIN_SIZES - len(rungs[reference])} more size(s)"
        )
    for profile in profiles:
        missing = sorted(rungs[reference] - rungs[profile], key=order.__getitem__)
        surplus = sorted(rungs[profile] - rungs[reference], key=order.__getitem__)
        if missing or surplus:
            what = (
                f"no runs at rung(s) {', '.join(missing)} that {reference} has"
                if missing
                else f"runs at rung(s) {', '.join(surplus)} that {reference} lacks"
            )
            raise UserError(
                f"{source}: profile {profile} has {what}; every profile needs the reference's "
                "sizes: add the runs or drop them"
            )
        mine = [point for point in points if point.profile == profile]
        if max(point.budget for point in mine) < 1:
            raise UserError(
                f"{source}: profile {profile} has one token budget per size; add runs at a "
                "second budget (another tokens per parameter) at some sizes, so that D varies "
                "apart from N"
            )
        cells = {(point.N, point.D) for point in mine}
        if len(cells) < MIN_CELLS:
            raise UserError(
                f"{source}: profile {profile} has {len(cells)} distinct (N, D) cells; its law "
                f"has 5 parameters, so add runs until it has at least {MIN_CELLS}"
            )


Cell = tuple[str, int, int]
"""(profile, rung index, budget): the runs of one profile at one size and budget, over seeds."""


def group_cells(points: Sequence[Point]) -> dict[Cell, list[Point]]:
    """The points of each cell, cells ordered by profile (table order), rung, then budget."""
    profiles = profiles_of(points)
    grouped: dict[Cell, list[Point]] = {}
    for point in sorted(points, key=lambda p: (profiles.index(p.profile), p.rung_index, p.budget)):
        grouped.setdefault((point.profile, point.rung_index, point.budget), []).append(point)
    return grouped
