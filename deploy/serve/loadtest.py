"""trt-serve bench: a bounded load test of a Triton ensemble with tritonclient, over HTTP and gRPC.

Each concurrency level runs `concurrency` client threads, each with its own connection, which take
request numbers 0..N-1 from one counter until all N are sent: exactly N requests, each sent once,
each carrying its number as the request id, which the response must echo. A few warm-up requests
precede every level. Latency is per request (send to full response); throughput is N / wall time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from retinanet_trt.bench import summarize
from retinanet_trt.errors import EnvironmentFault, UsageError
from retinanet_trt.serve import stages

PROTOCOLS = ("http", "grpc")


@dataclass
class Answer:
    """One request's outcome: outputs (as numpy) or the error message."""

    index: int
    latency_ms: float
    outputs: dict[str, np.ndarray] | None = None
    error: str | None = None
    response_id: str | None = None


@dataclass
class LoadResult:
    protocol: str
    concurrency: int
    requests: int
    ok: int
    errors: int
    wall_s: float
    throughput_rps: float
    latency_ms: dict[str, float]
    error_examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _client_module(protocol: str) -> Any:
    if protocol not in PROTOCOLS:
        raise UsageError(f"protocol {protocol!r}: choose http or grpc")
    try:
        if protocol == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module
    except ImportError as exc:
        raise UsageError(f"the load test needs tritonclient ({exc}); pip install 'retinanet-trt[serve]'") from None
    return module


def make_client(protocol: str, url: str, timeout_s: float = 120.0) -> Any:
    """A client of `url`; timeout_s bounds an HTTP connect and read (gRPC calls take client_timeout)."""
    module = _client_module(protocol)
    if protocol == "http":
        return module.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)
    return module.InferenceServerClient(url)


_TRITON_DTYPES = {"uint8": "UINT8", "float32": "FP32", "float16": "FP16", "int32": "INT32", "int64": "INT64"}


def build_inputs(protocol: str, payload: bytes | np.ndarray) -> list[Any]:
    """One request's inputs: encoded bytes -> IMAGE_BYTES (1, 1); an object array of bytes ->
    IMAGE_BYTES of its shape; a pixel array (H, W, 3) or (B, H, W, 3) -> IMAGE of its dtype."""
    module = _client_module(protocol)
    if isinstance(payload, bytes) or payload.dtype == object:
        data = np.array([[payload]], dtype=object) if isinstance(payload, bytes) else payload
        name, dtype = stages.INPUT_BYTES, "BYTES"
    else:
        data = payload[None] if payload.ndim == 3 else payload
        name, dtype = stages.INPUT_PIXELS, _TRITON_DTYPES.get(str(data.dtype), str(data.dtype).upper())
    tensor = module.InferInput(name, list(data.shape), dtype)
    tensor.set_data_from_numpy(data)
    return [tensor]


def infer_once(client: Any, protocol: str, model: str, inputs: list[Any], request_id: str) -> Answer:
    """Send one request; the error message (not an exception) when the server refuses it."""
    from tritonclient.utils import InferenceServerException

    t0 = time.perf_counter()
    try:
        result = client.infer(model, inputs, request_id=request_id)
    except InferenceServerException as exc:
        return Answer(int(request_id), (time.perf_counter() - t0) * 1e3, error=exc.message() or str(exc))
    latency = (time.perf_counter() - t0) * 1e3
    response = result.get_response()
    rid = response.get("id") if isinstance(response, dict) else getattr(response, "id", None)
    outputs = {name: result.as_numpy(name) for name in stages.OUTPUTS}
    return Answer(int(request_id), latency, outputs=outputs, response_id=rid)


def run_requests(url: str, protocol: str, model: str, payloads: Sequence[bytes | np.ndarray], concurrency: int,
                 requests: int, payload_of: Callable[[int], bytes | np.ndarray] | None = None) -> tuple[list[Answer], float]:
    """Send `requests` requests (request i carries payloads[i % len]) from `concurrency` threads;
    (answers ordered by request number, wall seconds). Each number is taken exactly once."""
    if concurrency < 1 or requests < 1:
        raise UsageError(f"concurrency {concurrency} and requests {requests} must be >= 1")
    pick = payload_of or (lambda i: payloads[i % len(payloads)])
    answers: list[Answer | None] = [None] * requests
    counter = iter(range(requests))
    lock = threading.Lock()
    failures: list[BaseException] = []

    def worker() -> None:
        client = make_client(protocol, url)
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                answers[i] = infer_once(client, protocol, model, build_inputs(protocol, pick(i)), str(i))
        except BaseException as exc:  # noqa: BLE001 - a broken connection is reported, not swallowed
            failures.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if failures:
        raise EnvironmentFault(f"the load test lost its connection to {url}: {type(failures[0]).__name__}: "
                               f"{' '.join(str(failures[0]).split())[:200]}; is the server still running?")
    missing = [i for i, a in enumerate(answers) if a is None]
    if missing:
        raise AssertionError(f"requests {missing[:5]} got no answer")
    return [a for a in answers if a is not None], wall


def measure_samples(url: str, protocol: str, model: str, payloads: Sequence[bytes | np.ndarray], concurrency: int,
                    requests: int, warmup: int = 4) -> tuple[LoadResult, list[float]]:
    """One load level: warm-up, then `requests` timed requests; (result, latencies of the good ones)."""
    run_requests(url, protocol, model, payloads, concurrency, max(warmup, concurrency))
    answers, wall = run_requests(url, protocol, model, payloads, concurrency, requests)
    good = [a.latency_ms for a in answers if a.error is None]
    errors = [a.error for a in answers if a.error is not None]
    result = LoadResult(protocol=protocol, concurrency=concurrency, requests=requests, ok=len(good), errors=len(errors),
                        wall_s=wall, throughput_rps=len(good) / wall if wall > 0 else 0.0,
                        latency_ms=summarize(good) if good else {}, error_examples=sorted(set(errors))[:3])
    return result, good


def measure(url: str, protocol: str, model: str, payloads: Sequence[bytes | np.ndarray], concurrency: int,
            requests: int, warmup: int = 4) -> LoadResult:
    return measure_samples(url, protocol, model, payloads, concurrency, requests, warmup)[0]


def wait_until_ready(url: str, protocol: str, model: str, timeout_s: float = 60.0) -> None:
    """Return once the server at url answers that `model` is ready, polling for timeout_s: a server
    that is up without that model is a UsageError (the name is wrong), no server an EnvironmentFault."""
    attempt_s = min(timeout_s, 5.0)  # one probe of a host that drops packets must not outlast the window
    probe: dict[str, Any] = {"client_timeout": attempt_s} if protocol == "grpc" else {}
    client = make_client(protocol, url, timeout_s=attempt_s)
    deadline = time.monotonic() + timeout_s
    live, reason = False, "no answer"
    try:
        while True:
            try:
                live = bool(client.is_server_live(**probe))
                if live and client.is_model_ready(model, **probe):
                    return
                reason = "it answers, but not live"
            except Exception as exc:  # noqa: BLE001 - not up (yet): refused, unreachable, not Triton
                reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            if time.monotonic() >= deadline:
                break
            time.sleep(0.5)
    finally:
        client.close()
    if live:
        raise UsageError(f"the server at {url} ({protocol}) is up but has no ready model {model!r} within "
                         f"{timeout_s:g} s; give the ensemble's name with --model")
    hint = "--grpc-url" if protocol == "grpc" else "HOST:PORT"
    raise EnvironmentFault(f"no Triton server answers at {url} ({protocol}) within {timeout_s:g} s ({reason}); "
                           f"start one (trt-serve run REPO) or check {hint}")
