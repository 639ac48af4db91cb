"""The time of a ladder's fit: a 100-run table with 1,000 paired bootstrap replicates.

The table is synthetic (Epoch's law, 2 profiles x 5 sizes x 5 budgets x 2 seeds, one profile
worth 1.3 times its parameters), so the figure is the fit's own cost: the per-profile and
joint fits from the grid, the likelihood-ratio refits, the bootstrap of the joint law, and the
held-out rung's fit with its own bootstrap (two bootstraps in all). The report and figures are
timed apart. The target (issue 23) is under 60 s on 2 cores.

    python benchmarks/bench_ladder_fit.py [--replicates 1000]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import scipy

from layerwise.ladder.fit import fit_ladder
from layerwise.ladder.report import write_ladder_report
from layerwise.ladder.synthetic import SyntheticProfile, synthetic_points
from layerwise.training.metrics import cpu_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicates", type=int, default=1000)
    args = parser.parse_args()
    points = synthetic_points(
        [SyntheticProfile("isotropic"), SyntheticProfile("crown", 1.3, size_ratio=1.01)],
        (1e7, 2e7, 4e7, 8e7, 1.6e8),
        (5.0, 10.0, 20.0, 40.0, 80.0),
        2,
    )
    started = time.perf_counter()
    fit = fit_ladder(points, bootstrap=args.replicates)
    fitted = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        write_ladder_report(points, out, bootstrap=args.replicates)
        reported = time.perf_counter() - started
    print(f"machine: {cpu_model()} ({os.cpu_count()} CPUs), {platform.system()}")
    print(f"scipy {scipy.__version__}, python {platform.python_version()}")
    print(f"table: {len(points)} runs, {args.replicates} bootstrap replicates (twice: all rungs")
    print("       and the held-out fit)")
    print(f"fit_ladder:          {fitted:.1f} s")
    print(f"write_ladder_report: {reported:.1f} s (the fit again, fit.json, report, 4 figures)")
    (crown,) = fit.answers
    print(f"multiplier at the largest rung: {crown.multipliers[0].value.describe()} (truth 1.3)")


if __name__ == "__main__":
    main()
