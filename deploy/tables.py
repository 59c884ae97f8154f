"""Numbers and tables as people read them: what every printed report uses (the commands, the
benchmarks, trt-bench's report). Plumbing: imports nothing of the project."""

from __future__ import annotations

import math
from typing import Any


def format_number(v: float) -> str:
    """For people: 3 significant digits without an exponent from 0.001 up to a million (11170 ms,
    4.08 ms, 0.717), an exponent only for tiny or huge values (1.5e-06); nan and inf as words."""
    if not math.isfinite(v):
        return str(v)
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e6 or a < 1e-3:
        return f"{v:.3g}"
    decimals = max(0, 2 - math.floor(math.log10(a)))
    text = f"{v:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_mapping(values: dict[str, Any]) -> str:
    """{'export_s': 1.23, 'parity_s': 0.5} -> 'export_s 1.23, parity_s 0.5' (no Python dict syntax)."""
    return ", ".join(f"{k} {format_number(v) if isinstance(v, float) else v}" for k, v in values.items())


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain fixed-width text table; floats go through format_number."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return format_number(v)
        if isinstance(v, dict):
            return format_mapping(v)
        return str(v)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in text]
    return "\n".join(lines)
