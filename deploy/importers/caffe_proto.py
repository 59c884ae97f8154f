"""Caffe's file formats with only `protobuf`: a hand-written descriptor of the caffe.proto messages a
RetinaNet deploy net uses (field numbers and defaults as in BVLC/caffe src/caffe/proto/caffe.proto)
for the text ``.prototxt``, and a wire-format scan of the binary ``.caffemodel`` for the blobs.

The descriptor covers NetParameter, LayerParameter and V1LayerParameter with the parameters of
Input, DummyData, Convolution/Deconvolution, Pooling, BatchNorm, Scale, Eltwise and ReLU, plus the fields
every layer may carry (param, include/exclude, fillers, phase). A prototxt is parsed twice: first
skipping unknown fields, to name any layer type the importer does not support; then strictly, so
a field it does not know is an error instead of being silently ignored.

The caffemodel is read by scanning the wire format (NetParameter.layer = 100 / layers = 2, with the
name and blobs of each layer), so multi-hundred-MB float blobs become arrays without a Python
object per value.
"""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from retinanet_trt.errors import UsageError
from retinanet_trt.importers.protowire import fields, varint

_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_TYPES = {"string": _F.TYPE_STRING, "bool": _F.TYPE_BOOL, "int32": _F.TYPE_INT32, "uint32": _F.TYPE_UINT32,
          "int64": _F.TYPE_INT64, "float": _F.TYPE_FLOAT, "double": _F.TYPE_DOUBLE}
_PACKAGE = "retinanet_trt.caffe"

# V1LayerParameter.LayerType, the legacy enum `type` (caffe.proto, V1LayerParameter).
V1_TYPES = {
    "NONE": 0, "ABSVAL": 35, "ACCURACY": 1, "ARGMAX": 30, "BNLL": 2, "CONCAT": 3, "CONTRASTIVE_LOSS": 37,
    "CONVOLUTION": 4, "DATA": 5, "DECONVOLUTION": 39, "DROPOUT": 6, "DUMMY_DATA": 32, "EUCLIDEAN_LOSS": 7,
    "ELTWISE": 25, "EXP": 38, "FLATTEN": 8, "HDF5_DATA": 9, "HDF5_OUTPUT": 10, "HINGE_LOSS": 28, "IM2COL": 11,
    "IMAGE_DATA": 12, "INFOGAIN_LOSS": 13, "INNER_PRODUCT": 14, "LRN": 15, "MEMORY_DATA": 29,
    "MULTINOMIAL_LOGISTIC_LOSS": 16, "MVN": 34, "POOLING": 17, "POWER": 26, "RELU": 18, "SIGMOID": 19,
    "SIGMOID_CROSS_ENTROPY_LOSS": 27, "SILENCE": 36, "SOFTMAX": 20, "SOFTMAX_LOSS": 21, "SPLIT": 22,
    "SLICE": 33, "TANH": 23, "WINDOW_DATA": 24, "THRESHOLD": 31,
}
# The V1 names of the layer types the importer supports, as the new format spells them.
V1_NAMES = {"CONVOLUTION": "Convolution", "DECONVOLUTION": "Deconvolution", "POOLING": "Pooling",
            "RELU": "ReLU", "ELTWISE": "Eltwise", "DUMMY_DATA": "DummyData"}

