"""`layerwise plot RUN_DIR...`: the training curves of one or several runs in one figure."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="training curves of one or several runs (PNG)",
        description="Plot training loss, validation loss and perplexity, learning rate and "
        "tokens/s against the step, from each run's metrics.jsonl, one line per run.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories")
    parser.add_argument(
        "-o", "--output", help="PNG file to write (default: curves.png in the first run directory)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from layerwise.runs.listing import plot_runs
    from layerwise.util.files import check_output

    if args.output is not None:
        check_output(args.output, "-o", "file", example="curves.png")
    print(f"curves: {plot_runs(args.run_dirs, args.output)}")
    return 0
