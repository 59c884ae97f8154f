"""A real Triton server (the bundled 2.51 binary, CPU) on repositories written by trt-serve export for
the demo model, with the python-backend network on ONNX Runtime CPU.

The first run builds the server and its models' Python into .cache/serve (about 15 s); later runs
reuse them. Where that cannot be done here, the tests skip with the reason.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from retinanet_trt.errors import EnvironmentFault, UsageError
from retinanet_trt.serve import environment, loadtest
from retinanet_trt.serve.repository import ServeOptions, export_repository
from retinanet_trt.serve.server import TritonServer, group_alive, processes_using

BIN = Path(sys.executable).parent
N_IMAGES = 200
MAX_PIXELS = 4_000_000


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The demo ONNX, 200 generated images and trt-infer's detections of them, made once per run
    (in the folder all xdist workers share, under a lock), and a folder of this worker's own."""
    import fcntl

    work = tmp_path_factory.mktemp("serve")
    try:
        environment.prepare(work)  # builds or finds the cached Triton and the models' venv
    except (EnvironmentFault, UsageError) as exc:
        pytest.skip(f"the bundled Triton server cannot run here: {exc}")
    shared = tmp_path_factory.getbasetemp().parent / "serve-demo"
    shared.mkdir(exist_ok=True)
    with open(shared / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / "done").is_file():
            _make_demo(shared)
            (shared / "done").write_text("")
    from retinanet_trt.spec import ModelSpec

    images = sorted((shared / "data" / "val").glob("*.png"))
    by_file: dict[str, list[dict[str, Any]]] = {str(p): [] for p in images}
    for entry in json.loads((shared / "infer" / "detections.json").read_text()):
        by_file[entry["file_name"]].append(entry)
    assert len(images) == N_IMAGES and sum(map(len, by_file.values())) > N_IMAGES  # real detections to compare
    spec = ModelSpec.from_json((shared / "spec.json").read_text())
    return {"root": work, "onnx": shared / "demo.onnx", "spec": spec, "images": images, "reference": by_file}


def _make_demo(folder: Path) -> None:
    from retinanet_trt.cli import infer as infer_cli
    from retinanet_trt.demo import load_demo
    from retinanet_trt.demo.synthetic import generate_dataset
    from retinanet_trt.export.pipeline import ExportOptions, export_onnx

    spec, model = load_demo()
    export_onnx(model, spec, folder / "demo.onnx", ExportOptions(input_hw=(256, 320), dynamic=True))
    (folder / "spec.json").write_text(spec.to_json())
    generate_dataset(folder / "data", N_IMAGES, seed=3, split="val")
    assert infer_cli.main([str(folder / "demo.onnx"), str(folder / "data" / "val"), "-o", str(folder / "infer"),
                           "--no-draw", "--backend", "ort-cpu"]) == 0


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _assert_same_detections(outputs: dict[str, np.ndarray], reference: list[dict[str, Any]], names: list[str],
                            label_ids: list[int]) -> None:
    n = int(outputs["NUM_DETS"][0, 0])
    assert n == len(reference)
    boxes, scores = outputs["BOXES"][0, :n].astype(np.float64), outputs["SCORES"][0, :n]
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    np.testing.assert_allclose(xywh, np.array([r["bbox"] for r in reference]).reshape(-1, 4), atol=1e-3, rtol=0)
    np.testing.assert_allclose(scores, [r["score"] for r in reference], atol=1e-5, rtol=0)
    assert outputs["LABELS"][0, :n].tolist() == [r["category_id"] for r in reference]
    got_names = [x.decode() for x in outputs["NAMES"][0, :n].tolist()]
    assert got_names == [names[label_ids.index(r["category_id"])] for r in reference]


# Bad requests mixed into the load, each with what its error must say.
def _bad_requests(good_png: bytes) -> list[tuple[Any, str]]:
    big = _png(np.zeros((2500, 2000, 3), np.uint8))  # 5 MP, over the repository's 4 MP limit
    return [
        (np.array([[good_png[:120]]], dtype=object), "IMAGE_BYTES[0]: cannot read image"),
        (np.zeros((1, 32, 32, 3), np.float32), "expects 'UINT8'"),
        (np.zeros((1, 32, 32, 4), np.uint8), "unexpected shape for input 'IMAGE'"),
        (np.zeros((0, 1), dtype=object), "IMAGE_BYTES"),  # an empty batch: Triton refuses it itself
        (np.array([[big]], dtype=object), f"more than the limit of {MAX_PIXELS} pixels"),
        (np.array([[b"\x89PNG\r\n\x1a\n" + b"\0" * 64]], dtype=object), "cannot read image"),
    ]


