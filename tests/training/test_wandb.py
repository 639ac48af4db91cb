"""Weights & Biases logging, offline: what a run's W&B files hold, read back from the `.wandb`
file W&B writes, and that a resumed run continues the same W&B run.

Nothing leaves the machine: W&B runs offline with no API key, its home, cache and config in the
test's directory, error reporting off.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from helpers import markov_tokens, tiny_run_config, write_token_dir
from layerwise.compare.cells import plan_cells
from layerwise.compare.run import make_plan, resolve
from layerwise.config.loader import load_config
from layerwise.data.tokenizer import train_bpe
from layerwise.launch import train
from layerwise.runs.files import METRICS_FILE, read_records
from layerwise.search.plan import SearchPlan
from layerwise.training.callbacks.wandb import WANDB_RUN_ID_FILE, WandbLog, with_wandb_cell
from layerwise.util.errors import UserError

pytest.importorskip("wandb")

BLOCK, HEADER = 32 * 1024, 7
FULL, LAST = 1, 4


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for name, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_ERROR_REPORTING": "false",
        "HOME": str(home),
        "WANDB_DIR": str(home),
        "WANDB_CONFIG_DIR": str(home / "config"),
        "WANDB_CACHE_DIR": str(home / "cache"),
        "WANDB_DATA_DIR": str(home / "data"),
    }.items():
        monkeypatch.setenv(name, value)


def wandb_records(path: Path) -> list[Any]:
    """Every record of a `.wandb` file as W&B's protobuf `Record`s. The file is a LevelDB log
    (W&B's own reader left the Python package in 0.2x): a 7-byte header, then 32 KiB blocks of
    chunks, each with a 7-byte header (checksum, little-endian length, type) and never
    straddling a block; a record is one FULL chunk or FIRST, MIDDLE..., LAST."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pending, at = [], b"", HEADER
    while at + HEADER <= len(data):
        left = BLOCK - at % BLOCK
        if left < HEADER:  # the block's tail is padding
            at += left
            continue
        length, kind = int.from_bytes(data[at + 4 : at + 6], "little"), data[at + 6]
        pending += data[at + HEADER : at + HEADER + length]
        at += HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def offline_runs(run_dir: Path) -> list[Path]:
    """The `.wandb` files of each start of the run, oldest first."""
    return sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def history(records: list[Any]) -> dict[int, dict[str, Any]]:
    """The logged rows by step, each {key: value}."""
    rows: dict[int, dict[str, Any]] = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row = items(record.history.item)
            rows.setdefault(int(row["_step"]), {}).update(row)
    return rows


def items(update: Any) -> dict[str, Any]:
    """A config or summary update's items as {key: value} (nested keys joined by "/")."""
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in update}


def logged_config(records: list[Any]) -> dict[str, Any]:
    """The W&B run's config: what its run record started with, and any later updates."""
    found = items(the_run(records).config.update)
    for record in records:
        if record.WhichOneof("record_type") == "config":
            found.update(items(record.config.update))
    return found


