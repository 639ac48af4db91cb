"""Judge what benchmarks/gpu.sh left under $OUT; print the final table, write results.json/.md.

    python benchmarks/gpu_report.py OUT --device cuda --total-s 431 --checkpoint-step 40

Every figure is read from the files the steps wrote (bench.json and lever_*.json from
bench_train.py, the run's metrics.jsonl, its eval/step*.json, analysis/analysis.json), so the
report can be rerun on a finished $OUT without a device. A step that did not run or left no
file fails its checks with the reason, never silently passes. The limits and the `Check` each
line is come from checks.py, shared with bench_train.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from checks import GPU_TIME_LIMIT_S, MIN_LOSS_DROP, RESUME_RTOL, TARGETS, Check

LEVER_ORDER = ("compile_loss", "attention=cudnn", "attention=flash", "compile_mode=model", "fp8")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def step_status(out: Path) -> dict[str, str]:
    """Each step's exit status as gpu.sh recorded it ("0", "killed", "skipped: ...")."""
    status = {}
    for line in (out / "steps.tsv").read_text(encoding="utf-8").splitlines():
        name, rc, _ = line.split("\t")
        status[name] = rc
    return status


def losses(records: list[dict[str, Any]], kind: str) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records if r.get("type") == kind}


def resume_checks(out: Path, status: dict[str, str], checkpoint_step: int) -> list[Check]:
    """The killed-and-resumed run: the curve continues, and it learns."""
    work = out / "work"
    killed = losses(read_jsonl(work / "metrics_killed.jsonl"), "train")
    records = read_jsonl(work / "run" / "metrics.jsonl")
    resumed, val = losses(records, "train"), losses(records, "val")
    if status.get("train_killed") != "killed" or status.get("train_resumed") != "0":
        why = f"killed run: {status.get('train_killed')}, resume: {status.get('train_resumed')}"
        return [Check("resume after SIGKILL", "FAIL", why), Check("loss falls", "FAIL", why)]
    overlap = sorted(s for s in killed if s > checkpoint_step and s in resumed)
    worst = max((abs(resumed[s] / killed[s] - 1) for s in overlap), default=float("inf"))
    found = [
        Check.judge(
            bool(overlap) and worst <= RESUME_RTOL,
            "resume after SIGKILL",
            f"killed after step {max(killed)}, resumed from step {checkpoint_step}: steps "
            f"{overlap[0] if overlap else '-'}-{overlap[-1] if overlap else '-'} repeat the "
            f"killed run's losses within {worst:.2%} (limit {RESUME_RTOL:.0%}); ran to step "
            f"{max(resumed)}",
        )
    ]
    steps = sorted(val)
    drop = val[steps[0]] - val[steps[-1]] if len(steps) > 1 else 0.0
    train = [resumed[s] for s in sorted(resumed)]
    falls = drop >= MIN_LOSS_DROP and sum(train[-3:]) < sum(train[:3])
    found.append(
        Check.judge(
            falls,
            "loss falls",
            f"val {val[steps[0]]:.3f} (step {steps[0]}) -> {val[steps[-1]]:.3f} "
            f"(step {steps[-1]}), drop {drop:.2f} >= {MIN_LOSS_DROP}; train "
            f"{train[0]:.3f} -> {train[-1]:.3f}"
            if steps
            else "no validation losses",
        )
    )
    return found


def eval_checks(out: Path, status: dict[str, str]) -> list[Check]:
    scores = sorted((out / "work" / "run" / "eval").glob("step*.json"))
    detail = f"exit {status.get('eval', 'not run')}"
    if status.get("eval") == "0" and scores:
        tasks = read_json(scores[-1]) or {}
        detail = f"{scores[-1].name}: {', '.join(str(k) for k in tasks)[:120]}"
    analysis = out / "analysis" / "analysis.json"
    ok_analysis = status.get("analyze") == "0" and analysis.is_file()
    return [
        Check.judge(status.get("eval") == "0" and bool(scores), "layerwise eval", detail),
        Check.judge(
            ok_analysis,
            "layerwise analyze",
            str(analysis) if ok_analysis else f"exit {status.get('analyze', 'not run')}",
        ),
    ]


