"""Targets and checks: every limit the benchmarks are judged by, and the one `Check` they print.

bench_train.py judges its own run here (`train_checks`, `train_info`); benchmarks/gpu_report.py
judges the steps of gpu.sh with the same `Check` and the limits below, and reads bench_train.py's
checks back from bench.json (`Check.to_dict`: name, verdict, detail, passed, text). Nothing here
imports torch, so a finished run can be judged again on any machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from train_results import (
    ProfileResult,
    fmt_mem,
    isotropic_result,
    measured,
    paired,
    short_name,
)

if TYPE_CHECKING:
    from train_setup import Settings

TARGETS = {
    "cpu_ours_over_plain": 1.0,
    "gpu_ours_over_plain": 1.3,
    "profile_over_iso": 0.99,
    "data_share": 0.02,
}
"""bench_train.py's targets (issue 7): ours/plain on each device, profile/isotropic on GPU, and
data loading's share of our step."""

GPU_TIME_LIMIT_S = 480.0
"""The limit for the whole GPU benchmark, and for the whole of gpu.sh, compilation included."""

RESUME_RTOL = 0.01
"""Resumed losses against the killed run's at the same steps: bf16 + compile noise only."""

MIN_LOSS_DROP = 0.3
"""Nats the validation loss must fall over gpu.sh's short run to count as learning."""

Verdict = Literal["PASS", "FAIL", "INFO"]


@dataclass(frozen=True)
class Check:
    """One judged line: PASS or FAIL against a target, or INFO (a figure nothing judges here)."""

    name: str
    verdict: Verdict
    detail: str = ""

    @classmethod
    def judge(cls, passed: bool, name: str, detail: str = "") -> Check:
        return cls(name, "PASS" if passed else "FAIL", detail)

    @property
    def passed(self) -> bool:
        return self.verdict != "FAIL"

    @property
    def text(self) -> str:
        return f"{self.name}: {self.detail}" if self.detail else self.name

    def __str__(self) -> str:
        return f"{self.verdict}  {self.text}"

    def to_dict(self) -> dict[str, Any]:
        """Its fields, with `passed` and `text` as bench.json has always held them."""
        return {**asdict(self), "passed": self.passed, "text": self.text}


# ---------------------------------------------------------------------------------------------
# bench_train.py


def _values(results: list[ProfileResult], value: Callable[[ProfileResult], float]) -> str:
    return ", ".join(f"{short_name(r.profile)} {value(r):.3f}" for r in results) or "none"


def ours_over_plain(result: ProfileResult, settings: Settings) -> float:
    """The ratio the target is judged on: wall time on GPU, the step's own CPU time on CPU.

    On a CPU shared with other processes the wall time of a one-thread step swings by 3x with
    their load (see README), while its CPU time measures the work the step does; on an idle
    machine the two agree, and both are printed in the table.
    """
    ours = result.impls["ours"]
    value = ours.vs_plain if settings.is_cuda else ours.vs_plain_cpu
    return value or 0.0


