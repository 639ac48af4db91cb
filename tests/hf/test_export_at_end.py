"""`run.export_at_end`: a finished run's Hugging Face export, written by the run itself; none
after a signal; refused before training when it could not be written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import TINY_COMPARE, tiny_run_config
from layerwise.cli import main
from layerwise.config.loader import config_hash, load_config
from layerwise.data.tokenizer import load_tokenizer, train_bpe
from layerwise.launch import train
from layerwise.training.callbacks.base import Callback, TrainerView
from layerwise.training.trainer import RunInterrupted
from layerwise.util.errors import UserError

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, markov_data: Path) -> Path:
    """The Markov tokens, prepared with a tokenizer.json as `data prepare` leaves it."""
    data = tmp_path_factory.mktemp("data") / "markov"
    shutil.copytree(markov_data, data)
    texts = [f"the quick brown fox jumps over the lazy dog {i}" for i in range(100)]
    train_bpe(300, texts).save(data / "tokenizer.json")
    meta = json.loads((data / "meta.json").read_text())
    loaded = load_tokenizer(data / "tokenizer.json")
    meta["tokenizer"].update(identity=loaded.identity, sha256=loaded.sha256)
    (data / "meta.json").write_text(json.dumps(meta))
    return data


def run_config(
    tmp_path: Path, data: Path, export: bool | str, changes: Mapping[str, Any] | None = None
) -> Path:
    """The tests' tiny run, as a layer-wise model (so its export is remote code), asking for
    `export`."""
    settings: dict[str, Any] = {"model": {"profile": "vanilla", "d_model": 64}}
    for section, body in {**(changes or {}), "run": {"export_at_end": export}}.items():
        settings[section] = {**settings.get(section, {}), **body}
    return tiny_run_config(tmp_path / "tiny.yaml", data, tmp_path / "run", settings)


def hf_logits(directory: Path, tokens: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(directory), trust_remote_code=True, local_files_only=True
    )
    with torch.no_grad():
        return model.eval()(tokens).logits


def test_a_finished_run_is_exported_as_layerwise_export_does(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = train(load_config(run_config(tmp_path, data, True)))
    run_dir, hf = tmp_path / "run", tmp_path / "run" / "hf"
    assert summary.steps == 12 and (run_dir / "summary.json").is_file()
    assert f"layerwise: exported step 12 to {hf} as layer-wise" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--out", str(tmp_path / "cli")]) == 0
    assert json.loads((hf / "config.json").read_text()) == json.loads(
        (tmp_path / "cli" / "config.json").read_text()
    )
    tokens = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(0))
    assert torch.equal(hf_logits(hf, tokens), hf_logits(tmp_path / "cli", tokens))
    assert not (run_dir / "hf.tmp").exists()


class SignalDuringFinalValidation(Callback):
    """SIGTERM while the last step's validation runs: the run stops after its final save."""

    def on_evaluation(self, trainer: TrainerView, record: Mapping[str, Any]) -> None:
        if trainer.is_last_step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_an_interrupted_run_writes_no_export_and_its_rerun_writes_it_to_the_path(
    tmp_path: Path, data: Path
) -> None:
    out = tmp_path / "exports" / "vanilla"
    config = run_config(tmp_path, data, str(out))
    with pytest.raises(RunInterrupted):
        train(load_config(config), [SignalDuringFinalValidation()])
    assert not out.exists() and not list((tmp_path / "run").glob("hf*"))
    summary = train(load_config(config, ["run.resume=auto"]))  # takes no step, exports
    assert summary.steps == 12 and (out / "config.json").is_file()
    assert not (tmp_path / "run" / "hf").exists()


def test_every_cell_of_a_comparison_is_exported_into_its_run_directory(
    tmp_path: Path, data: Path
) -> None:
    text = TINY_COMPARE.replace("data:\n", f"data:\n  dir: {data}\n", 1)
    text = text.replace("steps: 12", "steps: 2").replace("val_interval: 4", "val_interval: 2")
    config = tmp_path / "compare.yaml"
    config.write_text(text + "  export_at_end: true\n")
    out = tmp_path / "cmp"
    argv = ["compare", str(config), "--profiles", "isotropic,crown", "--out", str(out)]
    assert main(argv) == 0
    exports = sorted(path.parent.parent.relative_to(out) for path in out.glob("**/hf/config.json"))
    assert exports == [Path("crown/seed0"), Path("isotropic/seed0")]


@pytest.mark.slow
def test_rank_zero_of_an_fsdp_run_exports_alone(tmp_path: Path, data: Path) -> None:
    """Rank 0 reloads the final checkpoint by itself, with no other rank to take part in DCP's
    collectives; the export is the model `layerwise export` makes of the same run."""
    config = run_config(tmp_path, data, True)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command = [*launcher, "-m", "layerwise", "train", str(config), "parallel.strategy=fsdp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stderr.count("layerwise: exported step 12") == 1
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "cli")]) == 0
    tokens = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(0))
    assert torch.equal(
        hf_logits(tmp_path / "run" / "hf", tokens), hf_logits(tmp_path / "cli", tokens)
    )


@pytest.mark.parametrize(
    "case",
    ["hf extra missing", "pre-norm block", "path holds other files", "run dir", "no tokenizer"],
)
def test_what_the_export_would_refuse_is_refused_before_training(
    tmp_path: Path,
    data: Path,
    markov_data: Path,
    case: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    export: bool | str = True
    changes: dict[str, Any] = {}
    if case == "hf extra missing":
        monkeypatch.setitem(sys.modules, "safetensors", None)  # find_spec: not installed
        expected = "needs safetensors: pip install 'layerwise[hf]'"
    elif case == "pre-norm block":
        changes = {"model": {"norm_order": "pre"}}
        expected = "run.export_at_end: model.norm_order=pre"
    elif case == "path holds other files":
        (tmp_path / "notes").mkdir()
        (tmp_path / "notes" / "todo.txt").write_text("keep me")
        export = str(tmp_path / "notes")
        expected = f"run.export_at_end {tmp_path / 'notes'} is not empty and is not a layerwise"
    elif case == "run dir":
        export = str(tmp_path)
        expected = "is the run directory or above it"
    else:
        data = markov_data
        expected = "holds no tokenizer.json"
    config = run_config(tmp_path, data, export, changes)
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "run").exists(), "refused before anything was written"
    if case == "path holds other files":
        assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_the_setting_is_operational(tmp_path: Path, data: Path) -> None:
    """Exporting changes nothing a run learns: its hash is the same, so a finished run may be
    resumed, or join a comparison, with it set."""
    config = run_config(tmp_path, data, False)
    hashes = {
        config_hash(load_config(config, [f"run.export_at_end={value}"]))
        for value in ("false", "true", str(tmp_path / "elsewhere"))
    }
    assert len(hashes) == 1


def test_an_empty_path_is_refused(tmp_path: Path, data: Path) -> None:
    with pytest.raises(UserError, match="give true"):
        train(load_config(run_config(tmp_path, data, "")))
