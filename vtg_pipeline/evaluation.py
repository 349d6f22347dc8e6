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

Charades-STA, TACoS, Ego4D-NLQ, MAD: Recall@k at IoU thresholds (a query counts
when one of its first k windows passes the threshold with a ground-truth window)
and the mean IoU of the first window (``RECALL_SPECS``): R@{1, 5} at 0.3 / 0.5 /
0.7 for Charades-STA and TACoS; R@{1, 5, 10, 50, 100} at 0.3 / 0.5 / 0.7 for
Ego4D-NLQ and at 0.1 / 0.3 / 0.5 for MAD. "Passes" is selectable
(``iou_compare``): ``gt`` is IoU > θ, as the official RGNet and Ego4D NLQ
evaluators; ``ge`` is IoU >= θ, as the official MAD (VLG-Net) and moment_detr
code. Defaults: ``gt`` for Ego4D-NLQ, ``ge`` for the others; QVHighlights is
always ``ge``.

Window retrieval (any dataset, when prediction records carry ``pred_windows``,
the long video's retrieved windows [[start, end, score], ...] sorted by score):
the fraction of queries with a ground-truth moment that one of the first k
windows overlaps (``WR-overlap-R{k}``) or fully contains (``WR-contain-R{k}``).

All windows are [start, end] in seconds; predictions are QVHighlights
submission records with windows sorted by score.

Inputs are checked before anything is scored: every prediction line
(``check_prediction``) and every ground-truth record (the annotation readers'
validation, annotations.py), each problem one line naming the file and line.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .annotations import check_qid, json_object, read_annotations, read_qvhighlights, repeated_qid, text_lines
from .errors import UserError

MR_THRESHOLDS = [round(float(x), 2) for x in np.linspace(0.5, 0.95, 10)]
LENGTH_BUCKETS = {"short": (0, 10), "middle": (10, 30), "long": (30, 150), "full": (0, 150)}
HL_LEVELS = {"Fair": 2, "Good": 3, "VeryGood": 4}
LONG_VIDEO_KS = (1, 5, 10, 50, 100)
WINDOW_RETRIEVAL_KS = (1, 5, 10)
IOU_COMPARE = {"gt": np.greater, "ge": np.greater_equal}  # IoU passes θ: strict (RGNet, Ego4D NLQ) or not (MAD, moment_detr)


@dataclass(frozen=True)
class RecallSpec:
    """Recall@k metrics of one dataset: ranks k, IoU thresholds, default comparison (a key of IOU_COMPARE)."""

    ks: tuple[int, ...]
    thresholds: tuple[float, ...]
    iou_compare: str


RECALL_SPECS = {
    "charades": RecallSpec((1, 5), (0.3, 0.5, 0.7), "ge"),
    "tacos": RecallSpec((1, 5), (0.3, 0.5, 0.7), "ge"),
    "ego4d": RecallSpec(LONG_VIDEO_KS, (0.3, 0.5, 0.7), "gt"),
    "mad": RecallSpec(LONG_VIDEO_KS, (0.1, 0.3, 0.5), "ge"),
}
DATASETS = ("qvhighlights", *RECALL_SPECS)
MAIN_METRIC = {"qvhighlights": "MR-full-mAP", "charades": "R1@0.5", "tacos": "R1@0.5", "ego4d": "R1@0.3", "mad": "R1@0.3"}


class PredictionError(UserError):
    """Predictions that cannot be scored: a malformed record, repeated qids, qids that differ from the ground truth."""


def load_predictions(path: str | Path) -> list[dict]:
    """Prediction records of a jsonl file, each checked (``check_prediction``), no qid twice; errors name file and line."""
    records, seen = [], {}
    for number, line in text_lines(path):
        where = f"{path}:{number}"
        try:
            record = json_object(line)
            check_prediction(record)
        except ValueError as problem:
            raise PredictionError(f"{where}: {problem}") from None
        repeated = repeated_qid(record["qid"], where, seen)
        if repeated:
            raise PredictionError(f"{where}: {repeated}")
        records.append(record)
    return records


def load_ground_truth(path: str | Path, dataset: str, require_windows: bool = True) -> list[dict]:
    """Validated ground-truth records: normalised jsonl, or (not qvhighlights, not ``.jsonl``) the dataset's own file.

    Records pass the annotation readers' checks with ``dataset``'s window rules
    (annotations.py); a problem is one line naming the file and line.
    ``require_windows=False`` accepts jsonl records without windows (the
    QVHighlights test split's layout), enough to score saliency. A
    Charades-STA text file is read without the durations CSV (which only
    clamps window ends, changing no IoU that matters here).
    """
    if dataset == "qvhighlights" or Path(path).suffix == ".jsonl":
        return read_qvhighlights(path, require_windows=require_windows, dataset=dataset)[0]
    return read_annotations(path, dataset, **({"durations": None} if dataset == "charades" else {}))[0]


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


def _cut(value: Any, limit: int = 60) -> str:
    """``value`` as text for a message, cut to ``limit`` characters."""
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _finite_array(values: Any) -> np.ndarray | None:
    """``values`` as a float array when it is a non-empty list (or tuple) of finite numbers, rows allowed, else None."""
    if not isinstance(values, (list, tuple)) or not values:
        return None
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):  # ragged rows, strings, objects
        return None
    return array if np.isfinite(array).all() else None


