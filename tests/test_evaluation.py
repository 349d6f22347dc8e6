"""Metrics equal the official evaluators': the QVHighlights fixture, hand cases, refusals."""

import json
from pathlib import Path

import numpy as np
import pytest

from vtg_pipeline.evaluation import detection_ap, eval_top1, evaluate, load_jsonl, temporal_iou

QVH = Path(__file__).resolve().parents[2] / "shared" / "data" / "qvhighlights"


@pytest.mark.skipif(not (QVH / "sample_val_preds.jsonl").exists(), reason="shared QVHighlights fixture not present")
def test_reproduces_every_number_of_the_official_evaluator():
    result = evaluate(load_jsonl(QVH / "sample_val_preds.jsonl"), load_jsonl(QVH / "highlight_val_release.jsonl"))
    expected = json.loads((QVH / "sample_val_preds_metrics_raw.json").read_text())

    def compare(ours, theirs, path):
        for key, value in theirs.items():
            if isinstance(value, dict):
                compare(ours[key], value, f"{path}/{key}")
            else:
                assert ours[key] == value, f"{path}/{key}: {ours[key]} != {value}"

    compare(result, expected, "")


def gt(qid, windows, duration=30, clips=(), scores=()):
    return {"qid": qid, "query": "q", "vid": "v", "duration": duration, "relevant_windows": windows,
            "relevant_clip_ids": list(clips), "saliency_scores": [list(s) for s in scores]}


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


def test_hit_at_one_and_highlight_ap():
    truth = [gt(1, [[0, 6]], duration=8, clips=[0, 1, 2], scores=[[4, 4, 1], [2, 2, 2], [0, 0, 0]])]
    best_first = evaluate([pred(1, [[0, 6, 1.0]], saliency=[0.9, 0.5, 0.1, 0.0])], truth)
    assert best_first["HL-min-VeryGood"]["HL-Hit1"] == 100.0  # clip 0: two annotators say 4
    assert best_first["HL-min-VeryGood"]["HL-mAP"] == 66.67  # annotators 1, 2: AP 1; annotator 3 has no positive: AP 0
    tie = evaluate([pred(1, [[0, 6, 1.0]], saliency=[0.1, 0.9, 0.9, 0.0])], truth)
    assert tie["HL-min-Good"]["HL-Hit1"] == 0.0 and tie["HL-min-Fair"]["HL-Hit1"] == 100.0  # argmax takes the first of equal scores


def test_top1_metrics():
    truth = [gt(1, [[0, 10]]), gt(2, [[0, 10]])]
    result = eval_top1([pred(1, [[0, 10, 0.9]]), pred(2, [[20, 30, 0.9], [0, 8, 0.5]])], truth)["brief"]
    assert result["R1@0.5"] == 50.0 and result["R5@0.7"] == 100.0 and result["mIoU"] == 50.0


@pytest.mark.parametrize(
    "predictions,message",
    [
        ([pred(1, [[0, 10, 0.9]])], "1 missing"),
        ([pred(1, [[0, 10, 0.9]]), pred(2, [[0, 10, 0.9]]), pred(3, [[0, 10, 0.9]])], "1 extra"),
        ([pred(1, [[0, 10, 0.1], [0, 5, 0.9]]), pred(2, [[0, 10, 0.9]])], "not sorted by score"),
        ([pred(1, [[0, 10, float("nan")]]), pred(2, [[0, 10, 0.9]])], "finite"),
        ([pred(1, [[0, 10, 0.9]], saliency=[float("nan")]), pred(2, [[0, 10, 0.9]], saliency=[0.1])], "NaN"),
        ([pred(1, [[0, 10, 0.9]]), pred(1, [[0, 10, 0.9]])], "repeat query ids"),
    ],
)
def test_bad_prediction_files_are_refused(predictions, message):
    with pytest.raises(ValueError, match=message):
        evaluate(predictions, [gt(1, [[0, 10]]), gt(2, [[0, 10]])])


def test_allow_missing_scores_the_shared_queries():
    result = evaluate([pred(1, [[0, 10, 0.9]])], [gt(1, [[0, 10]]), gt(2, [[0, 10]])], match_number=False)
    assert result["brief"]["MR-full-R1@0.5"] == 100.0


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"qid": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:2: not valid JSON"):
        load_jsonl(path)


def test_cli_eval_prints_brief(tmp_path, capsys):
    from vtg_pipeline.cli import main

    (tmp_path / "gt.jsonl").write_text(json.dumps(gt(1, [[0, 10]])) + "\n")
    (tmp_path / "p.jsonl").write_text(json.dumps(pred(1, [[0, 10, 0.9]])) + "\n")
    assert main(["eval", "--pred", str(tmp_path / "p.jsonl"), "--gt", str(tmp_path / "gt.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out)["brief"]["MR-full-mAP"] == 100.0
    (tmp_path / "p.jsonl").write_text(json.dumps(pred(7, [[0, 10, 0.9]])) + "\n")
    assert main(["eval", "--pred", str(tmp_path / "p.jsonl"), "--gt", str(tmp_path / "gt.jsonl")]) == 2