def ladder_checks(out: Path, status: dict[str, str]) -> list[Check]:
    """The GPU ladder preset's smallest size trains for each profile: exit 0, loss falls."""
    found = []
    for profile in ("isotropic", "crown"):
        run = out / "work" / f"ladder-{profile}"
        train = losses(read_jsonl(run / "metrics.jsonl"), "train")
        summary = read_json(run / "summary.json") or {}
        ok = status.get(f"ladder_{profile}") == "0" and len(train) >= 2
        falls = ok and train[max(train)] < train[min(train)]
        detail = (
            f"loss {train[min(train)]:.3f} -> {train[max(train)]:.3f}, "
            f"{summary.get('mean_tokens_per_s') or 0:,.0f} tok/s, {summary.get('params', 0):,} params"
            if ok
            else f"exit {status.get(f'ladder_{profile}', 'not run')}"
        )
        found.append(Check.judge(bool(falls), f"ladder-gpu smallest size, {profile}", detail))
    return found


def learn_checks(out: Path, status: dict[str, str]) -> list[Check]:
    """learn-shape under bf16 (+ compile): exit 0, the size within 2% of the target at fixing."""
    records = read_jsonl(out / "work" / "learn" / "supernet" / "metrics.jsonl")
    fixed = [r for r in records if r.get("type") == "gates" and r.get("fixed")]
    if status.get("learn") != "0" or not fixed:
        return [Check.judge(False, "learn-shape, bf16", f"exit {status.get('learn', 'not run')}")]
    gap = (fixed[-1]["expected"] - fixed[-1]["target"]) / fixed[-1]["target"]
    return [
        Check.judge(abs(gap) < 0.02, "learn-shape, bf16", f"size at fixing {gap:+.2%} of target")
    ]


def impl(result: dict[str, Any], name: str) -> dict[str, Any] | None:
    return result.get("impls", {}).get(name)


def bench_rows(bench: dict[str, Any] | None) -> list[list[str]]:
    """profile | ours tok/s | plain tok/s | ours/plain | profile/iso | MFU | peak ours/plain."""
    if bench is None:
        return []
    results = bench["results"]
    iso = next((r for r in results if r["profile"].endswith("isotropic") and impl(r, "ours")), None)
    rows = []
    for result in results:
        ours, plain = impl(result, "ours"), impl(result, "plain")
        name = result["profile"].removeprefix("paper-18l-")
        if ours is None:
            rows.append([name, result["status"], "", "", "", "", ""])
            continue
        base = impl(iso, "ours") if iso else None
        rows.append(
            [
                name,
                f"{ours['tokens_per_s']:,.0f}",
                "-" if plain is None else f"{plain['tokens_per_s']:,.0f}",
                "-" if ours.get("vs_plain") is None else f"{ours['vs_plain']:.3f}",
                "-" if base is None else f"{ours['tokens_per_s'] / base['tokens_per_s']:.3f}",
                "n/a" if ours.get("mfu") is None else f"{ours['mfu']:.1%}",
                f"{mib(ours['peak_mem_mib'])} / {mib(plain['peak_mem_mib']) if plain else '-'}",
            ]
        )
    return rows


def mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} MiB"


def bench_checks(bench: dict[str, Any] | None, status: dict[str, str], device: str) -> list[Check]:
    """bench_train.py's own PASS/FAIL lines for this device, and the GPU-only ones on CPU."""
    if bench is None:
        return [Check("benchmark", "FAIL", f"no bench.json (step: {status.get('bench')})")]
    found = [
        Check.judge(c["passed"], "bench: " + c["text"].split(":")[0], c["text"])
        for c in bench["checks"]
    ]
    if device == "cpu":
        found.append(
            Check(
                "bench: GPU targets",
                "INFO",
                f"ours >= {TARGETS['gpu_ours_over_plain']:g}x plain, profiles within "
                f"{1 - TARGETS['profile_over_iso']:.0%} of isotropic, peak memory <= plain: "
                "judged on a GPU only",
            )
        )
    return found


