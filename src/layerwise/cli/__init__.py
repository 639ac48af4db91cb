"""The `layerwise` command: a thin argparse layer over the Python API.

Each command group lives in its own module exposing `add_parser(subparsers)`; the parser it adds
sets `func`, a callable taking the parsed namespace and returning an exit status.
"""

from __future__ import annotations

import argparse
import difflib
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
    "ladder",
    "learn_shape",
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


LADDER_SUBCOMMANDS = ("run", "report", "fit")


def default_form(argv: list[str]) -> list[str]:
    """`ladder CONFIG ...` as `ladder run CONFIG ...`: training is that command's main form,
    beside `ladder report` and `ladder fit`."""
    if (
        len(argv) >= 2
        and argv[0] == "ladder"
        and argv[1] not in (*LADDER_SUBCOMMANDS, "-h", "--help")
    ):
        return ["ladder", "run", *argv[1:]]
    return argv


def override_spellings(argv: list[str]) -> list[str]:
    """`--optim.lr=1e-3` and `--optim.lr 1e-3` as `optim.lr=1e-3`, the way people type them.

    No option of any command has a dot in its name, so a `--` word with one is a config key.
    A dotted flag with no value after it is left alone, for argparse to report.
    """
    words: list[str] = []
    rest = iter(argv)
    for word in rest:
        key = word[2:].partition("=")[0]
        if word.startswith("--") and "." in key:
            if "=" in word:
                words.append(word[2:])
                continue
            value = next(rest, None)
            if value is not None:
                words.append(f"{key}={value}")
                continue
        words.append(word)
    return words


def _unknown_hint(parser: argparse.ArgumentParser, args: argparse.Namespace, word: str) -> str:
    """A close spelling for an unknown `--flag`: one of the command's options or a config key."""
    name = word.lstrip("-").partition("=")[0]
    options: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            command = action.choices.get(getattr(args, "command", ""))
            if command is not None:
                options = [o for o in command._option_string_actions if o.startswith("--")]
    keys: list[str] = []
    if hasattr(args, "overrides"):
        from layerwise.config.loader import config_keys

        keys = config_keys()
    same_name = [key for key in keys if key.rsplit(".", 1)[1] == name.replace("-", "_")]
    close_option = difflib.get_close_matches(word.partition("=")[0], options, n=1)
    close_key = same_name or difflib.get_close_matches(name, keys, n=1)
    if close_option and not same_name:
        return f" (did you mean {close_option[0]}?)"
    if close_key:
        return f" (did you mean the config key {close_key[0]}=VALUE?)"
    return ""


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, letting `key=value` overrides follow options (`compare cfg --out d optim.lr=1e-3`).

    argparse stops filling a positional list at the first option, so overrides written after
    options come back unrecognised; they are appended to the command's overrides instead.
    Overrides may also be written as options (`override_spellings`); an unknown option is
    reported with the closest spelling.
    """
    words = override_spellings(default_form(sys.argv[1:] if argv is None else argv))
    args, extra = parser.parse_known_args(words)
    overrides = [item for item in extra if "=" in item and not item.startswith("-")]
    unknown = [item for item in extra if item not in overrides]
    if unknown or (overrides and not hasattr(args, "overrides")):
        first = (unknown or overrides)[0]
        parser.error(
            f"unrecognized arguments: {' '.join(unknown or overrides)}"
            + _unknown_hint(parser, args, first)
        )
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