def train_checks(results: list[ProfileResult], settings: Settings, total_s: float) -> list[Check]:
    """The training benchmark's targets for the device used.

    A profile that was not measured at all fails every target. Under a GPU time budget a
    layer-wise profile may have run ours only: the ours/plain and memory targets are then
    judged on the profiles where both ran (isotropic, the study's reference, must be one),
    and the line names the others.
    """
    done = [r for r in results if measured(r)]
    both = [r for r in done if paired(r)]
    lost = [f"{short_name(r.profile)} ({r.status})" for r in results if not measured(r)]
    alone = [short_name(r.profile) for r in done if not paired(r)]
    note = f"; not measured: {', '.join(lost)}" if lost else ""
    pair_note = note + (f"; plain not run (time budget): {', '.join(alone)}" if alone else "")
    iso = isotropic_result(results)
    iso_paired = iso is not None and paired(iso)
    found: list[Check] = []

    floor = TARGETS["gpu_ours_over_plain" if settings.is_cuda else "cpu_ours_over_plain"]
    found.append(
        Check.judge(
            iso_paired and not lost and all(ours_over_plain(r, settings) >= floor for r in both),
            f"ours/plain tokens/s >= {floor:.2f} for every profile"
            + ("" if settings.is_cuda else " (per-step process CPU time, paired by turn)"),
            _values(both, lambda r: ours_over_plain(r, settings)) + pair_note,
        )
    )
    limit = TARGETS["data_share"]
    found.append(
        Check.judge(
            bool(done) and not lost and all(r.impls["ours"].data_share < limit for r in done),
            f"data loading < {limit:.0%} of our step time",
            ", ".join(f"{short_name(r.profile)} {r.impls['ours'].data_share:.2%}" for r in done)
            + note,
        )
    )
    if not settings.is_cuda:
        return found

    floor = TARGETS["profile_over_iso"]
    if iso is None:
        found.append(
            Check.judge(
                False,
                f"every layer-wise profile within {1 - floor:.0%} of isotropic",
                "isotropic not measured",
            )
        )
    else:
        base = iso.impls["ours"].tokens_per_s
        layerwise = [r for r in done if r is not iso]
        found.append(
            Check.judge(
                not lost and all(r.impls["ours"].tokens_per_s / base >= floor for r in layerwise),
                f"every layer-wise profile's tokens/s >= {floor:.2f} x isotropic's (ours)",
                _values(layerwise, lambda r: r.impls["ours"].tokens_per_s / base) + note,
            )
        )
    found.append(
        Check.judge(
            iso_paired
            and not lost
            and all(
                (r.impls["ours"].peak_mem_mib or 0) <= (r.impls["plain"].peak_mem_mib or 0)
                for r in both
            ),
            "our peak memory <= the plain loop's",
            ", ".join(
                f"{short_name(r.profile)} {fmt_mem(r.impls['ours'].peak_mem_mib)} vs "
                f"{fmt_mem(r.impls['plain'].peak_mem_mib)}"
                for r in both
            )
            + pair_note,
        )
    )
    found.append(
        Check.judge(
            total_s < GPU_TIME_LIMIT_S and not lost,
            f"whole GPU benchmark under {GPU_TIME_LIMIT_S / 60:.0f} min, compile included",
            f"{total_s:.0f}s" + note,
        )
    )
    return found


def train_info(results: list[ProfileResult], settings: Settings) -> list[Check]:
    """Figures the targets of this device do not judge, printed so nothing measured is hidden."""
    done = [r for r in results if measured(r)]
    lines = []
    iso = isotropic_result(results)
    if iso is not None:
        key = "tokens_per_s" if settings.is_cuda else "cpu_tokens_per_s"
        base = getattr(iso.impls["ours"], key) * iso.flops_per_token

        def flops_ratio(r: ProfileResult) -> float:
            return getattr(r.impls["ours"], key) * r.flops_per_token / base

        clock = "" if settings.is_cuda else ", by CPU time"
        lines.append(
            Check(
                f"profile/isotropic model FLOP/s (tokens/s x FLOPs/token, ours{clock})",
                "INFO",
                _values(done, flops_ratio),
            )
        )
    if not settings.is_cuda:
        lines.append(
            Check(
                f"GPU-only targets ({gpu_targets()}) are judged by benchmarks/gpu.sh on a GPU",
                "INFO",
            )
        )
    return lines


def gpu_targets() -> str:
    """The GPU-only targets in a few words, for the lines that say they were not judged."""
    return (
        f"{TARGETS['gpu_ours_over_plain']:g}x plain, profiles within "
        f"{1 - TARGETS['profile_over_iso']:.0%} of isotropic, peak memory <= plain, "
        f"< {GPU_TIME_LIMIT_S / 60:.0f} min"
    )