# message -> [(field, number, label, type or .Message / enum name, default)]
_MESSAGES: dict[str, list[tuple[str, int, int, str, str | None]]] = {
    "BlobShape": [("dim", 1, _REP, "int64", None)],
    "BlobProto": [("shape", 7, _OPT, ".BlobShape", None), ("data", 5, _REP, "float", None),
                  ("diff", 6, _REP, "float", None), ("double_data", 8, _REP, "double", None),
                  ("double_diff", 9, _REP, "double", None), ("num", 1, _OPT, "int32", None),
                  ("channels", 2, _OPT, "int32", None), ("height", 3, _OPT, "int32", None),
                  ("width", 4, _OPT, "int32", None)],
    "FillerParameter": [("type", 1, _OPT, "string", "constant"), ("value", 2, _OPT, "float", None),
                        ("min", 3, _OPT, "float", None), ("max", 4, _OPT, "float", "1"),
                        ("mean", 5, _OPT, "float", None), ("std", 6, _OPT, "float", "1"),
                        ("sparse", 7, _OPT, "int32", "-1"), ("variance_norm", 8, _OPT, "=VarianceNorm", None)],
    "NetState": [("phase", 1, _OPT, "=Phase", "TEST"), ("level", 2, _OPT, "int32", None),
                 ("stage", 3, _REP, "string", None)],
    "NetStateRule": [("phase", 1, _OPT, "=Phase", None), ("min_level", 2, _OPT, "int32", None),
                     ("max_level", 3, _OPT, "int32", None), ("stage", 4, _REP, "string", None),
                     ("not_stage", 5, _REP, "string", None)],
    "ParamSpec": [("name", 1, _OPT, "string", None), ("share_mode", 2, _OPT, "=DimCheckMode", None),
                  ("lr_mult", 3, _OPT, "float", "1"), ("decay_mult", 4, _OPT, "float", "1")],
    "BatchNormParameter": [("use_global_stats", 1, _OPT, "bool", None),
                           ("moving_average_fraction", 2, _OPT, "float", "0.999"), ("eps", 3, _OPT, "float", "1e-05")],
    "ConvolutionParameter": [
        ("num_output", 1, _OPT, "uint32", None), ("bias_term", 2, _OPT, "bool", "true"),
        ("pad", 3, _REP, "uint32", None), ("kernel_size", 4, _REP, "uint32", None),
        ("stride", 6, _REP, "uint32", None), ("dilation", 18, _REP, "uint32", None),
        ("pad_h", 9, _OPT, "uint32", None), ("pad_w", 10, _OPT, "uint32", None),
        ("kernel_h", 11, _OPT, "uint32", None), ("kernel_w", 12, _OPT, "uint32", None),
        ("stride_h", 13, _OPT, "uint32", None), ("stride_w", 14, _OPT, "uint32", None),
        ("group", 5, _OPT, "uint32", "1"), ("weight_filler", 7, _OPT, ".FillerParameter", None),
        ("bias_filler", 8, _OPT, ".FillerParameter", None), ("engine", 15, _OPT, "=Engine", None),
        ("axis", 16, _OPT, "int32", "1"), ("force_nd_im2col", 17, _OPT, "bool", None)],
    "EltwiseParameter": [("operation", 1, _OPT, "=EltwiseOp", "SUM"), ("coeff", 2, _REP, "float", None),
                         ("stable_prod_grad", 3, _OPT, "bool", "true")],
    "InputParameter": [("shape", 1, _REP, ".BlobShape", None)],
    "DummyDataParameter": [("data_filler", 1, _REP, ".FillerParameter", None), ("shape", 6, _REP, ".BlobShape", None),
                           ("num", 2, _REP, "uint32", None), ("channels", 3, _REP, "uint32", None),
                           ("height", 4, _REP, "uint32", None), ("width", 5, _REP, "uint32", None)],
    "PoolingParameter": [
        ("pool", 1, _OPT, "=PoolMethod", None), ("pad", 4, _OPT, "uint32", None), ("pad_h", 9, _OPT, "uint32", None),
        ("pad_w", 10, _OPT, "uint32", None), ("kernel_size", 2, _OPT, "uint32", None),
        ("kernel_h", 5, _OPT, "uint32", None), ("kernel_w", 6, _OPT, "uint32", None),
        ("stride", 3, _OPT, "uint32", "1"), ("stride_h", 7, _OPT, "uint32", None),
        ("stride_w", 8, _OPT, "uint32", None), ("engine", 11, _OPT, "=Engine", None),
        ("global_pooling", 12, _OPT, "bool", None), ("round_mode", 13, _OPT, "=RoundMode", "CEIL")],
    "ReLUParameter": [("negative_slope", 1, _OPT, "float", None), ("engine", 2, _OPT, "=Engine", None)],
    "ScaleParameter": [("axis", 1, _OPT, "int32", "1"), ("num_axes", 2, _OPT, "int32", "1"),
                       ("filler", 3, _OPT, ".FillerParameter", None), ("bias_term", 4, _OPT, "bool", None),
                       ("bias_filler", 5, _OPT, ".FillerParameter", None)],
    "LayerParameter": [
        ("name", 1, _OPT, "string", None), ("type", 2, _OPT, "string", None), ("bottom", 3, _REP, "string", None),
        ("top", 4, _REP, "string", None), ("phase", 10, _OPT, "=Phase", None), ("loss_weight", 5, _REP, "float", None),
        ("param", 6, _REP, ".ParamSpec", None), ("blobs", 7, _REP, ".BlobProto", None),
        ("propagate_down", 11, _REP, "bool", None), ("include", 8, _REP, ".NetStateRule", None),
        ("exclude", 9, _REP, ".NetStateRule", None), ("batch_norm_param", 139, _OPT, ".BatchNormParameter", None),
        ("convolution_param", 106, _OPT, ".ConvolutionParameter", None),
        ("dummy_data_param", 109, _OPT, ".DummyDataParameter", None),
        ("eltwise_param", 110, _OPT, ".EltwiseParameter", None), ("input_param", 143, _OPT, ".InputParameter", None),
        ("pooling_param", 121, _OPT, ".PoolingParameter", None), ("relu_param", 123, _OPT, ".ReLUParameter", None),
        ("scale_param", 142, _OPT, ".ScaleParameter", None)],
    "V1LayerParameter": [
        ("bottom", 2, _REP, "string", None), ("top", 3, _REP, "string", None), ("name", 4, _OPT, "string", None),
        ("include", 32, _REP, ".NetStateRule", None), ("exclude", 33, _REP, ".NetStateRule", None),
        ("type", 5, _OPT, "=LayerType", None), ("blobs", 6, _REP, ".BlobProto", None),
        ("param", 1001, _REP, "string", None), ("blob_share_mode", 1002, _REP, "=DimCheckMode", None),
        ("blobs_lr", 7, _REP, "float", None), ("weight_decay", 8, _REP, "float", None),
        ("loss_weight", 35, _REP, "float", None), ("convolution_param", 10, _OPT, ".ConvolutionParameter", None),
        ("dummy_data_param", 26, _OPT, ".DummyDataParameter", None),
        ("eltwise_param", 24, _OPT, ".EltwiseParameter", None), ("pooling_param", 19, _OPT, ".PoolingParameter", None),
        ("relu_param", 30, _OPT, ".ReLUParameter", None)],
    "NetParameter": [
        ("name", 1, _OPT, "string", None), ("input", 3, _REP, "string", None),
        ("input_shape", 8, _REP, ".BlobShape", None), ("input_dim", 4, _REP, "int32", None),
        ("force_backward", 5, _OPT, "bool", None), ("state", 6, _OPT, ".NetState", None),
        ("debug_info", 7, _OPT, "bool", None), ("layer", 100, _REP, ".LayerParameter", None),
        ("layers", 2, _REP, ".V1LayerParameter", None)],
}
_ENUMS = {
    "Phase": {"TRAIN": 0, "TEST": 1}, "VarianceNorm": {"FAN_IN": 0, "FAN_OUT": 1, "AVERAGE": 2},
    "DimCheckMode": {"STRICT": 0, "PERMISSIVE": 1}, "Engine": {"DEFAULT": 0, "CAFFE": 1, "CUDNN": 2},
    "EltwiseOp": {"PROD": 0, "SUM": 1, "MAX": 2}, "PoolMethod": {"MAX": 0, "AVE": 1, "STOCHASTIC": 2},
    "RoundMode": {"CEIL": 0, "FLOOR": 1}, "LayerType": V1_TYPES,
}
# Enums are nested in their messages as in caffe.proto (their values share the message's scope);
# Phase is the one file-level enum.
_NESTED_ENUMS = {
    "FillerParameter": ["VarianceNorm"], "ParamSpec": ["DimCheckMode"], "V1LayerParameter": ["LayerType", "DimCheckMode"],
    "ConvolutionParameter": ["Engine"], "PoolingParameter": ["PoolMethod", "Engine", "RoundMode"],
    "ReLUParameter": ["Engine"], "EltwiseParameter": ["EltwiseOp"],
}
_PACKED = {("BlobShape", "dim"), ("BlobProto", "data"), ("BlobProto", "diff"), ("BlobProto", "double_data"),
           ("BlobProto", "double_diff")}


