"""The `layerwise` command: a thin argparse layer over the Python API.

Each command group lives in its own module exposing `add_parser(subparsers)`; the parser it adds
sets `func`, a callable taking the parsed namespace and returning an exit status.
"""

from __future__ import annotations

import argparse
import importlib
import math
import signal
import sys

from layerwise.util.errors import UserError
from layerwise.util.files import WRITE_ERRORS
from layerwise.util.signals import Terminated, sigterm_raises

COMMAND_MODULES = (
    "profile",
    "data",
    "train",
    "compare",
    "report",
    "plan",
    "runs",
    "plot",
    "demo",
    "eval",
    "export",
    "import_hf",
    "generate",
    "analyze",
    "search",
)


def write_error_message(exc: OSError) -> str:
    """Which path failed, why, and what to do; the outputs already written stay whole because
    every writer writes to a temporary file and renames it."""
    where = f" {exc.filename}" if exc.filename else ""
    assert exc.errno is not None, "called only for errors in WRITE_ERRORS"
    return f"cannot write{where}: {exc.strerror}; {WRITE_ERRORS[exc.errno]}"


def positive_int(text: str) -> int:
    """argparse type for sizes and counts: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def positive_float(text: str) -> float:
    """argparse type for rates, speeds and sizes: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a number above 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerwise",
        description="Pre-train and compare language models with layer-wise scaling.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"layerwise.cli.{name}").add_parser(subparsers)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, letting `key=value` overrides follow options (`compare cfg --out d optim.lr=1e-3`).

    argparse stops filling a positional list at the first option, so overrides written after
    options come back unrecognised; they are appended to the command's overrides instead.
    """
    args, extra = parser.parse_known_args(argv)
    overrides = [item for item in extra if "=" in item and not item.startswith("-")]
    unknown = [item for item in extra if item not in overrides]
    if unknown or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or overrides)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    try:
        # SIGTERM between a command's runs (cells, rungs) stops it as cleanly as Ctrl-C does
        with sigterm_raises("stopped; rerun the same command to continue"):
            return int(args.func(args) or 0)
    except Terminated as exc:
        print(f"layerwise: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except UserError as exc:
        print(f"layerwise: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in WRITE_ERRORS:
            raise
        print(f"layerwise: error: {write_error_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or a search's trial stopped by a signal
        print(f"layerwise: {str(exc) or 'interrupted'}", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
