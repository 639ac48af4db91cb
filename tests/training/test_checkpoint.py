"""Checkpoints: exact round trip, atomic publication, pruning, generators, the metrics log."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import tiny_run_config
from layerwise.cli import main as cli_main
from layerwise.distributed.env import DistInfo
from layerwise.nn.model import Transformer
from layerwise.profiles.shape import LayerSpec, ModelShape
from layerwise.runs.files import read_records
from layerwise.training.checkpoint import (
    CHECKPOINT_DIR,
    MANIFEST_FILE,
    TrainerState,
    choose_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from layerwise.training.metrics import truncate_log
from layerwise.util.files import atomic_write_json

SINGLE = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def model_and_optimizer(seed: int) -> tuple[Transformer, torch.optim.AdamW]:
    torch.manual_seed(seed)
    layers = (LayerSpec(64, 2, 1), LayerSpec(32, 4, 2))
    model = Transformer(ModelShape(d_model=32, head_dim=8, vocab_size=50, layers=layers))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def take_step(model: Transformer, optimizer: torch.optim.Optimizer) -> float:
    tokens = torch.randint(0, 50, (2, 9))
    loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


def test_round_trip_continues_bit_for_bit(tmp_path: Path) -> None:
    model, optimizer = model_and_optimizer(seed=0)
    for _ in range(3):
        take_step(model, optimizer)
    state = TrainerState(step=3, tokens=48, sampler={"epoch": 0, "cursor": 6}, train_loss=1.5)
    path = save_checkpoint(tmp_path, model, optimizer, state, SINGLE, keep=2)
    random.seed(1)
    np.random.seed(1)
    expected = [take_step(model, optimizer) for _ in range(3)]
    expected_draws = (random.random(), np.random.rand())

    fresh, fresh_optimizer = model_and_optimizer(seed=123)
    loaded = load_checkpoint(path, fresh, fresh_optimizer, SINGLE)
    assert loaded == state
    random.seed(1)
    np.random.seed(1)
    assert [take_step(fresh, fresh_optimizer) for _ in range(3)] == expected
    assert (random.random(), np.random.rand()) == expected_draws
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)


def test_generators_are_restored(tmp_path: Path) -> None:
    model, optimizer = model_and_optimizer(seed=0)
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    path = save_checkpoint(tmp_path, model, optimizer, TrainerState(step=1), SINGLE, keep=1)
    draws = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    load_checkpoint(path, model, optimizer, SINGLE)
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(draws[0], again[0]) and draws[1:] == again[1:]


def test_unfinished_saves_are_not_checkpoints_and_old_ones_are_pruned(tmp_path: Path) -> None:
    model, optimizer = model_and_optimizer(seed=0)
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, model, optimizer, TrainerState(step=step), SINGLE, keep=2)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [20, 30]
    root = tmp_path / CHECKPOINT_DIR
    shutil.copytree(root / "step_000030", root / "step_000040.tmp")
    (root / "step_000050").mkdir()
    assert latest_checkpoint(tmp_path) == root / "step_000030"
    save_checkpoint(tmp_path, model, optimizer, TrainerState(step=60), SINGLE, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["step_000030", "step_000050", "step_000060"]
    trainer = json.loads((root / "step_000060" / "trainer.json").read_text())
    assert trainer["step"] == 60


def test_truncating_the_log_drops_later_and_torn_records(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    records = [{"type": "val", "step": 0, "loss": 5.0}] + [
        {"type": "train", "step": s, "loss": 1 / s} for s in range(1, 6)
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"type": "tra')
    assert read_records(log) == records
    assert truncate_log(log, 3) == records[:4]
    assert read_records(log) == records[:4]
    assert truncate_log(log, -1) == []
    assert log.read_text() == ""


def test_atomic_json_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "out" / "summary.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["summary.json"]


def test_a_checkpoint_verifies_until_any_file_is_damaged(tmp_path: Path) -> None:
    model, optimizer = model_and_optimizer(seed=0)
    path = save_checkpoint(tmp_path, model, optimizer, TrainerState(step=1), SINGLE, keep=1)
    manifest = json.loads((path / MANIFEST_FILE).read_text())["files"]
    assert {"trainer.json", "rng_rank0.pt", ".metadata", "__0_0.distcp"} <= set(manifest)
    assert verify_checkpoint(path) is None
    original = (path / "__0_0.distcp").read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF
    (path / "__0_0.distcp").write_bytes(bytes(flipped))
    assert verify_checkpoint(path) == "__0_0.distcp does not match its checksum"
    (path / "__0_0.distcp").write_bytes(original)
    (path / "rng_rank0.pt").unlink()
    assert verify_checkpoint(path) == "rng_rank0.pt is missing"


def test_protected_checkpoints_survive_pruning(tmp_path: Path) -> None:
    model, optimizer = model_and_optimizer(seed=0)
    for step in (10, 20, 30, 40):
        state = TrainerState(step=step)
        save_checkpoint(tmp_path, model, optimizer, state, SINGLE, keep=1, protect={20})
    assert [step for step, _ in list_checkpoints(tmp_path)] == [20, 40]
    choice = choose_checkpoint(tmp_path, lambda step: "too late" if step > 20 else None)
    assert choice.step == 20 and [(p.name, why) for p, why in choice.skipped] == [
        ("step_000040", "too late")
    ]


def test_a_full_disk_during_a_save_is_a_message_and_keeps_the_last_checkpoint(
    tmp_path: Path,
    markov_data: Path,
    tiny_filesystem: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 21.6: DCP's CheckpointException (a BaseException) came out as a traceback and left
    step_N.tmp behind."""
    run_dir = tiny_filesystem("1M") / "run"
    changes = {"checkpoint": {"interval": 1, "keep": 100}}
    config = tiny_run_config(tmp_path / "tiny.yaml", markov_data, run_dir, changes)
    assert cli_main(["train", str(config), "train.steps=200"]) == 2
    err = capsys.readouterr().err
    assert "could not save checkpoint" in err and "Traceback" not in err
    assert "No space left on device" in err or "no space left" in err
    assert not list((run_dir / CHECKPOINT_DIR).glob("*.tmp"))
    saved = list_checkpoints(run_dir)
    assert saved and verify_checkpoint(saved[-1][1]) is None
