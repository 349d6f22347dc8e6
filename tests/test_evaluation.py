"""Metrics equal the official evaluators': a synthetic parity fixture (and the real split when present), hand cases, refusals."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vtg_pipeline.evaluation import (
    RECALL_SPECS,
    PredictionError,
    check_prediction,
    detection_ap,
    eval_recall,
    evaluate,
    load_ground_truth,
    load_predictions,
    recall_at_k,
    temporal_iou,
    window_retrieval_recall,
)

DATA = Path(__file__).resolve().parent / "data" / "eval_parity"  # synthetic, no QVHighlights data; README.md there says how it was made
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "qvhighlights"  # the real validation split, read in place when present
PARITY = [
    pytest.param(DATA / "preds.jsonl", DATA / "gt.jsonl", DATA / "official_metrics.json", id="synthetic"),
    pytest.param(
        SHARED / "sample_val_preds.jsonl",
        SHARED / "highlight_val_release.jsonl",
        SHARED / "sample_val_preds_metrics_raw.json",
        id="shared-val",
        marks=pytest.mark.skipif(
            not SHARED.is_dir(),
            reason=f"{SHARED} not present: the real QVHighlights split is read from ../shared, never copied into the project",
        ),
    ),
]


def leaves(tree: dict, path: str = "") -> dict:
    """Every number of a nested metrics dict, by its slash-joined key path."""
    flat = {}
    for key, value in tree.items():
        flat.update(leaves(value, f"{path}/{key}") if isinstance(value, dict) else {f"{path}/{key}": value})
    return flat


@pytest.mark.parametrize("pred_file,gt_file,official_file", PARITY)
def test_vtg_eval_reproduces_every_number_of_the_official_evaluator(pred_file, gt_file, official_file, capsys):
    """`vtg eval --full` (checking readers, then the metrics) prints exactly the official evaluator's numbers."""
    from vtg_pipeline.cli import main

    assert main(["eval", "--full", "--pred", str(pred_file), "--gt", str(gt_file)]) == 0
    ours, official = leaves(json.loads(capsys.readouterr().out)), leaves(json.loads(official_file.read_text()))
    assert len(official) > 50 and {key: ours.get(key) for key in official} == official


def test_the_synthetic_fixture_is_what_its_generator_writes(tmp_path):
    """The command in eval_parity/README.md writes exactly the committed files (so the official numbers belong to them)."""
    subprocess.run([sys.executable, str(DATA.parent / "make_eval_fixture.py"), "--out", str(tmp_path)], check=True, capture_output=True)
    for name in ("gt.jsonl", "preds.jsonl"):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name


def gt(qid, windows, duration=30, clips=(), scores=()):
    return {
        "qid": qid,
        "query": "q",
        "vid": "v",
        "duration": duration,
        "relevant_windows": windows,
        "relevant_clip_ids": list(clips),
        "saliency_scores": [list(s) for s in scores],
    }


def pred(qid, windows, saliency=None):
    record = {"qid": qid, "query": "q", "vid": "v", "pred_relevant_windows": windows}
    if saliency is not None:
        record["pred_saliency_scores"] = saliency
    return record


def test_temporal_iou():
    iou = temporal_iou(np.array([[0, 10], [5, 5]]), np.array([[5, 15], [20, 30]]))
    assert iou.tolist() == [[1 / 3, 0.0], [0.0, 0.0]]


def test_detection_ap_hand_cases():
    gt_windows = np.array([[0.0, 10.0]])
    assert detection_ap(gt_windows, np.array([[0, 10, 0.9]]), [0.5]).tolist() == [1.0]
    # the true positive comes second: precision 1/2 at recall 1
    assert detection_ap(gt_windows, np.array([[20, 30, 0.9], [0, 10, 0.5]]), [0.5]).tolist() == [0.5]
    # a duplicate of the matched window is a false positive after it: AP stays 1
    assert detection_ap(gt_windows, np.array([[0, 10, 0.9], [0, 10, 0.8]]), [0.5]).tolist() == [1.0]
    # two ground-truth windows, one found: recall 1/2
    two = np.array([[0.0, 10.0], [20.0, 30.0]])
    assert detection_ap(two, np.array([[0, 10, 0.9]]), [0.5]).tolist() == [0.5]


