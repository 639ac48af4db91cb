"""Training-step benchmark: our trainer's step against a plain PyTorch loop, for every profile.

Run from the repository root (nothing to install beyond the package's own dependencies):

    PYTHONPATH=src python benchmarks/bench_train.py --device cpu
    PYTHONPATH=src python benchmarks/bench_train.py --device cuda --time-budget 400
    benchmarks/gpu.sh          # the same on GPU, kept under 8 minutes, output to $OUT

For each profile the same `ModelShape` (train_setup.profile_shape) is trained by two
implementations on one machine:

* **ours** (ours_loop.py): the trainer's own run, from a `Config` on a token directory written
  to a temporary directory: `setup_run` builds the model (parallelized, compiled with
  `run.compile`), the optimizer and `DeviceBatches`, the trainer's input path, and each step is
  `train_step(run.model, run.optimizer, run.batches.next(), ...)` as `Trainer._step` calls it,
  so data loading is part of the measured step and its share is reported separately;
* **plain** (plain_loop.py): a nanoGPT-style loop independent of our model code.

This file is the orchestration: the command line, one subprocess per profile (profile_run.py)
within the time budget, then the table (train_results.py) and the targets (checks.py). Each
profile runs in its own process because a training run trains one profile per process:
dynamo's caches, the allocator's state and the peak-memory counters of one profile must not
leak into the next, and a crash or an out-of-memory error costs one row instead of the run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from checks import train_checks, train_info
from layerwise.distributed.parallelize import SpeedOptions
from layerwise.profiles.shape import flops_per_token, total_params
from layerwise.util.errors import UserError
from profile_run import child_main
from timing import machine_info
from train_results import (
    ProfileResult,
    measured,
    render_table,
    result_from_dict,
    short_name,
    table_rows,
)
from train_setup import (
    CPU_BUDGET_S,
    DEFAULT_PROFILES,
    HARD_GRACE_S,
    Settings,
    cpu_threads,
    profile_shape,
    tokens_needed,
    write_token_data,
)

# ---------------------------------------------------------------------------------------------
# The command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark our training step against a plain PyTorch loop, per profile."
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="default: cuda when a GPU is visible, else cpu",
    )
    parser.add_argument(
        "--profiles",
        nargs="+",
        default=None,
        help="shape names (isotropic vanilla framed reverse crown) or presets "
        "(paper-18l-*); default: all five, isotropic first",
    )
    parser.add_argument("--seq-len", type=int, default=None, help="default: cpu 128, cuda 1024")
    parser.add_argument(
        "--micro-batch",
        type=int,
        default=None,
        help="sequences per step for both loops (default: cpu 16, cuda 48)",
    )
    parser.add_argument(
        "--ours-micro-batch",
        type=int,
        default=None,
        help="a larger micro-batch for our step only, where its memory allows",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed steps per implementation (default: cpu 12, cuda 20)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed steps first, compilation included (default: cpu 2, cuda 3; at least 2)",
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile both loops (default: on for cuda, off for cpu)",
    )
    parser.add_argument(
        "--plain",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the plain loop (--no-plain: ours only, to time a speed lever)",
    )
    parser.add_argument(
        "--compile-mode", choices=("blocks", "model"), default="blocks", help="run.compile_mode"
    )
    parser.add_argument(
        "--compile-loss", action="store_true", help="run.compile_loss: compile norm+head+loss"
    )
    parser.add_argument(
        "--attention",
        choices=("auto", "flash", "cudnn", "efficient", "math"),
        default="auto",
        help="run.attention: the SDPA kernel of our step",
    )
    parser.add_argument("--fp8", action="store_true", help="run.fp8: FP8 matmuls via torchao")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 on cpu, see cpu_threads; 0: torch default)",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="cut timing short, then skip profiles, to finish in this time "
        "(default: cpu 160, cuda none; gpu.sh sets one)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="OUT",
        help="write every figure and check to this JSON file",
    )
    parser.add_argument(
        "--child",
        nargs=3,
        default=None,
        help=argparse.SUPPRESS,
        metavar=("SETTINGS", "PROFILE", "RESULT"),
    )
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> Settings:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but no CUDA GPU is visible")
    cuda = device == "cuda"
    names = [n for item in (args.profiles or DEFAULT_PROFILES) for n in item.split(",") if n]
    micro = args.micro_batch or (48 if cuda else 16)
    steps = args.steps or (20 if cuda else 12)
    return Settings(
        device=device,
        profiles=tuple(names),
        seq_len=args.seq_len or (1024 if cuda else 128),
        micro_batch=micro,
        ours_micro_batch=args.ours_micro_batch or micro,
        steps=steps,
        warmup=max(2, args.warmup or (3 if cuda else 2)),
        compile=cuda if args.compile is None else args.compile,
        time_budget_s=args.time_budget
        if args.time_budget is not None
        else (None if cuda else CPU_BUDGET_S),
        threads=cpu_threads(args.threads, cuda),
        plain=args.plain,
        speed=SpeedOptions(
            compile_mode=args.compile_mode,
            compile_loss=args.compile_loss,
            attention=args.attention,
            fp8=args.fp8,
        ),
    )


# ---------------------------------------------------------------------------------------------
# The parent: schedule profiles within the budget, then report


def run_profile(
    name: str,
    settings: Settings,
    workdir: Path,
    soft_deadline: float | None,
    hard_deadline: float | None,
) -> ProfileResult:
    """Measure one profile in a fresh interpreter; a crash or overrun becomes its status."""
    shape = profile_shape(name, settings)
    settings_path, result_path = workdir / f"{name}.settings.json", workdir / f"{name}.result.json"
    payload = {
        "settings": asdict(settings),
        "workdir": str(workdir),
        "deadline": soft_deadline,
    }
    settings_path.write_text(json.dumps(payload), encoding="utf-8")
    command = [sys.executable, __file__, "--child", str(settings_path), name, str(result_path)]
    timeout = None if hard_deadline is None else max(1.0, hard_deadline - time.time())
    started = time.perf_counter()
    failed = ProfileResult(
        name,
        "",
        total_params(shape),
        flops_per_token(shape, settings.seq_len),
        len(set(shape.layers)),
    )
    try:
        completed = subprocess.run(command, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return replace(
            failed, status="killed: over the time budget", wall_s=time.perf_counter() - started
        )
    if completed.returncode != 0 or not result_path.exists():
        return replace(
            failed,
            status=f"failed (exit {completed.returncode})",
            wall_s=time.perf_counter() - started,
        )
    result = result_from_dict(json.loads(result_path.read_text(encoding="utf-8")))
    result.wall_s = time.perf_counter() - started
    return result


def run_all(settings: Settings, workdir: Path, start: float) -> list[ProfileResult]:
    """Every profile in order, each given a fair share of what is left of the time budget.

    A profile's process cuts its timing short to keep to its share; only the part that cannot
    be cut (start-up, building, warmup and compilation, which a layer-wise profile pays once per
    distinct block shape) decides whether the next profile is started at all, estimated by the
    dearest such part so far. A profile still running past the budget plus HARD_GRACE_S is
    killed, so the whole run keeps to the budget whatever compilation costs.
    """
    results: list[ProfileResult] = []
    budget_end = None if settings.time_budget_s is None else start + settings.time_budget_s
    hard_end = None if budget_end is None else budget_end + HARD_GRACE_S
    for position, name in enumerate(settings.profiles):
        remaining = None if budget_end is None else budget_end - time.time()
        estimate = max((r.wall_s - r.timed_s for r in results), default=0.0)
        if remaining is not None and estimate > remaining:
            shape = profile_shape(name, settings)
            results.append(
                ProfileResult(
                    name,
                    "skipped: time budget",
                    total_params(shape),
                    flops_per_token(shape, settings.seq_len),
                    len(set(shape.layers)),
                )
            )
            continue
        soft = (
            None
            if remaining is None
            else time.time() + remaining / (len(settings.profiles) - position)
        )
        print(
            f"[{time.time() - start:6.1f}s] {name}: measuring ours and plain",
            file=sys.stderr,
            flush=True,
        )
        results.append(run_profile(name, settings, workdir, soft, hard_end))
        print(
            f"[{time.time() - start:6.1f}s] {name}: {results[-1].status} in {results[-1].wall_s:.1f}s",
            file=sys.stderr,
            flush=True,
        )
    return results


def print_header(settings: Settings, info: dict[str, Any]) -> None:
    print("layerwise training-step benchmark: ours vs a plain PyTorch loop")
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items() if v is not None))
    print(
        f"device {settings.device} | seq {settings.seq_len} | micro-batch {settings.micro_batch}"
        f" (ours {settings.ours_micro_batch}) | warmup {settings.warmup} + {settings.steps} timed steps"
        f" in turns | compile {'on' if settings.compile else 'off'}"
        f" | {'bf16 autocast' if settings.is_cuda else 'float32'}"
        f" | torch threads {settings.threads or torch.get_num_threads()}"
        f" | ours: {settings.speed}{'' if settings.plain else ', plain loop not run'}"
    )
    if not settings.is_cuda:
        print(
            "MFU is not defined on CPU (no dense bf16 peak); peak memory is the RSS growth of each loop"
        )
    print(flush=True)


def print_shapes(settings: Settings) -> None:
    for name in settings.profiles:
        shape = profile_shape(name, settings)
        widths = " ".join(f"{layer.d_ffn}/{layer.n_heads}" for layer in shape.layers)
        print(
            f"  {short_name(name):<9} {total_params(shape) / 1e6:7.2f}M params, "
            f"{flops_per_token(shape, settings.seq_len) / 1e6:7.1f} MFLOP/token, d_ffn/heads: {widths}"
        )
    print(flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        child_main(*args.child)
        return 0
    start = time.time()
    settings = settings_from_args(args)
    info = machine_info(settings.device)
    print_header(settings, info)
    try:
        print_shapes(settings)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    vocab = profile_shape(settings.profiles[0], settings).vocab_size
    with tempfile.TemporaryDirectory(prefix="layerwise-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "data").mkdir()
        write_token_data(
            workdir / "data", vocab, tokens_needed(settings), settings.seed, settings.seq_len
        )
        results = run_all(settings, workdir, start)
    total_s = time.time() - start
    print(render_table(table_rows(results, settings), settings))
    print()
    found = train_checks(results, settings, total_s)
    for check in found:
        print(check)
    for line in train_info(results, settings):
        print(line)
    print(f"total {total_s:.0f}s", flush=True)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "settings": asdict(settings),
                    "results": [asdict(r) for r in results],
                    "checks": [c.to_dict() for c in found],
                    "total_s": total_s,
                },
                indent=2,
            ),
            encoding="utf-8",
        )
    return 0 if all(measured(r) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