def final_summary(records: list[Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            found.update(items(record.summary.update))
    return found


def the_run(records: list[Any]) -> Any:
    return next(r.run for r in records if r.WhichOneof("record_type") == "run")


@pytest.fixture(scope="module")
def text_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Token data with a tokenizer (downstream tasks score text), and an ARC-Easy-format task."""
    root = tmp_path_factory.mktemp("wandb-data")
    things, colours = ["apple", "river", "stone", "cloud"], ["red", "blue", "gray", "white"]
    docs = [
        f"Question: What colour is the {things[i]}?\nAnswer: {colours[i]}"
        for i in np.random.default_rng(0).integers(0, 4, 600)
    ]
    tokenizer = train_bpe(200, docs)
    ids = [t for doc in docs for t in [*tokenizer.tokenizer.encode(doc).ids, tokenizer.eos_id]]
    tokens = np.array(ids, dtype=np.uint16)
    splits = {"train": tokens[:-800], "val": tokens[-800:]}
    data = write_token_dir(root / "data", splits, tokenizer.vocab_size)
    tokenizer.save(data / "tokenizer.json")
    evals = root / "evals"
    evals.mkdir()
    with gzip.open(evals / "arc_easy.validation.jsonl.gz", "wt", encoding="utf-8") as file:
        for i, thing in enumerate(things):
            row = {
                "question": f"What colour is the {thing}?",
                "choices": {"text": colours, "label": list("ABCD")},
                "answerKey": "ABCD"[i],
            }
            file.write(json.dumps(row) + "\n")
    return data, evals


def test_an_offline_run_holds_steps_validation_task_scores_and_the_config(
    tmp_path: Path, text_data: tuple[Path, Path]
) -> None:
    data, evals = text_data
    run_dir = tmp_path / "run"
    changes = {
        "train": {"steps": 8, "seed": 0, "val_interval": 4},
        "eval": {"tasks": ["arc_easy"], "dir": str(evals)},
        "run": {"device": "cpu", "progress": False, "log_interval": 3, "wandb": {"enabled": True}},
    }
    config = load_config(tiny_run_config(tmp_path / "c.yaml", data, run_dir, changes))
    summary = train(config)

    (path,) = offline_runs(run_dir)
    records = wandb_records(path)
    rows = history(records)
    assert sorted(step for step, row in rows.items() if "train/loss" in row) == [3, 6, 8]
    assert sorted(step for step, row in rows.items() if "val/loss" in row) == [0, 4, 8]
    scored = [step for step, row in rows.items() if "downstream/tasks/arc_easy/acc" in row]
    assert sorted(scored) == [0, 4, 8]
    logged = {r["step"]: r for r in read_records(run_dir / METRICS_FILE) if r["type"] == "train"}
    assert rows[6]["train/loss"] == logged[6]["loss"]
    assert rows[6]["train/tokens_per_s"] == logged[6]["tokens_per_s"]
    assert rows[8]["val/loss"] == summary.final_val_loss

    held = logged_config(records)
    assert held["config_hash"] == summary.config_hash
    assert held["model"]["profile"] == "crown"
    assert held["model"]["vocab_size"] == summary.vocab_size, "the config as resolved"
    assert held["run"]["wandb"]["enabled"] is True
    final = final_summary(records)
    assert final["final_val_loss"] == summary.final_val_loss and final["steps"] == 8
    run = the_run(records)
    assert run.display_name == "crown-seed0" and run.project == "layerwise"
    assert run.run_id == (run_dir / WANDB_RUN_ID_FILE).read_text().strip()


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path: Path, markov_data: Path) -> None:
    data = tmp_path / "other"
    write_token_dir(data, {"train": markov_tokens(4000, 2), "val": markov_tokens(600, 3)}, 64)
    run_dir = tmp_path / "run"
    sources = [{"dir": str(markov_data), "weight": 1, "name": "a"}, {"dir": str(data), "weight": 1}]
    changes = {
        "data": {"sources": sources},
        "optim": {"schedule": "constant"},
        "train": {"steps": 4, "val_interval": 4},
        "run": {
            "device": "cpu",
            "progress": False,
            "log_interval": 1,
            "wandb": {"enabled": True, "mode": "offline", "tags": ["t"]},
        },
    }
    path = tiny_run_config(tmp_path / "c.yaml", markov_data, run_dir, changes)
    written = yaml.safe_load(path.read_text())
    del written["data"]["dir"]  # the sources replace it
    path.write_text(yaml.safe_dump(written))
    train(load_config(path))
    first_id = (run_dir / WANDB_RUN_ID_FILE).read_text().strip()
    train(load_config(path, ["train.steps=6", "run.resume=auto"]))
    assert (run_dir / WANDB_RUN_ID_FILE).read_text().strip() == first_id

    first, second = (wandb_records(p) for p in offline_runs(run_dir))
    assert the_run(first).run_id == the_run(second).run_id == first_id
    assert list(the_run(second).tags) == ["t"]
    assert sorted(history(second)) == [5, 6], "the resumed start logs only its own steps"
    assert {"val/sources/a/loss", "val/sources/other/loss"} <= set(history(second)[6])


def test_overwrite_starts_a_new_wandb_run(tmp_path: Path, markov_data: Path) -> None:
    changes = {
        "train": {"steps": 3},
        "run": {"device": "cpu", "progress": False, "wandb": {"enabled": True}},
    }
    path = tiny_run_config(tmp_path / "c.yaml", markov_data, tmp_path / "run", changes)
    train(load_config(path))
    before = (tmp_path / "run" / WANDB_RUN_ID_FILE).read_text()
    train(load_config(path, ["run.overwrite=true"]))
    assert (tmp_path / "run" / WANDB_RUN_ID_FILE).read_text() != before


def test_comparison_cells_are_named_and_grouped(tmp_path: Path, markov_data: Path) -> None:
    config = tiny_run_config(tmp_path / "c.yaml", markov_data, tmp_path / "run")
    out = tmp_path / "cmp-tiny"
    plan = make_plan(
        str(config),
        ["crown"],
        [0],
        out,
        match=None,
        overrides=["run.wandb.enabled=true"],
        variants={"12l": ["model.n_layers=2"]},
    )
    (cell,) = plan_cells(plan)
    wandb = resolve(plan, cell).config.run.wandb
    assert (wandb.group, wandb.name) == ("cmp-tiny", "12l/crown/seed0")

    named = load_config(config, ["run.wandb.enabled=true", "run.wandb.group=mine"])
    kept = with_wandb_cell(named, "cmp-tiny", "crown/seed0").run.wandb
    assert (kept.group, kept.name) == ("mine", "crown/seed0")
    off = load_config(config)
    assert with_wandb_cell(off, "cmp-tiny", "crown/seed0") == off


def test_search_runs_are_named_and_grouped(tmp_path: Path, markov_data: Path) -> None:
    config = tiny_run_config(tmp_path / "c.yaml", markov_data, tmp_path / "run")
    plan = SearchPlan(str(config), ("run.wandb.enabled=true",), trial_steps=18)
    trial = plan.trial_config("crown", None, tmp_path / "srch" / "trials" / "trial-0003", 6)
    assert (trial.run.wandb.group, trial.run.wandb.name) == ("srch", "trials/trial-0003")


def test_without_the_package_the_message_says_what_to_install(
    tmp_path: Path, markov_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(tiny_run_config(tmp_path / "c.yaml", markov_data, tmp_path / "run"))
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(UserError, match=r"pip install 'layerwise\[wandb\]'"):
        WandbLog(tmp_path / "run", config).on_train_start(None)  # type: ignore[arg-type]