def test_r1_uses_the_best_matching_ground_truth_and_buckets_by_length():
    truth = [gt(1, [[0, 4], [10, 30]]), gt(2, [[0, 50]])]
    preds = [pred(1, [[10, 30, 1.0]]), pred(2, [[0, 20, 1.0]])]
    result = evaluate(preds, truth)
    assert result["full"]["MR-R1"]["0.5"] == 50.0 and result["brief"]["MR-full-R1@0.3"] == 100.0
    assert result["brief"]["MR-full-mIoU"] == pytest.approx(70.0)
    assert result["short"]["MR-R1"]["0.5"] == 0.0  # query 1 keeps only [0, 4]: IoU 0
    assert result["long"]["MR-mAP"]["0.5"] == 0.0 and result["middle"]["MR-R1"]["0.95"] == 100.0


def test_r1_rounds_the_iou_as_the_official_evaluator():
    """[12.6, 23.7] against [14, 32] is IoU 0.5 with the official hull union (a hit at 0.5), 0.4999999999999999 with
    the sum-minus-intersection union; R1 must follow the official formula."""
    truth = [gt(1, [[14, 32]]), gt(2, [[0, 10]]), gt(3, [[40, 50]])]
    preds = [pred(1, [[12.6, 23.7, 1.0]]), pred(2, [[0, 10, 1.0]]), pred(3, [[40, 50, 1.0]])]
    assert temporal_iou([[12.6, 23.7]], [[14, 32]])[0, 0] < 0.5
    assert evaluate(preds, truth)["full"]["MR-R1"]["0.5"] == 100.0


def test_hit_at_one_and_highlight_ap():
    truth = [gt(1, [[0, 6]], duration=8, clips=[0, 1, 2], scores=[[4, 4, 1], [2, 2, 2], [0, 0, 0]])]
    best_first = evaluate([pred(1, [[0, 6, 1.0]], saliency=[0.9, 0.5, 0.1, 0.0])], truth)
    assert best_first["HL-min-VeryGood"]["HL-Hit1"] == 100.0  # clip 0: two annotators say 4
    assert best_first["HL-min-VeryGood"]["HL-mAP"] == 66.67  # annotators 1, 2: AP 1; annotator 3 has no positive: AP 0
    tie = evaluate([pred(1, [[0, 6, 1.0]], saliency=[0.1, 0.9, 0.9, 0.0])], truth)
    assert tie["HL-min-Good"]["HL-Hit1"] == 0.0 and tie["HL-min-Fair"]["HL-Hit1"] == 100.0  # argmax takes the first of equal scores


def test_an_annotated_last_half_clip_of_an_odd_duration_is_scored():
    """A 7 s video has int(7 / 2) = 3 whole clips; clip 3 is its last half-clip, and annotators may mark it (the
    official evaluator indexes past its label array there and crashes). It counts as a fourth clip."""
    truth = [gt(1, [[4, 7]], duration=7, clips=[2, 3], scores=[[1, 1, 1], [4, 4, 4]])]
    found = evaluate([pred(1, [[4, 7, 1.0]], saliency=[0.1, 0.2, 0.3, 0.9])], truth)
    assert found["HL-min-VeryGood"]["HL-Hit1"] == 100.0 and found["HL-min-VeryGood"]["HL-mAP"] == 100.0
    missed = evaluate([pred(1, [[4, 7, 1.0]], saliency=[0.9, 0.2, 0.3])], truth)  # no score for the half-clip
    assert missed["HL-min-VeryGood"]["HL-Hit1"] == 0.0


def test_top1_metrics():
    truth = [gt(1, [[0, 10]]), gt(2, [[0, 10]])]
    result = eval_recall([pred(1, [[0, 10, 0.9]]), pred(2, [[20, 30, 0.9], [0, 8, 0.5]])], truth, RECALL_SPECS["charades"])["brief"]
    assert result["R1@0.5"] == 50.0 and result["R5@0.7"] == 100.0 and result["mIoU"] == 50.0


def ranked(*windows):
    """[start, end] windows in rank order -> [start, end, score] with descending scores."""
    return [[s, e, 1.0 - i / 1000] for i, (s, e) in enumerate(windows)]


