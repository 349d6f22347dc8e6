"""Grounding metrics, computed as the official evaluators compute them.

QVHighlights (moment_detr ``standalone_eval``): moment-retrieval mAP over the
top 10 windows at IoU 0.50:0.05:0.95 (ActivityNet detection AP with VOC
interpolation), in length buckets short (0, 10], middle (10, 30], long
(30, 150] and full; R1@IoU of the first window against the ground-truth window
it overlaps most; highlight detection on 2 s clips (``int(duration / 2)``
clips, labels binarised at scores >= 2 / 3 / 4): HIT@1 and mAP per annotator
(scikit-learn's precision-recall curve, as the official code). Numbers are
percentages rounded to 2 decimals. Beyond the official keys, ``brief`` also
holds ``MR-full-R1@0.3`` and ``MR-full-mIoU``.

Charades-STA, TACoS, Ego4D-NLQ: R@1 and R@5 at IoU 0.3 / 0.5 / 0.7 (a query
counts when one of its first k windows reaches the IoU with a ground-truth
window) and the mean IoU of the first window.

All windows are [start, end] in seconds; predictions are QVHighlights
submission records with windows sorted by score.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import precision_recall_curve

MR_THRESHOLDS = [round(float(x), 2) for x in np.linspace(0.5, 0.95, 10)]
LENGTH_BUCKETS = {"short": (0, 10), "middle": (10, 30), "long": (30, 150), "full": (0, 150)}
HL_LEVELS = {"Fair": 2, "Good": 3, "VeryGood": 4}
TOP1_THRESHOLDS = (0.3, 0.5, 0.7)
MAIN_METRIC = {"qvhighlights": "MR-full-mAP", "charades": "R1@0.5", "tacos": "R1@0.5", "ego4d": "R1@0.3"}


def load_jsonl(path: str | Path) -> list[dict]:
    """Records of a jsonl file; a bad line is an error naming file and line."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{number}: not valid JSON ({e.msg})") from None
    return records


def percent(value: float) -> float:
    return float(f"{100 * value:.2f}")


def temporal_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU (N, M) of windows a (N, 2) and b (M, 2) in seconds; 0 where the union is empty."""
    a, b = np.asarray(a, dtype=float).reshape(-1, 2), np.asarray(b, dtype=float).reshape(-1, 2)
    inter = np.clip(np.minimum(a[:, None, 1], b[None, :, 1]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    union = (a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0])[None] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC 2011 interpolated AP of a precision/recall sequence (recall non-decreasing)."""
    p = np.concatenate(([0.0], precision, [0.0]))
    r = np.concatenate(([0.0], recall, [1.0]))
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.nonzero(r[1:] != r[:-1])[0] + 1
    return float(np.sum((r[steps] - r[steps - 1]) * p[steps]))


def detection_ap(gt: np.ndarray, predictions: np.ndarray, thresholds: list[float]) -> np.ndarray:
    """ActivityNet detection AP per IoU threshold for one query.

    gt (G, 2); predictions (P, 3) [start, end, score]. Predictions are taken by
    descending score (stable); each matches the unmatched ground truth it
    overlaps most, if that IoU reaches the threshold.
    """
    if len(predictions) == 0:
        return np.zeros(len(thresholds))
    order = sorted(range(len(predictions)), key=lambda i: -predictions[i][2])
    predictions = predictions[order]
    tp = np.zeros((len(thresholds), len(predictions)))
    locked = np.full((len(thresholds), len(gt)), False)
    for p, window in enumerate(predictions):
        ious = temporal_iou(window[None, :2], gt)[0]
        ranked = ious.argsort()[::-1]
        for t, threshold in enumerate(thresholds):
            for g in ranked:
                if ious[g] < threshold:
                    break
                if not locked[t, g]:
                    tp[t, p], locked[t, g] = 1, True
                    break
    tp_cum = np.cumsum(tp, axis=1)
    fp_cum = np.cumsum(1 - tp, axis=1)
    recall, precision = tp_cum / len(gt), tp_cum / (tp_cum + fp_cum)
    return np.array([interpolated_ap(precision[t], recall[t]) for t in range(len(thresholds))])