def check_scored_windows(windows: Any, name: str) -> None:
    """Refuse (ValueError starting with ``name``) windows that are not a non-empty [start, end, score] list sorted by score."""
    rows = [w[:3] if isinstance(w, (list, tuple)) else w for w in windows] if isinstance(windows, (list, tuple)) else windows
    values = _finite_array(rows)
    if values is None or values.ndim != 2 or values.shape[1] != 3:
        raise ValueError(f"{name} must be a non-empty list of [start, end, score] with finite numbers, got {_cut(windows)}")
    if (values[:, 1] < values[:, 0]).any():
        raise ValueError(f"{name}: a window ends before it starts")
    if (np.diff(values[:, 2]) > 0).any():
        raise ValueError(f"{name} are not sorted by score (descending)")


def check_prediction(record: Any) -> None:
    """Refuse (ValueError; callers add where) what is not a submission record.

    A record is an object with a qid (int or non-empty string) and
    ``pred_relevant_windows`` and/or ``pred_saliency_scores`` (optionally
    ``pred_windows``); a field that is present is never null.
    """
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {_cut(record)}")
    if "qid" not in record:
        raise ValueError("missing field 'qid'")
    check_qid(record["qid"])
    if "pred_relevant_windows" not in record and "pred_saliency_scores" not in record:
        raise ValueError("neither pred_relevant_windows nor pred_saliency_scores")
    for key in ("pred_relevant_windows", "pred_windows"):
        if key in record:
            check_scored_windows(record[key], key)
    if "pred_saliency_scores" in record:
        scores = _finite_array(record["pred_saliency_scores"])
        if scores is None or scores.ndim != 1:
            raise ValueError(f"pred_saliency_scores must be a non-empty list of finite numbers, got {_cut(record['pred_saliency_scores'])}")


def check_predictions(predictions: list[dict], ground_truth: list[dict], match_number: bool) -> tuple[list[dict], list[dict]]:
    """Pair predictions with ground truth by qid; refuse what would give a wrong number."""
    for index, p in enumerate(predictions):
        try:
            check_prediction(p)
        except ValueError as problem:
            where = f"qid {p['qid']}" if isinstance(p, dict) and "qid" in p else f"prediction {index}"
            raise PredictionError(f"{where}: {problem}") from None
    for key in ("pred_relevant_windows", "pred_saliency_scores"):  # the metrics read a field from all records or none
        having = [key in p for p in predictions]
        if any(having) and not all(having):
            lacking, carrying = predictions[having.index(False)]["qid"], predictions[having.index(True)]["qid"]
            raise PredictionError(f"qid {lacking} has no {key}, which qid {carrying} has")
    pred_ids = [p["qid"] for p in predictions]
    if len(set(pred_ids)) != len(pred_ids):
        raise PredictionError(
            "predictions repeat query ids: " + ", ".join(map(str, sorted({q for q in pred_ids if pred_ids.count(q) > 1})[:5]))
        )
    gt_ids = {g["qid"] for g in ground_truth}
    missing, extra = gt_ids - set(pred_ids), set(pred_ids) - gt_ids
    if match_number and (missing or extra):
        raise PredictionError(
            f"query ids differ from the ground truth: {len(missing)} missing (e.g. {sorted(missing, key=str)[:3]}), "
            f"{len(extra)} extra (e.g. {sorted(extra, key=str)[:3]}); --allow-missing scores the shared ones"
        )
    shared = gt_ids & set(pred_ids)
    predictions = [p for p in predictions if p["qid"] in shared]
    ground_truth = [g for g in ground_truth if g["qid"] in shared]
    if not predictions:
        raise PredictionError("no query id is shared by predictions and ground truth")
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
    aps = np.array(
        [
            detection_ap(gt_by_qid[p["qid"]], np.asarray(p["pred_relevant_windows"][:10], dtype=float)[:, :3], MR_THRESHOLDS)
            for p in predictions
        ]
    )
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
        ious.append(hull_iou(first, best))
    return np.array(ious)


