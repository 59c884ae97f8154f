"""The Triton python-backend model behind every python model of a generated repository.

Each model.py (templates/triton_model.py, copied by trt-serve export) only makes retinanet_trt
importable and re-exports TritonPythonModel from here; the config parameter "stage" picks what the
model is: preprocess, network (ONNX Runtime or TensorRT through this project's backends),
postprocess, or rescale (end-to-end outputs to original pixels). triton_python_backend_utils exists
only inside Triton's Python stub, so it is imported when a model starts, never at import time.

A request that fails (bad input, a failing backend) gets its own error response and every other
request of the same execute() call is answered normally: one bad client cannot take the server down.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from retinanet_trt.serve import stages
from retinanet_trt.spec import ModelSpec

STAGES = ("preprocess", "network", "postprocess", "rescale")


def _pb() -> Any:
    import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

    return pb_utils


def _error(exc: BaseException) -> Any:
    pb = _pb()
    if isinstance(exc, stages.RequestError):
        return pb.InferenceResponse(error=pb.TritonError(str(exc), pb.TritonError.INVALID_ARG))
    # Not the client's fault: say what broke, keep serving.
    return pb.InferenceResponse(error=pb.TritonError(f"internal error: {type(exc).__name__}: {exc}"))


def _input(request: Any, name: str) -> np.ndarray | None:
    tensor = _pb().get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _response(outputs: dict[str, np.ndarray]) -> Any:
    pb = _pb()
    return pb.InferenceResponse([pb.Tensor(name, np.ascontiguousarray(value)) for name, value in outputs.items()])


class TritonPythonModel:
    """Triton's python-backend interface; the work is done by one of the stage classes below."""

    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        stage = params.get("stage", "")
        if stage not in STAGES:
            raise ValueError(f"config parameter 'stage' is {stage!r}; expected one of {', '.join(STAGES)}")
        folder = Path(args["model_repository"]) / str(args["model_version"])
        self.stage = _STAGE_CLASSES[stage](folder, params, config)

    def execute(self, requests: list[Any]) -> list[Any]:
        return self.stage.execute(requests)

    def finalize(self) -> None:
        close = getattr(self.stage, "close", None)
        if close is not None:
            close()


def _spec(folder: Path) -> ModelSpec:
    return ModelSpec.from_json((folder / "spec.json").read_text())


class _PreprocessStage:
    def __init__(self, folder: Path, params: dict[str, str], config: dict[str, Any]) -> None:
        self.spec = _spec(folder)
        self.limits = limits_from_parameters(params, int(config.get("max_batch_size", 0)))
        self.output_name = params["network_input"]

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                images = stages.decode_request(_input(request, stages.INPUT_BYTES), _input(request, stages.INPUT_PIXELS),
                                               self.limits)
                batch, meta = stages.preprocess_request(images, self.spec, self.limits)
                responses.append(_response({self.output_name: batch, stages.META: meta}))
            except Exception as exc:  # noqa: BLE001 - every failure becomes this request's error response
                responses.append(_error(exc))
        return responses


class _NetworkStage:
    """Concatenates the requests Triton's dynamic batcher hands over (same image size) into one batch."""

    def __init__(self, folder: Path, params: dict[str, str], config: dict[str, Any]) -> None:
        from retinanet_trt.runtime.detector import Detector

        options: dict[str, Any] = {}
        if params.get("backend", "ort-cpu").startswith("ort") and params.get("threads"):
            options["threads"] = int(params["threads"])
        self.detector = Detector.load(folder / params["model_file"], params.get("backend", "ort-cpu"), **options)
        self.input_name = params["network_input"]
        self.output_dims = {o["name"]: o.get("dims", []) for o in config.get("output", [])}

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        arrays: list[np.ndarray] = []
        for i, request in enumerate(requests):
            x = _input(request, self.input_name)
            if x is None:
                responses[i] = _error(stages.RequestError(f"input {self.input_name} is missing"))
                x = np.zeros((0, 0), np.float32)
            arrays.append(x)
        for group in stages.split_by_shape(arrays):
            group = [i for i in group if responses[i] is None]
            if not group:
                continue
            try:
                outputs = self.detector.backend.run(np.concatenate([arrays[i] for i in group]))
                start = 0
                for i in group:
                    n = arrays[i].shape[0]
                    responses[i] = _response({name: self._shaped(name, v[start:start + n]) for name, v in outputs.items()
                                              if name in self.output_dims})
                    start += n
            except Exception as exc:  # noqa: BLE001
                for i in group:
                    responses[i] = _error(exc)
        return responses

    def _shaped(self, name: str, value: np.ndarray) -> np.ndarray:
        # num_dets is (N,) in the graph; Triton's batched dims cannot be empty, so it travels as (N, 1).
        return value.reshape(-1, 1) if value.ndim == 1 else value

    def close(self) -> None:
        self.detector.close()


class _PostprocessStage:
    def __init__(self, folder: Path, params: dict[str, str], config: dict[str, Any]) -> None:
        self.spec = _spec(folder)
        self.input_names = [i["name"] for i in config.get("input", []) if i["name"] != stages.META]
        self.finish = stages.postprocess_request

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                meta = _input(request, stages.META)
                outputs = {name: _input(request, name) for name in self.input_names}
                missing = [n for n, v in outputs.items() if v is None] + ([stages.META] if meta is None else [])
                if missing:
                    raise stages.RequestError(f"missing input(s) {', '.join(missing)}")
                responses.append(_response(self.finish(outputs, meta, self.spec)))  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001
                responses.append(_error(exc))
        return responses


class _RescaleStage(_PostprocessStage):
    def __init__(self, folder: Path, params: dict[str, str], config: dict[str, Any]) -> None:
        super().__init__(folder, params, config)
        self.finish = stages.finish_end2end_request


_STAGE_CLASSES: dict[str, Any] = {"preprocess": _PreprocessStage, "network": _NetworkStage,
                                  "postprocess": _PostprocessStage, "rescale": _RescaleStage}


def limits_from_parameters(params: dict[str, str], max_batch_size: int) -> stages.Limits:
    """stages.Limits from the preprocess model's config parameters (written by trt-serve export)."""

    def hw(key: str) -> tuple[int, int] | None:
        value = params.get(key, "")
        if not value:
            return None
        h, w = value.lower().split("x")
        return int(h), int(w)

    return stages.Limits(
        max_image_pixels=int(params.get("max_image_pixels", stages.MAX_IMAGE_PIXELS)),
        max_image_bytes=int(params.get("max_image_bytes", stages.MAX_IMAGE_BYTES)),
        max_batch=max_batch_size or None,
        fixed_input_hw=hw("fixed_input_hw"),
        min_input_hw=hw("min_input_hw"),
        max_input_hw=hw("max_input_hw"),
    )
