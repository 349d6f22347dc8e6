"""Annotation readers: real QVHighlights files, hand-written files of each format, every kind of bad record."""

import json
import re
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from vtg_pipeline.annotations import (
    DATASETS,
    MAX_REASONS,
    AnnotationError,
    ReadReport,
    read_annotations,
    read_charades_durations,
    read_charades_sta,
    read_ego4d_nlq,
    read_mad,
    read_qvhighlights,
    read_tacos,
    saliency_targets,
)

QVH_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "qvhighlights"
GOOD = {
    "qid": 7,
    "query": " A man cooks. ",
    "duration": 150,
    "vid": "abc_60.0_210.0",
    "relevant_windows": [[2, 6], [140, 150]],
    "relevant_clip_ids": [1, 2, 70, 71, 72, 73, 74],
    "saliency_scores": [[4, 4, 4], [1, 2, 3], [0, 0, 0], [2, 2, 2], [2, 2, 2], [2, 2, 2], [3, 3, 3]],
}


def write_jsonl(path: Path, lines: list) -> Path:
    """Each item a JSON line, or a raw string written as is."""
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def with_(**changes) -> dict:
    record = dict(GOOD)
    record.update(changes)
    return {k: v for k, v in record.items() if v is not None}


# ---------------------------------------------------------------- QVHighlights


