"""One profile, measured in its own process (bench_train.py starts one per profile).

Both loops are built and warmed up one after the other (the first step compiles; peak memory
is taken there), then timed step by step in turns (ours, plain | plain, ours | ...) so that load
from other processes on the machine hits both alike. Throughput is the median step time;
ours/plain is the median of the per-turn ratios, each taken between neighbouring steps, which
cancels most of the drift in a shared machine's load. On CPU the ratio is also taken on each
step's process CPU time, which the CPU target is judged on (see `checks.ours_over_plain`).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import torch

from layerwise.distributed.parallelize import SpeedOptions
from layerwise.profiles.shape import ModelShape, flops_per_token, total_params
from layerwise.training.metrics import peak_tflops
from ours_loop import OursLoop, explicit_model, profile_model, run_config
from plain_loop import PlainLoop
from timing import PeakMemory, StepTimes, release_host_memory
from train_results import ImplResult, ProfileResult, short_name
from train_setup import MIN_TIMED_STEPS, Settings, profile_shape

Loop = OursLoop | PlainLoop


def build_and_warm(
    make: Callable[[], Loop], settings: Settings
) -> tuple[Loop, float, float | None, StepTimes]:
    """Build one loop and run its warmup; returns its warmup time and peak memory.

    The first step compiles; the peak is taken over all warmup steps, so it holds what the
    implementation needs in steady state (weights, gradients, optimizer state, activations)
    measured from before it was built.
    """
    memory = PeakMemory(torch.device(settings.device))
    start = time.perf_counter()
    loop = make()
    times = StepTimes()
    for _ in range(settings.warmup):
        loop.step(times)
    warmup_s = time.perf_counter() - start
    return loop, warmup_s, memory.stop_mib(), times


def prime_host_memory(shape: ModelShape, settings: Settings, data_dir: Path, work: Path) -> None:
    """One step of both loops on a one-block copy of the shape, thrown away.

    The first loop to run in a process otherwise pays the host's one-off costs (thread pools,
    kernel and allocator arenas, about 20 MiB of RSS) and looks bigger than the second. Not
    needed on CUDA, where allocations are counted exactly, and avoided there because it would
    compile an extra model.
    """
    small = replace(shape, layers=shape.layers[:1])
    config = run_config(explicit_model(small), settings, data_dir, work / "prime")
    OursLoop(config, small).step(StepTimes())
    PlainLoop(small, settings, data_dir).step(StepTimes())
    release_host_memory()


def interleaved_steps(
    loops: Sequence[Loop], settings: Settings, deadline: float | None
) -> dict[str, StepTimes]:
    """Timed steps taken in turns, the order rotating each turn, so that load from other
    processes hits every loop alike; stops early once the next turn would pass `deadline`
    (time.time()), keeping at least MIN_TIMED_STEPS."""
    times = {loop.name: StepTimes() for loop in loops}
    for turn in range(settings.steps):
        started = time.time()
        shift = turn % len(loops)
        for loop in [*loops[shift:], *loops[:shift]]:
            loop.step(times[loop.name])
        late = deadline is not None and 2 * time.time() - started > deadline
        if late and turn + 1 >= MIN_TIMED_STEPS and turn + 1 < settings.steps:
            print(f"  time budget: timed {turn + 1} of {settings.steps} steps", file=sys.stderr)
            break
    return times


def paired_ratio(mine: list[float], batch: int, plain: list[float], plain_batch: int) -> float:
    """tokens per second (wall or CPU) of one loop over the plain loop's, turn by turn, median."""
    ratios = [(batch / t) / (plain_batch / p) for t, p in zip(mine, plain, strict=True)]
    return statistics.median(ratios)


