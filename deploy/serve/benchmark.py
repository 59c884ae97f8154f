"""trt-serve bench over a repository (started here, dynamic batching on and off) or a running server:
throughput and latency percentiles per protocol and concurrency, as JSON and a PNG."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retinanet_trt.errors import UsageError
from retinanet_trt.serve import environment, loadtest
from retinanet_trt.serve.repository import MARKER, read_record
from retinanet_trt.versions import package_versions

_BATCHING = re.compile(r"^dynamic_batching \{\n(?:  .*\n)*?\}\n?", re.MULTILINE)
# A server given by URL is already running: it answers at once or not at all. One started here
# may still be loading its models.
URL_READY_TIMEOUT_S = 5.0
REPOSITORY_READY_TIMEOUT_S = 60.0
# Larger values are typos: more threads than that starve the server, more requests run for hours.
MAX_CONCURRENCY = 1024
MAX_REQUESTS = 1_000_000
MAX_ROUNDS = 100
_HOST_PORT = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9_.-]*):(?P<port>\d{1,5})$")


def set_dynamic_batching(config_text: str, on: bool, max_queue_delay_us: int = 100) -> str:
    """A network config.pbtxt (as trt-serve export writes it) with dynamic batching on or off."""
    text = _BATCHING.sub("", config_text)
    if on:
        text = text.rstrip("\n") + f"\ndynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}\n"
    return text


def variant_repository(repo: Path, dynamic_batching: bool, folder: Path) -> Path:
    """A copy of `repo` in `folder` whose files are links to the originals, except the network's
    config.pbtxt, which has dynamic batching as asked (the model files are never copied)."""
    record = read_record(repo)
    network = record["models"]["network"]
    delay = int(record["options"]["max_queue_delay_us"])
    out = folder / f"{repo.name}-batching-{'on' if dynamic_batching else 'off'}"
    for src in repo.rglob("*"):
        dst = out / src.relative_to(repo)
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        elif src == repo / network / "config.pbtxt":
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(set_dynamic_batching(src.read_text(), dynamic_batching, delay))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(src.resolve(), dst)
    return out


def _row(label: dict[str, Any], results: list[loadtest.LoadResult], samples: list[float]) -> dict[str, Any]:
    """One table row from the rounds of one cell: the median round's throughput, percentiles over the
    latencies of every round, errors summed."""
    from retinanet_trt.bench import summarize

    first = results[0]
    throughputs = sorted(r.throughput_rps for r in results)
    return {**label, "protocol": first.protocol, "concurrency": first.concurrency, "requests": sum(r.requests for r in results),
            "rounds": len(results), "ok": sum(r.ok for r in results), "errors": sum(r.errors for r in results),
            "throughput_rps": throughputs[len(throughputs) // 2], "throughput_rps_rounds": [r.throughput_rps for r in results],
            "latency_ms": summarize(samples) if samples else {},
            "error_examples": sorted({e for r in results for e in r.error_examples})[:3]}


def wait_ready(servers: dict[bool | None, tuple[str, str]], model: str, protocols: Sequence[str],
               timeout_s: float) -> None:
    """Every server answers that `model` is ready on every protocol, within timeout_s each."""
    for protocol in protocols:
        for http_url, grpc_url in servers.values():
            loadtest.wait_until_ready(http_url if protocol == "http" else grpc_url, protocol, model, timeout_s)


def bench_servers(servers: dict[bool | None, tuple[str, str]], model: str, payloads: Sequence[bytes | np.ndarray],
                  concurrencies: Sequence[int], requests: int, protocols: Sequence[str], rounds: int = 1) -> list[dict[str, Any]]:
    """Load every (protocol, concurrency) cell on each server ({dynamic batching: (http, grpc url)}).
    The servers run side by side and take turns cell by cell, round after round, so a change in the
    machine's load (other jobs, CPU clock) falls on every variant alike. They must be ready (wait_ready)."""
    cells: dict[tuple[str, int, bool | None], tuple[list[loadtest.LoadResult], list[float]]] = {}
    for _ in range(rounds):
        for protocol in protocols:
            for c in concurrencies:
                for on, (http_url, grpc_url) in servers.items():
                    url = http_url if protocol == "http" else grpc_url
                    result, samples = loadtest.measure_samples(url, protocol, model, payloads, c, requests)
                    got = cells.setdefault((protocol, c, on), ([], []))
                    got[0].append(result)
                    got[1].extend(samples)
    return [_row({"dynamic_batching": on}, results, samples) for (_, _, on), (results, samples) in cells.items()]