def test_strict_and_non_strict_iou_differ_exactly_at_the_threshold():
    # [0, 5] against [0, 10]: IoU 5 / 10 = 0.5 exactly; [0, 3]: IoU 0.3 exactly
    truth = [gt(1, [[0, 10]]), gt(2, [[0, 10]])]
    preds = [pred(1, ranked((0, 5))), pred(2, ranked((0, 3)))]
    ge = evaluate(preds, truth, "mad")["brief"]  # MAD default: IoU >= θ (official MAD code)
    assert (ge["R1@0.1"], ge["R1@0.3"], ge["R1@0.5"]) == (100.0, 100.0, 50.0)
    strict = evaluate(preds, truth, "mad", iou_compare="gt")["brief"]  # IoU > θ (official RGNet code)
    assert (strict["R1@0.1"], strict["R1@0.3"], strict["R1@0.5"]) == (100.0, 50.0, 0.0)
    ego4d = evaluate(preds, truth, "ego4d")["brief"]  # Ego4D default: strict, as the official NLQ evaluator
    assert (ego4d["R1@0.3"], ego4d["R1@0.5"]) == (50.0, 0.0)
    assert evaluate(preds, truth, "ego4d", iou_compare="ge")["brief"]["R1@0.5"] == 50.0


def test_recall_grows_with_k_and_mad_keys():
    filler = [(100 + 10 * i, 105 + 10 * i) for i in range(60)]  # IoU 0 with both ground truths
    truth = [gt(1, [[50, 60]], duration=1000), gt(2, [[0, 10]], duration=1000), gt(3, [[200, 220]], duration=1000)]
    preds = [
        pred(1, ranked(*filler[:6], (50, 60), *filler[6:])),  # exact hit at rank 7
        pred(2, ranked(*filler[:55], (0, 10))),  # exact hit at rank 56
        pred(3, ranked((300, 310))),  # one window, a miss: counted as a miss at every k
    ]
    brief = evaluate(preds, truth, "mad")["brief"]
    assert set(brief) == {f"R{k}@{t}" for k in (1, 5, 10, 50, 100) for t in (0.1, 0.3, 0.5)} | {"mIoU"}
    # hits: k=1, 5: none; k=10, 50: query 1 (1/3); k=100: queries 1 and 2 (2/3)
    assert [brief[f"R{k}@0.5"] for k in (1, 5, 10, 50, 100)] == [0.0, 0.0, 33.33, 33.33, 66.67]
    assert recall_at_k(preds, truth, ks=(6, 7), thresholds=(0.5,)) == {"R6@0.5": 0.0, "R7@0.5": 33.33}


def test_miou_is_the_mean_iou_of_the_first_window():
    # [2, 8] in [0, 10]: 6 / 10 = 0.6; [5, 15] vs [0, 10]: 5 / 15 = 1/3 (the second window, IoU 1, is not first)
    truth = [gt(1, [[0, 10]]), gt(2, [[0, 10]])]
    brief = evaluate([pred(1, ranked((2, 8))), pred(2, ranked((5, 15), (0, 10)))], truth, "mad")["brief"]
    assert brief["mIoU"] == 46.67  # (0.6 + 1/3) / 2 = 0.46667
    assert brief["R1@0.5"] == 50.0 and brief["R5@0.5"] == 100.0


def test_window_retrieval_overlap_and_contain_differ():
    retrieved = [
        [[0, 45], [50, 60], [30, 60]],  # moment [40, 50]: rank 1 overlaps it, rank 2 only touches it, rank 3 contains it
        [[20, 30], [0, 20]],  # zero-length moment [10, 10]: rank 2 contains it (so overlaps it too)
        [[0, 90]],  # moment [100, 104]: never found
    ]
    moments = [[[40, 50]], [[10, 10]], [[100, 104]]]
    result = window_retrieval_recall(retrieved, moments, ks=(1, 2, 3))
    # first hit (rank): overlap 1, 2, none -> R1 1/3, R2 2/3, R3 2/3; contain 3, 2, none -> R1 0, R2 1/3, R3 2/3
    assert result == {
        "WR-overlap-R1": 33.33,
        "WR-overlap-R2": 66.67,
        "WR-overlap-R3": 66.67,
        "WR-contain-R1": 0.0,
        "WR-contain-R2": 33.33,
        "WR-contain-R3": 66.67,
    }
    assert set(window_retrieval_recall(retrieved, moments)) == {f"WR-{d}-R{k}" for d in ("overlap", "contain") for k in (1, 5, 10)}


def test_evaluate_reports_window_retrieval_for_records_with_pred_windows():
    truth = [gt(1, [[40, 50]], duration=400), gt(2, [[0, 10]], duration=400)]
    with_windows = {**pred(1, ranked((40, 50))), "pred_windows": [[0, 45, 0.9], [30, 210, 0.8]]}
    result = evaluate([with_windows, pred(2, ranked((0, 10)))], truth, "mad")
    # only query 1 carries pred_windows: rank 1 overlaps [40, 50], rank 2 contains it
    assert result["window_retrieval"] == {"queries": 1}
    assert (result["brief"]["WR-overlap-R1"], result["brief"]["WR-contain-R1"], result["brief"]["WR-contain-R5"]) == (100.0, 0.0, 100.0)
    assert not any(key.startswith("WR-") for key in evaluate([pred(1, ranked((40, 50))), pred(2, ranked((0, 10)))], truth, "mad")["brief"])
    unsorted = {**with_windows, "pred_windows": [[0, 45, 0.1], [30, 210, 0.8]]}
    with pytest.raises(ValueError, match="qid 1: pred_windows are not sorted by score"):
        evaluate([unsorted, pred(2, ranked((0, 10)))], truth, "mad")