@pytest.mark.parametrize("split, count", [("train", 7218), ("val", 1550)])
def test_real_qvhighlights_loads_strictly_with_nothing_skipped_or_clamped(split, count):
    path = QVH_DIR / f"highlight_{split}_release.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not present (shared QVHighlights data)")
    records, report = read_qvhighlights(path)
    assert len(records) == count
    assert report == ReadReport()
    assert len({r["qid"] for r in records}) == count
    for record in records[::97]:
        # the window rule reproduces the released clip ids; the scores follow sum / 12
        windows_only = {k: v for k, v in record.items() if k != "saliency_scores"}
        num_clips = int(record["duration"] // 2)
        assert np.flatnonzero(saliency_targets(windows_only, num_clips)).tolist() == record["relevant_clip_ids"]
        targets = saliency_targets(record, num_clips)
        assert targets[record["relevant_clip_ids"]].tolist() == [sum(row) / 12 for row in record["saliency_scores"]]


def test_qvhighlights_record_is_normalised(tmp_path):
    records, report = read_qvhighlights(write_jsonl(tmp_path / "a.jsonl", [GOOD]))
    assert records == [
        {
            "qid": 7,
            "query": "A man cooks.",
            "vid": "abc_60.0_210.0",
            "duration": 150.0,
            "relevant_windows": [[2.0, 6.0], [140.0, 150.0]],
            "relevant_clip_ids": GOOD["relevant_clip_ids"],
            "saliency_scores": [[float(x) for x in row] for row in GOOD["saliency_scores"]],
        }
    ]
    assert report.summary() == "all records read"


def test_test_split_without_windows_needs_require_windows_false(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", [{"qid": 1, "query": "q", "duration": 150, "vid": "v"}])
    with pytest.raises(AnnotationError, match=rf"^{re.escape(str(path))}:1: missing field 'relevant_windows'$"):
        read_qvhighlights(path)
    records, _ = read_qvhighlights(path, require_windows=False)
    assert records == [{"qid": 1, "query": "q", "vid": "v", "duration": 150.0}]


BAD_QVH = [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (with_(query=None), "missing field 'query'"),
    (with_(vid=None), "missing field 'vid'"),
    (with_(qid=True), "qid must be an int or a non-empty string"),
    (with_(duration="150"), "duration must be a finite number, got '150'"),
    (with_(duration=0), "duration 0 s is not positive"),
    (with_(query="  \t "), "query is empty or not a string"),
    (with_(relevant_windows=[]), "relevant_windows must be a non-empty list"),
    (with_(relevant_windows=[[40, 20]]), r"window \[40, 20\] ends before it starts"),
    (with_(relevant_windows=[[30, 30]]), r"window \[30, 30\] has zero length"),
    (with_(relevant_windows=[[-2, 20]]), r"window \[-2, 20\] starts before 0"),
    (with_(relevant_windows=[[140, 160]]), r"window \[140, 160\] ends 10 s after the video end \(150 s\)"),
    (with_(relevant_windows=[[140, 150.5]]), r"window \[140, 150.5\] ends 0.5 s after the video end"),
    (with_(relevant_windows=[[1, 2, 3]]), r"window \[1, 2, 3\] is not a \[start, end\] pair"),
    (with_(relevant_windows=[[1, "x"]]), "window end must be a finite number"),
    (with_(relevant_clip_ids=[1, 75], saliency_scores=[[1, 1, 1], [1, 1, 1]]), "clip id 75 is not a 2 s clip of a 150 s video"),
    (with_(saliency_scores=[[1, 1, 1]]), "saliency_scores has 1 rows for 7 relevant_clip_ids"),
    (with_(relevant_clip_ids=None), "saliency_scores has 7 rows for 0 relevant_clip_ids"),
    (with_(relevant_clip_ids=[1], saliency_scores=[[5, 1, 1]]), r"saliency row \[5, 1, 1\] is not 3 scores in \[0, 4\]"),
    (with_(relevant_clip_ids=[1], saliency_scores=[[1, 1]]), r"saliency row \[1, 1\] is not 3 scores"),
    (with_(relevant_clip_ids=[1], saliency_scores=[[]]), r"saliency row \[\] is not 3 scores"),
    (with_(duration=float("nan")), "duration must be a finite number, got nan"),
    (with_(qid=8, vid="../../etc/x"), "video id '../../etc/x' contains '..'"),
    (with_(qid=8, vid="/abs/v"), "video id '/abs/v' is absolute"),
]


@pytest.mark.parametrize("bad, problem", BAD_QVH)
def test_each_malformed_qvhighlights_record_raises_naming_file_and_line(tmp_path, bad, problem):
    path = write_jsonl(tmp_path / "train.jsonl", [GOOD, "", bad, GOOD])  # blank line 2 still counts
    with pytest.raises(AnnotationError, match=rf"^{re.escape(str(path))}:3: {problem}") as info:
        read_qvhighlights(path)
    assert "\n" not in str(info.value)


def test_duplicate_qids_are_refused_naming_both_lines(tmp_path):
    path = write_jsonl(tmp_path / "val.jsonl", [GOOD, with_(qid=8), "", with_(qid=7, query="another")])
    with pytest.raises(AnnotationError, match=rf"^{re.escape(str(path))}:4: duplicate qid 7 \(first at {re.escape(str(path))}:1\)$"):
        read_qvhighlights(path)
    records, report = read_qvhighlights(path, skip_bad=True)  # the later one is left out
    assert [r["query"] for r in records] == ["A man cooks.", "A man cooks."] and report.skipped == 1


def test_duplicate_qids_are_refused_in_json_formats_too(tmp_path):
    """TACoS qids are ``{vid}_{i}``: ``a.avi`` and ``a`` both give ``a_0``."""
    video = {"num_frames": 250, "fps": 25.0, "timestamps": [[0, 25]], "sentences": ["b"]}
    path = tacos_file(tmp_path, {"a.avi": video, "a": video})
    with pytest.raises(AnnotationError, match=rf"^{re.escape(str(path))}:a\[0\]: duplicate qid 'a_0' \(first at .*:a\.avi\[0\]\)$"):
        read_tacos(path)


@pytest.mark.parametrize("dataset", ["mad", "charades"])
def test_unsafe_vids_are_refused_in_every_format(tmp_path, dataset):
    if dataset == "mad":
        path = mad_file(tmp_path, {"17": {**MAD_GOOD, "movie": "../../etc/x"}})
        where, kwargs = f"{path}:17", {}
    else:
        path = tmp_path / "sta.txt"
        path.write_text("../../etc/x 1.0 2.0##person turns.\n")
        where, kwargs = f"{path}:1", {"durations": {"../../etc/x": 30.0}}
    with pytest.raises(AnnotationError, match=rf"^{re.escape(where)}: video id '../../etc/x' contains '..'$"):
        read_annotations(path, dataset, **kwargs)


@pytest.mark.parametrize("reader", [read_qvhighlights, read_tacos, partial(read_charades_sta, durations=None)])
def test_a_missing_file_or_a_folder_is_one_error_naming_it(tmp_path, reader):
    with pytest.raises(AnnotationError, match=rf"^{re.escape(str(tmp_path / 'gone'))}: file not found$"):
        reader(tmp_path / "gone")
    with pytest.raises(AnnotationError, match=rf"^{re.escape(str(tmp_path))}: is a folder, not a file$"):
        reader(tmp_path)


def test_skip_bad_counts_every_bad_record_and_keeps_the_first_reasons(tmp_path):
    bad = [b for b, _ in BAD_QVH]
    path = write_jsonl(tmp_path / "train.jsonl", [GOOD, *bad, with_(qid=8)])
    records, report = read_qvhighlights(path, skip_bad=True)
    assert len(records) == 2
    assert report.skipped == len(BAD_QVH)
    assert len(report.reasons) == MAX_REASONS
    assert report.reasons[0] == f"{path}:2: not valid JSON (Expecting property name enclosed in double quotes, column 2)"
    assert report.reasons[4].startswith(f"{path}:6: qid must be")
    assert report.summary() == f"skipped {len(BAD_QVH)} malformed records (first: {report.reasons[0]})"


def test_end_within_a_millisecond_is_clamped_and_counted(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [with_(relevant_windows=[[140, 150.0005]], relevant_clip_ids=None, saliency_scores=None)])
    records, report = read_qvhighlights(path)
    assert records[0]["relevant_windows"] == [[140.0, 150.0]]
    assert report.clamped == 1
    assert report.summary() == "clamped 1 window ends to the video duration"


# ---------------------------------------------------------------- Charades-STA

CHARADES = """3MSZA 24.3 30.4##person turn a light on.

3MSZA 0.0 6.9##a person is holding a phone.
AMT7R 4.3 32.5##a person is putting a picture onto the wall.
"""
DURATIONS = {"3MSZA": 31.29, "AMT7R": 31.0}


def test_charades_lines_with_a_duration_mapping(tmp_path):
    path = tmp_path / "charades_sta_test.txt"
    path.write_text(CHARADES)
    records, report = read_charades_sta(path, DURATIONS)
    assert records == [
        {"qid": 0, "query": "person turn a light on.", "vid": "3MSZA", "duration": 31.29, "relevant_windows": [[24.3, 30.4]]},
        {"qid": 2, "query": "a person is holding a phone.", "vid": "3MSZA", "duration": 31.29, "relevant_windows": [[0.0, 6.9]]},
        {
            "qid": 3,
            "query": "a person is putting a picture onto the wall.",
            "vid": "AMT7R",
            "duration": 31.0,
            "relevant_windows": [[4.3, 31.0]],
        },
    ]
    assert report.clamped == 1  # 32.5 s > 31 s by less than the 2 s Charades slack


def test_charades_durations_from_the_csv(tmp_path):
    path = tmp_path / "charades_sta_test.txt"
    path.write_text(CHARADES)
    csv_path = tmp_path / "Charades_v1_test.csv"
    csv_path.write_text('id,subject,script,length\n3MSZA,X,"turns on\na light",31.29\nAMT7R,Y,hangs a picture,31.00\n')
    assert read_charades_durations(csv_path) == DURATIONS
    assert read_charades_sta(path, csv_path) == read_charades_sta(path, DURATIONS)
    assert read_charades_sta(path, str(csv_path)) == read_charades_sta(path, DURATIONS)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("id,length\n3MSZA,abc\n", r":2: length 'abc' is not a number"),
        ("id,duration\n3MSZA,31.2\n", r":1: a durations CSV needs columns 'id' and 'length'"),
    ],
)
def test_charades_bad_csv_raises_naming_it(tmp_path, text, problem):
    csv_path = tmp_path / "Charades_v1_test.csv"
    csv_path.write_text(text)
    (tmp_path / "sta.txt").write_text(CHARADES)
    with pytest.raises(AnnotationError, match=rf"^{re.escape(str(csv_path))}{problem}"):
        read_charades_sta(tmp_path / "sta.txt", csv_path, skip_bad=True)


