"""Write the synthetic evaluation-parity fixture: QVHighlights-format ground truth and predictions.

    python tests/data/make_eval_fixture.py            # -> tests/data/eval_parity/{gt,preds}.jsonl
    python tests/data/make_eval_fixture.py --out DIR  # elsewhere (same seed, same bytes)

Nothing here comes from QVHighlights: queries, videos, windows and scores are
drawn from ``random.Random(SEED)`` (standard library only, so the bytes are the
same on every machine; tests/test_evaluation.py checks that they are). The
official moment_detr evaluator's numbers for the two files are in
``eval_parity/official_metrics.json`` (its README.md says how they were made).

Ground truth follows the field rules of vtg_pipeline/annotations.py for
``qvhighlights``: durations 150 s or 60-149 s (odd ones too: the official code
takes ``int(duration / 2)`` clips), 1-3 disjoint windows on the 2 s grid
inside the video (a last window may end at an odd duration), lengths in all three
buckets with their edges (10 s, 30 s, 150 s), ``relevant_clip_ids`` = the 2 s
clips under the windows (below ``int(duration / 2)``), ``saliency_scores`` 3
annotators 0-4 per clip (a harsh annotator with nothing >= 2, all-4 whole videos).

Predictions are submissions: 10-15 ``[start, end, score]`` windows sorted by
score (4 decimals, with ties), on the 2 s grid or with 4-decimal times, mixing
exact hits, windows at exactly an IoU threshold (0.5 ... 0.95) and 1 s / 0.01 s
below it, jittered and merged windows, duplicates, misses, zero-length windows,
the whole video, and hits ranked past 10 (cut by the mAP's top 10);
``pred_saliency_scores`` one per clip (some one short or one long, as models
emit), rounded or coarsely quantised so that ties, the maximum included, occur.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

SEED = 20260529
QUERIES = 240
OUT = Path(__file__).resolve().parent / "eval_parity"
THRESHOLDS = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
SUBJECTS = ["A man", "A woman", "A girl", "A boy", "Two friends", "A chef", "A dog", "A vlogger", "A couple", "An old man"]
ACTIONS = ["walks along", "talks about", "cooks in", "dances near", "shows off", "drives past", "paints", "cleans", "films", "sings at"]
PLACES = [
    "the beach",
    "a kitchen",
    "the city at night",
    "a small shop",
    "the mountains",
    "a crowded market",
    "the garden",
    "a car",
    "the living room",
    "a stage",
]


def grid(rng: random.Random, low: int, high: int) -> int:
    """An even number in [low, high] (both even)."""
    return 2 * rng.randint(low // 2, high // 2)


def window_lengths(rng: random.Random, count: int, duration: int) -> list[int]:
    """Lengths (s, even) of ``count`` windows that fit the video, each bucket drawn in turn, edges included."""
    while True:
        lengths = []
        for _ in range(count):
            bucket = rng.choices(["short", "middle", "long"], weights=[3, 3, 3 if count == 1 else 1])[0]
            if bucket == "short":
                lengths.append(rng.choice([2, 4, 6, 8, 10, 10]))
            elif bucket == "middle":
                lengths.append(rng.choice([12, 20, 30, 30]) if rng.random() < 0.3 else grid(rng, 12, 30))
            else:
                lengths.append(grid(rng, 32, min(duration - duration % 2, 100)))
        if sum(lengths) + 2 * (count - 1) <= duration - duration % 2:
            return lengths


def place(rng: random.Random, lengths: list[int], duration: int) -> list[list[int]]:
    """Disjoint windows of these lengths on the 2 s grid, in time order; with an odd duration the last may end at it."""
    free = (duration - duration % 2 - sum(lengths)) // 2 - (len(lengths) - 1)  # spare 2 s steps beyond a 2 s gap each
    cuts = sorted(rng.randint(0, free) for _ in lengths)
    windows, start = [], 0
    for i, length in enumerate(lengths):
        start += 2 * (cuts[i] - (cuts[i - 1] if i else 0))
        windows.append([start, start + length])
        start += length + 2
    if duration % 2 and windows[-1][1] == duration - 1 and rng.random() < 0.7:
        windows[-1][1] = duration
    return windows


def saliency(rng: random.Random, clip_ids: list[int], windows: list[list[int]], style: str) -> list[list[int]]:
    """3 annotator scores 0-4 per relevant clip: highest mid-window; ``style`` makes all-4 or harsh (all < 2) annotators."""
    if style == "all4":
        return [[4, 4, 4] for _ in clip_ids]
    biases = [rng.choice([-1, 0, 0, 1]) for _ in range(3)]
    harsh = rng.randrange(3) if style == "harsh" else None
    rows = []
    for clip in clip_ids:
        centre = 2 * clip + 1
        start, end = next(w for w in windows if w[0] <= centre <= w[1] + 1)
        depth = 1 - abs(centre - (start + end) / 2) / max((end - start) / 2, 1)  # 1 mid-window, about 0 at its edges
        row = []
        for a in range(3):
            if a == harsh:
                row.append(rng.choice([0, 1, 1]))
            else:
                row.append(min(4, max(0, round(1 + 2.5 * depth + biases[a] + rng.uniform(-1, 1)))))
        rows.append(row)
    return rows


def ground_truth(rng: random.Random, qid: int, index: int) -> dict:
    duration = 150 if rng.random() < 0.7 else rng.randint(60, 149)
    special = rng.random()
    if special < 0.025:  # the whole video, every annotator 4: all-positive labels at every level
        duration -= duration % 2
        windows, style = [[0, duration]], "all4"
    else:
        count = rng.choices([1, 2, 3], weights=[55, 30, 15])[0]
        windows = place(rng, window_lengths(rng, count, duration), duration)
        style = "harsh" if special < 0.15 else "plain"
    clips = int(duration / 2)
    clip_ids = sorted({c for s, e in windows for c in range(s // 2, math.ceil(e / 2)) if c < clips})
    offset = 2 * rng.randint(0, 300)
    return {
        "qid": qid,
        "query": f"{rng.choice(SUBJECTS)} {rng.choice(ACTIONS)} {rng.choice(PLACES)}.",
        "duration": duration,
        "vid": f"synth{index:04d}_{offset}.0_{offset + duration}.0",
        "relevant_clip_ids": clip_ids,
        "saliency_scores": saliency(rng, clip_ids, windows, style),
        "relevant_windows": windows,
    }


def at_iou(rng: random.Random, window: list[int], iou: float, short: float = 0.0) -> list[float]:
    """A window of IoU ``iou`` with ``window`` (shrunk inside it or grown around it), made ``short`` s less overlapping.

    Whole seconds where that keeps the IoU exact (a 20 s window shrunk to 11 s: 0.55 to the last bit), else 4 decimals.
    """
    start, end = window
    length = end - start
    inner, outer = length * iou, length / iou
    exact_inner, exact_outer = abs(inner - round(inner)) < 1e-9, abs(outer - round(outer)) < 1e-9
    modes = [mode for mode, exact in (("inner", exact_inner), ("outer", exact_outer)) if exact] or ["inner", "outer"]
    if rng.choice(modes) == "inner":
        inner = round(inner) if exact_inner else inner
        lead = rng.randint(0, int(length - inner)) if exact_inner else rng.uniform(0, length - inner)
        return [start + lead, start + lead + inner - short]
    outer = round(outer) if exact_outer else outer
    lead = rng.randint(0, int(outer - length)) if exact_outer else rng.uniform(0, outer - length)
    return [start - lead - short, start - lead + outer]


def candidate(rng: random.Random, kind: str, gt: dict) -> list[float]:
    """One predicted [start, end] of ``kind`` for ground truth ``gt``."""
    duration, windows = gt["duration"], gt["relevant_windows"]
    target = rng.choice(windows)
    if kind == "exact":
        return list(map(float, target))
    if kind in ("threshold", "below"):  # at an IoU threshold, or just under it (1 s or 0.01 s less overlap)
        return at_iou(rng, target, rng.choice(THRESHOLDS), rng.choice([1.0, 0.01]) if kind == "below" else 0.0)
    if kind == "jitter":
        step = rng.choice([2.0, 2.0, 4.0, 0.5, 1.3])
        return [target[0] + rng.uniform(-step, step), target[1] + rng.uniform(-step, step)]
    if kind == "span":
        return [float(windows[0][0]), float(windows[-1][1])]
    if kind == "zero":
        point = rng.choice([float(target[0]), float(rng.randint(0, duration)), (target[0] + target[1]) / 2])
        return [point, point]
    if kind == "full":
        return [0.0, float(duration)]
    start = rng.uniform(0, duration - 2)
    return [start, min(duration, start + rng.choice([2, 4, 6, 10, 20, 40, 80]) * rng.uniform(0.5, 1.5))]


def style_window(window: list[float], duration: int, on_grid: bool) -> list[float]:
    """Clipped to the video; on the 2 s grid (zero length kept) or to 4 decimals."""
    start, end = max(0.0, min(float(window[0]), duration)), max(0.0, min(float(window[1]), duration))
    if on_grid:
        snapped = [2.0 * round(start / 2), 2.0 * round(end / 2)]
        if snapped[1] > duration:
            snapped[1] -= 2.0
        return snapped if snapped[1] > snapped[0] or end == start else [snapped[0], snapped[0] + 2.0]
    return [round(start, 4), round(end, 4)]


def scores(rng: random.Random, count: int) -> list[float]:
    """``count`` descending scores with 4 decimals, some tied (all of them, now and then)."""
    if rng.random() < 0.04:
        return [rng.choice([0.0, 0.5])] * count
    values = sorted((round(rng.random() ** 3, 4) for _ in range(count)), reverse=True)
    for i in range(1, count):
        if rng.random() < 0.15:
            values[i] = values[i - 1]
    return values


def windows_for(rng: random.Random, gt: dict) -> list[list[float]]:
    """10-15 scored windows for ``gt``, sorted by score; hits at rank 1, lower, or past 10."""
    count = 10 if rng.random() < 0.6 else rng.randint(11, 15)
    kinds = rng.choices(
        ["exact", "threshold", "below", "jitter", "span", "zero", "full", "random"], weights=[1, 3, 3, 3, 1, 1, 1, 4], k=count
    )
    on_grid = rng.random() < 0.5
    windows = [style_window(candidate(rng, kind, gt), gt["duration"], on_grid and kind not in ("threshold", "below")) for kind in kinds]
    if rng.random() < 0.15:  # a duplicate of an earlier window
        i = rng.randrange(count - 1)
        windows[rng.randrange(i + 1, count)] = list(windows[i])
    if count > 10 and rng.random() < 0.5:  # the exact hit only past the top 10
        windows[rng.randrange(10, count)] = list(map(float, rng.choice(gt["relevant_windows"])))
    if rng.random() < 0.05:  # a zero-length first window
        point = round(rng.uniform(0, gt["duration"]), 4)
        windows[0] = [point, point]
    return [window + [score] for window, score in zip(windows, scores(rng, count))]


def saliency_prediction(rng: random.Random, gt: dict) -> list[float]:
    """One score per 2 s clip (one fewer or one more now and then), following the annotators loosely, with ties."""
    clips = int(gt["duration"] / 2)
    size = clips + rng.choices([0, -1, 1], weights=[8, 1, 1])[0]
    truth = dict(zip(gt["relevant_clip_ids"], (sum(row) / 12 for row in gt["saliency_scores"])))
    skill = rng.uniform(0, 1.2)
    values = [skill * truth.get(c, 0.0) + rng.gauss(0, 0.3) - 0.3 for c in range(size)]
    if rng.random() < 0.35:  # coarse: many ties, the maximum often among them
        values = [round(v * 4) / 4 for v in values]
    else:
        values = [round(v, rng.choice([2, 3, 4])) for v in values]
    if size > clips and rng.random() < 0.5:  # the best score on the clip past int(duration / 2)
        values[-1] = max(values) + 0.5
    return values


def make(seed: int = SEED, queries: int = QUERIES) -> tuple[list[dict], list[dict]]:
    """(ground truth, predictions); predictions in another order than the ground truth."""
    rng = random.Random(seed)
    qids = rng.sample(range(1, 10000), queries)
    truth = [ground_truth(rng, qid, i) for i, qid in enumerate(qids)]
    predictions = [
        {
            "qid": g["qid"],
            "query": g["query"],
            "vid": g["vid"],
            "pred_relevant_windows": windows_for(rng, g),
            "pred_saliency_scores": saliency_prediction(rng, g),
        }
        for g in truth
    ]
    rng.shuffle(predictions)
    return truth, predictions


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder for gt.jsonl and preds.jsonl (default {OUT})")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--queries", type=int, default=QUERIES)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    truth, predictions = make(args.seed, args.queries)
    write_jsonl(args.out / "gt.jsonl", truth)
    write_jsonl(args.out / "preds.jsonl", predictions)
    print(f"wrote {len(truth)} queries to {args.out}/gt.jsonl and preds.jsonl")


if __name__ == "__main__":
    main()
