"""`layerwise analyze RUN_DIR...`: what each layer of a trained model does (issue 12).

The analysis stack (torch, matplotlib) is imported when the command runs, not when the parser
is built, so `layerwise --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from layerwise.cli import positive_int


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="what each layer does: logit lens, importance, CKA, update ratios, attention",
        description="Analyse trained runs layer by layer on their fixed validation windows and "
        "write analysis.json, figures and analysis.md. Given the --out directory of "
        "`layerwise compare`, analyse all its finished runs, each against the reference "
        "profile of its seed, into OUT/analysis/.",
    )
    parser.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="run directories, or one comparison"
    )
    parser.add_argument(
        "--checkpoint", type=int, metavar="STEP", help="checkpoint step (default: the newest)"
    )
    parser.add_argument(
        "--windows", type=positive_int, default=64, help="validation windows per run (default 64)"
    )
    parser.add_argument(
        "--against", metavar="RUN_DIR", help="compare every run's layers with this run's (CKA)"
    )
    parser.add_argument(
        "--out", help="output directory (default: RUN_DIR/analysis of the first run)"
    )
    parser.add_argument(
        "--batch", type=positive_int, help="windows per forward pass (default: batch.micro_batch)"
    )
    parser.add_argument(
        "--cka-tokens",
        type=positive_int,
        default=1024,
        help="tokens per batch in the CKA estimate (default 1024, at least 4)",
    )
    parser.add_argument(
        "--entropy-windows",
        type=positive_int,
        default=4,
        help="windows the attention entropy is computed on (default 4)",
    )
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from layerwise.analysis import AnalysisOptions, analyze, analyze_comparison
    from layerwise.analysis.comparison import ANALYSIS_DIR
    from layerwise.analysis.outputs import MARKDOWN_FILE
    from layerwise.compare.cells import MANIFEST_FILE
    from layerwise.util.errors import UserError
    from layerwise.util.files import check_output

    if args.out is not None:
        check_output(args.out, "--out", "directory")
    if args.cka_tokens < 4:
        raise UserError(f"--cka-tokens must be at least 4, got {args.cka_tokens}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    options = AnalysisOptions(
        windows=args.windows,
        batch=args.batch,
        cka_tokens=args.cka_tokens,
        entropy_windows=args.entropy_windows,
    )
    first = Path(args.run_dirs[0])
    if len(args.run_dirs) == 1 and (first / MANIFEST_FILE).is_file():
        if args.against or args.out:
            raise UserError(
                f"{first} is a comparison: its runs are analysed against its reference profile "
                f"into {first / ANALYSIS_DIR}; drop --against/--out, or name run directories"
            )
        print(analyze_comparison(first, options, device, args.checkpoint))
        print(f"analysis: {first / ANALYSIS_DIR / MARKDOWN_FILE}")
        return 0
    files = analyze(
        args.run_dirs,
        against=args.against,
        out=args.out,
        options=options,
        device=device,
        step=args.checkpoint,
    )
    print(files.markdown.read_text(encoding="utf-8"))
    print(f"analysis: {files.markdown}  data: {files.json}")
    print(f"figures: {files.figures[0].parent}/ ({', '.join(p.name for p in files.figures)})")
    return 0
