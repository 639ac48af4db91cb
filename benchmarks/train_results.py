"""The figures bench_train.py measures, as they travel (JSON) and as they are printed (table).

`ProfileResult` is what a profile's subprocess writes and the parent reads back; `--json`
writes them as they are, and benchmarks/gpu_report.py reads that file (profile, status and,
per implementation, tokens_per_s, vs_plain, mfu, peak_mem_mib, first_loss, last_loss). Nothing
here imports torch, so the report (and checks.py) can read results on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from train_setup import Settings


@dataclass
class ImplResult:
    impl: str
    micro_batch: int
    tokens_per_s: float
    step_s: float
    data_share: float
    warmup_s: float
    peak_mem_mib: float | None
    steps_timed: int
    first_loss: float
    last_loss: float
    mfu: float | None = None
    vs_plain: float | None = None
    """Median over turns of this loop's tokens/s over the plain loop's in the same turn."""
    vs_plain_cpu: float | None = None
    """The same with process CPU time instead of wall time (meaningful on CPU only)."""
    cpu_tokens_per_s: float | None = None
    """Tokens over the median step's process CPU time: the loop's own cost on a shared CPU."""
    step_times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)


@dataclass
class ProfileResult:
    profile: str
    status: str
    params: int
    flops_per_token: int
    distinct_block_shapes: int
    wall_s: float = 0.0
    timed_s: float = 0.0
    impls: dict[str, ImplResult] = field(default_factory=dict)


def short_name(profile: str) -> str:
    return profile.removeprefix("paper-18l-")


def result_from_dict(data: dict[str, Any]) -> ProfileResult:
    impls = {k: ImplResult(**v) for k, v in data.pop("impls").items()}
    return ProfileResult(**data, impls=impls)


def measured(result: ProfileResult) -> bool:
    return result.status.startswith("ok")


def paired(result: ProfileResult) -> bool:
    """Both loops ran, so ours/plain and the memory comparison exist for this profile."""
    return measured(result) and "plain" in result.impls


def isotropic_result(results: list[ProfileResult]) -> ProfileResult | None:
    return next((r for r in results if short_name(r.profile) == "isotropic" and measured(r)), None)


def fmt_mem(mib: float | None) -> str:
    return "n/a" if mib is None else f"{mib:,.0f} MiB"


# ---------------------------------------------------------------------------------------------
# The table


def vs_plain_cell(impl: ImplResult, settings: Settings) -> str:
    if impl.vs_plain is None:
        return "-"
    if settings.is_cuda or impl.vs_plain_cpu is None:
        return f"{impl.vs_plain:.3f}"
    return f"{impl.vs_plain:.3f} / {impl.vs_plain_cpu:.3f}"


def vs_iso_cell(impl: ImplResult, iso: ProfileResult, settings: Settings) -> str:
    """Throughput relative to the same loop on isotropic; on CPU also by CPU time.

    The profiles run one after another, so on a shared CPU their wall-clock throughputs are
    measured under different loads; the CPU-time figure is the comparable one there.
    """
    base = iso.impls.get(impl.impl)
    if base is None:
        return "-"
    wall = f"{impl.tokens_per_s / base.tokens_per_s:.3f}"
    if settings.is_cuda or not impl.cpu_tokens_per_s or not base.cpu_tokens_per_s:
        return wall
    return f"{wall} / {impl.cpu_tokens_per_s / base.cpu_tokens_per_s:.3f}"


def table_rows(results: list[ProfileResult], settings: Settings) -> list[list[str]]:
    """profile | impl | tokens/s | MFU | peak mem | ours/plain | profile/iso | data | warmup."""
    iso = isotropic_result(results)
    mem_label = "" if settings.is_cuda else " (RSS growth)"
    rows = []
    for result in results:
        if not measured(result):
            rows.append([short_name(result.profile), "-", result.status, "", "", "", "", "", ""])
            continue
        for impl in result.impls.values():
            vs_iso = "-" if iso is None else vs_iso_cell(impl, iso, settings)
            rows.append(
                [
                    short_name(result.profile),
                    f"{impl.impl} (mb {impl.micro_batch})",
                    f"{impl.tokens_per_s:,.0f}",
                    "n/a (cpu)" if impl.mfu is None else f"{impl.mfu:.1%}",
                    fmt_mem(impl.peak_mem_mib) + mem_label,
                    vs_plain_cell(impl, settings),
                    vs_iso,
                    f"{impl.data_share:.2%}",
                    f"{impl.warmup_s:.1f}s",
                ]
            )
        if not paired(result):
            rows.append(
                [short_name(result.profile), "plain", result.status, "", "", "", "", "", ""]
            )
    return rows


def render_table(rows: list[list[str]], settings: Settings) -> str:
    both = "" if settings.is_cuda else " (wall / cpu time)"
    header = [
        "profile",
        "impl",
        "tokens/s",
        "MFU",
        "peak mem",
        f"ours/plain{both}",
        f"profile/iso{both}",
        "data",
        "warmup+compile",
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])
