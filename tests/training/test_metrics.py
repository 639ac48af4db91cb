"""Peak memory is per run: after a reset, an earlier run's peak no longer shows."""

from __future__ import annotations

import gc
import resource
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from layerwise.training import metrics

BIG_MIB = 300


def _can_reset_cpu_peak() -> bool:
    if sys.platform != "linux":
        return False
    try:
        metrics.PROC_CLEAR_REFS.write_text("5", encoding="ascii")
    except OSError:
        return False
    return metrics.PROC_STATUS.is_file()


@pytest.mark.skipif(not _can_reset_cpu_peak(), reason="/proc/self/clear_refs is not writable")
def test_cpu_peak_resets_between_runs() -> None:
    cpu = torch.device("cpu")
    metrics.reset_peak_memory(cpu)
    big = np.ones(BIG_MIB * 2**20 // 8)  # np.ones writes every page, so all of it is resident
    big_peak = metrics.peak_memory_mib(cpu)
    del big
    gc.collect()
    metrics.reset_peak_memory(cpu)
    small = np.ones(2**20 // 8)
    small_peak = metrics.peak_memory_mib(cpu)
    del small
    assert big_peak - small_peak > 0.7 * BIG_MIB


def test_cpu_peak_without_proc_is_the_process_peak(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(metrics, "PROC_STATUS", tmp_path / "status")
    monkeypatch.setattr(metrics, "PROC_CLEAR_REFS", tmp_path / "missing" / "clear_refs")
    cpu = torch.device("cpu")
    metrics.reset_peak_memory(cpu)  # nothing to reset: no error
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    expected = kib / 1024 if sys.platform != "darwin" else kib / 2**20
    assert metrics.peak_memory_mib(cpu) == pytest.approx(expected, rel=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_resets_between_runs() -> None:
    cuda = torch.device("cuda")
    metrics.reset_peak_memory(cuda)
    big = torch.ones(BIG_MIB * 2**20 // 4, device=cuda)
    big_peak = metrics.peak_memory_mib(cuda)
    del big
    metrics.reset_peak_memory(cuda)
    small = torch.ones(2**20 // 4, device=cuda)
    small_peak = metrics.peak_memory_mib(cuda)
    del small
    assert big_peak - small_peak > 0.9 * BIG_MIB