def _net_class() -> Any:
    """The NetParameter message class of the descriptor above (enums at file level, all proto2)."""
    f = descriptor_pb2.FileDescriptorProto(name="retinanet_trt_caffe.proto", package=_PACKAGE, syntax="proto2")

    def add_enum(container: Any, name: str) -> None:
        enum = container.enum_type.add(name=name)
        for value_name, number in _ENUMS[name].items():
            enum.value.add(name=value_name, number=number)

    add_enum(f, "Phase")
    for name, specs in _MESSAGES.items():
        message = f.message_type.add(name=name)
        for enum_name in _NESTED_ENUMS.get(name, []):
            add_enum(message, enum_name)
        for field_name, number, label, kind, default in specs:
            fd = message.field.add(name=field_name, number=number, label=label)
            if kind.startswith("."):
                fd.type, fd.type_name = _F.TYPE_MESSAGE, f".{_PACKAGE}{kind}"
            elif kind == "=Phase":
                fd.type, fd.type_name = _F.TYPE_ENUM, f".{_PACKAGE}.Phase"
            elif kind.startswith("="):
                fd.type, fd.type_name = _F.TYPE_ENUM, f".{_PACKAGE}.{name}.{kind[1:]}"
            else:
                fd.type = _TYPES[kind]
            if default is not None:
                fd.default_value = default
            if (name, field_name) in _PACKED:
                fd.options.packed = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.NetParameter"))


