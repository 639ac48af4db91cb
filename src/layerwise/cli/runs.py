"""`layerwise runs DIR`: every run directory under DIR, where it stands and its latest numbers."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from layerwise.runs.listing import RunStatus


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "runs",
        help="list the runs under a directory and where each stands",
        description="List every run directory (one holding config.yaml) at or under DIR: "
        "finished, interrupted at step N, not started or unreadable, with the last training "
        "loss and the latest validation loss and perplexity.",
    )
    parser.add_argument("dir", help="a run directory or any directory above runs")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from layerwise.runs.listing import list_runs

    statuses = list_runs(args.dir)
    if args.json:
        print(json.dumps([asdict(status) for status in statuses], indent=2))
    elif statuses:
        Console().print(status_table(statuses))
    else:
        print(f"no run directories (holding config.yaml) under {args.dir}")
    return 0


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else f"{value:{spec}}"


def status_table(statuses: Sequence[RunStatus]) -> Table:
    table = Table()
    table.add_column("run", overflow="fold")
    table.add_column("profile")
    table.add_column("status", overflow="fold")
    for numeric in ("step", "train loss", "val loss", "val ppl"):
        table.add_column(numeric, justify="right")
    mixtures = any(status.val_sources for status in statuses)
    if mixtures:
        table.add_column("val loss by source", overflow="fold")
    for status in statuses:
        step = "-" if status.step is None else f"{status.step}/{status.steps}"
        by_source = ", ".join(
            f"{name} {loss:.4f}" for name, loss in (status.val_sources or {}).items()
        )
        table.add_row(
            status.run_dir,
            status.profile or "-",
            status.description,
            step,
            _number(status.train_loss, ".4f"),
            _number(status.val_loss, ".4f"),
            _number(status.val_ppl, ".2f"),
            *([by_source or "-"] if mixtures else []),
        )
    return table
