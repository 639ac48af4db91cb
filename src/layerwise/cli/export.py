"""`layerwise export RUN_DIR --out DIR`: a run's model as a Hugging Face model directory."""

from __future__ import annotations

import argparse

from layerwise.cli import positive_int


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a run's model for Hugging Face transformers",
        description=(
            "Write a run's checkpoint as a transformers model directory (config.json, "
            "model.safetensors, generation_config.json, tokenizer). Isotropic models load as "
            "native Olmo2; layer-wise ones with trust_remote_code=True."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory")
    parser.add_argument("--out", required=True, help="the model directory to write")
    parser.add_argument("--checkpoint", type=int, metavar="STEP", help="default: the newest")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export")
    parser.add_argument(
        "--max-position-embeddings",
        type=positive_int,
        metavar="N",
        help="the context config.json declares to tools such as lm-eval (default: the larger "
        "of the training context and 2048; RoPE computes any position, but quality past the "
        "training context is untested); the training context is kept as "
        "layerwise_train_seq_len",
    )
    parser.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from layerwise.hf.export import export_run

    result = export_run(
        args.run_dir,
        args.out,
        args.checkpoint,
        args.dtype,
        args.overwrite,
        args.max_position_embeddings,
    )
    print(
        f"exported step {result.step} of {args.run_dir} to {result.out} as {result.kind}; "
        "load it with:"
    )
    print()
    print(result.loading_code())
    return 0
