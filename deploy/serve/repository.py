"""trt-serve export: a Triton model repository (preprocess -> network -> postprocess, one ensemble).

    REPO/
      NAME/config.pbtxt              ensemble: IMAGE_BYTES or IMAGE in, NUM_DETS BOXES SCORES LABELS NAMES out
      NAME_preprocess/               python: decode, resize, normalise, pad (runtime.preprocess)
      NAME_network/                  tensorrt_plan (model.plan) | onnxruntime_onnx (model.onnx) | python
      NAME_postprocess/              python: decode, top-k, NMS, original pixels (runtime.postprocess)
      NAME_rescale/                  instead of postprocess for an end-to-end model: original pixels only
      labels.txt  README.md  retinanet_trt_repository.json

The pre- and post-process models run this project's own NumPy code, so Triton's detections equal
trt-infer's. The whole repository is built in a hidden folder beside REPO and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from retinanet_trt import __version__
from retinanet_trt.errors import UsageError
from retinanet_trt.fileio import atomic_path, check_folder_writable, write_bytes_atomic, write_json_atomic
from retinanet_trt.serve import stages
from retinanet_trt.serve.model_info import NetworkInfo, Tensor, read_network
from retinanet_trt.serve.pbtxt import Enum, parameters, to_pbtxt

PLATFORMS = ("tensorrt_plan", "onnxruntime_onnx", "python")
PYTHON_BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt", "trt")
MARKER = "retinanet_trt_repository.json"
TEMPLATE = Path(__file__).with_name("templates") / "triton_model.py"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass
class ServeOptions:
    """What trt-serve export writes; every field is a command-line option."""

    name: str = "retinanet"
    platform: str | None = None  # default: tensorrt_plan for an engine, onnxruntime_onnx for an ONNX
    max_batch: int = 8
    instances: int = 1
    dynamic_batching: bool = False
    max_queue_delay_us: int = 100
    end2end: bool = False
    backend: str | None = None  # the python network's backend; default ort-cpu (ONNX) or trt (engine)
    threads: int = 0  # ONNX Runtime intra-op threads per python network instance (0: ORT decides)
    ort_tensorrt: bool = False  # onnxruntime_onnx with the TensorRT execution accelerator
    device: str = "auto"  # instance kind of the network: auto (GPU unless ORT CPU), gpu, cpu
    gpus: list[int] | None = None  # GPU network instances on these devices only (default: `instances` on each GPU)
    max_image_pixels: int = stages.MAX_IMAGE_PIXELS
    max_image_bytes: int = stages.MAX_IMAGE_BYTES

    def check(self) -> None:
        if not _NAME.match(self.name):
            raise UsageError(f"--name {self.name!r}: use letters, digits, '_', '.' or '-' (a Triton model name)")
        if self.platform is not None and self.platform not in PLATFORMS:
            raise UsageError(f"--platform {self.platform}: choose one of {', '.join(PLATFORMS)}")
        if self.backend is not None and self.backend not in PYTHON_BACKENDS:
            raise UsageError(f"--backend {self.backend}: choose one of {', '.join(PYTHON_BACKENDS)}")
        for flag, value, low in (("--max-batch", self.max_batch, 1), ("--instances", self.instances, 1),
                                 ("--max-queue-delay-us", self.max_queue_delay_us, 0), ("--threads", self.threads, 0),
                                 ("--max-image-pixels", self.max_image_pixels, 1),
                                 ("--max-image-bytes", self.max_image_bytes, 1)):
            if value < low:
                raise UsageError(f"{flag} {value}: must be >= {low}")
        if self.device not in ("auto", "gpu", "cpu"):
            raise UsageError(f"--device {self.device}: choose auto, gpu or cpu")
        if self.gpus is not None and (not self.gpus or min(self.gpus) < 0):
            raise UsageError(f"--gpus {self.gpus}: give GPU indices >= 0, e.g. 0,1")


def _dims(shape: list[int], batched: bool) -> list[int]:
    return [int(d) if d > 0 else -1 for d in (shape[1:] if batched else shape)]


def _io(tensor: Tensor, batched: bool, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": tensor.name, "data_type": Enum(tensor.data_type), "dims": _dims(tensor.shape, batched)}
    if batched and len(tensor.shape) == 1:  # (N,) per image is a scalar: Triton needs dims [1] and a reshape
        entry["dims"] = [1]
        entry["reshape"] = {"shape": []}
    entry.update(extra)
    return entry


def _instances(count: int, kind: str, gpus: list[int] | None = None) -> list[dict[str, Any]]:
    # Triton places `count` instances on every GPU it sees, or on each of `gpus`.
    group: dict[str, Any] = {"count": count, "kind": Enum(kind)}
    if gpus and kind == "KIND_GPU":
        group["gpus"] = list(gpus)
    return [group]


def _batching(opts: ServeOptions) -> dict[str, Any] | None:
    return {"max_queue_delay_microseconds": opts.max_queue_delay_us} if opts.dynamic_batching else None


def _check_platform_flags(opts: ServeOptions, platform: str, backend: str) -> None:
    """Refuse flags the chosen network would silently ignore or could not run with."""
    if opts.ort_tensorrt and platform != "onnxruntime_onnx":
        hint = "--backend ort-trt gives the python network ORT's TensorRT provider" if platform == "python" \
            else "the network already is a TensorRT engine"
        raise UsageError(f"--ort-tensorrt applies to the onnxruntime_onnx platform only, not {platform}; drop it "
                         f"({hint})")
    if opts.backend is not None and platform != "python":
        raise UsageError(f"--backend {opts.backend} chooses the runtime of a python network; add --platform python "
                         f"or drop it (the {platform} network is Triton's own backend)")
    if opts.threads and not (platform == "python" and backend != "trt"):
        raise UsageError(f"--threads {opts.threads} sets ONNX Runtime threads of a python network running ORT "
                         f"(--platform python --backend ort-*), not of {platform}"
                         + (" with --backend trt" if platform == "python" else "") + "; drop it")
    gpu_only = platform == "tensorrt_plan" or opts.ort_tensorrt or (platform == "python" and backend != "ort-cpu")
    if opts.device == "cpu" and gpu_only:
        what = f"--backend {backend}" if platform == "python" else "--ort-tensorrt" if opts.ort_tensorrt else platform
        raise UsageError(f"--device cpu: {what} runs on a GPU; drop --device cpu (ORT runs on the CPU with an "
                         "ONNX and --platform onnxruntime_onnx, or --platform python --backend ort-cpu)")
    if opts.device == "gpu" and platform == "python" and backend == "ort-cpu":
        raise UsageError("--device gpu: --backend ort-cpu runs on the CPU; choose --backend ort-cuda or ort-trt, "
                         "or drop --device gpu")


def plan(net: NetworkInfo, opts: ServeOptions) -> dict[str, Any]:
    """Every decision of the export, before anything is written (also the repository's JSON record)."""
    opts.check()
    platform = opts.platform or ("tensorrt_plan" if net.kind == "engine" else "onnxruntime_onnx")
    if platform == "tensorrt_plan" and net.kind != "engine":
        raise UsageError(f"--platform tensorrt_plan needs a TensorRT engine; build one with `trt-build {net.path}` "
                         "(Triton's TensorRT must be the version the engine was built with)")
    if platform == "onnxruntime_onnx" and net.kind != "onnx":
        raise UsageError("--platform onnxruntime_onnx needs an .onnx file, not an engine")
    backend = opts.backend or ("trt" if net.kind == "engine" else "ort-cpu")
    if platform == "python" and (backend == "trt") != (net.kind == "engine"):
        raise UsageError(f"--backend {backend} runs {'an engine' if backend == 'trt' else 'an ONNX file'}, not {net.path.name}")
    _check_platform_flags(opts, platform, backend)
    end2end = net.end2end or opts.end2end
    if opts.end2end and not net.end2end and net.kind == "engine":
        raise UsageError(f"--end2end: {net.path.name} has raw head outputs; build the engine from an end-to-end ONNX "
                         "(python -m retinanet_trt.plugins), or export without --end2end")
    batch_limit, min_hw, max_hw = net.profile_limits()
    fixed_batch = net.fixed_batch
    if fixed_batch is not None and fixed_batch > 1:
        raise UsageError(f"{net.path.name} has a fixed batch of {fixed_batch}; Triton needs a dynamic batch (or 1): "
                         "re-export with a dynamic batch")
    max_batch = 1 if fixed_batch == 1 else min(opts.max_batch, batch_limit or opts.max_batch)
    if opts.device == "auto":
        gpu = not (platform == "python" and backend == "ort-cpu")
    else:
        gpu = opts.device == "gpu"
    if opts.gpus and not gpu:
        raise UsageError("--gpus places GPU instances; this network runs on the CPU (--device cpu or ORT CPU)")
    return {
        "name": opts.name, "platform": platform, "backend": backend if platform == "python" else None,
        "end2end": end2end, "convert_end2end": end2end and not net.end2end, "max_batch_size": max_batch,
        "network_batched": fixed_batch is None, "network_kind": "KIND_GPU" if gpu else "KIND_CPU",
        "fixed_input_hw": net.fixed_input_hw, "min_input_hw": min_hw, "max_input_hw": max_hw,
        "tensorrt_version": net.tensorrt_version, "precision": net.precision, "options": asdict(opts),
        "source": {"file": net.path.name, "kind": net.kind, "sha256": net.sha256},
    }


def model_names(name: str, end2end: bool) -> dict[str, str]:
    return {"ensemble": name, "preprocess": f"{name}_preprocess", "network": f"{name}_network",
            "postprocess": f"{name}_rescale" if end2end else f"{name}_postprocess"}


def _hw(value: tuple[int, int] | None) -> str:
    return f"{value[0]}x{value[1]}" if value else ""


def configs(net: NetworkInfo, p: dict[str, Any], outputs: list[Tensor]) -> dict[str, str]:
    """config.pbtxt text of each model, keyed by model name. `outputs`: the network's outputs
    (after an end-to-end conversion, the converted graph's)."""
    names = model_names(p["name"], p["end2end"])
    opts = ServeOptions(**p["options"])
    mb, batched = p["max_batch_size"], p["network_batched"]
    inp = net.input
    images = Tensor(inp.name, "TYPE_FP32", [-1, 3, -1, -1])
    cpu = _instances(opts.instances, "KIND_CPU")
    pre = {
        "name": names["preprocess"], "backend": "python", "max_batch_size": mb,
        "input": [{"name": stages.INPUT_BYTES, "data_type": Enum("TYPE_STRING"), "dims": [1], "optional": True},
                  {"name": stages.INPUT_PIXELS, "data_type": Enum("TYPE_UINT8"), "dims": [-1, -1, 3], "optional": True}],
        "output": [_io(images, True), {"name": stages.META, "data_type": Enum("TYPE_INT32"), "dims": [6]}],
        "instance_group": cpu,
        "parameters": parameters({"stage": "preprocess", "network_input": inp.name,
                                  "max_image_pixels": opts.max_image_pixels, "max_image_bytes": opts.max_image_bytes,
                                  "fixed_input_hw": _hw(p["fixed_input_hw"]), "min_input_hw": _hw(p["min_input_hw"]),
                                  "max_input_hw": _hw(p["max_input_hw"])}),
    }
    network: dict[str, Any] = {"name": names["network"]}
    if p["platform"] == "python":
        network["backend"] = "python"
    else:
        network["platform"] = p["platform"]
    network.update({
        "max_batch_size": mb if batched else 0,
        "input": [_io(inp, batched)],
        "output": [_io(o, batched) for o in outputs],
        "instance_group": _instances(opts.instances, p["network_kind"], opts.gpus),
        "dynamic_batching": _batching(opts) if batched else None,
    })
    if p["platform"] == "python":
        # The python network returns (N, 1) for a per-image scalar itself; no reshape there.
        for o in network["output"]:
            o.pop("reshape", None)
        network["parameters"] = parameters({"stage": "network", "backend": p["backend"], "network_input": inp.name,
                                            "model_file": network_file(p), "threads": opts.threads})
    elif p["platform"] == "onnxruntime_onnx" and opts.ort_tensorrt:
        # TensorRT builds FP16/INT8 from the types and Q/DQ in the ONNX (precision lives in the file),
        # so no precision_mode is set here.
        network["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [{"name": "tensorrt"}]}}
    post_inputs = [_io(o, True) for o in outputs]
    for o in post_inputs:
        o.pop("reshape", None)
    post = {
        "name": names["postprocess"], "backend": "python", "max_batch_size": mb,
        "input": post_inputs + [{"name": stages.META, "data_type": Enum("TYPE_INT32"), "dims": [6]}],
        "output": _ensemble_outputs(),
        "instance_group": cpu,
        "parameters": parameters({"stage": "rescale" if p["end2end"] else "postprocess"}),
    }
    steps = [
        {"model_name": names["preprocess"], "model_version": -1,
         "input_map": [{"key": k, "value": k} for k in (stages.INPUT_BYTES, stages.INPUT_PIXELS)],
         "output_map": [{"key": k, "value": k} for k in (inp.name, stages.META)]},
        {"model_name": names["network"], "model_version": -1, "input_map": [{"key": inp.name, "value": inp.name}],
         "output_map": [{"key": o.name, "value": o.name} for o in outputs]},
        {"model_name": names["postprocess"], "model_version": -1,
         "input_map": [{"key": k, "value": k} for k in [o.name for o in outputs] + [stages.META]],
         "output_map": [{"key": k, "value": k} for k in stages.OUTPUTS]},
    ]
    ensemble = {
        "name": names["ensemble"], "platform": "ensemble", "max_batch_size": mb,
        "input": pre["input"], "output": _ensemble_outputs(), "ensemble_scheduling": {"step": steps},
    }
    return {names["ensemble"]: to_pbtxt(ensemble), names["preprocess"]: to_pbtxt(pre),
            names["network"]: to_pbtxt(network), names["postprocess"]: to_pbtxt(post)}


def _ensemble_outputs() -> list[dict[str, Any]]:
    types = {"NUM_DETS": ("TYPE_INT32", [1]), "BOXES": ("TYPE_FP32", [-1, 4]), "SCORES": ("TYPE_FP32", [-1]),
             "LABELS": ("TYPE_INT64", [-1]), "NAMES": ("TYPE_STRING", [-1])}
    return [{"name": k, "data_type": Enum(types[k][0]), "dims": types[k][1]} for k in stages.OUTPUTS]


def network_file(p: dict[str, Any]) -> str:
    """The network's file name inside its version folder."""
    if p["platform"] == "tensorrt_plan":
        return "model.plan"
    if p["source"]["kind"] == "engine":
        return "model.engine"  # the python network's TensorRT backend reads model.engine.json beside it
    return "model.onnx"


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def check_target(repo: Path, model: Path) -> None:
    """REPO may be new, empty or an earlier trt-serve repository (replaced whole); it must not hold
    the model it is made from."""
    if repo.exists() and not repo.is_dir():
        raise UsageError(f"-o {repo} is a file; give a folder for the model repository")
    real_repo, real_model = os.path.realpath(repo), os.path.realpath(model)
    if real_model == real_repo or real_model.startswith(real_repo.rstrip(os.sep) + os.sep):
        raise UsageError(f"-o {repo} holds the model {model}; exporting would replace its input, choose another -o")
    if repo.is_dir() and any(repo.iterdir()) and not (repo / MARKER).is_file():
        raise UsageError(f"-o {repo} is a folder that is not a trt-serve repository; give a new or empty folder")
    parent = repo.parent if str(repo.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"-o {repo}: folder {parent} does not exist; create it or choose another -o")
    check_folder_writable(parent, f"-o {repo}")


def export_repository(model: str | os.PathLike[str], repo: str | os.PathLike[str], opts: ServeOptions) -> dict[str, Any]:
    """Write the model repository for `model` (.onnx or .engine) to `repo`; return its record."""
    from retinanet_trt.serve.readme import readme_text

    net = read_network(model)
    repo = Path(repo)
    check_target(repo, net.path)
    p = plan(net, opts)
    names = model_names(p["name"], p["end2end"])
    staging = Path(tempfile.mkdtemp(prefix=f".{repo.name}.{os.getpid()}.", suffix=".part", dir=repo.parent if str(repo.parent) else "."))
    try:
        outputs = net.outputs
        network_dir = staging / names["network"] / "1"
        network_dir.mkdir(parents=True)
        target = network_dir / network_file(p)
        if p["convert_end2end"]:
            from retinanet_trt.plugins.end2end import end2end_file

            end2end_file(net.path, target)
            outputs = read_network(target).outputs
        else:
            _copy(net.path, target)
            if p["source"]["kind"] == "engine" and p["platform"] == "python":
                _copy(Path(str(net.path) + ".json"), Path(str(target) + ".json"))
        for model_name, text in configs(net, p, outputs).items():
            (staging / model_name).mkdir(exist_ok=True)
            write_bytes_atomic(staging / model_name / "config.pbtxt", (text + "\n").encode())
        spec_json = (net.spec.to_json(indent=2) + "\n").encode()
        python_models = [names["preprocess"], names["postprocess"]] + ([names["network"]] if p["platform"] == "python" else [])
        for model_name in python_models:
            version = staging / model_name / "1"
            version.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(version / "model.py", TEMPLATE.read_bytes())
            write_bytes_atomic(version / "spec.json", spec_json)
        (staging / names["ensemble"] / "1").mkdir(parents=True, exist_ok=True)  # an ensemble needs a version folder
        labels = "".join(f"{n}\n" for n in net.spec.class_names()).encode()
        write_bytes_atomic(staging / "labels.txt", labels)
        write_bytes_atomic(staging / names["postprocess"] / "labels.txt", labels)
        record = {"format": "retinanet_trt.triton_repository/1", "tool_version": __version__, "models": names, **p}
        write_json_atomic(staging / MARKER, record)
        write_bytes_atomic(staging / "README.md", readme_text(record, net).encode())
        _replace_folder(staging, repo)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return record


def _replace_folder(staging: Path, repo: Path) -> None:
    """Put staging at repo: a rename, with an earlier repository moved aside first and removed after."""
    old = None
    if repo.exists():
        old = repo.with_name(f".{repo.name}.{os.getpid()}.old")
        os.replace(repo, old)
    try:
        os.replace(staging, repo)
    except OSError:
        if old is not None:
            os.replace(old, repo)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_record(repo: str | os.PathLike[str]) -> dict[str, Any]:
    """The export record of a trt-serve repository; UsageError when REPO is not one."""
    path = Path(repo) / MARKER
    if not path.is_file():
        raise UsageError(f"{repo} is not a trt-serve model repository (no {MARKER}); write one with `trt-serve export`")
    with contextlib.suppress(json.JSONDecodeError):
        record = json.loads(path.read_text())
        if isinstance(record, dict) and "models" in record:
            return record
    raise UsageError(f"{path} is not readable; export the repository again")