def check_predictions(predictions: list[dict], ground_truth: list[dict], match_number: bool) -> tuple[list[dict], list[dict]]:
    """Pair predictions with ground truth by qid; refuse what would give a wrong number."""
    pred_ids = [p["qid"] for p in predictions]
    if len(set(pred_ids)) != len(pred_ids):
        raise ValueError("predictions repeat query ids: " + ", ".join(map(str, sorted({q for q in pred_ids if pred_ids.count(q) > 1})[:5])))
    gt_ids = {g["qid"] for g in ground_truth}
    missing, extra = gt_ids - set(pred_ids), set(pred_ids) - gt_ids
    if match_number and (missing or extra):
        raise ValueError(f"query ids differ from the ground truth: {len(missing)} missing (e.g. {sorted(missing, key=str)[:3]}), "
                         f"{len(extra)} extra (e.g. {sorted(extra, key=str)[:3]}); --allow-missing scores the shared ones")
    shared = gt_ids & set(pred_ids)
    predictions = [p for p in predictions if p["qid"] in shared]
    ground_truth = [g for g in ground_truth if g["qid"] in shared]
    for p in predictions:
        if "pred_relevant_windows" not in p and "pred_saliency_scores" not in p:
            raise ValueError(f"qid {p['qid']}: neither pred_relevant_windows nor pred_saliency_scores")
        windows = p.get("pred_relevant_windows")
        if windows is not None:
            if not windows:
                raise ValueError(f"qid {p['qid']}: pred_relevant_windows is empty")
            values = np.asarray([w[:3] for w in windows], dtype=float)
            if values.shape[1] != 3 or not np.isfinite(values).all():
                raise ValueError(f"qid {p['qid']}: windows must be [start, end, score] with finite numbers")
            if (values[:, 1] < values[:, 0]).any():
                raise ValueError(f"qid {p['qid']}: a window ends before it starts")
            if (np.diff(values[:, 2]) > 0).any():
                raise ValueError(f"qid {p['qid']}: pred_relevant_windows are not sorted by score (descending)")
        scores = p.get("pred_saliency_scores")
        if scores is not None and not np.isfinite(np.asarray(scores, dtype=float)).all():
            raise ValueError(f"qid {p['qid']}: pred_saliency_scores has NaN or infinite values")
    if not predictions:
        raise ValueError("no query id is shared by predictions and ground truth")
    return predictions, ground_truth


def in_bucket(predictions: list[dict], ground_truth: list[dict], bucket: tuple[float, float]) -> tuple[list[dict], list[dict]]:
    """Queries with ground-truth windows of length in (low, high]; only those windows are kept."""
    if bucket == LENGTH_BUCKETS["full"]:
        return predictions, ground_truth
    low, high = bucket
    kept = []
    for g in ground_truth:
        windows = [w for w in g["relevant_windows"] if low < w[1] - w[0] <= high]
        if windows:
            kept.append({**copy.deepcopy(g), "relevant_windows": windows})
    qids = {g["qid"] for g in kept}
    return [p for p in predictions if p["qid"] in qids], kept


def moment_map(predictions: list[dict], ground_truth: list[dict]) -> dict[str, float | None]:
    """mAP per IoU threshold and their average; None for an empty length bucket (the official code gives NaN)."""
    if not predictions:
        return {**{str(t): None for t in MR_THRESHOLDS}, "average": None}
    gt_by_qid = {g["qid"]: np.asarray(g["relevant_windows"], dtype=float) for g in ground_truth}
    aps = np.array([detection_ap(gt_by_qid[p["qid"]], np.asarray(p["pred_relevant_windows"][:10], dtype=float)[:, :3], MR_THRESHOLDS)
                    for p in predictions])
    per_threshold = aps.mean(0)
    result = {str(t): percent(v) for t, v in zip(MR_THRESHOLDS, per_threshold)}
    result["average"] = percent(np.mean(per_threshold))
    return result


def top1_ious(predictions: list[dict], ground_truth: list[dict]) -> np.ndarray:
    """IoU of each query's first window with the ground-truth window it overlaps most (first on ties)."""
    gt_by_qid = {g["qid"]: np.asarray(g["relevant_windows"], dtype=float) for g in ground_truth}
    ious = []
    for p in predictions:
        first = np.asarray(p["pred_relevant_windows"][0][:2], dtype=float)
        gt = gt_by_qid[p["qid"]]
        best = gt[int(np.argmax(temporal_iou(first, gt)[0]))]
        ious.append(temporal_iou(first, best)[0, 0])
    return np.array(ious)


def moment_r1(predictions: list[dict], ground_truth: list[dict], thresholds) -> dict[str, float | None]:
    if not predictions:
        return {str(t): None for t in thresholds}
    ious = top1_ious(predictions, ground_truth)
    return {str(t): percent(np.mean(ious >= t)) for t in thresholds}


def highlight_labels(record: dict, clip_seconds: float = 2.0) -> np.ndarray:
    """Annotator scores (int(duration / 2), 3), 0 outside the relevant clips."""
    labels = np.zeros((int(record["duration"] / clip_seconds), 3))
    if record.get("relevant_clip_ids"):
        labels[np.asarray(record["relevant_clip_ids"])] = np.asarray(record["saliency_scores"])
    return labels


