"""`vtg eval` given bad predictions or ground truth: exit status 2, one line naming the file (and line), no traceback."""

import json

import pytest
from bad_input import assert_one_line_error

GT = {
    "qid": 1,
    "query": "a man cooks",
    "vid": "v1",
    "duration": 30,
    "relevant_windows": [[0, 10]],
    "relevant_clip_ids": [0, 1],
    "saliency_scores": [[4, 4, 4], [2, 2, 2]],
}
PRED = {"qid": 1, "query": "a man cooks", "vid": "v1", "pred_relevant_windows": [[0, 10, 0.9]], "pred_saliency_scores": [0.9] * 15}


def lines(*records) -> str:
    """Records as jsonl; a str is written as is."""
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def without(record: dict, key: str) -> dict:
    return {k: v for k, v in record.items() if k != key}


# (case, prediction file text, ground-truth file text; None: a folder there, or no file at all for the predictions; names)
CASES = [
    ("prediction lacks qid", lines(without(PRED, "qid")), lines(GT), ["p.jsonl:1", "qid"]),
    ("prediction is a JSON list", lines(PRED, "[1, 2]"), lines(GT), ["p.jsonl:2", "JSON object"]),
    ("null windows", lines({**PRED, "pred_relevant_windows": None}), lines(GT), ["p.jsonl:1", "pred_relevant_windows"]),
    ("prediction not JSON", lines(PRED, "{oops"), lines(GT), ["p.jsonl:2", "not valid JSON"]),
    ("prediction qid twice", lines(PRED, PRED), lines(GT), ["p.jsonl:2", "p.jsonl:1", "duplicate qid"]),
    ("missing prediction file", None, lines(GT), ["p.jsonl", "not found"]),
    ("ground truth lacks fields", lines(PRED), lines(without(GT, "duration")), ["gt.jsonl:1", "duration"]),
    ("ground truth is a folder", lines(PRED), None, ["gt.jsonl", "folder"]),
    ("reversed window", lines(PRED), lines({**GT, "relevant_windows": [[10, 0]]}), ["gt.jsonl:1", "ends before it starts"]),
    (
        "NaN duration",
        lines(PRED),
        '{"qid": 1, "query": "q", "vid": "v1", "duration": NaN, "relevant_windows": [[0, 10]]}\n',
        ["gt.jsonl:1", "duration"],
    ),
    ("empty saliency row", lines(PRED), lines({**GT, "saliency_scores": [[4, 4, 4], []]}), ["gt.jsonl:1", "saliency row"]),
    ("too short saliency rows", lines(PRED), lines({**GT, "saliency_scores": [[4, 4, 4]]}), ["gt.jsonl:1", "saliency_scores"]),
    ("ground truth qid twice", lines(PRED), lines(GT, {**GT, "query": "again"}), ["gt.jsonl:2", "gt.jsonl:1", "duplicate qid"]),
    ("vid with ..", lines(PRED), lines({**GT, "vid": "../../etc/x"}), ["gt.jsonl:1", "'..'"]),
    ("qids differ", lines({**PRED, "qid": 2}), lines(GT), ["p.jsonl", "query ids differ"]),
]


@pytest.mark.parametrize("pred_text, gt_text, names", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_eval_input_is_one_line_naming_the_file(tmp_path, capsys, pred_text, gt_text, names):
    pred, gt = tmp_path / "p.jsonl", tmp_path / "gt.jsonl"
    if pred_text is not None:
        pred.write_text(pred_text)
    if gt_text is None:
        gt.mkdir()
    else:
        gt.write_text(gt_text)
    assert_one_line_error(["eval", "--pred", str(pred), "--gt", str(gt)], capsys, *names)


def test_the_good_files_of_the_table_score(tmp_path, capsys):
    from vtg_pipeline.cli import main

    (tmp_path / "p.jsonl").write_text(lines(PRED))
    (tmp_path / "gt.jsonl").write_text(lines(GT))
    assert main(["eval", "--pred", str(tmp_path / "p.jsonl"), "--gt", str(tmp_path / "gt.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out)["brief"]["MR-full-mAP"] == 100.0
