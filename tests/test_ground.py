"""`vtg ground` and the Grounder API: shared encoding, windows for long videos, per-item errors, the report."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from vtg_pipeline.checkpoint import CheckpointError
from vtg_pipeline.cli import main
from vtg_pipeline.config import load_config
from vtg_pipeline.grounder import Grounder, GroundError, Request, read_requests
from vtg_pipeline.inference import window_starts
from vtg_pipeline.names import hms
from vtg_pipeline.training import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(synth_root):
    """The shared synthetic dataset, with a checkpoint trained for one epoch in ``run/``."""
    cfg = load_config(
        ROOT / "configs" / "synthetic.yaml",
        [
            f"data.root={synth_root}",
            f"output_dir={synth_root / 'run'}",
            "optim.epochs=1",
            "optim.batch_size=4",
            "model.dims=32",
            "model.heads=4",
        ],
    )
    train(cfg)
    return synth_root


def videos(root: Path) -> list[Path]:
    return sorted((root / "videos").glob("*.mp4"))


def test_hms_and_windows():
    assert hms(0) == "0:00:00.0" and hms(3725.25) == "1:02:05.2" and hms(59.96) == "0:01:00.0"
    assert window_starts(50, 75, 37) == [0]
    assert window_starts(200, 75, 37) == [0, 37, 74, 111, 125]


def test_ground_returns_sorted_moments_and_a_saliency_curve(trained):
    grounder = Grounder.from_pretrained(trained / "run" / "best")
    video = videos(trained)[0]
    results = grounder.ground(video, ["a red disc rises", "a blue ring grows"])
    assert [r["query"] for r in results] == ["a red disc rises", "a blue ring grows"]
    for r in results:
        scores = [w[2] for w in r["pred_relevant_windows"]]
        assert scores == sorted(scores, reverse=True) and 0 < len(scores) <= 50
        assert all(0 <= s <= e <= r["duration"] for s, e, _ in r["pred_relevant_windows"])
        assert len(r["pred_saliency_scores"]) == len(r["clip_times"]) == int(r["duration"] * 0.5)
        assert r["pred_relevant_windows_hms"][0] == [hms(x) for x in r["pred_relevant_windows"][0][:2]]


def test_windowed_grounding_covers_long_videos_in_absolute_seconds(trained):
    """A video longer than decode.window is cut into windows; a window as long as the video changes nothing."""
    grounder = Grounder.from_pretrained(trained / "run" / "best")
    video = max(videos(trained), key=lambda p: p.stat().st_size)
    whole = grounder.ground(video, ["a green square falls"])[0]
    grounder.cfg.decode.window, grounder.cfg.decode.window_stride = 1e6, 5e5
    assert grounder.ground(video, ["a green square falls"])[0] == whole
    grounder.cfg.decode.window, grounder.cfg.decode.window_stride = 20.0, 10.0
    windowed = grounder.ground(video, ["a green square falls"])[0]
    assert whole["duration"] > 20
    assert len(windowed["pred_saliency_scores"]) == len(whole["pred_saliency_scores"])
    ends = [e for _, e, _ in windowed["pred_relevant_windows"]]
    assert max(ends) > 20, "moments from later windows are shifted to absolute time"
    assert all(0 <= s <= e <= windowed["duration"] for s, e, _ in windowed["pred_relevant_windows"])


def test_bad_items_get_error_records_and_the_rest_complete(trained, tmp_path):
    grounder = Grounder.from_pretrained(trained / "run" / "best")
    good = str(videos(trained)[0])
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    long_query = " ".join(["red"] * 100)
    results = grounder.ground_many(
        [
            Request(good, "a red disc rises", "a"),
            Request(str(tmp_path / "missing.mp4"), "x", "b"),
            Request(str(corrupt), "x", "c"),
            Request(str(text), "x", "d"),
            Request(good, "   ", "e"),
            Request(good, long_query, "f"),
        ],
        tmp_path / "store",
    )
    by_qid = {r["qid"]: r for r in results}
    assert [r["qid"] for r in results] == list("abcdef")
    assert "error" not in by_qid["a"] and by_qid["a"]["pred_relevant_windows"]
    assert by_qid["b"]["error"] == "no such video file"
    assert "error" in by_qid["c"] and "error" in by_qid["d"]
    assert by_qid["e"]["error"] == "empty query"
    assert "truncated" in by_qid["f"]["warning"] and by_qid["f"]["pred_relevant_windows"]


def test_videos_in_the_feature_store_are_not_decoded_again(trained, tmp_path, monkeypatch):
    grounder = Grounder.from_pretrained(trained / "run" / "best")
    video = str(videos(trained)[1])
    first = grounder.ground(video, ["a red disc rises"], tmp_path / "store")
    import vtg_pipeline.engine as module

    def no_extract(cfg, items, backbone, state=None):
        assert not items, "nothing should be decoded again"
        from vtg_pipeline.extract import ExtractSummary

        return ExtractSummary()

    monkeypatch.setattr(module, "extract_videos", no_extract)
    assert grounder.ground(video, ["a red disc rises"], tmp_path / "store") == first


def test_checkpoint_with_other_backbone_weights_is_refused(trained, tmp_path):
    checkpoint = tmp_path / "best"
    shutil.copytree(trained / "run" / "best", checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    config["backbone_spec"]["backbone_sha256"] = "0" * 64
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json: the weights were trained on backbone backbone_sha256 0000"):
        Grounder.from_pretrained(checkpoint)
    with pytest.raises(CheckpointError, match="not found"):
        Grounder.from_pretrained(tmp_path / "nothing")


def test_queries_file_jsonl_and_csv(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"video": "a.mp4", "query": "x", "qid": 7}\n\n{"video": "/abs/b.mp4", "query": "y"}\n')
    requests = read_requests(tmp_path / "q.jsonl")
    assert requests == [Request(str(tmp_path / "a.mp4"), "x", 7), Request("/abs/b.mp4", "y", 0)]
    (tmp_path / "q.csv").write_text("video,query,qid\na.mp4,the chef cuts the pizza,\n")
    assert read_requests(tmp_path / "q.csv") == [Request(str(tmp_path / "a.mp4"), "the chef cuts the pizza", 0)]
    (tmp_path / "bad.jsonl").write_text('{"video": "a.mp4", "query": "x"}\n{"query": "y"}\n')
    with pytest.raises(GroundError, match=r"bad.jsonl:2: needs 'video' and 'query'"):
        read_requests(tmp_path / "bad.jsonl")


def test_vtg_ground_cli_writes_predictions_and_a_report(trained, tmp_path, capsys):
    out = tmp_path / "preds.jsonl"
    code = main(
        [
            "ground",
            "--checkpoint",
            str(trained / "run" / "best"),
            str(trained / "videos"),
            str(tmp_path / "gone.mp4"),
            "--query",
            "a red disc rises",
            "--query",
            "a blue ring grows",
            "--out",
            str(out),
            "--report",
            str(tmp_path / "report"),
            "--no-progress",
        ]
    )
    assert code == 1, "one missing video: exit 1 after the summary"
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 * (len(videos(trained)) + 1)
    assert sum("error" in r for r in records) == 2
    assert "2 failed" in capsys.readouterr().err
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count("<video") == len(videos(trained)) + 1 and "<svg" in page and "data:image/png;base64," in page
    assert 'onclick="seek(' in page and "no such video file" in page


def test_grounding_raw_videos_reproduces_the_training_evaluation(trained, tmp_path):
    """`vtg ground` on the validation videos (features reused) gives the moments training's evaluation wrote,
    less the windows hard NMS suppressed (score 0), which only the official evaluation's input keeps."""
    grounder = Grounder.from_pretrained(trained / "run" / "best")
    results = grounder.ground_many(read_requests(trained / "val_queries.jsonl"), trained / "features")
    expected = {json.loads(line)["qid"]: json.loads(line) for line in (trained / "run" / "val_predictions.jsonl").read_text().splitlines()}
    assert {r["qid"] for r in results} == set(expected)
    for r in results:
        assert r["vid"] == expected[r["qid"]]["vid"]
        kept = [w for w in expected[r["qid"]]["pred_relevant_windows"] if w[2] > 0]  # ground drops what hard NMS suppressed
        np.testing.assert_allclose(r["pred_relevant_windows"], kept, atol=2e-4)
        np.testing.assert_allclose(r["pred_saliency_scores"], expected[r["qid"]]["pred_saliency_scores"], atol=2e-4)