NetParameter = _net_class()


def layer_type(layer: Any) -> str:
    """The new-format type name of a LayerParameter, or of a V1 layer (its enum name, mapped)."""
    if layer.DESCRIPTOR.name == "V1LayerParameter":
        enum = layer.DESCRIPTOR.fields_by_name["type"].enum_type.values_by_number[layer.type].name
        return V1_NAMES.get(enum, enum)
    return layer.type


def parse_prototxt(text: str, supported: tuple[str, ...], where: str) -> Any:
    """A NetParameter from prototxt text. UsageError naming the first layer of a type not in
    `supported`, or the line of the first field this descriptor does not know."""
    loose = NetParameter()
    try:
        text_format.Parse(text, loose, allow_unknown_field=True)
    except text_format.ParseError as exc:
        raise UsageError(f"{where}: not a Caffe prototxt ({exc})") from None
    for layer in [*loose.layer, *loose.layers]:
        kind = layer_type(layer)
        if kind not in supported:
            raise UsageError(f"{where}: layer {layer.name!r} has type {kind!r}, which this importer does not support "
                             f"(it reads {', '.join(supported)})")
    net = NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as exc:
        raise UsageError(f"{where}: {exc} (a field the importer does not read; remove it if it does not change the "
                         "deploy net's outputs)") from None
    return net


def _blob(buf: memoryview) -> np.ndarray:
    """BlobProto -> float32 array in its shape (`shape`, or the legacy num/channels/height/width)."""
    dims: list[int] = []
    legacy = {1: 0, 2: 0, 3: 0, 4: 0}
    parts: list[np.ndarray] = []
    for number, _, value in fields(buf):
        if number == 7 and isinstance(value, memoryview):
            for n, w, v in fields(value):
                if n == 1 and w == 0 and isinstance(v, int):
                    dims.append(v)
                elif n == 1 and isinstance(v, memoryview):  # packed
                    pos = 0
                    while pos < len(v):
                        d, pos = varint(v, pos)
                        dims.append(d)
        elif number in (5, 8) and isinstance(value, memoryview):  # data (float) / double_data, packed or single
            parts.append(np.frombuffer(value, dtype="<f4" if number == 5 else "<f8").astype(np.float32))
        elif number in legacy and isinstance(value, int):
            legacy[number] = value
    data = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    shape = dims if dims else [d for d in legacy.values()]
    if int(np.prod(shape)) != data.size:
        if not dims and data.size and all(d == 0 for d in legacy.values()):
            shape = [data.size]
        else:
            raise ValueError(f"a blob of shape {shape} holds {data.size} values")
    return data.reshape(shape)


def read_caffemodel_blobs(data: bytes | mmap.mmap) -> dict[str, list[np.ndarray]]:
    """layer name -> its blobs (float32 arrays) from a binary NetParameter (layer or V1 layers)."""
    out: dict[str, list[np.ndarray]] = {}
    for number, _, value in fields(memoryview(data)):
        if number not in (100, 2) or not isinstance(value, memoryview):
            continue
        name_field, blobs_field = (1, 7) if number == 100 else (4, 6)
        name, blobs = None, []
        for n, _, v in fields(value):
            if n == name_field and isinstance(v, memoryview):
                name = bytes(v).decode("utf-8")
            elif n == blobs_field and isinstance(v, memoryview):
                blobs.append(_blob(v))
        if name is None:
            raise ValueError("a layer without a name")
        if blobs:
            if name in out:
                raise ValueError(f"two layers named {name!r} carry weights")
            out[name] = blobs
    return out
