"""Numbers as users write them: counts (`180M`, `1.2B`) and sizes (`80GiB`)."""

from __future__ import annotations

import math
import re

from layerwise.util.errors import UserError


def parse_count(text: str) -> int:
    """'180M', '1.2B', '350k' or a plain integer, as users write budgets."""
    units = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
    cleaned = text.strip().replace("_", "").replace(",", "")
    factor = units.get(cleaned[-1:].lower(), 1)
    number = cleaned[:-1] if factor != 1 else cleaned
    try:
        value = float(number) * factor
    except ValueError:
        raise UserError(
            f"cannot read {text!r} as a count; write e.g. 180M, 1.2B or 350000"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"count {text!r} must be positive")
    return round(value)


_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_memory(text: str) -> int:
    """`80GiB`, `80GB`, `141g`, `512MiB` -> bytes (binary with an `i`, decimal without)."""
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)b?\s*", text, re.IGNORECASE)
    if not found:
        raise UserError(f"--gpu-memory {text!r}: write a size such as 80GiB, 141GB or 40g")
    number, unit, binary = found.groups()
    unit = unit.lower()
    scale = 1024 ** "_kmgt".index(unit) if binary and unit else _UNITS[unit]
    size = round(float(number) * scale)
    if size < 1:
        raise UserError(f"--gpu-memory {text!r} must be more than 0 bytes, e.g. 80GiB")
    return size