def test_charades_without_durations_uses_latest_window_end_only_when_asked(tmp_path):
    path = tmp_path / "sta.txt"
    path.write_text(CHARADES)
    records, report = read_charades_sta(path, None)
    assert [r["duration"] for r in records] == [30.4, 30.4, 32.5]
    assert report.clamped == 0
    with pytest.raises(ValueError, match="charades needs durations="):
        read_annotations(path, "charades")
    assert read_annotations(path, "charades", durations=None) == (records, report)


@pytest.mark.parametrize(
    "line, problem",
    [
        ("3MSZA 24.3 30.4 person turn a light on.", "expected 'VIDEOID START END##sentence'"),
        ("3MSZA 24.3##person turns.", "expected 'VIDEOID START END##sentence'"),
        ("3MSZA 24.3 x##person turns.", "start or end is not a number"),
        ("ZZZZZ 1.0 2.0##person turns.", "no duration for video 'ZZZZZ'"),
        ("3MSZA 30.4 24.3##person turns.", r"window \[30.4, 24.3\] ends before it starts"),
        ("3MSZA 20.0 34.0##person turns.", r"window \[20, 34\] ends 2.71 s after the video end \(31.29 s\)"),
        ("3MSZA 31.5 32.0##person turns.", r"window \[31.5, 32\] starts after the video end"),
        ("3MSZA 31.29 32.0##person turns.", r"window \[31.29, 32\] has no length inside the 31.29 s video"),
        ("3MSZA 1.0 2.0##   ", "query is empty"),
        ("3MSZA nan 2.0##person turns.", "window start must be a finite number"),
    ],
)
def test_each_malformed_charades_line_raises_naming_file_and_line(tmp_path, line, problem):
    path = tmp_path / "sta.txt"
    path.write_text(f"3MSZA 24.3 30.4##person turn a light on.\n{line}\n")
    with pytest.raises(AnnotationError, match=rf"^{re.escape(str(path))}:2: {problem}"):
        read_charades_sta(path, DURATIONS)
    records, report = read_charades_sta(path, DURATIONS, skip_bad=True)
    assert [r["qid"] for r in records] == [0]
    assert report.skipped == 1 and report.reasons[0].startswith(f"{path}:2: ")


