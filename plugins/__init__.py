"""In-engine post-processing (retinanet_trt.plugins): decode, TopK and NonMaxSuppression (or
EfficientNMS_TRT) appended to an exported ONNX, and TensorRT plugin libraries loaded with ctypes.
Takes a plain ONNX (cls_p*, box_p*); gives an end-to-end ONNX (num_dets, boxes, scores, labels)
and the detections read back from its outputs. May import: runtime/ and what it stands on;
__main__.py (`python -m retinanet_trt.plugins`) is a command and counts as cli/.
"""
