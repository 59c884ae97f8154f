"""A real Triton server on a model repository, for development and tests (`trt-serve run`).

It binds 127.0.0.1 only, on free ports; it counts as started only when Triton's own readiness
endpoint (GET /v2/health/ready, true once every model has loaded) says so; it runs in a process group
of its own (with the python-backend stub processes it forks), which `stop` ends with SIGTERM, then
SIGKILL after a grace period, and waits for, so no process is left behind. If the Python that
started it dies, the kernel sends the server SIGTERM (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from retinanet_trt.errors import EnvironmentFault, UsageError
from retinanet_trt.serve import environment

HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Ports:
    http: int
    grpc: int
    metrics: int


def free_ports(count: int = 3) -> list[int]:
    """Ports free on 127.0.0.1 now (held open together, so they differ). Another process may take
    one before Triton binds it; start() then retries with new ones."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def unsupported_backends(repo: Path, backend_dir: Path) -> list[str]:
    """The models of `repo` whose platform or backend this Triton does not have (e.g. tensorrt_plan
    on the bundled CPU build), as 'model (platform)'."""
    have = {p.name for p in backend_dir.iterdir() if p.is_dir()} if backend_dir.is_dir() else set()
    aliases = {"tensorrt_plan": "tensorrt", "onnxruntime_onnx": "onnxruntime", "pytorch_libtorch": "pytorch"}
    missing = []
    for config in sorted(repo.glob("*/config.pbtxt")):
        text = config.read_text()
        for key in ("platform", "backend"):
            for line in text.splitlines():
                if line.startswith(f"{key}:"):
                    value = line.split(":", 1)[1].strip().strip('"')
                    needed = aliases.get(value, value)
                    if value != "ensemble" and needed not in have:
                        missing.append(f"{config.parent.name} ({value})")
    return missing


class TritonServer:
    """`with TritonServer(repo) as server:` ... server.http_url / server.grpc_url ... (stopped on exit)."""

    def __init__(self, repo: str | os.PathLike[str], *, ports: Ports | None = None, log_path: Path | None = None,
                 ready_timeout_s: float = 180.0, extra_args: tuple[str, ...] = ()) -> None:
        self.repo = Path(repo).resolve()
        if not self.repo.is_dir() or not any(self.repo.glob("*/config.pbtxt")):
            raise UsageError(f"{repo} is not a model repository (no */config.pbtxt); write one with `trt-serve export`")
        self.requested_ports = ports
        self.ports: Ports | None = None
        self.log_path = log_path
        self.ready_timeout_s = ready_timeout_s
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self.install: environment.TritonInstall | None = None
        self.site: Path | None = None  # the models' site-packages

    @property
    def http_url(self) -> str:
        assert self.ports is not None, "the server is not started"
        return f"{HOST}:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        assert self.ports is not None, "the server is not started"
        return f"{HOST}:{self.ports.grpc}"

    def start(self) -> TritonServer:
        install, site = environment.prepare(self.repo)
        self.install, self.site = install, site
        missing = unsupported_backends(self.repo, install.backend_dir)
        if missing:
            raise UsageError(f"the bundled Triton {install.version} has only the python backend; cannot serve "
                             f"{', '.join(missing)}: export with --platform python to run it here, or serve the "
                             "repository from the Triton container (its README says which)")
        for attempt in range(3):
            ports = self.requested_ports or Ports(*free_ports())
            try:
                self._launch(install, site, ports)
                self._wait_ready()
                return self
            except _PortTaken:
                self.stop()
                if self.requested_ports is not None or attempt == 2:
                    raise EnvironmentFault(f"Triton could not bind ports {ports}; give free ones") from None
        raise AssertionError("unreachable")

    def _launch(self, install: environment.TritonInstall, site: Path, ports: Ports) -> None:
        self.ports = ports
        cmd = [str(install.binary), "--model-repository", str(self.repo), "--backend-directory", str(install.backend_dir),
               "--http-address", HOST, "--grpc-address", HOST, "--metrics-address", HOST,
               "--http-port", str(ports.http), "--grpc-port", str(ports.grpc), "--metrics-port", str(ports.metrics),
               # Every model must load, and stop() should not wait long for requests still in flight.
               "--exit-on-error=true", "--strict-readiness=true", "--exit-timeout-secs=5",
               "--disable-auto-complete-config", *self.extra_args]
        env = {**os.environ, environment.ENV_VAR: str(site)}
        if self.log_path is None:
            self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"trt-serve.{os.getpid()}.{ports.http}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env, start_new_session=True, preexec_fn=_die_with_parent)

    def log_tail(self, lines: int = 5) -> str:
        """The last error lines of the server's log (E... lines first), for one-line messages."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        errors = [ln for ln in text if ln.startswith("E") and "NVML" not in ln and "CudaDriverHelper" not in ln
                  and "DCGM" not in ln]
        return " | ".join((errors or text)[-lines:])

    def _wait_ready(self) -> None:
        assert self.process is not None and self.ports is not None
        deadline = time.monotonic() + self.ready_timeout_s
        url = f"http://{HOST}:{self.ports.http}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_tail()
                if "address already in use" in tail.lower() or "failed to bind" in tail.lower():
                    raise _PortTaken()
                raise EnvironmentFault(f"Triton exited (status {self.process.returncode}) before it was ready: {tail} "
                                       f"(log: {self.log_path})")
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            time.sleep(0.2)
        self.stop()
        raise EnvironmentFault(f"Triton was not ready within {self.ready_timeout_s:.0f} s: {self.log_tail()} "
                               f"(log: {self.log_path})")

    def is_ready(self) -> bool:
        if self.process is None or self.process.poll() is not None or self.ports is None:
            return False
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.ports.http}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM to the server's process group, SIGKILL after `grace_s`; waits; returns its status."""
        process, self.process = self.process, None
        if process is None:
            return None
        pgid = process.pid  # start_new_session: the group's id is the server's pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            process.wait()
        # Stub processes that outlived the server (they are in its group) go too, and are waited for.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        return process.returncode

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class _PortTaken(Exception):
    pass


def processes_using(path: Path) -> list[int]:
    """Pids of live processes whose command line names `path` or a file under it (Linux /proc)."""
    needle = str(Path(path).resolve())
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (proc / "stat").read_text()
            if needle in cmdline and ") Z " not in stat:  # zombies are gone, only not yet reaped
                found.append(int(proc.name))
    return found


def group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process of group `pgid` exists: the no-process-left check."""
    if not Path("/proc/self/stat").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            # /proc/PID/stat: pid (comm) state ppid pgrp ...; comm may hold spaces, so split after ')'
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False
