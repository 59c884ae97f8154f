"""What every command shares: one-line errors (exit 2 for usage, 1 for the environment, 130/143 when
interrupted or terminated), and the arguments several commands share."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from retinanet_trt.errors import EnvironmentFault, Terminated, UsageError
from retinanet_trt.fileio import read_json

EXIT_USAGE = 2
EXIT_ENVIRONMENT = 1
EXIT_TERMINATED = 128 + signal.SIGTERM


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's default prints the whole usage block; keep it to one line that says what to do.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def make_parser(prog: str, description: str, examples: str) -> argparse.ArgumentParser:
    return _Parser(
        prog=prog, description=description, epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While a command runs, SIGTERM unwinds the stack as Ctrl-C does, so every `finally` that
    removes a temporary file runs (signal handlers can only be set from the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_main(prog: str, body: Callable[[list[str] | None], int], argv: Sequence[str] | None) -> int:
    """Run a command body: a UsageError becomes one line on stderr and exit status 2, a fault of
    the machine (disk full, unreadable file) one line and exit 1, SIGTERM one line and exit 143."""
    try:
        with _sigterm_unwinds():
            return body(list(argv) if argv is not None else None)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except EnvironmentFault as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except OSError as exc:  # the environment: name the file and the reason, without a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{prog}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; no partial output was left", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{prog}: terminated (SIGTERM); no partial output was left", file=sys.stderr)
        return EXIT_TERMINATED


# Counts of images a run draws or reads: larger ones are typos that would fill the disk or run for days.
MAX_IMAGES = 10_000


def seed(text: str) -> int:
    """argparse type for --seed: NumPy's generators take 0 .. 2**32 - 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer seed") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{value}: a seed is between 0 and {2**32 - 1}")
    return value


def check_count(flag: str, value: int | None, low: int = 1, high: int = MAX_IMAGES) -> None:
    """UsageError unless low <= value <= high (None: not given, nothing to check)."""
    if value is not None and not low <= value <= high:
        raise UsageError(f"{flag} {value}: give {low}..{high}")


def add_engine_spec_args(parser: argparse.ArgumentParser) -> None:
    """--spec / --onnx: what a model that does not describe itself is: an engine without a sidecar
    (trtexec, Polygraphy) or an ONNX file another tool wrote (ModelOpt, ORT quantize_static)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--spec", metavar="SPEC.json", help="for an engine without a sidecar or an ONNX without this "
                       "project's metadata (e.g. another quantizer's output): its model spec (trt-inspect --spec-json "
                       "writes one)")
    group.add_argument("--onnx", metavar="FP32.onnx", help="for an engine without a sidecar or an ONNX without this "
                       "project's metadata: the ONNX it was built or quantized from (its stored spec is used; the "
                       "inputs and outputs must agree)")


def engine_spec_options(args: argparse.Namespace) -> dict[str, Any]:
    """Detector.load options from --spec / --onnx; UsageError when they do not apply or cannot be read."""
    if not (args.spec or args.onnx):
        return {}
    from retinanet_trt.runtime.detector import default_backend

    if (args.backend or default_backend(str(args.model))) == "torch":
        raise UsageError("--spec / --onnx describe an engine without a sidecar or an ONNX file without this "
                         "project's metadata; checkpoints and 'demo' carry their own spec")
    if args.onnx:
        return {"onnx": args.onnx}
    return {"spec": read_spec_file(args.spec)}


def read_spec_file(text: str | os.PathLike[str]) -> Any:
    """The ModelSpec in a --spec JSON file; UsageError naming the file when it is missing or invalid."""
    from retinanet_trt.spec import ModelSpec

    path = Path(text)
    hint = f"write one with `trt-inspect CHECKPOINT --spec-json {path}`"
    data = read_json(path, "--spec", hint)
    if not isinstance(data, dict):
        raise UsageError(f"--spec {path}: a spec is a JSON object with backbone/fpn/head/... fields; {hint}")
    return ModelSpec.from_dict(data)


def model_options(args: argparse.Namespace) -> tuple[dict[str, Any], str | None]:
    """(Detector.load options, arithmetic label) for args.model on args.backend: --spec / --onnx,
    and for an ONNX file whose graph quantizes (any QuantizeLinear, whatever its metadata says) on
    ort-cpu the simulated Q/DQ arithmetic: ORT's default session fuses Q/DQ into integer kernels
    whose results depend on the CPU. The label names the arithmetic (None for a float file)."""
    from retinanet_trt.runtime.detector import default_backend

    options = engine_spec_options(args)
    model = str(args.model)
    backend = args.backend or default_backend(model)
    if not (model.endswith(".onnx") and Path(model).is_file()) or backend == "torch":
        return options, None
    from retinanet_trt.spec.metadata import has_qdq

    if not has_qdq(model):
        return options, None
    from retinanet_trt.runtime.backends.ort_backend import ACCURACY_ARITHMETIC, ARITHMETIC_LABELS

    if backend in ("ort-cpu", "onnxruntime"):
        return {**options, "arithmetic": ACCURACY_ARITHMETIC}, ARITHMETIC_LABELS[ACCURACY_ARITHMETIC]
    return options, f"{backend}: the execution provider's own INT8 kernels (Q/DQ not simulated)"


def add_progress_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars (default: only when stderr is a terminal, so logs stay clean)")


def show_progress(args: argparse.Namespace) -> bool:
    """--progress / --no-progress, else whether stderr is a terminal (bars flood non-tty logs)."""
    choice = getattr(args, "progress", None)
    if choice is not None:
        return bool(choice)
    if getattr(args, "quiet", False):
        return False
    return sys.stderr.isatty()


def add_oversize_arg(parser: argparse.ArgumentParser) -> None:
    """--oversize: what a fixed-input model does with an image its framework's resize makes too large."""
    parser.add_argument("--oversize", choices=("shrink", "refuse"),
                        help="an image that does not fit the model's fixed input after the framework's resize: "
                        "'shrink' it further to fit (named on stderr) or 'refuse' it (skipped with the reason); "
                        "default: the model's spec (preprocess.oversize, 'shrink' unless exported otherwise)")


def apply_oversize(detector: Any, args: argparse.Namespace) -> None:
    """Set the detector's preprocess.oversize from --oversize, when given."""
    if args.oversize:
        detector.spec.preprocess.oversize = args.oversize
