"""A Triton python-backend model of a retinanet_trt model repository (written by `trt-serve export`).

What it computes is decided by the config parameter "stage" and lives in retinanet_trt itself
(retinanet_trt.serve.triton_python), so this file only makes that package importable.

Triton's Python stub does not read PYTHONPATH. Where retinanet_trt is installed in the Python the
stub runs (a derived image, or a packed environment given as EXECUTION_ENV_PATH in config.pbtxt),
nothing is needed; `trt-serve run` instead names a prepared environment in RETINANET_TRT_SITE.
"""

import os
import site
import sys


def _use_environment() -> None:
    path = os.environ.get("RETINANET_TRT_SITE")
    if not path:
        return
    before = list(sys.path)
    # addsitedir, not a sys.path insert: it runs the .pth files, and an editable install of
    # retinanet_trt is found through one. Its entries go first, so its numpy wins.
    site.addsitedir(path)
    sys.path[:] = [p for p in sys.path if p not in before] + before


_use_environment()

from retinanet_trt.serve.triton_python import TritonPythonModel  # noqa: E402

__all__ = ["TritonPythonModel"]
