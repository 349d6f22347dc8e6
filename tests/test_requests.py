"""`vtg ground --queries` files (qids: duplicates, defaults, CSV ints) and the queries Grounder.ground accepts."""

import re

import pytest

from vtg_pipeline.config import TrainConfig
from vtg_pipeline.grounder import Grounder, GroundError, Request, read_requests
from vtg_pipeline.models import create_model


def test_rows_without_qid_are_numbered_skipping_explicit_qids(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(
        '{"video": "a.mp4", "query": "x"}\n{"video": "a.mp4", "query": "y", "qid": 0}\n'
        '{"video": "a.mp4", "query": "z", "qid": ""}\n{"video": "a.mp4", "query": "w", "qid": "1"}\n'
    )
    # the old default (the row index) gave row 1 the qid 0 twice; "1" (a string) is not the int 1
    assert [r.qid for r in read_requests(path)] == [1, 0, 2, "1"]


def test_csv_qids_written_as_integers_are_ints(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("video,query,qid\na.mp4,x,7\na.mp4,y, 8 \na.mp4,z,007\na.mp4,w,clip-3\na.mp4,v,\n")
    assert read_requests(path) == [
        Request(str(tmp_path / "a.mp4"), q, qid) for q, qid in [("x", 7), ("y", 8), ("z", "007"), ("w", "clip-3"), ("v", 0)]
    ]


@pytest.mark.parametrize(
    "name, text, problem",
    [
        (
            "q.jsonl",
            '{"video": "a.mp4", "query": "x", "qid": 5}\n\n{"video": "b.mp4", "query": "y", "qid": 5}\n',
            r":3: duplicate qid 5 \(first at .*q\.jsonl:1\)$",
        ),
        ("q.csv", "video,query,qid\na.mp4,x,5\nb.mp4,y,5\n", r":3: duplicate qid 5 \(first at .*q\.csv:2\)$"),
        ("q.jsonl", '{"video": "a.mp4", "query": "x", "qid": 1.5}\n', r":1: qid must be an int or a non-empty string, got 1\.5$"),
        ("q.jsonl", "[1, 2]\n", r":1: expected a JSON object"),
        ("q.jsonl", '{"video": "a.mp4"\n', r":1: not valid JSON"),
    ],
)
def test_bad_queries_files_name_file_and_line(tmp_path, name, text, problem):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(GroundError, match=rf"^{re.escape(str(path))}{problem}"):
        read_requests(path)


def test_a_missing_queries_file_or_a_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path / 'q.jsonl'))}: file not found$"):
        read_requests(tmp_path / "q.jsonl")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path))}: is a folder, not a file$"):
        read_requests(tmp_path)


@pytest.fixture(scope="module")
def grounder(tiny_backbone):
    cfg = TrainConfig()
    return Grounder(create_model(cfg.model), cfg, tiny_backbone)


def test_ground_takes_a_string_as_one_query(grounder, tmp_path):
    results = grounder.ground(tmp_path / "gone.mp4", "a dog")  # a missing video: an error record per query, nothing decoded
    assert [(r["query"], r["error"]) for r in results] == [("a dog", "no such video file")]
    assert [r["query"] for r in grounder.ground(tmp_path / "gone.mp4", ["a dog", "a cat"])] == ["a dog", "a cat"]


@pytest.mark.parametrize("queries", [("a dog",), {"a dog"}, None, ["a dog", 3]])
def test_ground_refuses_other_query_types(grounder, tmp_path, queries):
    with pytest.raises(TypeError, match="queries must be a string or a list of strings"):
        grounder.ground(tmp_path / "gone.mp4", queries)