def summarize(
    loop: Loop,
    times: StepTimes,
    warm: StepTimes,
    warmup_s: float,
    peak_mib: float | None,
    settings: Settings,
    flops: int,
) -> ImplResult:
    step_s = statistics.median(times.step_s)
    tokens_per_s = loop.batch * settings.seq_len / step_s
    peak = peak_tflops(torch.cuda.get_device_name(0)) if settings.is_cuda else None
    return ImplResult(
        impl=loop.name,
        micro_batch=loop.batch,
        tokens_per_s=tokens_per_s,
        step_s=step_s,
        data_share=statistics.median(times.data_s) / step_s,
        warmup_s=warmup_s,
        peak_mem_mib=peak_mib,
        steps_timed=len(times.step_s),
        first_loss=warm.losses[0],
        last_loss=times.losses[-1],
        mfu=None if peak is None else tokens_per_s * flops / (peak * 1e12),
        cpu_tokens_per_s=loop.batch * settings.seq_len / statistics.median(times.cpu_s),
        step_times=[round(t, 5) for t in times.step_s],
        cpu_times=[round(t, 5) for t in times.cpu_s],
    )


def measure_profile(
    name: str, settings: Settings, work: Path, deadline: float | None
) -> ProfileResult:
    """Both loops on one profile: build and warm up each alone, then time them interleaved.

    Ours goes first. Under a time budget, a layer-wise profile whose compilation has already
    used its share keeps only ours (the within-1%-of-isotropic target needs it; the ours/plain
    target is judged on the profiles where both ran, isotropic always among them).
    """
    started = time.perf_counter()
    data_dir = work / "data"
    shape = profile_shape(name, settings)
    flops = flops_per_token(shape, settings.seq_len)
    result = ProfileResult(
        profile=name,
        status="ok",
        params=total_params(shape),
        flops_per_token=flops,
        distinct_block_shapes=len(set(shape.layers)),
    )
    if not settings.is_cuda and settings.plain:
        prime_host_memory(shape, settings, data_dir, work)
    config = run_config(profile_model(name, settings), settings, data_dir, work / f"run-{name}")
    makers: list[Callable[[], Loop]] = [lambda: OursLoop(config, shape)]
    if settings.plain:
        makers.append(lambda: PlainLoop(shape, settings, data_dir))
    warmed = []
    for make in makers:
        if (
            warmed
            and deadline is not None
            and time.time() > deadline
            and short_name(name) != "isotropic"
        ):
            result.status = "ok, only ours: compilation used this profile's time budget"
            break
        warmed.append(build_and_warm(make, settings))
    loops = [loop for loop, *_ in warmed]
    timing_started = time.perf_counter()
    timed = interleaved_steps(loops, settings, deadline)
    result.timed_s = time.perf_counter() - timing_started
    for loop, warmup_s, peak_mib, warm in warmed:
        result.impls[loop.name] = summarize(
            loop, timed[loop.name], warm, warmup_s, peak_mib, settings, flops
        )
        if loop.name != "plain" and "plain" in timed:
            mine, plain = timed[loop.name], timed["plain"]
            impl = result.impls[loop.name]
            impl.vs_plain = paired_ratio(
                mine.step_s, loop.batch, plain.step_s, settings.micro_batch
            )
            impl.vs_plain_cpu = paired_ratio(
                mine.cpu_s, loop.batch, plain.cpu_s, settings.micro_batch
            )
    result.wall_s = time.perf_counter() - started
    return result


def child_main(settings_path: str, profile: str, result_path: str) -> None:
    """Entry point of a profile's subprocess: measure, then write the result as JSON."""
    payload = json.loads(Path(settings_path).read_text(encoding="utf-8"))
    fields = payload["settings"]
    settings = Settings(
        **{
            **fields,
            "profiles": tuple(fields["profiles"]),
            "speed": SpeedOptions(**fields["speed"]),
        }
    )
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    result = measure_profile(profile, settings, Path(payload["workdir"]), payload["deadline"])
    Path(result_path).write_text(json.dumps(asdict(result)), encoding="utf-8")
