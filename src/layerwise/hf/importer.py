"""`layerwise import` and `init.from=HF_DIR`: an Olmo2 (or exported layer-wise) checkpoint on
disk becomes our `Transformer`, or a run directory that `train` can continue.

A run directory is defined by its config.yaml, so the imported shape has to be expressible as a
config: each layer's FFN and attention multipliers are written out, one per layer (used as given,
with `ffn_divisor: 1` so no width is rounded), and the resolved shape is checked against the
checkpoint's before anything is written. The run starts at a step-0 checkpoint with a fresh
optimizer, so `layerwise train RUN_DIR/config.yaml --resume` trains it like any other run.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from layerwise.config import Config, config_from_dict, config_to_dict, load_config, parse_override
from layerwise.errors import UserError
from layerwise.hf.convert import (
    PROFILE_KEY,
    HfArchitecture,
    from_hf_state,
    is_isotropic,
    read_hf_config,
)
from layerwise.model import Transformer, rope_tables
from layerwise.profiles import SHAPES, ModelShape
from layerwise.tokenizer import LoadedTokenizer, load_tokenizer

DEFAULT_TRAINING = {"batch": {"global_batch": 32, "micro_batch": 8}, "train": {"steps": 1000}}
"""Placeholders that make an imported config valid; set real ones with --config or overrides."""


def read_architecture(hf_dir: Path) -> tuple[HfArchitecture, dict[str, Any]]:
    """The shape of the checkpoint in `hf_dir`, from its config.json."""
    path = hf_dir / "config.json"
    if not path.is_file():
        raise UserError(f"{hf_dir} holds no config.json: is it a Hugging Face model directory?")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is unreadable ({exc})") from None
    return read_hf_config(document, str(path)), document


def load_hf_state(hf_dir: str | Path) -> tuple[ModelShape, dict[str, torch.Tensor]]:
    """Shape and weights (our names, float32) of an HF checkpoint directory."""
    hf_dir = Path(hf_dir)
    arch, _ = read_architecture(hf_dir)
    return arch.shape, from_hf_state(read_tensors(hf_dir), arch.shape, str(hf_dir))


def load_hf_model(hf_dir: str | Path) -> tuple[Transformer, HfArchitecture]:
    """Our model with the checkpoint's weights, in eval mode on the CPU."""
    hf_dir = Path(hf_dir)
    arch, _ = read_architecture(hf_dir)
    state = from_hf_state(read_tensors(hf_dir), arch.shape, str(hf_dir))
    with torch.device("meta"):
        model = Transformer(arch.shape, arch.options)
    model = model.to_empty(device="cpu")
    model.load_state_dict(state)
    cos, sin = rope_tables(arch.shape.head_dim, arch.options.max_seq_len, arch.options.rope_theta)
    model.rope_cos, model.rope_sin = cos, sin  # to_empty left these non-persistent buffers unset
    return model.eval(), arch


