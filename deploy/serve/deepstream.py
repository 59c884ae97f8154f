"""trt-serve deepstream: a DeepStream nvinfer config (config_infer_primary.txt) and labels.txt for a model.

nvinfer pre-processes on the GPU as y = net-scale-factor * (x - offsets[c]) on the frame scaled to the
network size, so the spec's pre-process maps to it as: offsets = mean / scale (0..255 units),
net-scale-factor = scale / std (one factor for all channels: a spec with per-channel std gets their
mean, and the report states the error), model-color-format from the channel order,
maintain-aspect-ratio from the resize (one factor for both sides, padded bottom/right as the spec
pads). nvinfer's scaler is not the spec's resize (it fits the frame into the network input with one
factor and its own filter), so DeepStream's detections are close to trt-infer's, not equal.

Output parsing, the choice made:
- an end-to-end model (num_dets, boxes, scores, labels from plugins/end2end.py): DeepStream's
  EfficientNMS-layout parser, NvDsInferParseCustomEfficientNMSTLT from NVIDIA's deepstream_tao_apps
  (libnvds_infercustomparser_tao.so). It reads exactly this layout (count, x1y1x2y2 boxes in network
  pixels, scores, int32 class channels) and stays in C++ on the pipeline's thread; NMS already ran in
  the engine, so nvinfer clusters nothing (cluster-mode=4).
- raw head outputs (cls_p*, box_p*): no stock parser decodes RetinaNet's per-level maps, so nvinfer
  attaches them as tensor meta (output-tensor-meta=1, network-type=100) and deepstream_probe.py, a pyds
  pad probe written beside the config, runs this project's own post-process on them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from retinanet_trt.errors import UsageError
from retinanet_trt.fileio import atomic_path, existing_ancestor, write_bytes_atomic, write_json_atomic
from retinanet_trt.runtime.resize_plan import padded_side
from retinanet_trt.runtime.types import Detections, ImageMeta
from retinanet_trt.serve.model_info import NetworkInfo, read_network
from retinanet_trt.spec import ModelSpec

CONFIG = "config_infer_primary.txt"
LABELS = "labels.txt"
PROBE = "deepstream_probe.py"
NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}
EFFICIENTNMS_PARSER = "NvDsInferParseCustomEfficientNMSTLT"
TAO_PARSER_LIB = "/opt/nvidia/deepstream/deepstream/lib/libnvds_infercustomparser_tao.so"


def network_hw(net: NetworkInfo) -> tuple[int, int]:
    """The network input nvinfer scales frames to: the engine/ONNX's fixed size, else the spec's
    largest landscape input (short side min_size, long side max_size, padded)."""
    if net.fixed_input_hw:
        return net.fixed_input_hw
    pre = net.spec.preprocess
    if pre.resize == "fixed" and pre.fixed_size:
        return int(pre.fixed_size[0]), int(pre.fixed_size[1])
    return padded_side(pre.min_size, pre), padded_side(pre.max_size, pre)


def preprocess_keys(spec: ModelSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """(nvinfer pre-process keys, notes) from the spec's pre-process."""
    pre = spec.preprocess
    std = [float(s) for s in pre.std]
    used = float(np.mean(std))
    scale_error = max(abs(s / used - 1.0) for s in std)
    keys = {
        "net-scale-factor": f"{pre.scale / used:.10g}",
        "offsets": ";".join(f"{m / pre.scale:.6g}" for m in pre.mean),
        "model-color-format": 0 if pre.channel_order == "RGB" else 1,
        "maintain-aspect-ratio": 0 if pre.resize == "fixed" else 1,
        "symmetric-padding": 0,  # the spec pads bottom/right
        "scaling-filter": 1 if pre.interpolation == "bilinear" else 0,
    }
    notes = {"per_channel_std": std, "std_used": used, "max_relative_scale_error": scale_error,
             "resize": "nvinfer fits the frame into the network input with one factor (no min_size/max_size rule) "
                       "and its own scaler: detections are close to trt-infer's, not equal"}
    return keys, notes


