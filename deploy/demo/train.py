"""Train the `tiny` RetinaNet on the synthetic shapes dataset, on CPU, and evaluate it with pycocotools.

    python -m retinanet_trt.demo.train --out deploy/demo/demo_tiny.pt

The shipped demo_tiny.pt came from these defaults: 38 minutes of training on one thread (5208
steps of 8 fresh images) reached val mAP@[.5:.95] 0.735 on 300 images (seed 2024); the
checkpoint's "train" entry records the settings, the progress evaluations and that result.

Training uses what inference uses: the shared preprocess, grid_anchors and the box coder's
`encode` for targets, and the shared postprocess for evaluation. The frozen backbone norms are
swapped for trainable BatchNorm2d while training (a from-scratch backbone needs batch statistics)
and folded back into FrozenNorm buffers (same eps) before saving, so the checkpoint loads into a
plain `build_model(spec)`. Losses: sigmoid focal loss (alpha 0.25, gamma 2) and smooth-L1 on
encoded deltas, over anchors matched by IoU (>= 0.5 foreground, < 0.4 background, plus each
box's best anchors), as detectron2's RetinaNet does.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from retinanet_trt.demo.synthetic import SyntheticConfig, generate_dataset, iter_samples
from retinanet_trt.model import RetinaNet, build_model, output_names
from retinanet_trt.model.norms import ConvNorm, FrozenNorm
from retinanet_trt.model.resnet import BasicBlock, Bottleneck
from retinanet_trt.runtime.anchors import grid_anchors
from retinanet_trt.runtime.box_coder import encode
from retinanet_trt.runtime.preprocess import preprocess
from retinanet_trt.spec import ModelSpec
from retinanet_trt.spec.presets import tiny

FG_IOU, BG_IOU = 0.5, 0.4
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0
SMOOTH_L1_BETA = 0.1


# ---------------------------------------------------------------------------------- model
def trainable_model(spec: ModelSpec, seed: int) -> RetinaNet:
    """build_model(spec) with every backbone FrozenNorm replaced by a BatchNorm2d (same eps)."""
    torch.manual_seed(seed)
    model = build_model(spec)
    for module in model.modules():
        if isinstance(module, ConvNorm):
            module.norm = nn.BatchNorm2d(module.conv.out_channels, eps=spec.backbone.norm.eps)
    # Residual branches start as identity (zero last-norm gamma): stabler from-scratch training.
    for block in model.backbone.modules():
        if isinstance(block, BasicBlock):
            nn.init.zeros_(block.conv2.norm.weight)
        elif isinstance(block, Bottleneck):
            nn.init.zeros_(block.conv3.norm.weight)
    return model.train()


def freeze_norms(model: RetinaNet) -> RetinaNet:
    """Replace each BatchNorm2d by a FrozenNorm holding its affine and running statistics; eval mode."""
    for module in model.modules():
        if isinstance(module, ConvNorm) and isinstance(module.norm, nn.BatchNorm2d):
            bn = module.norm
            frozen = FrozenNorm(bn.num_features, model.spec.backbone.norm)
            with torch.no_grad():
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
                frozen.running_mean.copy_(bn.running_mean)
                frozen.running_var.copy_(bn.running_var)
            module.norm = frozen
    return model.eval()


# ---------------------------------------------------------------------------------- targets
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a (M, 4), b (N, 4) x1y1x2y2 -> IoU (M, N)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match_anchors(anchors: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """anchors (A, 4), gt (G, 4) -> (A,) index of the matched box, -1 background, -2 ignored.

    IoU >= FG_IOU matches, < BG_IOU is background; each box also takes the anchors of its highest
    IoU, so small or oddly shaped boxes are never left without a positive.
    """
    matched = np.full(len(anchors), -1, dtype=np.int64)
    if len(gt_boxes) == 0:
        return matched
    iou = box_iou(gt_boxes, anchors)  # (G, A)
    best_gt = iou.argmax(axis=0)
    best_iou = iou.max(axis=0)
    matched[best_iou >= BG_IOU] = -2
    fg = best_iou >= FG_IOU
    best_per_gt = iou.max(axis=1, keepdims=True)
    fg |= ((iou == best_per_gt) & (best_per_gt > 0)).any(axis=0)
    matched[fg] = best_gt[fg]
    return matched


def build_targets(spec: ModelSpec, anchors: np.ndarray, boxes: list[np.ndarray], labels: list[np.ndarray]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image targets over all anchors (levels concatenated), for N images.

    Returns cls (N, A_total) long: class channel 0..K-1, -1 background, -2 ignored;
    deltas (N, A_total, 4) float32 (zero where not foreground); fg mask (N, A_total) bool.
    Labels are category ids; the channel is the id's index in spec.label_ids().
    """
    channel_of = {cid: k for k, cid in enumerate(spec.label_ids())}
    n, total = len(boxes), len(anchors)
    cls = np.full((n, total), -1, dtype=np.int64)
    deltas = np.zeros((n, total, 4), dtype=np.float32)
    for i, (gt, lab) in enumerate(zip(boxes, labels, strict=True)):
        matched = match_anchors(anchors, gt)
        cls[i][matched == -2] = -2
        fg = matched >= 0
        if fg.any():
            cls[i][fg] = np.array([channel_of[int(c)] for c in lab], dtype=np.int64)[matched[fg]]
            deltas[i][fg] = encode(gt[matched[fg]], anchors[fg], spec.box_coder)
    cls_t = torch.from_numpy(cls)
    return cls_t, torch.from_numpy(deltas), cls_t >= 0