def saliency_ap(labels: np.ndarray, scores: np.ndarray) -> float:
    """The official highlight AP: scikit-learn precision-recall, running max, mean at recall changes."""
    if len(set(labels.tolist())) == 1:
        return float(labels[0] != 0)
    precision, recall, _ = precision_recall_curve(labels, scores)
    recall = recall.astype(np.float32)
    precision = np.maximum.accumulate(precision)
    return float(np.mean(precision[np.nonzero(np.diff(recall))]))


def highlight_metrics(predictions: list[dict], ground_truth: list[dict]) -> dict[str, dict[str, float]]:
    labels_by_qid = {g["qid"]: highlight_labels(g) for g in ground_truth}
    result = {}
    for name, minimum in HL_LEVELS.items():
        hits, aps = [], []
        for p in predictions:
            positive = labels_by_qid[p["qid"]] >= minimum
            scores = np.asarray(p["pred_saliency_scores"], dtype=float)
            best = int(np.argmax(scores))
            hits.append(positive[best].max() if best < len(positive) else 0.0)
            fitted = np.zeros(len(positive))
            fitted[: min(len(scores), len(positive))] = scores[: len(positive)]
            aps += [saliency_ap(positive[:, a].astype(float), fitted) for a in range(3)]
        result[f"HL-min-{name}"] = {"HL-mAP": percent(np.mean(aps)), "HL-Hit1": percent(np.mean(hits))}
    return result


def eval_qvhighlights(predictions: list[dict], ground_truth: list[dict], match_number: bool = True) -> dict:
    """The official QVHighlights metrics (same keys and rounding), plus R1@0.3 and mIoU in ``brief``."""
    predictions, ground_truth = check_predictions(predictions, ground_truth, match_number)
    result, brief = {}, {}
    if "pred_relevant_windows" in predictions[0]:
        for name, bucket in LENGTH_BUCKETS.items():
            preds, gts = in_bucket(predictions, ground_truth, bucket)
            result[name] = {"MR-mAP": moment_map(preds, gts), "MR-R1": moment_r1(preds, gts, MR_THRESHOLDS)}
        full = result["full"]
        brief |= {"MR-full-R1@0.5": full["MR-R1"]["0.5"], "MR-full-R1@0.7": full["MR-R1"]["0.7"], "MR-full-mAP": full["MR-mAP"]["average"],
                  "MR-full-mAP@0.5": full["MR-mAP"]["0.5"], "MR-full-mAP@0.75": full["MR-mAP"]["0.75"],
                  "MR-long-mAP": result["long"]["MR-mAP"]["average"], "MR-middle-mAP": result["middle"]["MR-mAP"]["average"],
                  "MR-short-mAP": result["short"]["MR-mAP"]["average"]}
        ious = top1_ious(predictions, ground_truth)
        brief |= {"MR-full-R1@0.3": percent(np.mean(ious >= 0.3)), "MR-full-mIoU": percent(np.mean(ious))}
    if "pred_saliency_scores" in predictions[0]:
        highlights = highlight_metrics(predictions, ground_truth)
        result |= highlights
        brief |= {f"{level}-{key.split('-')[1]}": value for level, block in highlights.items() for key, value in block.items()}
    return {"brief": brief, **dict(sorted(result.items()))}


def eval_top1(predictions: list[dict], ground_truth: list[dict], match_number: bool = True) -> dict:
    """R@1, R@5 at IoU 0.3/0.5/0.7 and mIoU of the first window (Charades-STA, TACoS, Ego4D-NLQ)."""
    predictions, ground_truth = check_predictions(predictions, ground_truth, match_number)
    gt_by_qid = {g["qid"]: np.asarray(g["relevant_windows"], dtype=float) for g in ground_truth}
    best_at = {1: [], 5: []}
    for p in predictions:
        ious = temporal_iou(np.asarray(p["pred_relevant_windows"], dtype=float)[:, :2], gt_by_qid[p["qid"]]).max(1)
        for k in best_at:
            best_at[k].append(ious[:k].max())
    brief = {f"R{k}@{t}": percent(np.mean(np.array(v) >= t)) for k, v in best_at.items() for t in TOP1_THRESHOLDS}
    brief["mIoU"] = percent(np.mean(top1_ious(predictions, ground_truth)))
    return {"brief": brief}


def evaluate(predictions: list[dict], ground_truth: list[dict], dataset: str = "qvhighlights", match_number: bool = True) -> dict:
    """Metrics for ``dataset`` (qvhighlights | charades | tacos | ego4d)."""
    if dataset == "qvhighlights":
        return eval_qvhighlights(predictions, ground_truth, match_number)
    if dataset in ("charades", "tacos", "ego4d"):
        return eval_top1(predictions, ground_truth, match_number)
    raise ValueError(f"unknown dataset {dataset!r}; choose qvhighlights, charades, tacos or ego4d")

