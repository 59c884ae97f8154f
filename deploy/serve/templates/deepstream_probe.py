"""A pyds pad probe for a RetinaNet with raw head outputs in DeepStream (written by trt-serve deepstream).

nvinfer runs the network and attaches its outputs as tensor meta (output-tensor-meta=1 in
config_infer_primary.txt); this probe, on nvinfer's src pad, turns them into object meta with
retinanet_trt's own post-process (decode, top-k, per-class NMS of the spec in spec.json):

    from deepstream_probe import add_probe
    add_probe(pgie.get_static_pad("src"), "spec.json")

Needs DeepStream's Python bindings (pyds) and retinanet_trt (pip install retinanet-trt) in the
pipeline's Python. Not run by this project's tests (no DeepStream there): see docs/serving.md.
"""

import ctypes
from pathlib import Path

import numpy as np
import pyds  # DeepStream's Python bindings
from gi.repository import Gst

from retinanet_trt.serve.deepstream import detections_from_tensor_meta
from retinanet_trt.spec import ModelSpec


def _layers(tensor_meta):
    """{layer name: (C, H, W) float32 array} of one frame's output tensors (host copies)."""
    layers = {}
    for i in range(tensor_meta.num_output_layers):
        layer = pyds.get_nvds_LayerInfo(tensor_meta, i)
        dims = [layer.inferDims.d[k] for k in range(layer.inferDims.numDims)]
        ptr = ctypes.cast(pyds.get_ptr(layer.buffer), ctypes.POINTER(ctypes.c_float))
        layers[layer.layerName] = np.ctypeslib.as_array(ptr, shape=tuple(dims)).copy()
    return layers


def make_probe(spec):
    names = spec.class_names()

    def probe(pad, info, _data):
        buffer = info.get_buffer()
        batch_meta = pyds.gst_buffer_get_nvds_batch_meta(hash(buffer))
        l_frame = batch_meta.frame_meta_list
        while l_frame is not None:
            frame_meta = pyds.NvDsFrameMeta.cast(l_frame.data)
            l_user = frame_meta.frame_user_meta_list
            while l_user is not None:
                user_meta = pyds.NvDsUserMeta.cast(l_user.data)
                if user_meta.base_meta.meta_type == pyds.NvDsMetaType.NVDSINFER_TENSOR_OUTPUT_META:
                    tensor_meta = pyds.NvDsInferTensorMeta.cast(user_meta.user_meta_data)
                    net_hw = (tensor_meta.network_info.height, tensor_meta.network_info.width)
                    frame_hw = (frame_meta.source_frame_height, frame_meta.source_frame_width)
                    dets = detections_from_tensor_meta(_layers(tensor_meta), spec, frame_hw, net_hw)
                    for box, score, channel in zip(dets.boxes.tolist(), dets.scores.tolist(),
                                                   [names.index(n) for n in dets.names]):
                        obj = pyds.nvds_acquire_obj_meta_from_pool(batch_meta)
                        obj.unique_component_id = tensor_meta.unique_id
                        obj.class_id = channel
                        obj.confidence = score
                        obj.obj_label = names[channel]
                        rect = obj.rect_params
                        rect.left, rect.top = box[0], box[1]
                        rect.width, rect.height = box[2] - box[0], box[3] - box[1]
                        pyds.nvds_add_obj_meta_to_frame(frame_meta, obj, None)
                l_user = l_user.next
            l_frame = l_frame.next
        return Gst.PadProbeReturn.OK

    return probe


def add_probe(pad, spec_json="spec.json"):
    spec = ModelSpec.from_json(Path(spec_json).read_text())
    pad.add_probe(Gst.PadProbeType.BUFFER, make_probe(spec), None)
