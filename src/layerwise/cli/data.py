"""`layerwise data prepare`: the CLI face of `layerwise.data.prepare`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from layerwise.data.inputs import PYTHON_DOCS
from layerwise.data.prepare import DEFAULT_VAL_FRACTION, PrepareResult, prepare
from layerwise.data.token_import import IMPORT_DTYPES, ImportResult, import_tokens
from layerwise.util.errors import UserError
from layerwise.util.signals import Terminated
from layerwise.util.units import parse_count


def token_count(text: str) -> int:
    """`--val-tokens` as users write budgets (50M, 1.5B); 0 means no validation split.

    Anything else that comes out below one token (`-5`, `0.4`) is refused rather than rounded
    to 0, which would silently drop the validation split.
    """
    if text.strip() == "0":
        return 0
    try:
        count = parse_count(text)
    except UserError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(
            f"expected a token count such as 50M, 1.5B or 20000 (0 for no validation split), "
            f"got {text!r}"
        )
    return count


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `data` with its `prepare` subcommand."""
    parser = subparsers.add_parser("data", help="turn raw text into token files for training")
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    prep = commands.add_parser(
        "prepare",
        help="tokenize text into train.bin, val.bin and meta.json",
        description=(
            "Tokenize documents into memory-mapped token files (EOS after every document) with "
            "a validation split of whole documents. Same inputs and seed give identical bytes."
        ),
    )
    prep.add_argument(
        "--input",
        dest="inputs",
        nargs="+",
        action="extend",
        required=True,
        metavar="PATH",
        help=(
            ".jsonl, .jsonl.gz, .json.gz, .jsonl.zst (one document per line), .txt (one per "
            "file), .parquet, .arrow, `datasets` save_to_disk directories, other directories, "
            f"globs, or {PYTHON_DOCS} (the standard library's docstrings)"
        ),
    )
    prep.add_argument(
        "--tokenizer",
        required=True,
        metavar="SPEC",
        help="a tokenizer.json, a GPT-2 style directory, or bpe:N to train one with N ids",
    )
    prep.add_argument("--out", required=True, metavar="DIR", help="output directory")
    val = prep.add_mutually_exclusive_group()
    val.add_argument(
        "--val-tokens",
        type=token_count,
        metavar="N",
        help="hold out whole documents until N tokens (e.g. 50M)",
    )
    val.add_argument(
        "--val-fraction",
        type=float,
        metavar="F",
        help=f"hold out this fraction of the tokens (default {DEFAULT_VAL_FRACTION})",
    )
    prep.add_argument("--text-field", default="text", help="JSON/parquet field holding the text")
    prep.add_argument("--seed", type=int, default=0, help="picks the validation documents")
    prep.add_argument(
        "--overwrite",
        action="store_true",
        help=(
            "replace DIR if it is empty or holds an earlier `data prepare` output and nothing "
            "else (other files are named, not deleted)"
        ),
    )
    prep.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip and count malformed records instead of stopping",
    )
    prep.add_argument(
        "--workers", type=int, metavar="N", help="tokenizer processes (default: all cores)"
    )
    prep.set_defaults(func=run_prepare)
    add_import_parser(commands)


