"""`layerwise train CONFIG [key=value ...] [--resume | --overwrite]`: one run, a thin layer over `train()`.

The training stack (torch and all) is imported when the command runs, not when the parser is
built, so the other commands start fast and stay usable whatever state the trainer is in.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from layerwise.runs.files import RunSummary


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train one model from a config file",
        description=(
            "Train one profile on prepared token files. Settings come from CONFIG (YAML, may "
            "`inherit:` another file) and from section.key=value overrides, e.g. optim.lr=3e-4 "
            "model.profile=crown. Launch with torchrun for several GPUs."
        ),
    )
    parser.add_argument(
        "config", nargs="?", help="YAML config file, e.g. configs/tiny-crown.yaml (required)"
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. optim.lr=3e-4")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the run directory's newest valid checkpoint (run.resume=auto); "
        "with a larger train.steps, extend a finished run where the schedule allows it",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over: delete an earlier run's files in run.dir first (run.overwrite=true)",
    )
    parser.set_defaults(func=run_train, parser=parser)


def run_train(args: argparse.Namespace) -> int:
    from layerwise.config.loader import load_config
    from layerwise.distributed.env import shutdown
    from layerwise.launch import train
    from layerwise.training.resume import moved_run_dir
    from layerwise.training.trainer import RunInterrupted

    if args.config is None or "=" in args.config:
        args.parser.error(
            "give a config file first, e.g. `layerwise train configs/tiny-crown.yaml "
            "optim.lr=1e-3`; KEY=VALUE overrides are optional"
        )
    overrides = [
        *args.overrides,
        *(["run.resume=auto"] if args.resume else []),
        *(["run.overwrite=true"] if args.overwrite else []),
    ]
    config = load_config(args.config, overrides)
    moved = moved_run_dir(Path(args.config), config)
    if moved is not None and not any(o.startswith("run.dir=") for o in args.overrides):
        print(
            f"layerwise: {args.config} is the config of the run in {moved}, copied or moved from "
            f"{config.run.dir}: acting on {moved} (give run.dir=... to choose)",
            file=sys.stderr,
        )
        config = replace(config, run=replace(config.run, dir=str(moved)))
    try:
        summary = train(config)
    except RunInterrupted as exc:
        print(f"layerwise: {exc}", file=sys.stderr)
        return 128 + exc.signum
    finally:
        shutdown()
    if os.environ.get("RANK", "0") == "0":
        print_summary(summary)
    return 0


def print_summary(summary: RunSummary) -> None:
    """One short report on stdout; the details are in summary.json."""
    throughput = (
        "n/a" if summary.mean_tokens_per_s is None else f"{summary.mean_tokens_per_s:,.0f} tok/s"
    )
    mfu = summary.mfu_note if summary.mean_mfu is None else f"MFU {summary.mean_mfu:.1%}"
    val = "n/a" if summary.final_val_loss is None else f"{summary.final_val_loss:.4f}"
    ppl = "n/a" if summary.final_val_ppl is None else f"{summary.final_val_ppl:.2f}"
    print(
        f"{summary.profile}: {summary.steps} steps, {summary.tokens:,} tokens, "
        f"{summary.params / 1e6:.2f}M params\n"
        f"final val loss {val} (ppl {ppl}) | mean {throughput} | {mfu} | "
        f"wall {summary.wall_time_s:.1f} s\n"
        f"summary: {summary.run_dir}/summary.json"
    )
