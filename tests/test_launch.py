"""`launch.train` builds the callbacks a config names (`run.callbacks`), for train and compare."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from helpers import TINY_COMPARE, TINY_RUN
from layerwise.cli import main
from layerwise.config.loader import config_from_dict, load_config
from layerwise.evaluation.callback import DownstreamEval
from layerwise.launch import configured_callbacks
from layerwise.training.callbacks.base import Callback, TrainerView
from layerwise.util.errors import UserError


class RecordVal(Callback):
    """Appends each validation record it hears to `path`, one JSON line each."""

    def __init__(self, path: str, tag: str = "") -> None:
        self.path, self.tag = Path(path), tag

    @property
    def name(self) -> str:
        return f"RecordVal{self.tag}"

    def on_log(self, trainer: TrainerView, record: Mapping[str, Any]) -> None:
        if record["type"] == "val":
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"tag": self.tag, "run": str(trainer.run_dir)}) + "\n")


class NotACallback:
    pass


def test_a_config_callback_runs_in_train(tiny_run: Callable[..., Path], tmp_path: Path) -> None:
    heard = tmp_path / "heard.jsonl"
    entries = [
        {"class": "test_launch:RecordVal", "args": {"path": str(heard), "tag": "a"}},
        {"class": "test_launch:RecordVal", "args": {"path": str(heard)}},
    ]
    config = tiny_run({"run": {"callbacks": entries}})
    assert main(["train", str(config)]) == 0
    lines = [json.loads(line) for line in heard.read_text().splitlines()]
    assert [line["tag"] for line in lines[:2]] == ["a", ""]
    assert len(lines) == 2 * 4  # validation at steps 0, 5, 10 and 12, heard by both


def test_a_config_callback_runs_in_every_compare_cell(
    tiny_config_file: Callable[[str], Path], tmp_path: Path
) -> None:
    heard = tmp_path / "heard.jsonl"
    text = TINY_COMPARE.replace(
        "run:\n",
        f"run:\n  callbacks: [{{class: 'test_launch:RecordVal', args: {{path: '{heard}'}}}}]\n",
    )
    out = tmp_path / "cmp"
    assert (
        main(
            [
                "compare",
                str(tiny_config_file(text)),
                "--profiles",
                "isotropic,crown",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    runs = {json.loads(line)["run"] for line in heard.read_text().splitlines()}
    assert len(runs) == 2 and all(run.startswith(str(out)) for run in runs)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("test_launch:Missing", r"run\.callbacks\[1\]: module test_launch has no 'Missing'"),
        ("no_such_module:X", r"run\.callbacks\[1\]: cannot import no_such_module"),
        ("test_launch", r"run\.callbacks\[1\]: 'test_launch' must look like package\.module:Name"),
        (
            {"class": "test_launch:RecordVal", "args": {"path": "x", "pth": "x"}},
            r"run\.callbacks\[1\]: got an unexpected keyword argument 'pth'",
        ),
        ({"klass": "test_launch:RecordVal"}, r"run\.callbacks\[1\]: .* must be"),
    ],
)
def test_bad_entries_name_the_file_and_index(
    tiny_run: Callable[..., Path], entry: object, message: str
) -> None:
    good = {"class": "test_launch:RecordVal", "args": {"path": "heard.jsonl"}}
    config = tiny_run({"run": {"callbacks": [good, entry]}})
    with pytest.raises(UserError, match=rf"tiny\.yaml: {message}"):
        load_config(config)


def test_a_class_that_is_not_a_callback_is_refused(tiny_run: Callable[..., Path]) -> None:
    config = load_config(tiny_run({"run": {"callbacks": ["test_launch:NotACallback"]}}))
    with pytest.raises(UserError, match=r"run\.callbacks\[0\]: .*NotACallback is not a subclass"):
        configured_callbacks(config)


def test_downstream_tasks_read_the_tokenizer_of_the_data_sources(tmp_path: Path) -> None:
    """With data.sources, data.dir is its unused default: the tasks must not be tokenized
    with whatever tokenizer that directory holds."""
    sources = [{"dir": str(tmp_path / "a"), "weight": 1}, {"dir": str(tmp_path / "b"), "weight": 1}]
    values = {**TINY_RUN, "data": {**TINY_RUN["data"], "sources": sources}}
    config = config_from_dict({**values, "eval": {"tasks": ["arc_easy"]}})
    (downstream,) = configured_callbacks(config)
    assert isinstance(downstream, DownstreamEval) and downstream.data_dir == tmp_path / "a"