def test_iou_compare_choices_are_checked():
    truth, preds = [gt(1, [[0, 10]])], [pred(1, ranked((0, 10)))]
    with pytest.raises(ValueError, match="unknown IoU comparison 'gte'"):
        evaluate(preds, truth, "mad", iou_compare="gte")
    with pytest.raises(ValueError, match="qvhighlights metrics are the official evaluator's"):
        evaluate(preds, truth, "qvhighlights", iou_compare="gt")
    assert evaluate(preds, truth, "qvhighlights", iou_compare="ge") == evaluate(preds, truth)


@pytest.mark.parametrize(
    "predictions,message",
    [
        ([pred(1, [[0, 10, 0.9]])], "1 missing"),
        ([pred(1, [[0, 10, 0.9]]), pred(2, [[0, 10, 0.9]]), pred(3, [[0, 10, 0.9]])], "1 extra"),
        ([pred(1, [[0, 10, 0.1], [0, 5, 0.9]]), pred(2, [[0, 10, 0.9]])], "not sorted by score"),
        ([pred(1, [[0, 10, float("nan")]]), pred(2, [[0, 10, 0.9]])], "finite"),
        (
            [pred(1, [[0, 10, 0.9]], saliency=[float("nan")]), pred(2, [[0, 10, 0.9]], saliency=[0.1])],
            "qid 1: pred_saliency_scores must be",
        ),
        ([pred(1, [[0, 10, 0.9]], saliency=[0.1]), pred(2, [[0, 10, 0.9]])], "qid 2 has no pred_saliency_scores, which qid 1 has"),
        ([{"query": "q", "pred_relevant_windows": [[0, 10, 0.9]]}, pred(2, [[0, 10, 0.9]])], "prediction 0: missing field 'qid'"),
        ([pred(1, [[0, 10, 0.9]]), pred(1, [[0, 10, 0.9]])], "repeat query ids"),
    ],
)
def test_bad_prediction_files_are_refused(predictions, message):
    with pytest.raises(ValueError, match=message):
        evaluate(predictions, [gt(1, [[0, 10]]), gt(2, [[0, 10]])])


def test_allow_missing_scores_the_shared_queries():
    result = evaluate([pred(1, [[0, 10, 0.9]])], [gt(1, [[0, 10]]), gt(2, [[0, 10]])], match_number=False)
    assert result["brief"]["MR-full-R1@0.5"] == 100.0


@pytest.mark.parametrize(
    "record,problem",
    [
        ([1, 2], r"expected a JSON object, got \[1, 2\]"),
        ({"pred_relevant_windows": [[0, 10, 0.9]]}, "missing field 'qid'"),
        (pred(True, [[0, 10, 0.9]]), "qid must be an int or a non-empty string, got True"),
        ({"qid": 1}, "neither pred_relevant_windows nor pred_saliency_scores"),
        (pred(1, None), "pred_relevant_windows must be a non-empty list of .start, end, score. with finite numbers, got None"),
        (pred(1, []), "pred_relevant_windows must be a non-empty list"),
        (pred(1, [5, 6, 7]), "pred_relevant_windows must be a non-empty list"),
        (pred(1, [[0, 10]]), "pred_relevant_windows must be a non-empty list"),
        (pred(1, [[0, 10, 0.9], [0, "x", 0.5]]), "pred_relevant_windows must be a non-empty list"),
        (pred(1, [[10, 0, 0.9]]), "pred_relevant_windows: a window ends before it starts"),
        ({**pred(1, [[0, 10, 0.9]]), "pred_windows": None}, "pred_windows must be a non-empty list"),
        (pred(1, [[0, 10, 0.9]], saliency=None) | {"pred_saliency_scores": None}, "pred_saliency_scores must be a non-empty list"),
        (pred(1, [[0, 10, 0.9]], saliency=[]), "pred_saliency_scores must be a non-empty list"),
        (pred(1, [[0, 10, 0.9]], saliency=[[0.1, 0.2]]), "pred_saliency_scores must be a non-empty list"),
    ],
)
def test_each_malformed_prediction_is_refused_with_its_problem(record, problem):
    with pytest.raises(ValueError, match=f"^{problem}"):
        check_prediction(record)


