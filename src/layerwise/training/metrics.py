"""What a run records: the metrics log, throughput and MFU, and the hardware it ran on.

`metrics.jsonl` holds one JSON object per line, `{"type": "train" | "val", "step": ..., ...}`,
appended and flushed as the run goes so that it can be followed with `tail -f`. A run killed
mid-write may leave a torn last line; resuming drops it along with everything after the
checkpoint, so the log always reads as a single uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import platform
import re
import resource
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from layerwise.runs.files import METRICS_FILE, read_records
from layerwise.util.files import atomic_write_text

PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"\bGH200\b", 989.4),
    (r"\bH200\b", 989.4),
    (r"\bH100\b.*\bPCIe\b", 756.0),
    (r"\bH100\b.*\bNVL\b", 835.0),
    (r"\bH100\b", 989.4),
    (r"\bB200\b", 2250.0),
    (r"\bA100\b", 312.0),
    (r"\bL40S\b", 362.0),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
)
"""Dense (no sparsity) bf16 tensor-core peaks per GPU, by device-name pattern, first match wins.

Vendor datasheet figures; an unlisted GPU gets no MFU unless `run.peak_tflops` is set.
"""

CPU_MFU_NOTE = "MFU is not defined on CPU (no dense bf16 peak to compare against); see tokens/s"


def peak_tflops(device_name: str) -> float | None:
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name):
            return tflops
    return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info(device: torch.device, world_size: int) -> dict[str, Any]:
    return {
        "device_type": device.type,
        "device_name": device_name(device),
        "device_count": world_size,
        "cpu": cpu_model(),
        "cpu_threads": torch.get_num_threads(),
    }


def versions() -> dict[str, str]:
    from layerwise import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "layerwise": __version__,
    }


@dataclass(frozen=True)
class MfuBasis:
    """Everything MFU needs besides the throughput: FLOPs per token and the peak of all devices."""

    flops_per_token: int
    peak_flops: float | None
    note: str | None

    def mfu(self, tokens_per_s: float) -> float | None:
        if self.peak_flops is None:
            return None
        return tokens_per_s * self.flops_per_token / self.peak_flops


def mfu_basis(
    flops_per_token: int, device: torch.device, world_size: int, override_tflops: float | None
) -> MfuBasis:
    """The peak to divide by: the override, else the GPU's datasheet peak; none on CPU."""
    tflops = override_tflops
    note = None
    if tflops is None and device.type == "cuda":
        tflops = peak_tflops(device_name(device))
        if tflops is None:
            note = f"no known bf16 peak for {device_name(device)}; set run.peak_tflops to get MFU"
    elif tflops is None:
        note = CPU_MFU_NOTE
    peak = None if tflops is None else tflops * 1e12 * world_size
    return MfuBasis(flops_per_token=flops_per_token, peak_flops=peak, note=note)


PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for `peak_memory_mib`, so that each run in one process reports its own.

    On CUDA the allocator's peak statistics are reset. On Linux CPU, writing "5" to
    /proc/self/clear_refs resets the process's resident-memory high-water mark (VmHWM) to its
    current resident size. Where that is unavailable (no /proc, or not writable) nothing is
    reset: the CPU peak is then per process, the maximum over everything it has run so far.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        PROC_CLEAR_REFS.write_text("5", encoding="ascii")


def peak_memory_mib(device: torch.device) -> float:
    """Peak allocated GPU memory, or on CPU the peak resident set size, since the last reset.

    On CPU this is VmHWM from /proc/self/status, which `reset_peak_memory` resets; without /proc
    it is `ru_maxrss`, which never resets (the peak of the whole process).
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with PROC_STATUS.open(encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


def truncate_log(path: Path, last_step: int) -> list[dict]:
    """Drop records after `last_step` (the checkpoint a run resumes from); rewrite atomically."""
    kept = [r for r in read_records(path) if r.get("step", 0) <= last_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


class MetricsWriter:
    """Appends records to metrics.jsonl, one flushed line each."""

    def __init__(self, run_dir: Path) -> None:
        self._file: TextIO = open(run_dir / METRICS_FILE, "a", encoding="utf-8")  # noqa: SIM115

    def write(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