def add_import_parser(commands: argparse._SubParsersAction) -> None:
    """`data import`: token arrays made elsewhere, with their dtype declared, never guessed."""
    imp = commands.add_parser(
        "import",
        help="turn pre-tokenized arrays (.bin memmaps, .npy) into train.bin, val.bin, meta.json",
        description=(
            "Import token ids written by another pipeline (OLMo-core/Dolma raw memmaps, .npy). "
            "The dtype must be declared; every id is checked against the tokenizer's "
            "vocabulary and for the signatures of a wrong dtype before anything is written."
        ),
    )
    imp.add_argument("tokens", nargs="+", metavar="TOKENS", help="token files, in order")
    imp.add_argument(
        "--dtype",
        required=True,
        choices=IMPORT_DTYPES,
        help="the dtype the files were written in (for .npy, must agree with its header)",
    )
    imp.add_argument(
        "--tokenizer", required=True, metavar="TOK", help="the tokenizer that made the ids"
    )
    imp.add_argument("--out", required=True, metavar="DIR", help="output directory")
    val = imp.add_mutually_exclusive_group()
    val.add_argument(
        "--val-tokens",
        type=token_count,
        metavar="N",
        help=f"the last N tokens are validation (default {DEFAULT_VAL_FRACTION} of them)",
    )
    val.add_argument("--val-files", nargs="+", default=[], metavar="F", help="held-out token files")
    imp.add_argument("--eos-id", type=int, metavar="ID", help="default: the tokenizer's EOS")
    imp.add_argument(
        "--overwrite", action="store_true", help="replace DIR if it holds an earlier output"
    )
    imp.set_defaults(func=run_import)


def until_signal(work: Callable[[], str]) -> int:
    """Run `work` and print the line it returns; SIGTERM gives one line and 143, as Ctrl-C
    gives 130."""
    try:
        line = work()
    except Terminated as exc:
        print(f"layerwise: {exc}", file=sys.stderr)
        return 128 + exc.signum
    print(line, file=sys.stderr)
    return 0


def run_import(args: argparse.Namespace) -> int:
    """Import, then print the summary line."""
    return until_signal(
        lambda: import_line(
            import_tokens(
                args.tokens,
                args.dtype,
                args.tokenizer,
                args.out,
                val_tokens=args.val_tokens,
                val_files=args.val_files,
                eos_id=args.eos_id,
                overwrite=args.overwrite,
            )
        )
    )


def import_line(result: ImportResult) -> str:
    """Splits, dtype, vocabulary and throughput in one line; linked files are named."""
    meta = result.meta
    train, val = meta.splits["train"], meta.splits["val"]
    linked = f"; hard-linked {', '.join(result.linked)}" if result.linked else ""
    return (
        f"imported {meta.data_dir}: train {train.tokens:,} tokens / {train.documents:,} docs, "
        f"val {val.tokens:,} tokens / {val.documents:,} docs ({meta.dtype}, vocab "
        f"{meta.vocab_size:,}, EOS {meta.eos_id}); {result.input_bytes / 1e9:.3f} GB in "
        f"{result.seconds:.2f} s ({result.gb_per_s:.2f} GB/s){linked}"
    )


def run_prepare(args: argparse.Namespace) -> int:
    """Prepare, then print the summary line."""
    return until_signal(
        lambda: summary_line(
            prepare(
                args.inputs,
                args.tokenizer,
                args.out,
                val_tokens=args.val_tokens,
                val_fraction=args.val_fraction,
                text_field=args.text_field,
                seed=args.seed,
                overwrite=args.overwrite,
                skip_bad=args.skip_bad,
                workers=args.workers,
            )
        )
    )


def summary_line(result: PrepareResult) -> str:
    """The one line a non-interactive run prints: enough to spot a wrong split or a bad input."""
    meta = result.meta
    train, val = meta.splits["train"], meta.splits["val"]
    repaired = (
        f"{meta.invalid_utf8_documents:,} invalid UTF-8 documents repaired, "
        f"{meta.skipped_bad_records:,} bad records skipped, "
        f"{meta.empty_documents:,} empty documents dropped"
    )
    return (
        f"prepared {meta.data_dir}: train {train.tokens:,} tokens / {train.documents:,} docs, "
        f"val {val.tokens:,} tokens / {val.documents:,} docs ({meta.dtype}, vocab "
        f"{meta.vocab_size:,}, EOS {meta.eos_id}); {meta.text_bytes / 1e6:,.1f} MB of text in "
        f"{result.seconds:.1f} s ({result.mb_per_s:.2f} MB/s); {repaired}"
    )