def test_prediction_file_errors_name_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    good = json.dumps(pred(1, [[0, 10, 0.9]]))
    for lines, problem in [
        ([good, "", "{oops"], "3: not valid JSON"),  # blank lines count
        ([good, '{"query": "q", "pred_relevant_windows": [[0, 10, 0.9]]}'], "2: missing field 'qid'"),
        ([good, good], rf"2: duplicate qid 1 \(first at {re.escape(str(path))}:1\)"),
    ]:
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(PredictionError, match=rf"^{re.escape(str(path))}:{problem}"):
            load_predictions(path)


def test_ground_truth_is_validated_with_the_dataset_rules(tmp_path):
    path = tmp_path / "gt.jsonl"
    path.write_text(json.dumps(gt(1, [[0, 10]])) + "\n" + json.dumps(gt(2, [[20, 10]])) + "\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:2: window \[20, 10\] ends before it starts$"):
        load_ground_truth(path, "qvhighlights")
    path.write_text(json.dumps(gt(1, [[5, 5]])) + "\n")  # zero length: refused for QVHighlights, kept for Ego4D (official evaluator)
    with pytest.raises(ValueError, match="has zero length"):
        load_ground_truth(path, "qvhighlights")
    assert load_ground_truth(path, "ego4d")[0]["relevant_windows"] == [[5.0, 5.0]]


def test_saliency_only_predictions_score_ground_truth_without_windows(tmp_path, capsys):
    """The test split's layout (no windows) with annotator scores: enough for highlight detection, as `vtg eval` reads it."""
    from vtg_pipeline.cli import main

    record = {k: v for k, v in gt(1, [[0, 6]], duration=8, clips=[0, 1], scores=[[4, 4, 4], [0, 0, 0]]).items() if k != "relevant_windows"}
    (tmp_path / "gt.jsonl").write_text(json.dumps(record) + "\n")
    (tmp_path / "p.jsonl").write_text(json.dumps({"qid": 1, "pred_saliency_scores": [0.9, 0.1, 0.0, 0.0]}) + "\n")
    assert main(["eval", "--pred", str(tmp_path / "p.jsonl"), "--gt", str(tmp_path / "gt.jsonl")]) == 0
    brief = json.loads(capsys.readouterr().out)["brief"]
    assert brief["HL-min-VeryGood-Hit1"] == 100.0 and not any(key.startswith("MR-") for key in brief)


def test_cli_eval_prints_brief(tmp_path, capsys):
    from vtg_pipeline.cli import main

    (tmp_path / "gt.jsonl").write_text(json.dumps(gt(1, [[0, 10]])) + "\n")
    (tmp_path / "p.jsonl").write_text(json.dumps(pred(1, [[0, 10, 0.9]])) + "\n")
    assert main(["eval", "--pred", str(tmp_path / "p.jsonl"), "--gt", str(tmp_path / "gt.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out)["brief"]["MR-full-mAP"] == 100.0
    (tmp_path / "p.jsonl").write_text(json.dumps(pred(7, [[0, 10, 0.9]])) + "\n")
    assert main(["eval", "--pred", str(tmp_path / "p.jsonl"), "--gt", str(tmp_path / "gt.jsonl")]) == 2


def test_cli_eval_reads_the_mad_json_and_takes_iou_compare(tmp_path, capsys):
    from vtg_pipeline.cli import main

    mad = {
        "a1": {"movie": "m", "sentence": "He runs.", "timestamps": [0, 10], "movie_duration": 100.0},
        "a2": {"movie": "m", "sentence": "She sits.", "timestamps": [20, 30], "movie_duration": 100.0},
    }
    (tmp_path / "MAD_test.json").write_text(json.dumps(mad))
    # a1: [0, 5] has IoU 0.5 exactly; a2: [20, 30] IoU 1
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(pred(q, ranked(w))) + "\n" for q, w in (("a1", (0, 5)), ("a2", (20, 30)))))
    args = ["eval", "--dataset", "mad", "--pred", str(tmp_path / "p.jsonl"), "--gt", str(tmp_path / "MAD_test.json")]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["brief"]["R1@0.5"] == 100.0
    assert main(args + ["--iou-compare", "gt"]) == 0
    assert json.loads(capsys.readouterr().out)["brief"]["R1@0.5"] == 50.0
