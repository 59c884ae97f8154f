"""The README.md inside a generated model repository: what it holds, how to start it, which Triton
container matches the engine's TensorRT, and how retinanet_trt gets into Triton's Python."""

from __future__ import annotations

from typing import Any

from retinanet_trt.serve.model_info import NetworkInfo

# TensorRT major.minor -> the NGC Triton release (nvcr.io/nvidia/tritonserver:<release>-py3) that
# ships it, from NVIDIA's Frameworks Support Matrix; Triton 2.51 (the binary `trt-serve run` uses
# here) is release 24.10. An engine loads only in the TensorRT it was built with (same version down
# to the patch level, unless built version-compatible), so check the release notes' exact version.
TRITON_RELEASE_FOR_TENSORRT = {
    "10.3": "24.08", "10.4": "24.09", "10.5": "24.10", "10.6": "24.11", "10.7": "24.12", "10.8": "25.01",
    "10.9": "25.03",
}


def triton_container(tensorrt_version: str | None) -> tuple[str | None, str]:
    """(image tag or None, one sentence) for an engine built with `tensorrt_version`."""
    if not tensorrt_version:
        return None, ("This repository holds no TensorRT engine, so any recent Triton release serves it "
                      "(e.g. nvcr.io/nvidia/tritonserver:24.10-py3, Triton 2.51, the version tested here).")
    major_minor = ".".join(tensorrt_version.split(".")[:2])
    release = TRITON_RELEASE_FOR_TENSORRT.get(major_minor)
    if release is None:
        return None, (f"The engine was built with TensorRT {tensorrt_version}. This tool knows no Triton release for "
                      f"TensorRT {major_minor}: pick the nvcr.io/nvidia/tritonserver:<YY.MM>-py3 whose release notes "
                      f"list TensorRT {tensorrt_version}, or rebuild the engine inside the Triton container you deploy "
                      "(trt-build there), which always matches. On Jetson, use the Triton release for your JetPack.")
    image = f"nvcr.io/nvidia/tritonserver:{release}-py3"
    return image, (f"The engine was built with TensorRT {tensorrt_version}; `{image}` ships TensorRT {major_minor} "
                   f"(check the patch version in its release notes: an engine loads only in the TensorRT it was built "
                   "with). If they differ, rebuild the engine inside that container with trt-build.")


def readme_text(record: dict[str, Any], net: NetworkInfo) -> str:
    names = record["models"]
    image, container_note = triton_container(record.get("tensorrt_version"))
    image = image or "nvcr.io/nvidia/tritonserver:24.10-py3"
    network_desc = {
        "tensorrt_plan": "the TensorRT engine (`model.plan`), run by Triton's TensorRT backend",
        "onnxruntime_onnx": "the ONNX file (`model.onnx`), run by Triton's ONNX Runtime backend"
                            + (" with the TensorRT execution accelerator" if record["options"]["ort_tensorrt"] else ""),
        "python": f"a python model running retinanet_trt's `{record['backend']}` backend on the "
                  f"{'engine' if record['source']['kind'] == 'engine' else 'ONNX file'} beside it",
    }[record["platform"]]
    post = ("maps the end-to-end network's boxes (decode and NMS ran inside it) to original pixels and names "
            "the classes" if record["end2end"] else
            "decodes, keeps the top-k, runs NMS and maps boxes to original pixels (runtime.postprocess)")
    batching = (f"on (max queue delay {record['options']['max_queue_delay_us']} us)"
                if record["options"]["dynamic_batching"] and record["network_batched"] else "off")
    return f"""# Triton model repository: {names['ensemble']}

Written by `trt-serve export` (retinanet_trt {record['tool_version']}) from `{record['source']['file']}`
(sha256 {record['source']['sha256'][:16]}..., precision {record['precision']}).

| model | what it does |
|---|---|
| `{names['ensemble']}` | the ensemble clients call |
| `{names['preprocess']}` | python: decodes the image, resizes, normalises and pads it as the model's spec says (runtime.preprocess) |
| `{names['network']}` | {network_desc} |
| `{names['postprocess']}` | python: {post} |

Max batch {record['max_batch_size']} images per request; {record['options']['instances']} instance(s) per model;
dynamic batching of the network {batching}. Class names: `labels.txt`.

## Requests

Send one of the two inputs (both are optional in the config; the preprocess model refuses both or neither):

- `IMAGE_BYTES`: TYPE_STRING, shape [B, 1]: encoded images (JPEG, PNG, ...), EXIF rotation honoured;
- `IMAGE`: TYPE_UINT8, shape [B, H, W, 3]: decoded RGB pixels.

Outputs, per image (rows past NUM_DETS are padding): `NUM_DETS` [B, 1] int32, `BOXES` [B, D, 4] float32
x1, y1, x2, y2 in original pixels, `SCORES` [B, D] float32, `LABELS` [B, D] int64 label ids, `NAMES` [B, D] strings.
A bad request (wrong type or shape, undecodable bytes, an empty batch, an image over
{record['options']['max_image_pixels']} pixels) gets an error response that names the problem.

```python
import numpy as np, tritonclient.http as http
client = http.InferenceServerClient("localhost:8000")
data = np.array([[open("street.jpg", "rb").read()]], dtype=object)
inp = http.InferInput("IMAGE_BYTES", data.shape, "BYTES"); inp.set_data_from_numpy(data)
result = client.infer("{names['ensemble']}", [inp])
print(result.as_numpy("BOXES")[0, :result.as_numpy("NUM_DETS")[0, 0]])
```

## Start it

Locally, on this project's bundled Triton (CPU; python-backend models only):

    trt-serve run PATH/TO/THIS/FOLDER

In the Triton container. {container_note}

    docker run --gpus all --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 \\
      -v $PWD:/models {image} tritonserver --model-repository /models

## retinanet_trt inside Triton's Python

The python models import retinanet_trt (the pre- and post-process are its NumPy code). Triton's
Python stub ignores PYTHONPATH, so install it into the Python the stub runs, one of two ways:

1. A derived image (simplest):

       FROM {image}
       RUN pip install 'retinanet-trt[cpu]'

   Use numpy 1.x there (`pip install 'numpy<2'`) if that release's python backend is built against
   numpy 1.x, as Triton 2.51's is: with numpy 2 its tensors come out wrong.
2. A packed environment: build a conda environment with the stub's Python version, `pip install
   'retinanet-trt[cpu]'` into it, pack it with conda-pack, copy it into each python model's folder
   and add to each python model's config.pbtxt

       parameters: {{ key: "EXECUTION_ENV_PATH", value: {{ string_value: "$$TRITON_MODEL_DIRECTORY/retinanet_trt_env.tar.gz" }} }}

`trt-serve run` does neither: it points the models at a prepared environment through the
RETINANET_TRT_SITE variable, which model.py reads.
"""