# ---------------------------------------------------------------- Ego4D NLQ


def nlq_query(start, end, text="Where did I put the knife?", **extra) -> dict:
    query = {
        "clip_start_sec": start,
        "clip_end_sec": end,
        "video_start_sec": start + 10,
        "video_end_sec": end + 10,
        "template": "Objects: X",
    }
    if text != "absent":
        query["query"] = text
    query.update(extra)
    return query


def nlq_file(tmp_path: Path, queries_a: list, queries_b: list) -> Path:
    clip = {"video_start_sec": 10.0, "video_end_sec": 490.0, "clip_start_sec": 0, "clip_end_sec": 480.0}
    data = {
        "version": "1",
        "videos": [
            {
                "video_uid": "video-1",
                "clips": [
                    {**clip, "clip_uid": "clip-a", "annotations": [{"annotation_uid": "ann-a", "language_queries": queries_a}]},
                    {
                        **clip,
                        "clip_uid": "clip-b",
                        "clip_end_sec": 300.5,
                        "annotations": [{"annotation_uid": "ann-b", "language_queries": queries_b}],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "nlq_val.json"
    path.write_text(json.dumps(data))
    return path


def test_ego4d_records_are_per_clip_and_queries_without_text_are_counted(tmp_path):
    path = nlq_file(
        tmp_path,
        [nlq_query(1.5, 20.25), nlq_query(5, 6, text=None), nlq_query(7, 8, text="absent"), nlq_query(30, 30, text="What did I eat?")],
        [nlq_query(0, 12, text="  "), nlq_query(100, 300.7, text="Who did I talk to?")],
    )
    records, report = read_ego4d_nlq(path)
    assert records == [
        {"qid": "ann-a_0", "query": "Where did I put the knife?", "vid": "clip-a", "duration": 480.0, "relevant_windows": [[1.5, 20.25]]},
        {"qid": "ann-a_3", "query": "What did I eat?", "vid": "clip-a", "duration": 480.0, "relevant_windows": [[30.0, 30.0]]},
        {"qid": "ann-b_1", "query": "Who did I talk to?", "vid": "clip-b", "duration": 300.5, "relevant_windows": [[100.0, 300.5]]},
    ]
    assert (report.skipped, report.missing_queries, report.clamped) == (0, 3, 1)
    assert report.summary() == "clamped 1 window ends to the video duration; left out 3 queries without text"
    assert read_annotations(path, "ego4d") == (records, report)


@pytest.mark.parametrize(
    "query, problem",
    [
        (nlq_query(20, 10), r"window \[20, 10\] ends before it starts"),
        (nlq_query(290, 302.5), r"window \[290, 302.5\] ends 2 s after the video end \(300.5 s\)"),
        ({"clip_start_sec": 1, "query": "Where?"}, "missing field 'clip_end_sec'"),
        (nlq_query(1, 2, text=5), "query is empty or not a string: 5"),
        ("Where?", "language query 'Where\\?' is not an object"),
    ],
)
def test_each_malformed_ego4d_query_raises_naming_its_record(tmp_path, query, problem):
    path = nlq_file(tmp_path, [nlq_query(1, 2)], [nlq_query(1, 2), query])
    where = re.escape(str(path)) + r":videos\[0\]\.clips\[1\]\.annotations\[0\]\.language_queries\[1\]"
    with pytest.raises(AnnotationError, match=rf"^{where}: {problem}"):
        read_ego4d_nlq(path)
    records, report = read_ego4d_nlq(path, skip_bad=True)
    assert [r["qid"] for r in records] == ["ann-a_0", "ann-b_0"] and report.skipped == 1


def test_ego4d_clip_without_uid_is_a_bad_record(tmp_path):
    path = nlq_file(tmp_path, [nlq_query(1, 2)], [])
    data = json.loads(path.read_text())
    del data["videos"][0]["clips"][0]["clip_uid"]
    path.write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=r"clips\[0\]\.annotations\[0\]\.language_queries\[0\]: missing field 'clip_uid'"):
        read_ego4d_nlq(path)


@pytest.mark.parametrize(
    "content, problem",
    [
        ('{"videos": [', r":1: not valid JSON"),
        ('{"clips": []}', r": expected a list at 'videos'"),
        ('{"videos": [{"video_uid": "v", "clips": [{"clip_uid": "c"}]}]}', r":videos\[0\]\.clips\[0\]: expected a list at 'annotations'"),
    ],
)
def test_ego4d_file_of_the_wrong_shape_raises_even_with_skip_bad(tmp_path, content, problem):
    path = tmp_path / "nlq_train.json"
    path.write_text(content)
    with pytest.raises(AnnotationError, match=rf"^{re.escape(str(path))}{problem}"):
        read_ego4d_nlq(path, skip_bad=True)


# ---------------------------------------------------------------- TACoS


def tacos_file(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "test.json"
    path.write_text(json.dumps(data))
    return path


def test_tacos_frames_become_seconds(tmp_path):
    video = {"num_frames": 500, "fps": 25.0, "timestamps": [[50, 100], [450, 510]], "sentences": ["He took out a pan.", "He washed it."]}
    records, report = read_tacos(tacos_file(tmp_path, {"s13-d21.avi": video}))
    assert records == [
        {"qid": "s13-d21_0", "query": "He took out a pan.", "vid": "s13-d21", "duration": 20.0, "relevant_windows": [[2.0, 4.0]]},
        {"qid": "s13-d21_1", "query": "He washed it.", "vid": "s13-d21", "duration": 20.0, "relevant_windows": [[18.0, 20.0]]},
    ]
    assert report.clamped == 1  # 10 frames (0.4 s) past num_frames, within the 1 s TACoS slack


@pytest.mark.parametrize(
    "video, problem",
    [
        ({"fps": 25.0, "timestamps": [[0, 10]], "sentences": ["a"]}, "missing field 'num_frames'"),
        ({"num_frames": 500, "fps": 0, "timestamps": [[0, 10]], "sentences": ["a"]}, "fps 0 is not positive"),
        (
            {"num_frames": 500, "fps": 25.0, "timestamps": [[0, 10]], "sentences": ["a", "b"]},
            "timestamps and sentences must be lists of the same length",
        ),
        ({"num_frames": 500, "fps": 25.0, "timestamps": [[20, 10]], "sentences": ["a"]}, r"window \[0.8, 0.4\] ends before it starts"),
        (
            {"num_frames": 500, "fps": 25.0, "timestamps": [[0, 550]], "sentences": ["a"]},
            r"window \[0, 22\] ends 2 s after the video end \(20 s\)",
        ),
        (
            {"num_frames": 500, "fps": 25.0, "timestamps": [[0]], "sentences": ["a"]},
            r"timestamp \[0\] is not a \[start_frame, end_frame\] pair",
        ),
        ({"num_frames": 500, "fps": 25.0, "sentences": ["a"]}, "missing field 'timestamps'"),
    ],
)
def test_each_malformed_tacos_entry_raises_naming_video_and_sentence(tmp_path, video, problem):
    good = {"num_frames": 250, "fps": 25.0, "timestamps": [[0, 25]], "sentences": ["b"]}
    path = tacos_file(tmp_path, {"s1-d1.avi": good, "s2-d2.avi": video})
    with pytest.raises(AnnotationError, match=rf"^{re.escape(str(path))}:s2-d2\.avi\[0\]: {problem}"):
        read_tacos(path)
    records, report = read_tacos(path, skip_bad=True)
    assert [r["vid"] for r in records] == ["s1-d1"] and report.skipped >= 1


def test_tacos_file_of_the_wrong_shape_raises(tmp_path):
    path = tacos_file(tmp_path, {"version": "1", "videos": []})
    with pytest.raises(AnnotationError, match=rf"^{re.escape(str(path))}: expected a mapping video name"):
        read_tacos(path, skip_bad=True)


# ---------------------------------------------------------------- MAD

MAD_GOOD = {"movie": "3001_21_JUMP_STREET", "sentence": "Someone runs.", "timestamps": [12.5, 16.0], "movie_duration": 6000.0}


def mad_file(tmp_path: Path, data) -> Path:
    path = tmp_path / "MAD_val.json"
    path.write_text(json.dumps(data))
    return path


def test_mad_annotations_become_records_keyed_by_annotation_id(tmp_path):
    alias = {"movie": "1010_TITANIC", "sentence": " She smiles. ", "timestamps": [0, 3.25], "duration": 11000}
    path = mad_file(tmp_path, {"17": MAD_GOOD, "18": alias})
    records, report = read_mad(path)
    assert records == [
        {"qid": "17", "query": "Someone runs.", "vid": "3001_21_JUMP_STREET", "duration": 6000.0, "relevant_windows": [[12.5, 16.0]]},
        {"qid": "18", "query": "She smiles.", "vid": "1010_TITANIC", "duration": 11000.0, "relevant_windows": [[0.0, 3.25]]},
    ]
    assert report == ReadReport()
    assert read_annotations(path, "mad") == (records, report)


def test_mad_end_within_a_second_of_the_movie_end_is_clamped(tmp_path):
    records, report = read_mad(mad_file(tmp_path, {"1": {**MAD_GOOD, "timestamps": [5995, 6000.6]}}))
    assert records[0]["relevant_windows"] == [[5995.0, 6000.0]] and report.clamped == 1


def mad_without(key: str) -> dict:
    return {k: v for k, v in MAD_GOOD.items() if k != key}


BAD_MAD = [
    (mad_without("sentence"), "missing field 'sentence'"),
    (mad_without("movie"), "missing field 'movie'"),
    (mad_without("timestamps"), "missing field 'timestamps'"),
    (mad_without("movie_duration"), r"missing field 'movie_duration' \(or 'duration'\)"),
    ({**MAD_GOOD, "timestamps": [16.0, 12.5]}, r"window \[16, 12.5\] ends before it starts"),
    ({**MAD_GOOD, "timestamps": [5990, 6010]}, r"window \[5990, 6010\] ends 10 s after the video end \(6000 s\)"),
    ({**MAD_GOOD, "timestamps": [6000.5, 6000.8]}, r"window \[6000.5, 6000.8\] starts after the video end"),
    ({**MAD_GOOD, "timestamps": [-3, 2]}, r"window \[-3, 2\] starts before 0"),
    ({**MAD_GOOD, "sentence": "   "}, "query is empty or not a string"),
    ({**MAD_GOOD, "movie_duration": None}, "duration must be a finite number, got None"),
    ("Someone runs.", "expected an object with movie, sentence, timestamps, movie_duration"),
]


@pytest.mark.parametrize("bad, problem", BAD_MAD)
def test_each_malformed_mad_annotation_raises_naming_file_and_key(tmp_path, bad, problem):
    path = mad_file(tmp_path, {"1": MAD_GOOD, "2": bad, "3": MAD_GOOD})
    with pytest.raises(AnnotationError, match=rf"^{re.escape(str(path))}:2: {problem}") as info:
        read_mad(path)
    assert "\n" not in str(info.value)
    records, report = read_mad(path, skip_bad=True)
    assert [r["qid"] for r in records] == ["1", "3"]
    assert report.skipped == 1 and report.reasons[0].startswith(f"{path}:2: ")


def test_mad_skip_bad_counts_every_bad_annotation(tmp_path):
    data = {"good": MAD_GOOD, **{f"bad{i}": bad for i, (bad, _) in enumerate(BAD_MAD)}}
    records, report = read_annotations(mad_file(tmp_path, data), "mad", skip_bad=True)
    assert [r["qid"] for r in records] == ["good"]
    assert report.skipped == len(BAD_MAD) and len(report.reasons) == MAX_REASONS


@pytest.mark.parametrize("content, problem", [("[1, 2]", ": expected a mapping annotation id"), ('{"1": ', ":1: not valid JSON")])
def test_mad_file_of_the_wrong_shape_raises_even_with_skip_bad(tmp_path, content, problem):
    path = tmp_path / "MAD_test.json"
    path.write_text(content)
    with pytest.raises(AnnotationError, match=rf"^{re.escape(str(path))}{problem}"):
        read_mad(path, skip_bad=True)


# ---------------------------------------------------------------- dispatch


def test_read_annotations_dispatches_and_rejects_unknown_datasets(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [GOOD])
    assert DATASETS == ("qvhighlights", "charades", "ego4d", "tacos", "mad")
    assert read_annotations(path, "qvhighlights") == read_qvhighlights(path)
    tacos = tacos_file(tmp_path, {"s1-d1.avi": {"num_frames": 250, "fps": 25.0, "timestamps": [[0, 25]], "sentences": ["b"]}})
    assert read_annotations(tacos, "tacos") == read_tacos(tacos)
    with pytest.raises(ValueError, match="unknown dataset 'activitynet'; choose one of: qvhighlights, charades, ego4d, tacos, mad"):
        read_annotations(path, "activitynet")


# ---------------------------------------------------------------- saliency targets


def test_saliency_targets_from_annotator_scores():
    record = {"relevant_windows": [[2, 6]], "relevant_clip_ids": [1, 2], "saliency_scores": [[4, 4, 4], [1, 2, 3]]}
    assert saliency_targets(record, 5).tolist() == [0.0, 1.0, 0.5, 0.0, 0.0]
    assert saliency_targets(record, 2).tolist() == [0.0, 1.0]  # clips past the features are dropped
    # 1 s clips take the score of the 2 s clip holding their centre
    assert saliency_targets(record, 7, clip_seconds=1.0).tolist() == [0.0, 0.0, 1.0, 1.0, 0.5, 0.5, 0.0]


def test_saliency_targets_from_windows():
    assert saliency_targets({"relevant_windows": [[3.0, 7.0]]}, 5).tolist() == [0, 1, 1, 1, 0]
    assert saliency_targets({"relevant_windows": [[4.0, 4.0]]}, 5).tolist() == [0, 0, 1, 0, 0]  # zero length: its clip
    assert saliency_targets({"relevant_windows": [[0.0, 1.0], [8.5, 12.0]]}, 5).tolist() == [1, 0, 0, 0, 1]
    # 294 / 29.4 = 10.000000000000002 s: rounding does not reach into the next clip
    assert saliency_targets({"relevant_windows": [[0.0, 294 / 29.4]]}, 6).tolist() == [1, 1, 1, 1, 1, 0]
    assert saliency_targets({"relevant_windows": [[6 - 1e-10, 8.0]]}, 5).tolist() == [0, 0, 0, 1, 0]  # nor back into clip 2
    with pytest.raises(ValueError, match="neither saliency_scores nor relevant_windows"):
        saliency_targets({"qid": 3}, 5)