def read_tensors(hf_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of `model.safetensors` or of the shards its index lists."""
    from safetensors.torch import load_file

    single, index = hf_dir / "model.safetensors", hf_dir / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = [hf_dir / name for name in sorted(set(weight_map.values()))]
    else:
        raise UserError(
            f"{hf_dir} has no model.safetensors (or model.safetensors.index.json); only "
            "safetensors checkpoints can be imported"
        )
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            tensors.update(load_file(str(file)))
        except Exception as exc:
            raise UserError(f"{file} is not a readable safetensors file ({exc})") from None
    return tensors


def hf_tokenizer(hf_dir: Path, eos_id: int | None) -> LoadedTokenizer:
    """The checkpoint's tokenizer.json, with EOS as config.json names it when it does."""
    from dataclasses import replace

    path = hf_dir / "tokenizer.json"
    if not path.is_file():
        raise UserError(
            f"{hf_dir} has no tokenizer.json; a run needs its tokenizer (slow-only tokenizers "
            "can be converted with transformers' AutoTokenizer(...).save_pretrained)"
        )
    loaded = load_tokenizer(path)
    return loaded if eos_id is None else replace(loaded, eos_id=eos_id)


def model_settings(arch: HfArchitecture, profile: str) -> dict[str, Any]:
    """The `model:` section that resolves to exactly `arch.shape` (see the module docstring)."""
    shape, options = arch.shape, arch.options
    groups = {layer.n_heads // layer.n_kv_heads for layer in shape.layers}
    if len(groups) != 1 or any(layer.n_heads % layer.n_kv_heads for layer in shape.layers):
        raise UserError(
            "the checkpoint's layers have different query-per-KV-head groups "
            f"({[(layer.n_heads, layer.n_kv_heads) for layer in shape.layers]}); a run config "
            "has one model.gqa_group, so this shape cannot be imported"
        )
    d = shape.d_model
    return {
        "profile": profile,
        "n_layers": shape.n_layers,
        "d_model": d,
        "head_dim": shape.head_dim,
        "gqa_group": groups.pop(),
        "ffn_divisor": 1,
        "vocab_size": shape.vocab_size,
        "tie_embeddings": shape.tie_embeddings,
        "ffn": [layer.d_ffn / d for layer in shape.layers],
        "qkv": [layer.n_heads * shape.head_dim / d for layer in shape.layers],
        "frame": False,
        "norm_order": "reordered",
        "rope_theta": options.rope_theta,
        "norm_eps": options.norm_eps,
        "init_std": options.init_std,
    }


def imported_config(
    arch: HfArchitecture,
    document: Mapping[str, Any],
    out: Path,
    base: str | Path | None = None,
    overrides: Iterable[str] = (),
) -> Config:
    """The run's config: `base` (or placeholders) for data and training, the checkpoint's
    shape for the model, then `overrides`; refused if the result is not the checkpoint's shape."""
    from layerwise.build import build_shape

    values = config_to_dict(load_config(base)) if base else config_to_dict(Config())
    if base is None:
        for section, body in DEFAULT_TRAINING.items():
            values[section].update(body)
    default = "isotropic" if is_isotropic(arch.shape) else "vanilla"
    profile = document.get(PROFILE_KEY) if document.get(PROFILE_KEY) in SHAPES else default
    values["model"] = model_settings(arch, profile)
    values["data"]["seq_len"] = arch.options.max_seq_len
    values["run"]["dir"] = str(out)
    for text in overrides:
        section, key, value = parse_override(text)
        values[section][key] = value
    config = config_from_dict(values, default_source="layerwise import")
    shape, _ = build_shape(config, arch.shape.vocab_size)
    if config.model.norm_order != "reordered" or shape != arch.shape:
        raise UserError(
            "the model settings given to `layerwise import` change the checkpoint's shape; "
            "override only data, batch, optim, train and run settings"
        )
    return config


def import_hf(
    hf_dir: str | Path,
    out: str | Path,
    base: str | Path | None = None,
    overrides: Iterable[str] = (),
    overwrite: bool = False,
) -> Config:
    """Write `out` as a run directory holding the checkpoint of `hf_dir` at step 0: config.yaml,
    tokenizer/ and a verified checkpoint with a fresh optimizer. Returns the run's config."""
    from layerwise.build import block_options
    from layerwise.checkpointing import TrainerState, save_checkpoint
    from layerwise.distributed import DistInfo
    from layerwise.optim import build_optimizer
    from layerwise.resume import clear_run, holds_run

    hf_dir, out = Path(hf_dir), Path(out)
    arch, document = read_architecture(hf_dir)
    config = imported_config(arch, document, out, base, overrides)
    tokenizer = hf_tokenizer(hf_dir, arch.eos_id)
    if tokenizer.vocab_size > arch.shape.vocab_size:
        raise UserError(
            f"{hf_dir}: tokenizer.json has ids up to {tokenizer.vocab_size - 1}, beyond the "
            f"model's vocab_size {arch.shape.vocab_size}"
        )
    state = from_hf_state(read_tensors(hf_dir), arch.shape, str(hf_dir))
    if out.exists() and any(out.iterdir()):
        if not overwrite or not holds_run(out):
            raise UserError(
                f"--out {out} already exists"
                + ("; pass --overwrite to replace the run in it" if holds_run(out) else "")
            )
        clear_run(out)
    model = Transformer(arch.shape, block_options(config))
    model.load_state_dict(state)
    write_run_files(out, config, tokenizer, hf_dir / "tokenizer.json")
    cpu = torch.device("cpu")
    optimizer = build_optimizer(model, config.optim, cpu)
    state_0 = TrainerState(sampler={"epoch": 0, "cursor": 0})
    save_checkpoint(out, model, optimizer, state_0, DistInfo(0, 0, 1, cpu), config.checkpoint.keep)
    return config


def write_run_files(
    out: Path, config: Config, tokenizer: LoadedTokenizer, tokenizer_file: Path
) -> None:
    """config.yaml and tokenizer/ (tokenizer.json and a meta.json naming it, with no splits:
    the run has seen no tokens of ours), as `train` records them."""
    from layerwise.config import dump_config
    from layerwise.data import META_FILE, TokenMeta, meta_to_json
    from layerwise.fsutil import atomic_write_text
    from layerwise.rundir import CONFIG_FILE, TOKENIZER_DIR

    atomic_write_text(out / CONFIG_FILE, dump_config(config))
    tokenizer_dir = out / TOKENIZER_DIR
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tokenizer_file, tokenizer_dir / "tokenizer.json")
    meta = TokenMeta(
        data_dir=tokenizer_dir,
        tokenizer=tokenizer.identity,
        tokenizer_sha256=tokenizer.sha256,
        vocab_size=tokenizer.vocab_size,
        eos_id=tokenizer.eos_id,
        dtype="uint16" if tokenizer.vocab_size <= 1 << 16 else "uint32",
        splits={},
        seed=0,
        val_target_tokens=0,
        text_bytes=0,
        invalid_utf8_documents=0,
        skipped_bad_records=0,
        empty_documents=0,
    )
    atomic_write_text(tokenizer_dir / META_FILE, meta_to_json(meta))
