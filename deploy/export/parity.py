"""Output-by-output comparison of a candidate (ONNX Runtime, FP16, INT8, TensorRT) with a reference."""

from __future__ import annotations

import numpy as np


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per output: max_abs, max_rel (max_abs over the reference's max magnitude), SQNR in dB
    (10 log10 of signal power over error power; inf when identical) and cosine similarity."""
    report: dict[str, dict[str, float]] = {}
    for name, ref in reference.items():
        if name not in candidate:
            raise KeyError(f"candidate has no output {name!r}; it has {sorted(candidate)}")
        ref64 = np.asarray(ref, dtype=np.float64)
        cand64 = np.asarray(candidate[name], dtype=np.float64)
        if ref64.shape != cand64.shape:
            raise ValueError(f"output {name}: shape {cand64.shape} differs from the reference {ref64.shape}")
        err = cand64 - ref64
        max_abs = float(np.max(np.abs(err))) if err.size else 0.0
        scale = float(np.max(np.abs(ref64))) if ref64.size else 0.0
        noise = float(np.mean(err**2)) if err.size else 0.0
        signal = float(np.mean(ref64**2)) if ref64.size else 0.0
        sqnr = float("inf") if noise == 0 else 10.0 * np.log10(max(signal, 1e-30) / noise)
        denom = float(np.linalg.norm(ref64) * np.linalg.norm(cand64))
        cosine = float(np.sum(ref64 * cand64) / denom) if denom > 0 else 1.0
        report[name] = {
            "max_abs": max_abs,
            "max_rel": max_abs / scale if scale > 0 else max_abs,
            "sqnr_db": sqnr,
            "cosine": cosine,
        }
    return report


def worst(report: dict[str, dict[str, float]], key: str = "max_rel") -> tuple[str, float]:
    """(output name, value) of the largest `key` over all outputs."""
    name = max(report, key=lambda n: report[n][key])
    return name, report[name][key]