def config_text(net: NetworkInfo, model_file: str, batch_size: int) -> tuple[str, dict[str, Any]]:
    """The nvinfer config text and a report of the choices and approximations."""
    spec, post = net.spec, net.spec.postprocess
    h, w = network_hw(net)
    pre_keys, notes = preprocess_keys(spec)
    prop: dict[str, Any] = {"gpu-id": 0, "gie-unique-id": 1, "process-mode": 1, "interval": 0}
    if net.kind == "engine":
        prop["model-engine-file"] = model_file
    else:
        prop["onnx-file"] = model_file
        if not net.fixed_input_hw:
            prop["infer-dims"] = f"3;{h};{w}"  # a dynamic ONNX is built by nvinfer at this one size
    prop.update({"labelfile-path": LABELS, "batch-size": batch_size,
                 "network-mode": NETWORK_MODE.get(net.precision, 0), **pre_keys,
                 "num-detected-classes": spec.head.num_classes, "cluster-mode": 4})
    if net.end2end:
        prop.update({"network-type": 0, "output-blob-names": "num_dets;boxes;scores;labels",
                     "parse-bbox-func-name": EFFICIENTNMS_PARSER, "custom-lib-path": TAO_PARSER_LIB})
        parsing = f"{EFFICIENTNMS_PARSER} (deepstream_tao_apps) on the end-to-end outputs; NMS ran in the engine"
    else:
        prop.update({"network-type": 100, "output-tensor-meta": 1})
        parsing = f"tensor meta, decoded by {PROBE} with retinanet_trt.runtime.postprocess"
    attrs = {"pre-cluster-threshold": f"{min(post.score_thresh):.6g}", "nms-iou-threshold": f"{post.nms_iou:.6g}",
             "topk": post.max_detections or -1}
    lines = [f"# nvinfer config for {net.path.name}, written by trt-serve deepstream.",
             f"# Output parsing: {parsing}.",
             "# Pre-process: y = net-scale-factor * (x - offsets); spec std "
             f"{notes['per_channel_std']} -> one factor (max relative error {notes['max_relative_scale_error']:.3g}).",
             f"# NMS (IoU {post.nms_iou}, rule {post.nms_rule}, max {post.max_detections}) is the spec's, run "
             + ("inside the engine" if net.end2end else f"in {PROBE}") + "; nvinfer clusters nothing (cluster-mode=4).",
             "[property]"]
    lines += [f"{k}={v}" for k, v in prop.items()]
    lines += ["", "[class-attrs-all]"] + [f"{k}={v}" for k, v in attrs.items()]
    report = {"config": CONFIG, "network_input_hw": [h, w], "end2end": net.end2end, "parsing": parsing,
              "precision": net.precision, "batch_size": batch_size, **notes}
    return "\n".join(lines) + "\n", report


def read_config_keys(text: str) -> dict[str, dict[str, str]]:
    """{group: {key: value}} of an nvinfer config (GKeyFile syntax: [group], key=value, # comments)."""
    groups: dict[str, dict[str, str]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = groups.setdefault(line[1:-1], {})
        elif "=" in line and current is not None:
            key, value = line.split("=", 1)
            current[key.strip()] = value.strip()
        else:
            raise ValueError(f"not a key=value line under a [group]: {raw!r}")
    return groups


def letterbox_meta(frame_hw: tuple[int, int], net_hw: tuple[int, int]) -> ImageMeta:
    """Where nvinfer (maintain-aspect-ratio=1, symmetric-padding=0) put a frame in the network input."""
    s = min(net_hw[0] / frame_hw[0], net_hw[1] / frame_hw[1])
    resized = (max(1, round(frame_hw[0] * s)), max(1, round(frame_hw[1] * s)))
    return ImageMeta(original_hw=frame_hw, resized_hw=resized, input_hw=net_hw)


def detections_from_tensor_meta(layers: dict[str, np.ndarray], spec: ModelSpec, frame_hw: tuple[int, int],
                                net_hw: tuple[int, int]) -> Detections:
    """One frame's raw head outputs (each (C, H, W), as nvinfer's tensor meta holds them) -> its
    detections in frame pixels, through this project's post-process (what deepstream_probe.py calls)."""
    from retinanet_trt.runtime.postprocess import postprocess

    batch = {name: np.asarray(a, np.float32)[None] for name, a in layers.items()}
    return postprocess(batch, spec, [letterbox_meta(frame_hw, net_hw)])[0]


def write_deepstream(model: str | os.PathLike[str], out_dir: str | os.PathLike[str], batch_size: int = 1) -> dict[str, Any]:
    """Write config_infer_primary.txt, labels.txt, the model file, spec.json (and, for raw outputs,
    deepstream_probe.py) into out_dir; return the report (also written as deepstream.json)."""
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be >= 1")
    net = read_network(model)
    out = Path(out_dir)
    existing_ancestor(out, "-o")  # a file, or a folder nobody may write in (/proc, read-only): before any write
    if out.resolve() == net.path.resolve().parent:
        raise UsageError(f"-o {out} is the model's own folder; choose another (the model is copied into -o)")
    out.mkdir(parents=True, exist_ok=True)
    model_file = net.path.name
    text, report = config_text(net, model_file, batch_size)
    with atomic_path(out / model_file) as tmp:
        shutil.copyfile(net.path, tmp)
    write_bytes_atomic(out / CONFIG, text.encode())
    write_bytes_atomic(out / LABELS, "".join(f"{n}\n" for n in net.spec.class_names()).encode())
    write_bytes_atomic(out / "spec.json", (net.spec.to_json(indent=2) + "\n").encode())
    if not net.end2end:
        write_bytes_atomic(out / PROBE, (Path(__file__).with_name("templates") / PROBE).read_bytes())
    write_json_atomic(out / "deepstream.json", report)
    return report
