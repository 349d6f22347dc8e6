"""The synthetic dataset: reproducible, QVHighlights-shaped, not trivially groundable."""

import json

from vtg_pipeline.synth import CLIP_SECONDS, make_dataset
from vtg_pipeline.video import probe


def test_synthetic_dataset_is_reproducible_and_well_formed(tmp_path):
    a = make_dataset(tmp_path / "a", videos=3, seed=5, progress=False)
    make_dataset(tmp_path / "b", videos=3, seed=5, progress=False)
    assert (tmp_path / "a" / "train.jsonl").read_text() == (tmp_path / "b" / "train.jsonl").read_text()
    records = [json.loads(l) for split in ("train", "val") for l in (tmp_path / "a" / f"{split}.jsonl").read_text().splitlines()]
    assert len(records) == a["train_queries"] + a["val_queries"]
    by_video = {}
    for r in records:
        assert 30 <= r["duration"] <= 180 and r["duration"] % CLIP_SECONDS == 0
        for start, end in r["relevant_windows"]:
            assert 0 <= start < end <= r["duration"] and 4 <= end - start <= 40
        assert len(r["relevant_clip_ids"]) == len(r["saliency_scores"]) and all(len(s) == 3 for s in r["saliency_scores"])
        assert all(1 <= s <= 4 for scores in r["saliency_scores"] for s in scores)
        by_video.setdefault(r["vid"], []).append(r["query"])
    for vid, queries in by_video.items():
        assert len(queries) >= 3 and len(set(queries)) == len(queries), "several distinct events per video"
        info = probe(str(tmp_path / "a" / "videos" / f"{vid}.mp4"))
        assert abs(info.duration - next(r["duration"] for r in records if r["vid"] == vid)) < 0.2


def test_different_seeds_give_different_data(tmp_path):
    make_dataset(tmp_path / "a", videos=2, seed=1, progress=False)
    make_dataset(tmp_path / "b", videos=2, seed=2, progress=False)
    assert (tmp_path / "a" / "train.jsonl").read_text() != (tmp_path / "b" / "train.jsonl").read_text()


def test_events_take_turns_and_stay_inside_the_centre_crop():
    """One event at a time, and every shape inside the centre square that CLIP's crop keeps."""
    import numpy as np

    from vtg_pipeline.synth import SIZES, _event_geometry, _plan_events

    for seed in range(30):
        rng = np.random.default_rng(seed)
        duration = int(rng.integers(15, 91)) * CLIP_SECONDS
        events = sorted(_plan_events(duration, rng), key=lambda e: e.start)
        assert all(a.end <= b.start for a, b in zip(events, events[1:]))
        assert events[-1].end <= duration
        width, height = SIZES[seed % len(SIZES)]
        side = min(width, height)
        for event in events:
            for t in (event.start, event.end - 1e-6):
                cx, cy, r, _ = _event_geometry(event, t, width, height)
                assert (width - side) / 2 <= cx - r and cx + r <= (width + side) / 2
                assert (height - side) / 2 <= cy - r and cy + r <= (height + side) / 2
