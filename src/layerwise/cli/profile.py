"""`layerwise profile show|plot`: see what a profile's per-layer widths and costs are."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from layerwise.cli import positive_int
from layerwise.profiles.budget import BudgetResult, resolve_shape
from layerwise.profiles.recipes import PRESETS, ProfileSpec, lookup_spec
from layerwise.profiles.shape import (
    ModelShape,
    flops_per_token,
    layer_params,
    non_embedding_params,
    total_params,
)
from layerwise.profiles.shapefile import holds_shape
from layerwise.util.errors import UserError
from layerwise.util.files import check_output
from layerwise.util.units import parse_count


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("profile", help="show or plot per-layer widths of a profile")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    show = actions.add_parser(
        "show",
        help="per-layer table and totals",
        description="Print per-layer widths, parameters and FLOPs of a preset, a shape or a custom recipe.",
    )
    show.add_argument(
        "profile",
        nargs="?",
        help=f"preset ({', '.join(PRESETS)}), shape name, shape file (learn-shape's "
        "learned-shape.yaml, on its own base) or a config file (.yaml): the shape that config "
        "trains",
    )
    _add_recipe_flags(show)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=run_show)

    plot = actions.add_parser("plot", help="parameter allocation figure (PNG)")
    plot.add_argument("profiles", nargs="+", help="presets, shape names or config files")
    _add_recipe_flags(plot)
    plot.add_argument("-o", "--output", required=True, help="PNG file to write")
    plot.set_defaults(func=run_plot)


def _add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("recipe (overrides the named profile's base)")
    group.add_argument("--layers", type=positive_int, dest="n_layers")
    group.add_argument("--d-model", type=positive_int)
    group.add_argument("--head-dim", type=positive_int)
    group.add_argument("--gqa-group", type=positive_int, help="query heads per KV head")
    group.add_argument("--ffn", help="FFN multiplier anchors, e.g. 0.5,4.0 or 0.5,3.8,0.5")
    group.add_argument("--qkv", help="attention multiplier anchors, e.g. 0.5,1.0")
    group.add_argument(
        "--frame",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="first and last layer set to the reference layer",
    )
    group.add_argument(
        "--ffn-divisor", type=positive_int, help="round FFN widths to multiples of this"
    )
    group.add_argument("--vocab", type=positive_int, dest="vocab_size")
    group.add_argument("--tie-embeddings", action=argparse.BooleanOptionalAction, default=None)
    budget = parser.add_argument_group("budget (rescale the multipliers)")
    exclusive = budget.add_mutually_exclusive_group()
    exclusive.add_argument("--target-params", help="e.g. 180M")
    exclusive.add_argument("--match", help="preset or shape whose size to match")
    budget.add_argument("--match-by", choices=("params", "flops"), default="params")
    budget.add_argument(
        "--seq-len",
        type=positive_int,
        help=f"for FLOPs per token (default {DEFAULT_SEQ_LEN}, or a config file's data.seq_len)",
    )


DEFAULT_SEQ_LEN = 1024
RECIPE_FLAGS = {
    "--layers": "n_layers",
    "--d-model": "d_model",
    "--head-dim": "head_dim",
    "--gqa-group": "gqa_group",
    "--ffn": "ffn",
    "--qkv": "qkv",
    "--frame/--no-frame": "frame",
    "--ffn-divisor": "ffn_divisor",
    "--vocab": "vocab_size",
    "--tie-embeddings/--no-tie-embeddings": "tie_embeddings",
    "--target-params": "target_params",
    "--match": "match",
}
"""The flags that change a recipe or its budget, which a config file decides itself."""
CONFIG_SUFFIXES = (".yaml", ".yml")


def _anchors(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"{flag} {text!r}: write comma-separated numbers, e.g. 0.5,4.0") from None


def spec_from_args(name: str | None, args: argparse.Namespace) -> ProfileSpec:
    """The named profile (or the isotropic base) with every given flag applied on top."""
    if name is None and not (args.ffn and args.qkv):
        raise UserError("name a preset or shape, or give both --ffn and --qkv anchors")
    spec = lookup_spec(name) if name else PRESETS["paper-18l-isotropic"]
    fields: dict[str, Any] = {
        key: getattr(args, key)
        for key in (
            "n_layers",
            "d_model",
            "head_dim",
            "gqa_group",
            "frame",
            "ffn_divisor",
            "vocab_size",
            "tie_embeddings",
        )
        if getattr(args, key) is not None
    }
    if args.ffn:
        fields["ffn"] = _anchors(args.ffn, "--ffn")
    if args.qkv:
        fields["qkv"] = _anchors(args.qkv, "--qkv")
    if name is None and args.frame is None:
        fields["frame"] = False
    return replace(spec, **fields)


def resolve_from_args(
    name: str | None, args: argparse.Namespace
) -> tuple[ModelShape, BudgetResult | None, int]:
    """The shape, its budget result and the sequence length its FLOPs are counted at."""
    if name is not None and name.endswith(CONFIG_SUFFIXES) and not holds_shape(name):
        return config_file_shape(Path(name), args)
    seq_len = args.seq_len or DEFAULT_SEQ_LEN
    target = parse_count(args.target_params) if args.target_params else None
    shape, budget = resolve_shape(
        spec_from_args(name, args), target, args.match, args.match_by, seq_len
    )
    return shape, budget, seq_len


def config_file_shape(
    path: Path, args: argparse.Namespace
) -> tuple[ModelShape, BudgetResult | None, int]:
    """The shape the config in `path` trains, exactly as `layerwise train` resolves it; its
    vocabulary is model.vocab_size or, when that is null, the data's (DIR/meta.json)."""
    from layerwise.config.loader import load_config
    from layerwise.data.meta import META_FILE, read_meta
    from layerwise.training.shape import config_shape, resolve_vocab_size

    given = [flag for flag, key in RECIPE_FLAGS.items() if getattr(args, key) is not None]
    if given:
        raise UserError(
            f"{', '.join(given)} cannot change the shape of config file {path}: the config "
            "decides it; change the file, or name a preset or shape instead"
        )
    config = load_config(path)
    vocab_size = config.model.vocab_size
    if vocab_size is None:
        meta = Path(config.data.dir) / META_FILE
        if not meta.is_file():
            raise UserError(
                f"{path}: model.vocab_size is null (the data's vocabulary) and {meta} does not "
                "exist; prepare the data with `layerwise data prepare`, or set model.vocab_size "
                "in the config"
            )
        vocab_size = resolve_vocab_size(config.model, read_meta(config.data.dir))
    shape, budget = config_shape(config, vocab_size)
    return shape, budget, args.seq_len or config.data.seq_len


