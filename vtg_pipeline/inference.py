"""From model outputs to predictions: moments in seconds and a saliency curve per clip.

Decoding follows the official R²-Tuning evaluation: each complete anchor point
gives a window [t - d0 s, t + d1 s] / fps with score sigmoid(cls); the top
``max_moments`` are clamped to [0, duration], windows ending before the
duration are rounded to ``unit`` seconds, then greedy NMS (``hard``: overlaps
>= threshold get score 0; ``linear``: scores times 1 - IoU) and a stable sort.
Saliency per clip: each level's sigmoid(cls) brought back to clip resolution,
max over levels, times the cosine saliency.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from .evaluation import temporal_iou


@dataclass
class DecodeConfig:
    max_moments: int = 50
    unit: float = 0.0  # round boundaries to this many seconds (QVHighlights 2); 0 = no rounding
    nms: str = "hard"  # hard | linear | none
    nms_threshold: float = 0.7
    window: float = 150.0  # seconds: longer videos are grounded in windows of this length (the training length)
    window_stride: float = 75.0  # seconds between window starts (half-overlapping by default)

    def to_dict(self) -> dict:
        return asdict(self)


def decode_windows(out: dict, index: int, fps: float, duration: float, cfg: DecodeConfig) -> np.ndarray:
    """Moments (M, 3) [start s, end s, score] of one sample, sorted by score, after NMS."""
    keep = out["complete_points"][index]
    points = out["points"][keep]
    distances = out["reg"][index][keep] * points[:, 3:4]
    scores = out["cls"][index][keep].sigmoid()
    windows = torch.stack((points[:, 0] - distances[:, 0], points[:, 0] + distances[:, 1]), dim=1) / fps
    top = scores.argsort(descending=True, stable=True)[: cfg.max_moments]
    moments = torch.cat((windows[top], scores[top, None]), dim=1).double().cpu().numpy()
    return postprocess(moments, duration, cfg)


def postprocess(moments: np.ndarray, duration: float, cfg: DecodeConfig) -> np.ndarray:
    """Clamp, round and NMS moments (M, 3) [start, end, score] in seconds; returns them sorted by score."""
    moments = moments.copy()
    inside = moments[:, 1] < duration
    moments[:, :2] = moments[:, :2].clip(0, duration)
    if cfg.unit > 0:
        moments[inside, :2] = np.round(moments[inside, :2] / cfg.unit) * cfg.unit
    if cfg.nms != "none":
        for i in range(len(moments)):
            best = i + int(np.argmax(moments[i:, 2]))
            moments[[i, best]] = moments[[best, i]]
            overlap = temporal_iou(moments[i : i + 1, :2], moments[i + 1 :, :2])[0]
            if cfg.nms == "hard":
                moments[i + 1 :, 2][overlap >= cfg.nms_threshold] = 0.0
            elif cfg.nms == "linear":
                moments[i + 1 :, 2] *= 1.0 - overlap
            else:
                raise ValueError(f"nms must be hard, linear or none, got {cfg.nms!r}")
    return moments[np.argsort(-moments[:, 2], kind="stable")]


def saliency_curve(out: dict, index: int, num_frames: int, strides: tuple[int, ...]) -> np.ndarray:
    """Per-clip saliency (T,) of one sample: max over levels of upsampled sigmoid(cls), times cosine."""
    per_level = out["cls"][index].sigmoid().split(out["level_lengths"])
    curves = []
    for scores, stride in zip(per_level, strides):
        if num_frames < stride:
            continue
        scores = scores[: num_frames // stride]
        repeat = num_frames // len(scores)  # as the official code: may differ from the stride
        upsampled = scores.repeat_interleave(repeat)
        curves.append(torch.cat((upsampled, upsampled[-1:].expand(num_frames - len(upsampled)))))
    return (torch.stack(curves).amax(0) * out["saliency"][index, :num_frames]).cpu().numpy()


def predictions_for_batch(out: dict, batch: dict, strides: tuple[int, ...], cfg: DecodeConfig) -> list[dict]:
    """QVHighlights submission records for every sample of a batch."""
    records = []
    for i, record in enumerate(batch["records"]):
        num_frames = int(batch["video_mask"][i].sum())
        fps = float(batch["fps"][i])
        moments = decode_windows(out, i, fps, float(record["duration"]), cfg)
        records.append({
            "qid": record["qid"],
            "query": record["query"],
            "vid": record["vid"],
            "pred_relevant_windows": [[round(float(s), 4), round(float(e), 4), round(float(p), 4)] for s, e, p in moments],
            "pred_saliency_scores": [round(float(x), 4) for x in saliency_curve(out, i, num_frames, strides)],
        })
    return records

