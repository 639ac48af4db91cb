"""Models from configs and from run directories: load_model, init.from, and callbacks on a run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import tiny_run_config
from layerwise.config.loader import load_config
from layerwise.data.loader import open_split, validation_indices
from layerwise.distributed.env import DistInfo
from layerwise.launch import train
from layerwise.training.callbacks.base import Callback, StepRecord, TrainerView
from layerwise.training.checkpoint import list_checkpoints
from layerwise.training.load import load_model
from layerwise.training.step import evaluate
from layerwise.training.trainer import Trainer
from layerwise.util.errors import UserError

CPU = DistInfo(0, 0, 1, torch.device("cpu"))


@pytest.fixture()
def config_file(tiny_run: Callable[..., Path]) -> Path:
    return tiny_run()


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, markov_data: Path) -> Path:
    root = tmp_path_factory.mktemp("finished")
    train(load_config(tiny_run_config(root / "tiny.yaml", markov_data, root / "run")))
    return root / "run"


def test_a_loaded_model_has_the_runs_final_validation_loss(finished: Path) -> None:
    trained = load_model(finished)
    assert trained.step == 12 and not trained.model.training
    config = trained.config
    windows = open_split(config.data.dir, "val", config.data.seq_len)
    indices = validation_indices(len(windows), config.data.val_windows)
    loss = evaluate(trained.model, windows, indices, config.batch.micro_batch, CPU, None)
    summary = json.loads((finished / "summary.json").read_text())
    assert loss == summary["final_val_loss"]
    assert trained.meta.vocab_size == 61 and trained.shape.vocab_size == 64
    assert (finished / "tokenizer" / "meta.json").is_file()


def test_load_model_picks_a_step_and_explains_what_is_missing(
    finished: Path, tmp_path: Path
) -> None:
    assert load_model(finished, step=8).step == 8
    with pytest.raises(UserError, match="no checkpoint of step 5"):
        load_model(finished, step=5)
    with pytest.raises(UserError, match=r"holds no config\.yaml"):
        load_model(tmp_path)


class Snapshot(Callback):
    """Keeps the weights the run starts from."""

    def on_train_start(self, trainer: Trainer) -> None:
        self.weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        self.start_step = trainer.state.step


def test_init_from_starts_from_exactly_the_source_weights(
    finished: Path, config_file: Path
) -> None:
    snapshot = Snapshot()
    train(load_config(config_file, [f"init.from={finished}", "train.steps=3"]), [snapshot])
    source = load_model(finished).model.state_dict()
    assert snapshot.start_step == 0
    assert snapshot.weights.keys() == source.keys()
    assert all(torch.equal(snapshot.weights[k], source[k]) for k in source)


def test_init_from_another_shape_is_refused(finished: Path, config_file: Path) -> None:
    with pytest.raises(UserError, match=r"init.from=.*another shape"):
        train(load_config(config_file, [f"init.from={finished}", "model.profile=vanilla"]))


class Recorder(Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []
        self.evaluations = 0

    def on_step_end(self, trainer: TrainerView, record: StepRecord) -> None:
        self.steps.append(record.step)

    def on_evaluation(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.evaluations += 1


def test_a_callback_hears_every_step_and_evaluation(config_file: Path) -> None:
    recorder = Recorder()
    train(load_config(config_file), [recorder])
    assert recorder.steps == list(range(1, 13))
    assert recorder.evaluations == 4  # steps 0, 5, 10 and 12


SCRIPT = """
import json, sys
from layerwise import Callback, load_config, train

class Counter(Callback):
    def __init__(self, log):
        self.seen, self.log = 0, log

    def on_step_end(self, trainer, record):
        self.seen += 1
        with open(self.log, "a") as f:
            f.write(json.dumps({"step": record.step, "seen": self.seen}) + "\\n")

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]

train(load_config(sys.argv[1], sys.argv[3:]), [Counter(sys.argv[2])])
"""


def test_callback_state_survives_kill_9_and_resume(config_file: Path, tmp_path: Path) -> None:
    script, log = tmp_path / "count.py", tmp_path / "seen.jsonl"
    script.write_text(textwrap.dedent(SCRIPT))
    settings = ["train.steps=40", "checkpoint.interval=10", "train.val_interval=100"]
    command = [sys.executable, str(script), str(config_file), str(log), *settings]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    victim = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    run_dir = Path(load_config(config_file).run.dir)
    deadline = time.monotonic() + 120
    while not list_checkpoints(run_dir) and time.monotonic() < deadline:
        time.sleep(0.002)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = list_checkpoints(run_dir)[-1][0]
    assert killed_at < 40, "the run finished before it could be killed"
    subprocess.run([*command, "run.resume=auto"], env=env, check=True, capture_output=True)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    resumed = [line for line in lines if line["step"] > killed_at][-(40 - killed_at) :]
    assert [line["step"] for line in resumed] == list(range(killed_at + 1, 41))
    assert [line["seen"] for line in resumed] == list(range(killed_at + 1, 41))


def test_load_model_says_when_it_passes_over_a_damaged_newest_checkpoint(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21: `eval` used to score an older checkpoint without a word."""
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    (copy / "checkpoints" / "step_000012" / "manifest.json").unlink()
    assert load_model(copy).step == 8
    assert f"{copy}: skipped step_000012: no manifest.json" in capsys.readouterr().err
