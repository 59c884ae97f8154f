"""Triton model configs as protobuf text (config.pbtxt), written from plain dicts.

Written by hand rather than through Triton's generated protobuf classes so that trt-serve export
needs no Triton package; `check_config` parses the text against Triton's own schema
(tritonclient's model_config_pb2) wherever tritonclient is installed (the `serve` extra, the tests).
"""

from __future__ import annotations

import json
from typing import Any

from retinanet_trt.errors import UsageError


class Enum(str):
    """An enum value (TYPE_FP32, KIND_GPU): written bare, not quoted."""


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes (\" \\ \n) are text-format escapes too; non-ASCII stays UTF-8.
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"cannot write {type(value).__name__} to pbtxt")


def _flat(item: dict[str, Any]) -> bool:
    return len(item) <= 3 and all(not isinstance(v, (dict, list)) and v is not None for v in item.values())


def to_pbtxt(message: dict[str, Any], indent: int = 0) -> str:
    """A message dict -> text format. Nested dicts are messages; lists are repeated fields (of
    messages or of scalars); `parameters`-style maps are lists of {"key": ..., "value": {...}}."""
    pad = "  " * indent
    lines: list[str] = []
    for key, value in message.items():
        if value is None:
            continue
        if isinstance(value, dict):
            lines.append(f"{pad}{key} {{")
            lines.append(to_pbtxt(value, indent + 1))
            lines.append(f"{pad}}}")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{pad}{key} [")
            for i, item in enumerate(value):
                comma = "," if i < len(value) - 1 else ""
                if _flat(item):  # e.g. an input_map entry: one line reads better
                    lines.append(f"{pad}  {{ {' '.join(f'{k}: {_scalar(v)}' for k, v in item.items())} }}{comma}")
                    continue
                lines.append(f"{pad}  {{")
                lines.append(to_pbtxt(item, indent + 2))
                lines.append(f"{pad}  }}{comma}")
            lines.append(f"{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(line for line in lines if line)


def parameters(values: dict[str, Any]) -> list[dict[str, Any]]:
    """A ModelConfig `parameters` map: every value as a string_value, as Triton stores them."""
    return [{"key": k, "value": {"string_value": str(v)}} for k, v in values.items()]


def check_config(text: str, where: str = "config.pbtxt") -> Any:
    """Parse text against Triton's ModelConfig schema; the message, or UsageError naming the problem.
    Needs tritonclient (`pip install 'retinanet-trt[serve]'`)."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise UsageError(f"checking {where} needs tritonclient ({exc}); pip install 'retinanet-trt[serve]'") from None
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise UsageError(f"{where} does not parse as a Triton ModelConfig: {exc}") from None
    return config