def lever_rows(out: Path, status: dict[str, str]) -> tuple[list[list[str]], list[Check]]:
    """Each lever's tokens/s against our default step (isotropic, same settings, ours only)."""
    default = read_json(out / "lever_default.json")
    base = lever_tokens(default)
    rows, found = [], []
    for name in ("default", *LEVER_ORDER):
        data = read_json(out / f"lever_{name}.json")
        tokens = lever_tokens(data)
        state = status.get(f"lever_{name}", "not run")
        if tokens is None:
            why = state if state.startswith("skipped") else f"failed (exit {state}), see logs"
            rows.append([name, why, "", ""])
            continue
        ratio = None if base is None else tokens / base
        ours = data["results"][0]["impls"]["ours"]
        rows.append(
            [
                name,
                f"{tokens:,.0f}",
                "-" if ratio is None else f"{ratio:.3f}",
                f"{ours['first_loss']:.3f} -> {ours['last_loss']:.3f}",
            ]
        )
        if name != "default" and ratio is not None:
            found.append(Check(f"lever {name}", "INFO", f"{ratio:.3f}x our default step"))
    if base is None:
        found.append(Check("levers", "FAIL", "our default step was not measured"))
    return rows, found


def lever_tokens(data: dict[str, Any] | None) -> float | None:
    if not data or not data["results"] or "ours" not in data["results"][0].get("impls", {}):
        return None
    return data["results"][0]["impls"]["ours"]["tokens_per_s"]


def markdown(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join(
        [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        + [line(r) for r in rows]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", choices=("cpu", "cuda"), required=True)
    parser.add_argument("--total-s", type=float, required=True)
    parser.add_argument("--checkpoint-step", type=int, required=True)
    args = parser.parse_args(argv)
    out: Path = args.out
    status = step_status(out)
    bench = read_json(out / "bench.json")
    levers, lever_found = lever_rows(out, status)
    checks = [
        *resume_checks(out, status, args.checkpoint_step),
        *eval_checks(out, status),
        *ladder_checks(out, status),
        *learn_checks(out, status),
        *bench_checks(bench, status, args.device),
        *lever_found,
    ]
    if args.device == "cuda":
        checks.append(
            Check.judge(
                args.total_s < GPU_TIME_LIMIT_S,
                f"whole check < {GPU_TIME_LIMIT_S / 60:.0f} min",
                f"{args.total_s:.0f}s",
            )
        )
    machine = (bench or {}).get("machine") or {}
    card = machine.get("gpu") or machine.get("cpu") or "unknown"
    bench_table = markdown(
        [
            "profile",
            "ours tok/s",
            "plain tok/s",
            "ours/plain",
            "profile/iso",
            "MFU",
            "peak ours / plain",
        ],
        bench_rows(bench),
    )
    lever_table = markdown(["lever", "tok/s", "vs default", "loss first -> last"], levers)
    check_table = markdown(
        ["check", "result", "figures"], [[c.name, c.verdict, c.detail] for c in checks]
    )
    title = f"layerwise device check on {args.device} ({card}), {args.total_s:.0f}s in all"
    text = f"{title}\n\n{bench_table}\n\n{lever_table}\n\n{check_table}\n"
    (out / "results.md").write_text(f"## {text}", encoding="utf-8")
    (out / "results.json").write_text(
        json.dumps(
            {
                "device": args.device,
                "machine": machine,
                "total_s": args.total_s,
                "steps": status,
                "checks": [asdict(c) for c in checks],
                "bench": bench_rows(bench),
                "levers": levers,
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    print(text, flush=True)
    return 1 if any(c.verdict == "FAIL" for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