def shape_report(shape: ModelShape, seq_len: int) -> dict[str, Any]:
    """The `--json` document: per-layer widths and costs, and totals."""
    return {
        "layers": [
            {
                "index": i,
                "d_ffn": layer.d_ffn,
                "n_heads": layer.n_heads,
                "n_kv_heads": layer.n_kv_heads,
                "params": layer_params(shape, layer),
            }
            for i, layer in enumerate(shape.layers)
        ],
        "total_params": total_params(shape),
        "non_embedding_params": non_embedding_params(shape),
        "flops_per_token": flops_per_token(shape, seq_len),
    }


def _budget_line(result: BudgetResult) -> str:
    return (
        f"budget: target {result.metric} {result.target:,}, landed at {result.achieved:,} "
        f"({result.relative_error:+.2%}); FFN multipliers x{result.ffn_scale:.4g}, "
        f"attention multipliers x{result.qkv_scale:.4g}"
    )


def run_show(args: argparse.Namespace) -> int:
    shape, budget, seq_len = resolve_from_args(args.profile, args)
    report = shape_report(shape, seq_len)
    if args.json:
        if budget is not None:
            report["budget"] = {
                "metric": budget.metric,
                "target": budget.target,
                "achieved": budget.achieved,
                "relative_error": budget.relative_error,
            }
        print(json.dumps(report, indent=2))
        return 0
    total = report["total_params"]
    table = Table(title=args.profile or "custom profile", title_justify="left")
    for column in ("layer", "d_ffn", "heads", "KV heads", "params", "share"):
        table.add_column(column, justify="right")
    for row in report["layers"]:
        table.add_row(
            str(row["index"]),
            str(row["d_ffn"]),
            str(row["n_heads"]),
            str(row["n_kv_heads"]),
            f"{row['params']:,}",
            f"{row['params'] / total:.1%}",
        )
    console = Console()
    console.print(table)
    console.print(
        f"total {total / 1e6:.2f}M parameters ({report['non_embedding_params'] / 1e6:.2f}M without "
        f"embedding and LM head); {report['flops_per_token'] / 1e9:.3f} GFLOPs per token "
        f"(training, seq {seq_len})"
    )
    if budget is not None:
        console.print(_budget_line(budget))
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from layerwise.profiles.plot import plot_allocation

    check_output(args.output, "-o", "file", example="allocation.png")
    shapes = {name: resolve_from_args(name, args)[0] for name in args.profiles}
    path = plot_allocation(shapes, args.output)
    print(f"wrote {path}")
    return 0
