"""COCO class names and category ids (the 80 contiguous classes and torchvision's 91-entry list)."""

COCO_NAMES: list[str] = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
]  # fmt: skip

# COCO category id of each of the 80 contiguous classes (sorted by id; 12, 26, 29, 30, 45, 66,
# 68, 69, 71 and 83 are unused ids).
COCO_IDS: list[int] = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]

# torchvision's 91 channels: channel == COCO id; 0 is background, unused ids are "N/A".
TORCHVISION_NAMES: list[str] = ["__background__"] + [
    COCO_NAMES[COCO_IDS.index(i)] if i in COCO_IDS else "N/A" for i in range(1, 91)
]

assert len(COCO_NAMES) == 80 and len(COCO_IDS) == 80 and len(TORCHVISION_NAMES) == 91
