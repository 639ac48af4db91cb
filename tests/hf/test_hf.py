"""Hugging Face interop: exports load in transformers with our logits, import round-trips."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import random_run
from layerwise.cli import main
from layerwise.config.loader import load_config
from layerwise.data.tokenizer import load_tokenizer, train_bpe
from layerwise.hf.export import export_run
from layerwise.hf.generate import generate
from layerwise.hf.importer import import_hf
from layerwise.launch import train
from layerwise.nn.model import Transformer
from layerwise.training.callbacks.base import Callback
from layerwise.training.load import load_model
from layerwise.training.trainer import Trainer
from layerwise.util.errors import UserError

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

BASE = {"n_layers": 3, "head_dim": 8, "gqa_group": 2, "ffn_divisor": 16, "vocab_size": 320}
SHAPES = {
    "isotropic": {"profile": "isotropic", "d_model": 32, **BASE},
    "layerwise": {"profile": "vanilla", "d_model": 64, **BASE},
}


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [f"the quick brown fox jumps over the lazy dog {i}" for i in range(100)]
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_bpe(300, texts).save(path)
    return path


@pytest.fixture(scope="module", params=sorted(SHAPES))
def exported(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tokenizer_file: Path
) -> tuple[str, Transformer, Path, Any]:
    root = tmp_path_factory.mktemp(request.param)
    model = random_run(root / "run", SHAPES[request.param], tokenizer_file)
    assert main(["export", str(root / "run"), "--out", str(root / "hf")]) == 0
    remote = request.param == "layerwise"
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(
        str(root / "hf"), trust_remote_code=remote, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    return request.param, model, root, hf.eval()


@torch.no_grad()
def test_transformers_gives_our_logits(exported: tuple[str, Transformer, Path, Any]) -> None:
    name, model, root, hf = exported
    config = json.loads((root / "hf" / "config.json").read_text())
    if name == "isotropic":
        assert type(hf).__name__ == "Olmo2ForCausalLM" and config["model_type"] == "olmo2"
    else:
        assert config["model_type"] == "layerwise_olmo2" and "auto_map" in config
        assert config["num_key_value_heads_per_layer"] != [2, 2, 2]
    tokens = torch.randint(0, 320, (2, 24))
    assert torch.allclose(hf(tokens).logits, model(tokens), atol=1e-5, rtol=0)


@torch.no_grad()
def test_transformers_scores_past_the_training_context(
    exported: tuple[str, Transformer, Path, Any],
) -> None:
    """lm-eval refuses answers longer than max_position_embeddings, so an export declares 2048
    and keeps its 64-token training context apart; RoPE computes the positions past it."""
    _, model, root, hf = exported
    config = json.loads((root / "hf" / "config.json").read_text())
    assert config["max_position_embeddings"] == 2048 and config["layerwise_train_seq_len"] == 64
    tokens = torch.randint(0, 320, (2, 100))
    logits = hf(tokens).logits
    assert logits.shape[1] == 100 and bool(torch.isfinite(logits).all())
    assert torch.allclose(logits[:, :64], model(tokens[:, :64]), atol=1e-5, rtol=0)


def test_exports_made_before_the_training_context_key_still_import(
    tmp_path: Path, tokenizer_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    random_run(tmp_path / "run", SHAPES["layerwise"], tokenizer_file)
    out = str(tmp_path / "hf")
    assert (
        main(["export", str(tmp_path / "run"), "--out", out, "--max-position-embeddings", "32"])
        == 2
    )
    assert "below the run's training context (data.seq_len=64)" in capsys.readouterr().err
    assert (
        main(["export", str(tmp_path / "run"), "--out", out, "--max-position-embeddings", "96"])
        == 0
    )
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["max_position_embeddings"] == 96
    tokenizer_config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == 96
    del config["layerwise_train_seq_len"]  # as exports wrote it before: the context was max_pos
    config["max_position_embeddings"] = 64
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    assert import_hf(tmp_path / "hf", tmp_path / "imported").data.seq_len == 64


@torch.no_grad()
def test_greedy_generation_and_padding_agree(exported: tuple[str, Transformer, Path, Any]) -> None:
    name, model, root, hf = exported
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        str(root / "hf"), trust_remote_code=name == "layerwise"
    )
    assert tokenizer.eos_token == "<|endoftext|>"
    prompt = tokenizer("the quick brown", return_tensors="pt")
    theirs = hf.generate(**prompt, max_new_tokens=12, do_sample=False, min_new_tokens=12)
    new = theirs[0, prompt["input_ids"].shape[1] :].tolist()
    assert generate(model, [prompt["input_ids"][0].tolist()], 12) == [new]
    padded = torch.tensor([[0, 0, 0, *prompt["input_ids"][0].tolist()]])
    mask = (torch.arange(padded.shape[1]) >= 3).long()[None]
    last = hf(padded, attention_mask=mask).logits[0, -1]
    assert torch.allclose(last, hf(**prompt).logits[0, -1], atol=1e-5, rtol=0)


def test_the_cli_generates_what_transformers_does(
    exported: tuple[str, Transformer, Path, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    _, model, root, _ = exported
    for source in (root / "run", root / "hf"):
        args = ["generate", str(source), "--prompt", "the lazy", "--temperature", "0"]
        assert main([*args, "--max-new-tokens", "6", "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        expected = generate(model, [result["prompt_ids"]], 6, eos_id=0)[0]
        assert result["ids"] == expected and isinstance(result["text"], str)


def test_export_import_export_round_trips(
    exported: tuple[str, Transformer, Path, Any],
) -> None:
    name, model, root, _ = exported
    import_hf(root / "hf", root / "imported")
    trained = load_model(root / "imported")
    assert trained.shape == model.shape and trained.step == 0
    assert trained.config.model.profile == SHAPES[name]["profile"]
    assert trained.config.data.seq_len == 64  # the training context, not max_position_embeddings
    export_run(root / "imported", root / "again")
    configs = [json.loads((root / d / "config.json").read_text()) for d in ("hf", "again")]
    assert configs[0] == configs[1]
    first = safetensors_torch.load_file(str(root / "hf" / "model.safetensors"))
    again = safetensors_torch.load_file(str(root / "again" / "model.safetensors"))
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)


class Snapshot(Callback):
    def on_train_start(self, trainer: Trainer) -> None:
        self.weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_imported_runs_train_and_init_from_takes_hf_dirs(
    tmp_path: Path, tokenizer_file: Path, markov_data: Path
) -> None:
    random_run(tmp_path / "run", SHAPES["layerwise"], tokenizer_file)
    export_run(tmp_path / "run", tmp_path / "hf")
    data = tmp_path / "data"  # tokens of the checkpoint's own tokenizer, as a user would train on
    shutil.copytree(markov_data, data)
    meta = json.loads((data / "meta.json").read_text())
    loaded = load_tokenizer(tokenizer_file)
    meta["tokenizer"].update(identity=loaded.identity, sha256=loaded.sha256)
    (data / "meta.json").write_text(json.dumps(meta))
    settings = [f"data.dir={data}", "data.seq_len=16", "train.steps=2", "run.device=cpu"]
    settings += ["batch.global_batch=4", "batch.micro_batch=4", "run.progress=false"]
    import_hf(tmp_path / "hf", tmp_path / "imported", overrides=settings)
    summary = train(load_config(tmp_path / "imported" / "config.yaml", ["run.resume=auto"]))
    assert summary.steps == 2
    snapshot = Snapshot()
    overrides = [f"init.from={tmp_path / 'hf'}", f"run.dir={tmp_path / 'tuned'}"]
    train(load_config(tmp_path / "imported" / "config.yaml", overrides), [snapshot])
    source = load_model(tmp_path / "run").model.state_dict()
    assert all(torch.equal(snapshot.weights[k], source[k]) for k in source)


def test_bad_input_is_named(
    tmp_path: Path, tokenizer_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    random_run(run, SHAPES["isotropic"], tokenizer_file)
    empty = tmp_path / "untrained"
    empty.mkdir()
    (empty / "config.yaml").write_text((run / "config.yaml").read_text())
    assert main(["export", str(empty), "--out", str(tmp_path / "x")]) == 2
    assert f"{empty} has no checkpoint" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("")
    assert main(["export", str(run), "--out", str(tmp_path / "taken")]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert main(["import", str(llama), "--out", str(tmp_path / "r")]) == 2
    assert f"{llama}/config.json: model_type 'llama'" in capsys.readouterr().err
    export_run(run, tmp_path / "hf")
    with pytest.raises(UserError, match="change the checkpoint's shape"):
        import_hf(tmp_path / "hf", tmp_path / "r", overrides=["model.d_model=64"])


def test_every_exported_file_gets_the_same_permissions(
    exported: tuple[str, Transformer, Path, Any],
) -> None:
    """safetensors writes its file 0600; an export is shared like any other output."""
    modes = {path.name: path.stat().st_mode & 0o777 for path in (exported[2] / "hf").iterdir()}
    assert len(set(modes.values())) == 1, modes


def test_a_full_disk_during_export_is_a_message_and_leaves_nothing(
    tmp_path: Path,
    tokenizer_file: Path,
    tiny_filesystem: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    random_run(tmp_path / "run", SHAPES["layerwise"], tokenizer_file)
    out = tiny_filesystem("64k") / "hf"
    assert main(["export", str(tmp_path / "run"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "could not write the export" in err and "Traceback" not in err
    assert list(out.parent.iterdir()) == []


def test_an_import_that_dies_midway_leaves_no_half_run(
    tmp_path: Path, tokenizer_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21: an import killed after its first files used to leave a half run directory
    that only --overwrite could clear."""
    random_run(tmp_path / "run", SHAPES["isotropic"], tokenizer_file)
    export_run(tmp_path / "run", tmp_path / "hf")

    def killed(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt  # stands for a kill while the checkpoint is written

    monkeypatch.setattr("layerwise.training.checkpoint.save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        import_hf(tmp_path / "hf", tmp_path / "imported")
    assert not (tmp_path / "imported").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run"]
    monkeypatch.undo()
    import_hf(tmp_path / "hf", tmp_path / "imported")  # no --overwrite needed
    assert (tmp_path / "imported" / "config.yaml").is_file()


def test_import_refuses_its_own_source_and_directories_that_hold_no_run(
    tmp_path: Path, tokenizer_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    random_run(tmp_path / "run", SHAPES["isotropic"], tokenizer_file)
    export_run(tmp_path / "run", tmp_path / "hf")
    hf = str(tmp_path / "hf")
    assert main(["import", hf, "--out", hf, "--overwrite"]) == 2
    assert "is where the imported checkpoint" in capsys.readouterr().err
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    assert main(["import", hf, "--out", str(tmp_path / "notes"), "--overwrite"]) == 2
    assert "holds no layerwise run" in capsys.readouterr().err
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"
