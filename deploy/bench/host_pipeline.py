"""trt-bench --simulate-device: the host pipeline of trt-infer against a simulated fast GPU.

    report = run_host_pipeline("m.onnx", HostPipelineOptions(device_ms=[2, 5, 10], images=["photos/"]))

In one run, on the same photos (JPEG files decoded from disk on every pass):

1. Host milliseconds per image by step, single-threaded, as trt-infer does them: decode, the
   framework's resize (for the uint8 input with the valid-mask channel added), normalise + pad
   (float input) or pad (uint8 input), copy (into the
   backend's staging buffer, page-locked on a GPU), post-process (on outputs recorded from a real
   run of the model) and results (COCO entries); the composite is checked equal to Detector.prepare.
2. images/s of trt-infer's loop (scoring.detect_files.detect_paths, --no-draw) with a SimulatedDevice taking
   MS milliseconds per batch, overlap off (--workers 0) and on, rounds interleaved over every
   configuration. A pass's figure is its steady rate: results between the first and the last
   `depth` ones over the time between them (filling and draining the pipeline excluded), with the
   whole pass's rate beside it.
3. The bound each configuration is held to: min(1000 * batch / MS, cores * 1000 / host ms per
   image), and the fraction of it the overlapped pipeline achieved.

Everything it prints and writes is labelled a simulation (simulated.SIMULATION_NOTE).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retinanet_trt.bench.backends import check_batch, check_counts
from retinanet_trt.bench.simulated import MAX_DEVICE_MS, SIMULATION_NOTE, SimulatedDevice, record_outputs
from retinanet_trt.bench.stats import summarize
from retinanet_trt.errors import UsageError
from retinanet_trt.runtime.detector import Detector
from retinanet_trt.runtime.images import find_images, load_image
from retinanet_trt.runtime.pipeline import MAX_WORKERS, default_workers, machine_cores, plan_depth
from retinanet_trt.runtime.types import ImageMeta
from retinanet_trt.runtime.uint8_input import UINT8_NHWC, resized_rgba
from retinanet_trt.versions import environment

STEPS = ("decode", "resize", "normalize_pad", "copy", "postprocess", "results")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


@dataclasses.dataclass
class HostPipelineOptions:
    device_ms: Sequence[float] = (2.0, 5.0, 10.0)
    images: Sequence[str | os.PathLike[str]] | None = None  # files or folders; None: scikit-image photos as JPEG
    images_per_pass: int = 24  # the photos, cycled
    rounds: int = 20  # timed passes per configuration (after `warmup`)
    warmup: int = 1
    workers: int | None = None  # overlap on; None: one per core
    batch: int = 1
    uint8_model: str | None = None  # the same model exported with --input-format uint8, compared beside it


def write_photos(folder: Path) -> list[Path]:
    """scikit-image's colour photos (COCO-like sizes, 300..640 px) saved as JPEG (quality 90)."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in PHOTOS:
        pixels = getattr(data, name)()
        path = folder / f"{name}.jpg"
        Image.fromarray(np.ascontiguousarray(pixels[..., :3])).save(path, quality=90)
        out.append(path)
    return out


