"""The comparison report's downstream section, on synthetic run directories (no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from layerwise.evaluation.report import RunRef, downstream_section
from layerwise.runs.files import RunSummary
from layerwise.util.render import render_html, render_markdown


def scores(acc: float, n: int = 1000, chance: float = 0.25) -> dict:
    return {
        "n": n,
        "primary": "len_norm",
        "acc": acc - 0.02,
        "len_norm": acc,
        "bpb": 1.5,
        "chance": chance,
        "majority": chance,
    }


def write_run(run_dir: Path, profile: str, seed: int, arc: list[float], piqa: float) -> RunRef:
    """A finished run whose arc_easy score moved through `arc` (steps 0, 50, 100)."""
    run_dir.mkdir(parents=True)
    records = [
        {
            "type": "downstream",
            "step": step,
            "tokens": step * 4096,
            "tasks": {"arc_easy": scores(value), "piqa": scores(piqa, 1838, 0.5)},
        }
        for step, value in zip((0, 50, 100), arc, strict=True)
    ]
    lines = [{"type": "train", "step": 1, "loss": 3.0, "lr": 1e-3, "tokens": 4096}, *records]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    summary = RunSummary(
        run_dir=str(run_dir),
        profile=profile,
        seed=seed,
        steps=100,
        tokens=409600,
        final_train_loss=3.0,
        final_val_loss=3.1,
        final_val_ppl=22.2,
        params=1,
        non_embedding_params=1,
        layers=[],
        d_model=8,
        head_dim=8,
        vocab_size=64,
        flops_per_token=1,
        budget=None,
        mean_tokens_per_s=None,
        mean_mfu=None,
        mfu_note=None,
        peak_memory_mib=None,
        wall_time_s=1.0,
        hardware={},
        versions={},
        config_hash="x",
        downstream={k: records[-1][k] for k in ("step", "tokens", "tasks")},
    )
    (run_dir / "summary.json").write_text(json.dumps(summary.to_dict()))
    return RunRef(run_dir, profile, seed)


def test_downstream_section_table_chance_and_figure(tmp_path: Path) -> None:
    runs = [
        write_run(tmp_path / "iso-0", "isotropic", 0, [0.24, 0.30, 0.36], 0.50),
        write_run(tmp_path / "iso-1", "isotropic", 1, [0.26, 0.32, 0.38], 0.51),
        write_run(tmp_path / "crown-0", "crown", 0, [0.25, 0.33, 0.40], 0.49),
        write_run(tmp_path / "crown-1", "crown", 1, [0.25, 0.33, 0.42], 0.50),
    ]
    section = downstream_section(
        runs, ["isotropic", "crown"], "isotropic", tmp_path / "figures", tmp_path
    )
    assert section is not None
    rows = {(r.profile, r.task): r for r in section.rows}
    iso, crown = rows["isotropic", "arc_easy"], rows["crown", "arc_easy"]
    assert (iso.mean, crown.mean) == (pytest.approx(0.37), pytest.approx(0.41))
    assert iso.std == pytest.approx(0.0141421, rel=1e-4)
    assert iso.delta_points is None and crown.delta_points == pytest.approx(4.0)
    assert iso.untrained == pytest.approx(0.25) and iso.seeds == 2
    # arc_easy: 0.37 beats 0.25 + 2 * sqrt(0.25 * 0.75 / 1000) = 0.277; piqa's 0.505 does not
    # beat 0.5 + 0.023.
    assert section.above_chance == ["arc_easy"]
    assert not rows["crown", "piqa"].above_chance
    markdown = render_markdown("report", [section.section])
    assert "| arc_easy | len_norm | 25.0 | 25.0 | 25.0 | 37.0 ± 1.4 | 41.0 ± 1.4 (+4.0) |" in (
        markdown
    )
    assert "piqa (at chance)" in markdown
    assert "Above chance at this scale: arc_easy." in markdown
    assert "![downstream_core](figures/downstream_core.png)" in markdown
    assert "<td>41.0 ± 1.4 (+4.0)</td>" in render_html("report", [section.section])
    assert section.figure == tmp_path / "figures" / "downstream_core.png"
    assert section.figure.stat().st_size > 0


def test_no_downstream_scores_means_no_section(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"type": "train", "step": 1}\n')
    ref = RunRef(run_dir, "isotropic", 0)
    assert downstream_section([ref], ["isotropic"], "isotropic", tmp_path, tmp_path) is None
