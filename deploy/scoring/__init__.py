"""COCO scoring. Takes a Detector and a COCO images folder with its annotations json; gives AP/AR
statistics (pycocotools), per-category AP and the detections as COCO results; detect_files runs a
Detector over image files as trt-infer does (COCO results entries, annotated PNGs). May import:
runtime/ and what it stands on (tensorrt/, spec/, plumbing).
"""
