"""The `layerwise` command: a thin argparse layer over the Python API.

Each command group lives in its own module exposing `add_parser(subparsers)`; the parser it adds
sets `func`, a callable taking the parsed namespace and returning an exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from layerwise.errors import UserError

COMMAND_MODULES = ("profile", "data", "train", "compare", "report", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerwise",
        description="Pre-train and compare language models with layer-wise scaling.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"layerwise.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"layerwise.cli.{name}":
                raise
            continue
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"layerwise: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("layerwise: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
