"""Timing, memory and machine helpers shared by the benchmarks.

* `synchronize`: wait for the GPU, so that a clock read after it covers the work queued before;
* `StepClock` / `StepTimes`: one step's wall time, process CPU time and data-fetch time;
* `PeakMemory`: what a piece of code allocates above a baseline (exact on CUDA, the sampled
  resident set on CPU), with `rss_bytes` and `release_host_memory` beneath it;
* `machine_info`: what the figures were measured on, printed before any table.

Nothing here knows about models or training: the plain reference loop uses these as well as
our step, so both are timed by the same clock.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from layerwise.training.metrics import cpu_model, peak_tflops


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on a CUDA device; nothing to wait for elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_info(device: str) -> dict[str, Any]:
    """What the figures were measured on; printed first so a table never travels without it."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
        "torch_default_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            peak_bf16_tflops=peak_tflops(props.name),
        )
    return info


def release_host_memory() -> None:
    """Return freed heap pages to the OS so the next RSS baseline is not inflated by them."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def rss_bytes() -> int | None:
    """The resident set now; None where there is no /proc (not Linux)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


class PeakMemory:
    """Peak memory of one implementation: what it allocates above the baseline at its start.

    CUDA: `max_memory_allocated`, exact. CPU: the resident set sampled every 2 ms by a thread
    (torch ops release the GIL), an approximation: the kernel's RSS peak (`ru_maxrss`) only
    grows over the process's life, so it cannot tell the second implementation's peak apart.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
            self.base: int | None = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        else:
            release_host_memory()
            self.base = rss_bytes()
        self.peak = self.base or 0
        if device.type != "cuda" and self.base is not None:
            # started only once `peak` exists: the sampler reads it from its first tick
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_bytes() or 0)

    def stop_mib(self) -> float | None:
        """Peak growth in MiB; None where it cannot be measured (no /proc)."""
        if self.base is None:
            return None
        if self.device.type == "cuda":
            return (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, rss_bytes() or 0)
        return (self.peak - self.base) / 2**20


@dataclass
class StepTimes:
    """Per-step times of one implementation: wall, process CPU, and the data fetch's wall."""

    step_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    data_s: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


class StepClock:
    """Times one step: synchronised on CUDA at both ends, with a mark after the data fetch.

    Process CPU time is kept beside wall time because on a shared CPU the wall time of a
    single-threaded step mostly measures how long other processes held the core; the CPU time
    measures the step's own work. (On CUDA it only measures the host, and is not used.)
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        synchronize(device)
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        self.fetch = self.wall

    def fetched(self) -> None:
        self.fetch = time.perf_counter()

    def stop(self, times: StepTimes, loss: float) -> None:
        synchronize(self.device)
        times.step_s.append(time.perf_counter() - self.wall)
        times.cpu_s.append(time.process_time() - self.cpu)
        times.data_s.append(self.fetch - self.wall)
        times.losses.append(loss)
