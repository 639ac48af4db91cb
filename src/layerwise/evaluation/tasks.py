"""The downstream tasks by name: which file holds each, how its rows read, which metric leads.

The files are the validation sets of OLMo's in-loop evaluation, one gzipped JSON line per row,
in an evals directory (default: ../shared/evals beside the checkout). Nothing is downloaded.
Primary metrics follow OLMES: accuracy per character of the continuation for most tasks, raw
accuracy where the choices are short and similar in length (ARC-Easy, BoolQ, SciQ,
Winogrande).
"""

from __future__ import annotations

import difflib
import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import layerwise
from layerwise.evaluation import formats
from layerwise.evaluation.formats import Example, Row
from layerwise.util.errors import UserError

Primary = Literal["acc", "len_norm"]
MmluSplit = Literal["validation", "test"]

MMLU_STEM = frozenset(
    {
        "abstract_algebra",
        "astronomy",
        "college_biology",
        "college_chemistry",
        "college_computer_science",
        "college_mathematics",
        "college_physics",
        "computer_security",
        "conceptual_physics",
        "electrical_engineering",
        "elementary_mathematics",
        "high_school_biology",
        "high_school_chemistry",
        "high_school_computer_science",
        "high_school_mathematics",
        "high_school_physics",
        "high_school_statistics",
        "machine_learning",
    }
)
"""The 18 subjects OLMo groups as mmlu_stem (physics, chemistry, biology, CS, maths, engineering)."""


@dataclass(frozen=True)
class Task:
    name: str
    file: str
    format: formats.Formatter
    primary: Primary
    subjects: frozenset[str] | None = None
    """MMLU only: the subjects kept (None: all 57)."""

    def keeps(self, row: Row, mmlu_split: MmluSplit) -> bool:
        """Whether a row belongs to this task: MMLU's one file holds every subject and split."""
        if self.format is not formats.mmlu:
            return True
        return row["split"] == mmlu_split and (
            self.subjects is None or row["subject"] in self.subjects
        )


def _task(name: str, fmt: formats.Formatter, primary: Primary = "len_norm") -> Task:
    return Task(name, f"{name}.validation.jsonl.gz", fmt, primary)


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        _task("arc_easy", formats.question_answer, "acc"),
        _task("arc_challenge", formats.question_answer),
        _task("boolq", formats.boolq, "acc"),
        _task("commonsense_qa", formats.question_answer),
        _task("hellaswag", formats.hellaswag),
        _task("openbookqa", formats.openbookqa),
        _task("piqa", formats.piqa),
        _task("social_iqa", formats.social_iqa),
        _task("sciq", formats.sciq, "acc"),
        _task("copa", formats.copa),
        _task("winogrande", formats.winogrande, "acc"),
        _task("basic_arithmetic", formats.question_answer),
        Task("mmlu_stem", "mmlu.jsonl.gz", formats.mmlu, "len_norm", MMLU_STEM),
        Task("mmlu", "mmlu.jsonl.gz", formats.mmlu, "len_norm"),
    )
}

CORE = ("arc_easy", "hellaswag", "piqa", "sciq", "commonsense_qa")
"""The tasks that carry signal at small scale; the rest sit near chance below ~1B parameters."""


def select_tasks(names: str | Sequence[str]) -> list[Task]:
    """`all`, `core` or task names (a comma-separated string or a list), in the order given."""
    items = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    chosen: list[str] = []
    for item in filter(None, items):
        group = {"all": list(TASKS), "core": list(CORE)}.get(item, [item])
        for name in group:
            if name not in TASKS:
                close = difflib.get_close_matches(name, TASKS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise UserError(
                    f"unknown task {name!r}{hint}; known tasks: {', '.join(TASKS)}, "
                    "or the groups all and core"
                )
            if name not in chosen:
                chosen.append(name)
    if not chosen:
        raise UserError(f"no tasks given; name some of {', '.join(TASKS)}, or all or core")
    return [TASKS[name] for name in chosen]


def default_evals_dir() -> Path:
    """../shared/evals beside the checkout this package was installed from (editable)."""
    return Path(layerwise.__file__).resolve().parents[2].parent / "shared" / "evals"


def resolve_evals_dir(given: str | Path | None) -> Path:
    """The directory given (`--evals-dir`, `eval.dir`), else the default when it exists."""
    directory = default_evals_dir() if given is None else Path(given).expanduser()
    if not directory.is_dir():
        how = "" if given is not None else " (the default, beside the checkout)"
        raise UserError(
            f"evals directory {directory}{how} not found; point --evals-dir (or eval.dir) at "
            "the directory holding the tasks' *.jsonl.gz files"
        )
    return directory


def read_rows(path: Path) -> list[tuple[int, Row]]:
    """(line number, row) of a gzipped JSON-lines file; a broken line names file and line."""
    if not path.is_file():
        raise UserError(
            f"{path} not found; the evals directory must hold OLMo's in-loop copies of the tasks"
        )
    rows = []
    try:
        with gzip.open(path, "rt", encoding="utf-8") as file:
            for number, line in enumerate(file, 1):
                if not line.strip():
                    continue
                try:
                    rows.append((number, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}:{number}: not a JSON object ({exc.msg})") from None
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is unreadable or not gzip-compressed JSON lines ({exc})") from None
    return rows


def load_examples(
    task: Task,
    evals_dir: Path,
    limit: int | None = None,
    mmlu_split: MmluSplit = "validation",
) -> list[Example]:
    """The task's first `limit` examples (all when None), in file order."""
    path = evals_dir / task.file
    examples: list[Example] = []
    for number, row in read_rows(path):
        example = _parse(task, row, mmlu_split, path, number)
        if example is not None:
            examples.append(example)
            if limit is not None and len(examples) >= limit:
                break
    if not examples:
        raise UserError(f"{path}: no rows for task {task.name}")
    return examples


def _parse(task: Task, row: Row, mmlu_split: MmluSplit, path: Path, number: int) -> Example | None:
    """The row's example, None if it belongs to another MMLU subset or split."""
    try:
        return task.format(row) if task.keeps(row, mmlu_split) else None
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(
            f"{path}:{number}: malformed {task.name} row ({type(exc).__name__}: {exc}); the file "
            "must hold the fields of OLMo's in-loop copy of the task"
        ) from None
