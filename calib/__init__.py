"""Precision (retinanet_trt.calib): an FP32 ONNX -> an FP16 ONNX or an INT8 Q/DQ ONNX with its
accuracy report; calibration sets from a folder, a COCO json or the demo generator, ranges and
reports cached by content, the accuracy budget. Takes an FP32 ONNX file and calibration images;
gives the precision ONNX that tensorrt/ builds. Torch-free. May import: scoring/, export/ (its
torch-free parity and naming), demo/ (the synthetic sets) and what they stand on.
"""