def bench_repository(repo: Path, payloads: Sequence[bytes | np.ndarray], concurrencies: Sequence[int], requests: int,
                     protocols: Sequence[str], batching: Sequence[bool] = (True, False), rounds: int = 1) -> dict[str, Any]:
    """Start the bundled Triton on `repo` once per dynamic-batching setting (side by side) and load them."""
    from retinanet_trt.serve.server import TritonServer

    record = read_record(repo)
    model = record["models"]["ensemble"]
    with tempfile.TemporaryDirectory(prefix="trt-serve-bench.") as tmp, contextlib.ExitStack() as stack:
        servers = {}
        triton, models_python = None, {}
        for on in batching:
            variant = variant_repository(repo, on, Path(tmp))
            server = stack.enter_context(TritonServer(variant, log_path=Path(tmp) / f"triton-{'on' if on else 'off'}.log"))
            assert server.install is not None and server.site is not None
            triton, models_python = server.install.version, environment.describe_env(server.site)
            servers[on] = (server.http_url, server.grpc_url)
        wait_ready(servers, model, protocols, REPOSITORY_READY_TIMEOUT_S)
        rows = bench_servers(servers, model, payloads, concurrencies, requests, protocols, rounds)
    return {"target": str(repo), "model": model, "triton_version": triton, "repository": _summary(record),
            "rounds": rounds, "results": rows, "versions": _versions(), "models_python": models_python}


def bench_url(http_url: str, grpc_url: str, model: str, payloads: Sequence[bytes | np.ndarray],
              concurrencies: Sequence[int], requests: int, protocols: Sequence[str], rounds: int = 1) -> dict[str, Any]:
    """Load a server that is already running (its configuration is whatever it was started with);
    EnvironmentFault within seconds when none answers there."""
    wait_ready({None: (http_url, grpc_url)}, model, protocols, URL_READY_TIMEOUT_S)
    client = loadtest.make_client("http", http_url) if "http" in protocols else None
    batching = None
    triton = None
    if client is not None:
        try:
            config = client.get_model_config(model)
            batching = None  # an ensemble has none itself; its network model may
            triton = client.get_server_metadata().get("version")
            steps = config.get("ensemble_scheduling", {}).get("step", [])
            if len(steps) > 1:
                batching = "dynamic_batching" in client.get_model_config(steps[1]["model_name"])
        except Exception:  # noqa: BLE001 - the labels are informative only
            pass
        finally:
            client.close()
    rows = bench_servers({batching: (http_url, grpc_url)}, model, payloads, concurrencies, requests, protocols, rounds)
    return {"target": http_url, "model": model, "triton_version": triton, "rounds": rounds, "results": rows,
            "versions": _versions()}


def _versions() -> dict[str, Any]:
    """The client side's versions (package_versions, plus tritonclient)."""
    import importlib.metadata

    out = package_versions()
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        out["tritonclient"] = importlib.metadata.version("tritonclient")
    return out


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("platform", "backend", "max_batch_size", "network_kind", "end2end", "precision")
    return {**{k: record.get(k) for k in keys}, "instances": record["options"]["instances"],
            "max_queue_delay_us": record["options"]["max_queue_delay_us"], "threads": record["options"]["threads"],
            "source": record["source"]["file"]}


def plot(report: dict[str, Any], png: Path) -> None:
    """Throughput and p99 latency against concurrency, one line per protocol and batching setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from retinanet_trt.fileio import atomic_path

    fig, (ax_t, ax_p) = plt.subplots(1, 2, figsize=(10, 4))
    series: dict[str, list[dict[str, Any]]] = {}
    for row in report["results"]:
        on = row.get("dynamic_batching")
        label = f"{row['protocol']}, batching {'on' if on else 'off' if on is False else '?'}"
        series.setdefault(label, []).append(row)
    for label, rows in series.items():
        rows = sorted(rows, key=lambda r: r["concurrency"])
        xs = [r["concurrency"] for r in rows]
        ax_t.plot(xs, [r["throughput_rps"] for r in rows], marker="o", label=label)
        ax_p.plot(xs, [r["latency_ms"].get("p99", float("nan")) for r in rows], marker="o", label=label)
    levels = sorted({r["concurrency"] for r in report["results"]})
    for ax, title, unit in ((ax_t, "throughput", "requests / s"), (ax_p, "p99 latency", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    ax_t.legend(fontsize=8)
    fig.suptitle(f"Triton {report.get('triton_version') or ''} ensemble {report['model']}: one image per request")
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def is_repository(target: str) -> bool:
    return (Path(target) / MARKER).is_file()


def parse_concurrency(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--concurrency {text!r}: give comma-separated integers, e.g. 1,4,16") from None
    if not values or not all(1 <= v <= MAX_CONCURRENCY for v in values):
        raise UsageError(f"--concurrency {text!r}: each level must be 1..{MAX_CONCURRENCY} clients")
    return values


def server_address(text: str) -> str | None:
    """HOST:PORT from `text` (an http:// or grpc:// prefix dropped), None when it is not one."""
    address = text.split("://", 1)[-1].rstrip("/")
    match = _HOST_PORT.match(address)
    return address if match is not None and 1 <= int(match["port"]) <= 65535 else None
