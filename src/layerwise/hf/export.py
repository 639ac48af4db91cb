"""`layerwise export`: a run's checkpoint as a Hugging Face model directory, loadable offline.

An isotropic model becomes a native `Olmo2ForCausalLM`; a layer-wise one ships the remote-code
module `modeling_layerwise_olmo2.py` beside its weights. Either way the directory also holds the
run's tokenizer (tokenizer.json plus a tokenizer_config.json naming EOS), so
`AutoTokenizer.from_pretrained(DIR)` needs nothing else. The directory is written under a
temporary name and renamed when complete: a directory with the output's name is always whole.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from layerwise.nn.state_dict_adapter import (
    MODELING_FILE,
    PROFILE_KEY,
    hf_config,
    is_isotropic,
    to_hf_state,
)
from layerwise.runs.files import TOKENIZER_DIR
from layerwise.training.build import block_options
from layerwise.training.load import load_model
from layerwise.util.errors import UserError
from layerwise.util.files import check_output, default_file_mode, write_failure

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEFAULT_MAX_POSITIONS = 2048
"""The least `max_position_embeddings` an export declares: lm-eval's default context, so a tiny
model trained on short windows can still be scored on tasks with long answers (lm-eval refuses a
continuation longer than it). RoPE has no learned positions, so the model computes such
positions; how well it does past its training context is another matter."""
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class ExportResult:
    out: Path
    native: bool
    """True: a native Olmo2 checkpoint; False: layer-wise, loaded with trust_remote_code."""
    step: int

    @property
    def kind(self) -> str:
        return "native Olmo2" if self.native else "layer-wise Olmo2 (remote code)"

    def loading_code(self) -> str:
        """The Python that loads the export and generates from it. A layer-wise export's
        tokenizer gets trust_remote_code too: AutoTokenizer reads config.json, and would otherwise
        ask on the terminal whether to run the model's code."""
        remote = "" if self.native else ", trust_remote_code=True"
        return "\n".join(
            [
                "from transformers import AutoModelForCausalLM, AutoTokenizer",
                f'tokenizer = AutoTokenizer.from_pretrained("{self.out}"{remote})',
                f'model = AutoModelForCausalLM.from_pretrained("{self.out}"{remote})',
                'inputs = tokenizer("The meaning of life is", return_tensors="pt")',
                "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=20)[0]))",
            ]
        )


def export_run(
    run_dir: str | Path,
    out: str | Path,
    step: int | None = None,
    dtype: str = "fp32",
    overwrite: bool = False,
    max_positions: int | None = None,
) -> ExportResult:
    """Write the run's model (checkpoint `step`, default the newest) to `out` as an HF model.

    config.json's `max_position_embeddings` is `max_positions`, by default the larger of the
    training context (data.seq_len, kept as `layerwise_train_seq_len`) and
    DEFAULT_MAX_POSITIONS."""
    from safetensors.torch import save_file

    run_dir, out = Path(run_dir), Path(out)
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    check_output_dir(out, overwrite)
    trained = load_model(run_dir, step)
    tokenizer = run_dir / TOKENIZER_DIR / TOKENIZER_FILE
    if not tokenizer.is_file():
        raise UserError(
            f"{tokenizer} not found: the run's data was prepared without a tokenizer.json, so "
            "the export could not be used with AutoTokenizer; prepare the data with a tokenizer"
        )
    eos_id = trained.meta.eos_id
    options = block_options(trained.config)
    positions = declared_positions(options.max_seq_len, max_positions)
    config = hf_config(trained.shape, options, eos_id, DTYPES[dtype], positions)
    config[PROFILE_KEY] = trained.config.model.profile
    tensors = to_hf_state(trained.model.state_dict(), trained.shape)
    tmp = out.with_name(f"{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file(
            {k: v.to(DTYPES[dtype]) for k, v in tensors.items()},
            tmp / WEIGHTS_FILE,
            metadata={"format": "pt"},
        )
        write_json(tmp / "config.json", config)
        write_json(tmp / "generation_config.json", generation_config(eos_id))
        shutil.copyfile(tokenizer, tmp / TOKENIZER_FILE)
        write_json(tmp / "tokenizer_config.json", tokenizer_config(tokenizer, eos_id, config))
        if not is_isotropic(trained.shape):
            shutil.copyfile(Path(__file__).with_name(MODELING_FILE), tmp / MODELING_FILE)
        (tmp / WEIGHTS_FILE).chmod(default_file_mode())  # safetensors writes it 0600
    except Exception as exc:
        cause = write_failure(exc, tmp)  # before removing the partial export frees its space
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(
            f"could not write the export to {tmp}: {cause}; free disk space or choose another "
            "--out (nothing was written)"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return ExportResult(out, is_isotropic(trained.shape), trained.step)


def declared_positions(train_seq_len: int, requested: int | None) -> int:
    """The export's `max_position_embeddings`: `requested`, or DEFAULT_MAX_POSITIONS when the
    training context is shorter; never below the training context, which the model handles."""
    if requested is None:
        return max(train_seq_len, DEFAULT_MAX_POSITIONS)
    if requested < train_seq_len:
        raise UserError(
            f"--max-position-embeddings {requested} is below the run's training context "
            f"(data.seq_len={train_seq_len}); give at least {train_seq_len}"
        )
    return requested


def check_output_dir(out: Path, overwrite: bool, what: str = "--out") -> None:
    """Refuse to replace an existing directory unless asked, and never one that is not an
    export (`is_export`), so a typo cannot delete unrelated files, a downloaded model included;
    a path that cannot be written (under a file, or on a file system that takes no new files) is
    refused first. `what` is the flag or config key that named `out`."""
    check_output(out, what, "directory")
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise UserError(f"{what} {out} already exists; pass --overwrite to replace it")
    if not is_export(out):
        raise UserError(
            f"{what} {out} is not empty and is not a layerwise export (no config.json naming "
            f"{PROFILE_KEY}); refusing to replace it. Choose another directory"
        )


def is_export(directory: Path) -> bool:
    """`directory` holds an export of ours: its config.json names the profile, as every export
    has written."""
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and PROFILE_KEY in config


def generation_config(eos_id: int) -> dict[str, Any]:
    return {"eos_token_id": eos_id, "pad_token_id": eos_id, "do_sample": False}


def tokenizer_config(tokenizer: Path, eos_id: int, config: dict[str, Any]) -> dict[str, Any]:
    """What AutoTokenizer needs beside tokenizer.json: the fast tokenizer class and EOS (also
    used for padding, since the run's tokenizer has no pad token)."""
    from tokenizers import Tokenizer

    eos = Tokenizer.from_file(str(tokenizer)).id_to_token(eos_id)
    if eos is None:
        raise UserError(f"{tokenizer}: the run's EOS id {eos_id} is not in its vocabulary")
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": eos,
        "pad_token": eos,
        "model_max_length": config["max_position_embeddings"],
        "clean_up_tokenization_spaces": False,
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
