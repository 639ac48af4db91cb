"""`layerwise report DIR`: regenerate a comparison's table and figures from its runs on disk."""

from __future__ import annotations

import argparse

from rich.console import Console

from layerwise.cli.compare import add_analyze_flag, print_report


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="regenerate a comparison's report and figures")
    parser.add_argument("out", help="the --out directory of `layerwise compare`")
    add_analyze_flag(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print_report(Console(), args.out, args.analyze)
    return 0