def hull_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of windows a (2,) and b (2,) with the union taken as their hull, max(ends) - min(starts): the official
    R1 formula. Equal to ``temporal_iou`` where they overlap, but rounded differently, which decides a threshold
    that the IoU sits on (e.g. [12.6, 23.7] vs [14, 32]: 0.5 here, 0.4999999999999999 the other way)."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union else 0.0


def moment_r1(predictions: list[dict], ground_truth: list[dict], thresholds) -> dict[str, float | None]:
    if not predictions:
        return {str(t): None for t in thresholds}
    ious = top1_ious(predictions, ground_truth)
    return {str(t): percent(np.mean(ious >= t)) for t in thresholds}


def highlight_labels(record: dict, clip_seconds: float = 2.0) -> np.ndarray:
    """Annotator scores (clips, 3), 0 outside the relevant clips. clips = int(duration / 2) as the official
    evaluator, one more when the last half-clip of an odd duration is annotated (where the official one crashes)."""
    clip_ids = np.asarray(record.get("relevant_clip_ids") or [], dtype=int)
    labels = np.zeros((max(int(record["duration"] / clip_seconds), int(clip_ids.max(initial=-1)) + 1), 3))
    if len(clip_ids):
        labels[clip_ids] = np.asarray(record["saliency_scores"])
    return labels


def saliency_ap(labels: np.ndarray, scores: np.ndarray) -> float:
    """The official highlight AP: scikit-learn precision-recall, running max, mean at recall changes."""
    from sklearn.metrics import precision_recall_curve  # a second to import: only `vtg eval` with saliency pays it

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
        brief |= {
            "MR-full-R1@0.5": full["MR-R1"]["0.5"],
            "MR-full-R1@0.7": full["MR-R1"]["0.7"],
            "MR-full-mAP": full["MR-mAP"]["average"],
            "MR-full-mAP@0.5": full["MR-mAP"]["0.5"],
            "MR-full-mAP@0.75": full["MR-mAP"]["0.75"],
            "MR-long-mAP": result["long"]["MR-mAP"]["average"],
            "MR-middle-mAP": result["middle"]["MR-mAP"]["average"],
            "MR-short-mAP": result["short"]["MR-mAP"]["average"],
        }
        ious = top1_ious(predictions, ground_truth)
        brief |= {"MR-full-R1@0.3": percent(np.mean(ious >= 0.3)), "MR-full-mIoU": percent(np.mean(ious))}
    if "pred_saliency_scores" in predictions[0]:
        highlights = highlight_metrics(predictions, ground_truth)
        result |= highlights
        brief |= {f"{level}-{key.split('-')[1]}": value for level, block in highlights.items() for key, value in block.items()}
    return {"brief": brief, **dict(sorted(result.items()))}


def recall_at_k(predictions: list[dict], ground_truth: list[dict], ks, thresholds, iou_compare: str = "ge") -> dict[str, float]:
    """``R{k}@{θ}`` in percent: the fraction of queries whose first k windows hold one passing θ with a GT window.

    ``iou_compare``: ``gt`` (IoU > θ) or ``ge`` (IoU >= θ). A query with fewer
    than k windows is scored on those it has.
    """
    if iou_compare not in IOU_COMPARE:
        raise ValueError(f"unknown IoU comparison {iou_compare!r}; choose gt (IoU > θ) or ge (IoU >= θ)")
    gt_by_qid = {g["qid"]: np.asarray(g["relevant_windows"], dtype=float) for g in ground_truth}
    depth = max(ks)
    best = np.full((len(predictions), depth), -1.0)  # (Q, depth): best IoU with any GT window, per predicted window
    for row, p in enumerate(predictions):
        ious = temporal_iou(np.asarray(p["pred_relevant_windows"], dtype=float)[:depth, :2], gt_by_qid[p["qid"]]).max(1)
        best[row, : len(ious)] = ious
    best_at_k = np.maximum.accumulate(best, axis=1)[:, np.asarray(ks) - 1]  # (Q, K): best IoU among the first k
    hits = IOU_COMPARE[iou_compare](best_at_k[:, :, None], np.asarray(thresholds)[None, None])  # (Q, K, T)
    rates = hits.mean(0)
    return {f"R{k}@{t}": percent(rates[i, j]) for i, k in enumerate(ks) for j, t in enumerate(thresholds)}


