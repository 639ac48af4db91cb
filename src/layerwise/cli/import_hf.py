"""`layerwise import HF_DIR --out RUN_DIR`: an Olmo2 checkpoint as a run directory to train on."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import",
        help="turn a Hugging Face Olmo2 checkpoint into a run directory",
        description=(
            "Write a run directory (config.yaml, tokenizer/, a step-0 checkpoint) holding the "
            "weights of an exported or any Olmo2 safetensors checkpoint; continue it with "
            "`layerwise train RUN_DIR/config.yaml --resume`. Data and training settings come "
            "from --config and KEY=VALUE overrides (e.g. data.dir=data/x train.steps=500); "
            "the model section is the checkpoint's."
        ),
    )
    parser.add_argument("hf_dir", metavar="HF_DIR", help="a directory with config.json")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. data.dir=...")
    parser.add_argument("--out", required=True, help="the run directory to write")
    parser.add_argument("--config", help="a config file for the data and training settings")
    parser.add_argument("--overwrite", action="store_true", help="replace a run in --out")
    parser.set_defaults(func=run_import)


def run_import(args: argparse.Namespace) -> int:
    from layerwise.hf.importer import import_hf

    config = import_hf(args.hf_dir, args.out, args.config, args.overrides, args.overwrite)
    print(
        f"imported {args.hf_dir} into {args.out} (profile {config.model.profile}, "
        f"{config.model.n_layers} layers); train on with:\n"
        f"  layerwise train {args.out}/config.yaml --resume"
    )
    return 0
