"""`layerwise plan`: hardware figures that cannot be real are refused by flag, not planned with."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from layerwise.cli import main
from layerwise.util.errors import UserError
from layerwise.util.units import parse_memory


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_a_peak_that_is_not_a_positive_number_is_refused(
    value: str, tiny_run: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["plan", str(tiny_run()), f"--peak-tflops={value}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --peak-tflops: {value} must be a number above 0" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("value", ["0GiB", "0", "0.0000001"])
def test_a_gpu_memory_of_nothing_is_refused(
    value: str, tiny_run: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", str(tiny_run()), "--gpu-memory", value]) == 2
    err = capsys.readouterr().err
    assert f"--gpu-memory {value!r}" in err and "more than 0" in err
    assert "Traceback" not in err


def test_memory_sizes_are_read_as_written() -> None:
    assert parse_memory("80GiB") == 80 * 1024**3
    assert parse_memory("141GB") == 141 * 10**9
    with pytest.raises(UserError, match="more than 0"):
        parse_memory("0MiB")