def eval_recall(
    predictions: list[dict], ground_truth: list[dict], spec: RecallSpec, match_number: bool = True, iou_compare: str | None = None
) -> dict:
    """``brief``: R@k at the spec's IoU thresholds and ``mIoU`` of the first window (percent).

    ``iou_compare`` (``gt`` | ``ge``) overrides the spec's default.
    """
    predictions, ground_truth = check_predictions(predictions, ground_truth, match_number)
    missing = [p["qid"] for p in predictions if "pred_relevant_windows" not in p]
    if missing:
        raise PredictionError(f"{len(missing)} predictions have no pred_relevant_windows (e.g. qid {missing[0]})")
    brief = recall_at_k(predictions, ground_truth, spec.ks, spec.thresholds, iou_compare or spec.iou_compare)
    brief["mIoU"] = percent(np.mean(top1_ious(predictions, ground_truth)))
    return {"brief": brief}


def window_retrieval_recall(retrieved: list, ground_truth: list, ks=WINDOW_RETRIEVAL_KS) -> dict[str, float]:
    """Retrieval R@k in percent of ranked windows, under two definitions of a found moment.

    ``retrieved[i]``: query i's windows (W_i, 2+) [start, end, ...] in seconds,
    best first; ``ground_truth[i]``: its moments (G_i, 2). ``WR-overlap-R{k}``:
    one of the first k windows overlaps a moment (positive intersection, or
    contains it, so that zero-length moments count); ``WR-contain-R{k}``: one
    of them contains a moment (window start <= moment start, moment end <=
    window end).
    """
    first_hit = {"overlap": [], "contain": []}  # per query: rank (0-based) of the first window that finds a moment, inf if none
    for windows, moments in zip(retrieved, ground_truth):
        w = np.asarray([x[:2] for x in windows[: max(ks)]], dtype=float).reshape(-1, 1, 2)  # (W, 1, 2)
        g = np.asarray(moments, dtype=float).reshape(-1, 2)[None]  # (1, G, 2)
        contain = ((w[..., 0] <= g[..., 0]) & (g[..., 1] <= w[..., 1])).any(1)  # (W,)
        overlap = (np.minimum(w[..., 1], g[..., 1]) > np.maximum(w[..., 0], g[..., 0])).any(1) | contain
        for name, found in (("overlap", overlap), ("contain", contain)):
            first_hit[name].append(np.argmax(found) if found.any() else np.inf)
    return {f"WR-{name}-R{k}": percent(np.mean(np.asarray(ranks) < k)) for name, ranks in first_hit.items() for k in ks}


def window_retrieval_metrics(predictions: list[dict], ground_truth: list[dict]) -> tuple[dict[str, float], int]:
    """Window retrieval R@k over the prediction records with a ground truth that carry ``pred_windows``, and their number.

    ``pred_windows`` is trusted to be checked already (``check_predictions``).
    """
    gt_by_qid = {g["qid"]: g for g in ground_truth}
    carrying = [p for p in predictions if "pred_windows" in p and p["qid"] in gt_by_qid]
    if not carrying:
        return {}, 0
    moments = [gt_by_qid[p["qid"]]["relevant_windows"] for p in carrying]
    return window_retrieval_recall([p["pred_windows"] for p in carrying], moments), len(carrying)


def evaluate(
    predictions: list[dict],
    ground_truth: list[dict],
    dataset: str = "qvhighlights",
    match_number: bool = True,
    iou_compare: str | None = None,
) -> dict:
    """Metrics for ``dataset`` (one of DATASETS); window retrieval too when records carry ``pred_windows``.

    ``iou_compare``: ``gt`` (IoU > θ) or ``ge`` (IoU >= θ) for the R@k
    metrics; None takes the dataset's default (``RECALL_SPECS``). QVHighlights
    keeps its official ``ge``.
    """
    if iou_compare not in (None, *IOU_COMPARE):
        raise ValueError(f"unknown IoU comparison {iou_compare!r}; choose gt (IoU > θ) or ge (IoU >= θ)")
    if dataset == "qvhighlights":
        if iou_compare == "gt":
            raise ValueError(
                "qvhighlights metrics are the official evaluator's (IoU >= θ); iou_compare gt is for " + ", ".join(RECALL_SPECS)
            )
        result = eval_qvhighlights(predictions, ground_truth, match_number)
    elif dataset in RECALL_SPECS:
        result = eval_recall(predictions, ground_truth, RECALL_SPECS[dataset], match_number, iou_compare)
    else:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    retrieval, count = window_retrieval_metrics(predictions, ground_truth)  # pred_windows checked by the metrics above
    if count:
        result["brief"] |= retrieval
        result["window_retrieval"] = {"queries": count}
    return result