def _timed_stream(detector: Detector, stamps: list[float]) -> None:
    """Record when each result reaches trt-infer's loop (an instance attribute: no global patch)."""
    original = detector.stream

    def stream(*args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        for result in original(*args, **kwargs):
            stamps.append(time.perf_counter())
            yield result

    detector.stream = stream  # type: ignore[method-assign]


def host_steps(detector: Detector, paths: Sequence[Path], recorded: dict[str, np.ndarray], reps: int,
               check: bool = True) -> dict[str, list[float]]:
    """Single-threaded milliseconds per image of each host step (see the module docstring), as
    lists by step (and "prepare": Detector.prepare whole); with `check`, a first untimed pass
    checks that the steps compose to Detector.prepare's batch."""
    from retinanet_trt.runtime.preprocess import _normalized, resized_8bit
    from retinanet_trt.runtime.resize_plan import plan_resize
    from retinanet_trt.scoring.evaluate import detections_to_coco

    pre, hw = detector.spec.preprocess, detector.fixed_input_hw
    if hw is None:
        raise UsageError("the host-pipeline benchmark needs a model with a fixed input size (export with --input-size)")
    uint8 = detector.input_format == UINT8_NHWC
    if pre.resize_impl not in ("pillow_uint8", "cv2_uint8"):
        raise UsageError(f"the step split covers uint8 resizes (pillow_uint8, cv2_uint8), not {pre.resize_impl}")
    rows: dict[str, list[float]] = {s: [] for s in STEPS}
    prepare_ms: list[float] = []
    staging = np.empty((1, hw[0], hw[1], 4) if uint8 else (1, 3, *hw), np.uint8 if uint8 else np.float32)
    for rep in range(reps + 1 if check else reps):  # with check, the first pass warms caches and checks
        for path in paths:
            t0 = time.perf_counter()
            image = load_image(path)
            t1 = time.perf_counter()
            plan = plan_resize(image.hw, pre, hw)
            resized = resized_rgba(image.pixels, plan.hw, pre) if uint8 else resized_8bit(image.pixels, plan.hw, pre)
            t2 = time.perf_counter()
            h, w = plan.hw
            if uint8:
                batch = np.zeros((1, hw[0], hw[1], 4), np.uint8)
                batch[0, :h, :w] = resized
            else:
                batch = np.zeros((1, 3, *hw), np.float32)
                batch[0, :, :h, :w] = _normalized(resized, pre).transpose(2, 0, 1)
            t3 = time.perf_counter()
            np.copyto(staging, batch)
            t4 = time.perf_counter()
            meta = ImageMeta(original_hw=image.hw, resized_hw=plan.hw, input_hw=hw, source=str(path), shrunk=plan.shrunk)
            dets = detector.decode(recorded, [meta])
            t5 = time.perf_counter()
            detections_to_coco(dets[0], 1, file_name=str(path))
            t6 = time.perf_counter()
            p0 = time.perf_counter()
            prepared = detector.prepare([image])
            prepare_ms.append((time.perf_counter() - p0) * 1e3)
            if check and rep == 0:
                if not np.array_equal(prepared.images, batch):
                    raise AssertionError(f"the step split of {path} is not Detector.prepare's batch")
                prepare_ms.clear()
                continue
            for step, a, b in zip(STEPS, (t0, t1, t2, t3, t4, t5), (t1, t2, t3, t4, t5, t6), strict=True):
                rows[step].append((b - a) * 1e3)
    return {**rows, "prepare": prepare_ms}


def _step_summary(kind: str, rows: dict[str, list[float]]) -> dict[str, Any]:
    steps = {s: summarize(rows[s]) for s in STEPS}
    return {"input": kind, "steps_ms": steps, "total_ms": sum(steps[s]["median"] for s in STEPS),
            "preprocess_ms": summarize(rows["prepare"]),
            "note": "single thread, median per image over the photos and rounds (one pass per round, between the "
                    "throughput passes); for the uint8 input, resize includes the valid-mask channel (Pillow putalpha) and normalize_pad is the pad into the batch; postprocess on "
                    "outputs recorded from one real run"}


def check_host_options(opts: HostPipelineOptions) -> None:
    """UsageError (one line) for an option out of range, before any model loads or anything is printed."""
    # `not 0 < ms <= MAX` also refuses NaN; inf and huge values would sleep for ever.
    if not opts.device_ms or not all(0 < ms <= MAX_DEVICE_MS for ms in opts.device_ms):
        raise UsageError(f"--simulate-device {' '.join(f'{ms:g}' for ms in opts.device_ms)}: give milliseconds "
                         f"per batch, each > 0 and <= {MAX_DEVICE_MS:g}")
    check_counts(opts.rounds, opts.warmup)
    if opts.images_per_pass < 1:
        raise UsageError("the images per pass must be >= 1")
    if opts.workers is not None and not 1 <= opts.workers <= MAX_WORKERS:
        raise UsageError(f"--workers {opts.workers}: give 1..{MAX_WORKERS} host threads for the overlapped run "
                         "(the run with overlap off is always made)")
    check_batch(opts.batch)


def run_host_pipeline(model: str, opts: HostPipelineOptions, backend: str | None = None,
                      log: Any = lambda _: None) -> dict[str, Any]:
    """The report: host steps, images/s with the simulated device (overlap off/on), the bounds."""
    from retinanet_trt.runtime.detector import default_backend
    from retinanet_trt.scoring.detect_files import detect_paths

    check_host_options(opts)
    workers = default_workers() if opts.workers is None else opts.workers
    with tempfile.TemporaryDirectory(prefix="retinanet_trt_photos_") as tmp:
        paths = find_images(opts.images) if opts.images else write_photos(Path(tmp))
        if not paths:
            raise UsageError(f"no images found in {', '.join(map(str, opts.images or []))}")
        models = {"float": model}
        if opts.uint8_model:
            models["uint8"] = opts.uint8_model
        real: dict[str, Detector] = {}
        for kind, path in models.items():
            real[kind] = Detector.load(path, backend or default_backend(path))
        if opts.uint8_model and real["uint8"].input_format != UINT8_NHWC:
            raise UsageError(f"{opts.uint8_model} does not take uint8 input; export it with --input-format uint8")
        log(f"recording outputs: one real run of {model} ({real['float'].backend.name})")
        recorded, shape = record_outputs(real["float"], load_image(paths[0]))
        log("host steps, single thread: a check pass")
        step_rows = {kind: host_steps(det, paths, recorded, 0) for kind, det in real.items()}
        sims: dict[tuple[str, float], Detector] = {}
        for kind, det in real.items():
            in_shape = shape if kind == "float" else (1, *det.prepare([load_image(paths[0])]).images.shape[1:])
            for ms in (0.0, *opts.device_ms):  # 0: the host steps alone, overlapped (the measured host capacity)
                sims[kind, ms] = Detector(SimulatedDevice(det.spec, recorded, ms, input_shape=in_shape,
                                                          input_format=det.input_format,
                                                          fixed_input_hw=det.fixed_input_hw))
        cycle = [paths[i % len(paths)] for i in range(opts.images_per_pass)]
        configs = [(kind, 0.0, workers) for kind in models]
        configs += [(kind, ms, w) for ms in opts.device_ms for kind in models for w in (0, workers)]
        rates: dict[tuple[str, float, int], list[dict[str, float]]] = {c: [] for c in configs}
        log(f"throughput: {opts.warmup} warm-up + {opts.rounds} timed pass(es) of {len(cycle)} images per "
            f"configuration, interleaved ({len(configs)} configurations)")
        for round_index in range(opts.warmup + opts.rounds):
            if round_index >= opts.warmup:
                for kind, det in real.items():
                    for step, values in host_steps(det, paths, recorded, 1, check=False).items():
                        step_rows[kind][step].extend(values)
            for kind, ms, w in configs:
                det = sims[kind, ms]
                stamps: list[float] = []
                _timed_stream(det, stamps)
                t0, cpu0 = time.perf_counter(), time.process_time()
                results, failures, _ = detect_paths(det, cycle, batch_size=opts.batch, workers=w)
                wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
                del det.stream  # back to the class's method
                if failures:
                    raise UsageError(f"{failures[0].source}: {failures[0].error}")
                if round_index < opts.warmup:
                    continue
                k = max(1, plan_depth(det, w, opts.batch, None) * opts.batch) if w else 1
                k = min(k, (len(stamps) - 1) // 3)
                steady = (len(stamps) - 1 - 2 * k) / (stamps[-1 - k] - stamps[k]) if len(stamps) > 2 * k + 1 else len(cycle) / wall
                rates[kind, ms, w].append({"steady": steady, "pass": len(cycle) / wall, "cores_used": cpu / wall,
                                           "load": os.getloadavg()[0]})
    for det in real.values():
        det.close()
    steps = {kind: _step_summary(kind, rows_) for kind, rows_ in step_rows.items()}
    cores = machine_cores()
    rows = []
    capacity = {kind: summarize([s["steady"] for s in rates[kind, 0.0, workers]])["median"] for kind in models}
    for kind, ms, w in configs:
        samples = rates[kind, ms, w]
        host_total = steps[kind]["total_ms"]
        device_bound = 1000.0 * opts.batch / ms if ms else None  # a 0 ms device does not bound
        host_bound = cores * 1000.0 / host_total
        steady = summarize([s["steady"] for s in samples])
        row = {
            "device": f"simulated {ms:g} ms" if ms else "simulated 0 ms (host steps alone)", "device_ms": ms,
            "input": kind, "overlap": "on" if w else "off",
            "workers": w, "images_per_s": steady, "images_per_s_whole_pass": summarize([s["pass"] for s in samples]),
            "cores_used": summarize([s["cores_used"] for s in samples])["median"],
            "loadavg_1min": summarize([s["load"] for s in samples])["median"],
            "bound_images_per_s": min(device_bound or host_bound, host_bound), "device_bound": device_bound,
            "host_bound": host_bound,
        }
        row["fraction_of_bound"] = steady["median"] / row["bound_images_per_s"]
        row["cpu_ms_per_image"] = row["cores_used"] * 1000.0 / steady["median"]  # all threads' CPU per image
        row["measured_host_capacity"] = capacity[kind]
        row["bound_with_measured_host"] = min(device_bound or capacity[kind], capacity[kind])
        row["fraction_of_measured_bound"] = steady["median"] / row["bound_with_measured_host"]
        rows.append(row)
    for row in rows:
        if row["overlap"] == "on" and row["device_ms"]:
            off = next(r for r in rows if r["overlap"] == "off" and r["device_ms"] == row["device_ms"]
                       and r["input"] == row["input"])
            row["speedup_vs_overlap_off"] = row["images_per_s"]["median"] / off["images_per_s"]["median"]
    on_rows = [r for r in rows if r["overlap"] == "on" and r["device_ms"]]
    criterion = {
        "rule": "overlap on >= 90% of min(1000 * batch / MS, what the host steps allow)",
        "nominal_met": [f"{r['device']} {r['input']}" for r in on_rows if r["fraction_of_bound"] >= 0.9],
        "nominal_missed": [f"{r['device']} {r['input']} ({100 * r['fraction_of_bound']:.0f}%)" for r in on_rows
                           if r["fraction_of_bound"] < 0.9],
        "measured_met": [f"{r['device']} {r['input']}" for r in on_rows if r["fraction_of_measured_bound"] >= 0.9],
        "measured_missed": [f"{r['device']} {r['input']} ({100 * r['fraction_of_measured_bound']:.0f}%)"
                            for r in on_rows if r["fraction_of_measured_bound"] < 0.9],
        "cores_used_median": float(np.median([r["cores_used"] for r in rows])),
        "loadavg_median": float(np.median([r["loadavg_1min"] for r in rows])),
    }
    pre = {kind: steps[kind]["preprocess_ms"]["median"] for kind in steps}
    report: dict[str, Any] = {
        "tool": "trt-bench --simulate-device",
        "simulation": SIMULATION_NOTE,
        "model": str(model),
        "uint8_model": opts.uint8_model,
        "model_name": sims[next(iter(sims))].spec.name,
        "input_hw": list(sims[next(iter(sims))].fixed_input_hw or ()),
        "machine": {"cores": cores, "cpu": _cpu_name(), "platform": platform.platform()},
        "protocol": {
            "images": [str(p) for p in paths] if opts.images else
                      f"{len(paths)} scikit-image photos saved as JPEG ({', '.join(PHOTOS)}), decoded from disk every pass",
            "images_per_pass": len(cycle), "warmup": opts.warmup, "rounds": opts.rounds, "batch": opts.batch,
            "workers_on": workers, "loop": "scoring.detect_files.detect_paths (trt-infer --no-draw): decode, pre-process, "
                                          "simulated device, post-process, COCO entries",
            "rate": "steady: results between the first and last `depth` of a pass over the time between them; "
                    "whole pass beside it; median/p90/p99 over the rounds",
            "bound": "min(1000 * batch / MS, cores * 1000 / the single-thread host ms per image of the steps); "
                     "bound_with_measured_host: min(1000 * batch / MS, the images/s of the same loop with a 0 ms "
                     "device, overlap on, in the same rounds: what the host steps achieve on the cores we got)",
            "order": "configurations interleaved within every round",
            "cores_used": "process CPU seconds / wall seconds during a pass (this process's threads together); "
                          "loadavg_1min: the machine's load then (other processes share the cores)",
        },
        "host_steps": steps,
        "preprocess_ms": {**pre, **({"float_over_uint8": pre["float"] / pre["uint8"]} if "uint8" in pre else {})},
        "throughput": rows,
        "criterion": criterion,
        "versions": environment(),
    }
    return report


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def format_host_pipeline(report: dict[str, Any]) -> str:
    """The report as text for people, the simulation stated first and on every throughput row."""
    from retinanet_trt.tables import format_table

    lines = [f"*** {report['simulation']} ***",
             f"{report['model_name']} at {'x'.join(map(str, report['input_hw']))}, {report['machine']['cores']} cores "
             f"({report['machine']['cpu']})", "host ms per image by step (single thread, median):"]
    kinds = list(report["host_steps"])
    rows = [[s] + [report["host_steps"][k]["steps_ms"][s]["median"] for k in kinds] for s in STEPS]
    rows.append(["total"] + [report["host_steps"][k]["total_ms"] for k in kinds])
    rows.append(["(Detector.prepare)"] + [report["host_steps"][k]["preprocess_ms"]["median"] for k in kinds])
    lines.append(format_table(["step"] + [f"{k} input" for k in kinds], rows))
    if "float_over_uint8" in report["preprocess_ms"]:
        lines.append(f"pre-process float / uint8: {report['preprocess_ms']['float_over_uint8']:.2f}x")
    lines.append("trt-infer images/s with the SIMULATED device (median over rounds). bound: min(1000/MS, cores x "
                 "1000 / host ms); measured: min(1000/MS, the 0 ms row's images/s, i.e. the host steps alone "
                 "overlapped on the cores this process got)")
    rows = [[r["device"], r["input"], r["overlap"], r["workers"], r["images_per_s"]["median"],
             r["bound_images_per_s"], f"{100 * r['fraction_of_bound']:.0f}%", r["bound_with_measured_host"],
             f"{100 * r['fraction_of_measured_bound']:.0f}%", f"{r.get('speedup_vs_overlap_off', 1.0):.2f}x",
             r["cores_used"], r["loadavg_1min"]]
            for r in report["throughput"]]
    lines.append(format_table(["device (SIMULATED)", "input", "overlap", "workers", "img/s", "bound", "of bound",
                               "measured bound", "of it", "vs off", "cores used", "load"], rows))
    c = report.get("criterion")
    if c:
        lines.append(f"{c['rule']}: nominal bound (both cores ours) met by {len(c['nominal_met'])} of "
                     f"{len(c['nominal_met']) + len(c['nominal_missed'])} rows, measured bound by {len(c['measured_met'])}; "
                     f"this process used {c['cores_used_median']:.2f} of {report['machine']['cores']} cores at a load "
                     f"average of {c['loadavg_median']:.1f} (other processes on the machine)")
    return "\n".join(lines)