def test_triton_serves_trt_infers_detections_and_refuses_bad_requests(demo: dict[str, Any]) -> None:
    """200 images over HTTP and over gRPC at concurrency 8, bad requests mixed in: the good ones
    equal trt-infer's detections, each bad one gets an error naming its problem, every request is
    answered exactly once; then the server stops and leaves no process behind."""
    repo = demo["root"] / "repo"
    export_repository(demo["onnx"], repo, ServeOptions(name="demo", platform="python", max_batch=4, instances=2,
                                                       threads=1, dynamic_batching=True, max_image_pixels=MAX_PIXELS))
    spec = demo["spec"]
    payloads = [p.read_bytes() for p in demo["images"]]
    bad = _bad_requests(payloads[0])
    every = 10  # request i with i % every == every - 1 is a bad one
    total = N_IMAGES + N_IMAGES // (every - 1)  # 200 good requests, one per image, and 22 bad ones

    def plan(i: int) -> tuple[Any, str | None, int | None]:
        if i % every == every - 1:
            payload, message = bad[(i // every) % len(bad)]
            return payload, message, None
        k = i - i // every
        return payloads[k], None, k

    server = TritonServer(repo, log_path=demo["root"] / "triton.log")
    with server:
        assert server.process is not None
        pgid = server.process.pid
        good_sent = 0
        for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
            answers, _ = loadtest.run_requests(url, protocol, "demo", [], 8, total, payload_of=lambda i: plan(i)[0])
            assert [a.index for a in answers] == list(range(total))
            images_seen = set()
            for a in answers:
                _, message, k = plan(a.index)
                if message is None:
                    assert a.error is None, (protocol, a.index, a.error)
                    assert a.response_id == str(a.index)  # this request's own answer
                    assert a.outputs is not None
                    _assert_same_detections(a.outputs, demo["reference"][str(demo["images"][k])], spec.class_names(),
                                            spec.label_ids())
                    images_seen.add(k)
                    good_sent += 1
                else:
                    assert a.error is not None and message in a.error, (protocol, a.index, a.error)
                    assert "\n" not in a.error.strip()
            assert images_seen == set(range(N_IMAGES))
        assert server.is_ready()  # still serving after every bad request
        import tritonclient.http as http

        client = http.InferenceServerClient(server.http_url)
        try:
            stats = {m["name"]: m["inference_stats"] for m in client.get_inference_statistics()["model_stats"]}
        finally:
            client.close()
        # Server side: each good request ran the network exactly once (no duplicate, none lost).
        assert stats["demo"]["success"]["count"] == good_sent
        assert stats["demo_network"]["success"]["count"] == good_sent
    assert server.process is None and not group_alive(pgid)
    assert not processes_using(repo)


def test_uint8_input_and_end2end_network(demo: dict[str, Any]) -> None:
    """IMAGE (decoded pixels) instead of bytes, through an end-to-end network (in-graph decode +
    NMS, the rescale model after it): equal to trt-infer's detector on the same end-to-end ONNX."""
    from retinanet_trt.runtime.detector import Detector

    repo = demo["root"] / "repo_e2e"
    export_repository(demo["onnx"], repo, ServeOptions(name="e2e", platform="python", end2end=True, threads=1))
    e2e_onnx = repo / "e2e_network" / "1" / "model.onnx"
    detector = Detector.load(e2e_onnx, "ort-cpu")
    pixels = [np.asarray(Image.open(p).convert("RGB")) for p in demo["images"][:12]]
    with TritonServer(repo, log_path=demo["root"] / "triton_e2e.log") as server:
        answers, _ = loadtest.run_requests(server.grpc_url, "grpc", "e2e", pixels, 3, len(pixels))
    for a, image in zip(answers, pixels):
        assert a.error is None and a.outputs is not None, a.error
        ref = detector(image)
        n = int(a.outputs["NUM_DETS"][0, 0])
        assert n == len(ref)
        np.testing.assert_allclose(a.outputs["BOXES"][0, :n], ref.boxes, atol=1e-3, rtol=0)
        np.testing.assert_allclose(a.outputs["SCORES"][0, :n], ref.scores, atol=1e-5, rtol=0)
        assert a.outputs["LABELS"][0, :n].tolist() == ref.labels.tolist()


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_trt_serve_run_stops_cleanly(demo: dict[str, Any], sig: int, code: int) -> None:
    repo = demo["root"] / "repo_run"
    if not repo.exists():
        export_repository(demo["onnx"], repo, ServeOptions(name="demo", platform="python", threads=1))
    # SIGINT as a terminal gives it: a suite started in the background (`cmd &` in a script) hands
    # its children SIGINT ignored, which Python then keeps ignored, and the test would wait forever
    proc = subprocess.Popen([str(BIN / "trt-serve"), "run", str(repo), "--log", str(demo["root"] / f"run{sig}.log")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "ready" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        http_url = line.split("HTTP ", 1)[1].split(",", 1)[0]
        assert http_url.startswith("127.0.0.1:")
        answers, _ = loadtest.run_requests(http_url, "http", "demo", [demo["images"][0].read_bytes()], 1, 1)
        assert answers[0].error is None
        assert processes_using(repo)
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == code
        assert "no process left" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not processes_using(repo)


def test_run_refuses_backends_the_bundled_triton_lacks(demo: dict[str, Any]) -> None:
    repo = demo["root"] / "repo_ort"
    export_repository(demo["onnx"], repo, ServeOptions(name="demo"))  # onnxruntime_onnx network
    proc = subprocess.run([str(BIN / "trt-serve"), "run", str(repo)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "only the python backend" in lines[0] and "--platform python" in lines[0], lines


def test_bench_writes_json_and_png(demo: dict[str, Any]) -> None:
    repo = demo["root"] / "repo_bench"
    export_repository(demo["onnx"], repo, ServeOptions(name="demo", platform="python", threads=1, dynamic_batching=True))
    out, png = demo["root"] / "bench.json", demo["root"] / "bench.png"
    t0 = time.perf_counter()
    proc = subprocess.run([str(BIN / "trt-serve"), "bench", str(repo), "--concurrency", "1,2", "--requests", "6",
                           "--images", str(demo["images"][0].parent), "-o", str(out), "--plot", str(png)],
                          capture_output=True, text=True, timeout=300, env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = report["results"]
    assert len(rows) == 8 and {(r["protocol"], r["dynamic_batching"], r["concurrency"]) for r in rows} == {
        (p, b, c) for p in ("http", "grpc") for b in (True, False) for c in (1, 2)}
    assert all(r["errors"] == 0 and r["ok"] == 6 and r["latency_ms"]["p99"] > 0 for r in rows)
    assert report["triton_version"] == environment.TRITON_VERSION and "numpy" in report["versions"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert time.perf_counter() - t0 < 120