def flatten_outputs(outputs: tuple[torch.Tensor, ...], spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Head outputs -> cls logits (N, A_total, K) and deltas (N, A_total, 4), in anchor order
    (level, y, x, anchor), matching grid_anchors rows."""
    n_levels, k = len(spec.levels), spec.head.num_classes
    cls = [o.permute(0, 2, 3, 1).reshape(o.shape[0], -1, k) for o in outputs[:n_levels]]
    box = [o.permute(0, 2, 3, 1).reshape(o.shape[0], -1, 4) for o in outputs[n_levels:]]
    return torch.cat(cls, dim=1), torch.cat(box, dim=1)


def detection_loss(outputs: tuple[torch.Tensor, ...], spec: ModelSpec, cls_t: torch.Tensor, deltas_t: torch.Tensor,
                   fg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(focal loss, smooth-L1 box loss), each summed and divided by the number of foreground anchors."""
    logits, deltas = flatten_outputs(outputs, spec)
    valid = cls_t != -2
    onehot = torch.zeros_like(logits)
    onehot[fg] = F.one_hot(cls_t[fg], spec.head.num_classes).to(logits.dtype)
    ce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * onehot + (1 - p) * (1 - onehot)
    alpha_t = FOCAL_ALPHA * onehot + (1 - FOCAL_ALPHA) * (1 - onehot)
    focal = (alpha_t * (1 - p_t) ** FOCAL_GAMMA * ce)[valid].sum()
    box = F.smooth_l1_loss(deltas[fg], deltas_t[fg], beta=SMOOTH_L1_BETA, reduction="sum")
    norm = max(1.0, float(fg.sum()))
    return focal / norm, box / norm


# ---------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: RetinaNet, spec: ModelSpec, coco_json: str | Path, batch_size: int = 8) -> dict[str, float]:
    """COCO bbox metrics of an eval-mode model on a COCO json (file_name relative to its folder).

    Runs the shared preprocess and postprocess, so it measures what every backend would report.
    Returns mAP (@[.5:.95]), AP50, AP75, APs, APm, APl and n_images.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from retinanet_trt.runtime.postprocess import postprocess

    root = Path(coco_json).parent
    coco = COCO(str(coco_json))
    names = output_names(spec)
    image_ids = sorted(coco.getImgIds())
    results: list[dict[str, Any]] = []
    for start in range(0, len(image_ids), batch_size):
        ids = image_ids[start : start + batch_size]
        batch = preprocess([root / coco.imgs[i]["file_name"] for i in ids], spec)
        outputs = model(torch.from_numpy(batch.images))
        dets = postprocess({n: o.numpy() for n, o in zip(names, outputs, strict=True)}, spec, batch.metas)
        for image_id, det in zip(ids, dets, strict=True):
            rows = zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist(), strict=True)
            for (x1, y1, x2, y2), score, label in rows:
                results.append({"image_id": image_id, "category_id": int(label), "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "score": float(score)})
    if not results:
        return {"mAP": 0.0, "AP50": 0.0, "AP75": 0.0, "APs": 0.0, "APm": 0.0, "APl": 0.0, "n_images": len(image_ids)}
    evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    keys = ["mAP", "AP50", "AP75", "APs", "APm", "APl"]
    metrics = {k: round(float(v), 4) for k, v in zip(keys, evaluator.stats[:6], strict=True)}
    return {**metrics, "n_images": len(image_ids)}


# ---------------------------------------------------------------------------------- training
def lr_at(progress: float, base_lr: float, warmup: float = 0.05) -> float:
    """Learning rate at a training progress in [0, 1]: linear warm-up, then cosine decay to 2%."""
    if progress < warmup:
        return base_lr * (0.1 + 0.9 * progress / warmup)
    t = min(1.0, (progress - warmup) / (1.0 - warmup))
    return base_lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def train(spec: ModelSpec, steps: int, batch_size: int, lr: float, seed: int, data: SyntheticConfig,
          eval_json: Path | None, eval_every: int, minutes: float | None = None,
          log_every: int = 50) -> tuple[RetinaNet, dict[str, Any]]:
    """Train from scratch on a stream of fresh synthetic images; returns (frozen eval model, info).

    Progress (which drives the schedule) is step/steps or, with a time budget, the larger of that
    and elapsed/minutes: on shared CPUs the speed varies several-fold, and a budget keeps the
    cosine decay complete instead of cutting it off. Without `minutes` the run is deterministic.
    """
    model = trainable_model(spec, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    samples = iter_samples(steps * batch_size, seed, "train", data)
    history: list[dict[str, float]] = []
    t0 = time.time()
    eval_s = 0.0  # evaluation time does not count against the training budget
    step = 0
    while step < steps:
        progress = step / steps
        if minutes is not None:
            progress = max(progress, (time.time() - t0 - eval_s) / (60.0 * minutes))
            if progress >= 1.0:
                break
        chunk = [next(samples) for _ in range(batch_size)]
        batch = preprocess([s.image for s in chunk], spec)
        boxes = []
        for s, meta in zip(chunk, batch.metas, strict=True):
            sy, sx = meta.resized_hw[0] / meta.original_hw[0], meta.resized_hw[1] / meta.original_hw[1]
            boxes.append(s.boxes * np.array([sx, sy, sx, sy], dtype=np.float32))
        outputs = model(torch.from_numpy(batch.images))
        feature_hws = [tuple(o.shape[-2:]) for o in outputs[: len(spec.levels)]]
        anchors = np.concatenate(grid_anchors(spec, batch.images.shape[-2:], feature_hws))
        cls_t, deltas_t, fg = build_targets(spec, anchors, boxes, [s.labels for s in chunk])
        loss_cls, loss_box = detection_loss(outputs, spec, cls_t, deltas_t, fg)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(progress, lr)
        optimizer.zero_grad(set_to_none=True)
        (loss_cls + loss_box).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        step += 1
        if step % log_every == 0 or step == 1:
            elapsed = time.time() - t0 - eval_s
            print(f"step {step} progress {progress:.3f} cls {loss_cls.item():.4f} box {loss_box.item():.4f} "
                  f"fg {int(fg.sum())} lr {optimizer.param_groups[0]['lr']:.2e} "
                  f"{elapsed / step:.3f}s/step train {elapsed / 60:.1f} min", flush=True)
        if eval_json is not None and eval_every and step % eval_every == 0:
            t_eval = time.time()
            metrics = evaluate(freeze_norms(copy.deepcopy(model)), spec, eval_json)
            eval_s += time.time() - t_eval
            history.append({"step": step, **metrics})
            print(f"eval at step {step}: {json.dumps(metrics)}", flush=True)
    info = {"steps": step, "batch_size": batch_size, "lr": lr, "optimizer": "AdamW wd 1e-4, warm-up + cosine",
            "seed": seed, "loss": "sigmoid focal (0.25, 2) + smooth-L1 (beta 0.1) on encoded deltas",
            "matching": f"IoU >= {FG_IOU} fg, < {BG_IOU} bg, best anchor per box", "dataset": asdict(data),
            "train_images": step * batch_size, "train_time_s": round(time.time() - t0 - eval_s, 1),
            "time_budget_min": minutes,
            "threads": torch.get_num_threads(), "torch": str(torch.__version__), "history": history}
    return freeze_norms(model), info


def save_checkpoint(path: str | Path, spec: ModelSpec, model: RetinaNet, info: dict[str, Any]) -> None:
    """{"spec": spec JSON, "state_dict": fp32 tensors, "train": info}, loadable with weights_only=True."""
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    out = Path(path)
    tmp = out.with_name(f".{out.name}.part")
    torch.save({"spec": spec.to_json(), "state_dict": state, "train": info}, tmp)
    tmp.replace(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("demo_tiny.pt")))
    parser.add_argument("--steps", type=int, default=12000, help="at most this many steps")
    parser.add_argument("--minutes", type=float, default=38.0,
                        help="training time budget, the schedule follows elapsed time; 0: deterministic --steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    # One thread: on 2 cores shared with other jobs, two OpenMP threads spend most of their time
    # waiting at barriers for each other (measured 10x slower per step than one thread under load).
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--eval-every", type=int, default=1000, help="steps between evaluations on a small split")
    parser.add_argument("--val-images", type=int, default=300)
    parser.add_argument("--val-seed", type=int, default=2024)
    parser.add_argument("--data-dir", default=None, help="where the val splits are written (default: a temp folder)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    # Focal-loss training drives many activations and gradients towards zero; denormal floats
    # would make CPU convolutions many times slower.
    torch.set_flush_denormal(True)
    spec, data = tiny(), SyntheticConfig()
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="retinanet_trt_demo_"))
    # The progress split uses another seed than the final one, so the reported mAP is on unseen images.
    progress_json = generate_dataset(data_dir / "progress", 100, args.val_seed + 1, "val", data)
    model, info = train(spec, args.steps, args.batch_size, args.lr, args.seed, data, progress_json, args.eval_every,
                        args.minutes or None, args.log_every)
    val_json = generate_dataset(data_dir / "final", args.val_images, args.val_seed, "val", data)
    metrics = evaluate(model, spec, val_json)
    info["val"] = {"split": "val", "seed": args.val_seed, **metrics}
    print(f"final val ({args.val_images} images, seed {args.val_seed}): {json.dumps(metrics)}", flush=True)
    save_checkpoint(args.out, spec, model, info)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB)", flush=True)


if __name__ == "__main__":
    main()
