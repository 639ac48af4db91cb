"""The `layerwise` command: a thin argparse layer over the Python API.

Each command group lives in its own module exposing `add_parser(subparsers)`; the parser it adds
sets `func`, a callable taking the parsed namespace and returning an exit status.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from layerwise.util.errors import UserError

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


WRITE_ERRORS = {
    errno.EACCES: "make it writable or choose another output path",
    errno.EPERM: "make it writable or choose another output path",
    errno.EROFS: "the file system is read-only; choose another output path",
    errno.ENOSPC: "the disk is full; free space or choose another output path",
    errno.EDQUOT: "the disk quota is exceeded; free space or choose another output path",
}
"""Errors from writing outputs that are the user's to fix, not bugs: a message, not a trace."""


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
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"layerwise: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in WRITE_ERRORS:
            raise
        print(f"layerwise: error: {write_error_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("layerwise: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
