"""COCO scoring. Takes a Detector and a COCO images folder with its annotations json; gives AP/AR
statistics (pycocotools), per-category AP and the detections as COCO results. May import:
runtime/ and what it stands on (tensorrt/, spec/, plumbing).
"""
