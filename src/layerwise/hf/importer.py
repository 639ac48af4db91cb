"""`layerwise import` and `init.from=HF_DIR`: an Olmo2 (or exported layer-wise) checkpoint on
disk becomes our `Transformer`, or a run directory that `train` can continue.

A run directory is defined by its config.yaml, so the imported shape has to be expressible as a
config: each layer's FFN and attention multipliers are written out, one per layer (used as given,
with `ffn_divisor: 1` so no width is rounded), and the resolved shape is checked against the
checkpoint's before anything is written. The run starts at a step-0 checkpoint with a fresh
optimizer, so `layerwise train RUN_DIR/config.yaml --resume` trains it like any other run.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import torch

from layerwise.config.loader import (
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    parse_override,
    set_value,
)
from layerwise.config.schema import Config
from layerwise.data.meta import META_FILE, TOKENIZER_FILE, meta_to_json, new_meta
from layerwise.data.tokenizer import LoadedTokenizer, load_tokenizer
from layerwise.nn.model import Transformer
from layerwise.nn.state_dict_adapter import (
    PROFILE_KEY,
    HfArchitecture,
    from_hf_state,
    is_isotropic,
    read_architecture,
    read_tensors,
)
from layerwise.profiles.recipes import SHAPES
from layerwise.runs import files as run_files
from layerwise.runs.files import TOKENIZER_DIR
from layerwise.training.resume import clear_run, holds_run
from layerwise.util.errors import UserError
from layerwise.util.files import check_output

DEFAULT_TRAINING = {"batch": {"global_batch": 32, "micro_batch": 8}, "train": {"steps": 1000}}
"""Placeholders that make an imported config valid; set real ones with --config or overrides."""


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
    from layerwise.training.shape import config_shape

    values = config_to_dict(load_config(base)) if base else config_to_dict(Config())
    if base is None:
        for section, body in DEFAULT_TRAINING.items():
            values[section].update(body)
    default = "isotropic" if is_isotropic(arch.shape) else "vanilla"
    named = document.get(PROFILE_KEY)
    profile = cast(str, named) if named in SHAPES else default  # SHAPES is keyed by str
    values["model"] = model_settings(arch, profile)
    values["data"]["seq_len"] = arch.options.max_seq_len
    values["run"]["dir"] = str(out)
    for text in overrides:
        section, key, value = parse_override(text)
        set_value(values, f"{section}.{key}", value)
    config = config_from_dict(values, default_source="layerwise import")
    shape, _ = config_shape(config, arch.shape.vocab_size)
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
    from layerwise.distributed.env import DistInfo
    from layerwise.training.build import block_options
    from layerwise.training.checkpoint import TrainerState, save_checkpoint
    from layerwise.training.optim import build_optimizer

    hf_dir, out = Path(hf_dir), check_output(out, "--out", "directory")
    arch, document = read_architecture(hf_dir)
    config = imported_config(arch, document, out, base, overrides)
    tokenizer = hf_tokenizer(hf_dir, arch.eos_id)
    if tokenizer.vocab_size > arch.shape.vocab_size:
        raise UserError(
            f"{hf_dir}: tokenizer.json has ids up to {tokenizer.vocab_size - 1}, beyond the "
            f"model's vocab_size {arch.shape.vocab_size}"
        )
    state = from_hf_state(read_tensors(hf_dir), arch.shape, str(hf_dir))
    check_import_target(hf_dir, out, overwrite)
    model = Transformer(arch.shape, block_options(config))
    model.load_state_dict(state)
    # written beside `out` and moved in at the end: a killed import leaves no half run in `out`
    work = out.with_name(f".{out.name}.import-tmp")
    shutil.rmtree(work, ignore_errors=True)  # what a killed earlier import left
    try:
        write_imported_run_files(work, config, tokenizer, hf_dir / "tokenizer.json")
        cpu = torch.device("cpu")
        optimizer = build_optimizer(model, config.optim, cpu)
        state_0 = TrainerState(sampler={"epoch": 0, "cursor": 0})
        save_checkpoint(
            work, model, optimizer, state_0, DistInfo(0, 0, 1, cpu), config.checkpoint.keep
        )
        if holds_run(out):
            clear_run(out)
        out.mkdir(parents=True, exist_ok=True)
        for entry in work.iterdir():
            entry.rename(out / entry.name)
        work.rmdir()
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return config


def check_import_target(hf_dir: Path, out: Path, overwrite: bool) -> None:
    """Refuse an `--out` that is (or holds) the checkpoint being imported, or a directory with
    something other than a run in it; a run there is replaced only with --overwrite."""
    source = hf_dir.resolve()
    if out.resolve() == source or out.resolve() in source.parents:
        raise UserError(
            f"--out {out} is where the imported checkpoint {hf_dir} lives; choose another --out"
        )
    if not out.exists() or not any(out.iterdir()):
        return
    if not holds_run(out):
        raise UserError(
            f"--out {out} already exists and holds no layerwise run; --overwrite only replaces a "
            "run directory, so choose another --out"
        )
    if not overwrite:
        raise UserError(f"--out {out} already holds a run; pass --overwrite to replace it")


def write_imported_run_files(
    out: Path, config: Config, tokenizer: LoadedTokenizer, tokenizer_file: Path
) -> None:
    """config.yaml and tokenizer/ (tokenizer.json and a meta.json naming it, with no splits:
    the run has seen no tokens of ours), as `train` records them."""
    meta = new_meta(
        out / TOKENIZER_DIR,
        tokenizer.identity,
        tokenizer.sha256,
        tokenizer.vocab_size,
        tokenizer.eos_id,
    )
    files: dict[str, Path | str] = {TOKENIZER_FILE: tokenizer_file, META_FILE: meta_to_json(meta)}
    run_files.write_run_files(out, dump_config(config), files)
