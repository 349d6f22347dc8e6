"""The synthetic dataset: reproducible, QVHighlights-shaped, not trivially groundable."""

import json

from vtg_pipeline.synth import CLIP_SECONDS, make_dataset
from vtg_pipeline.video import probe


def test_synthetic_dataset_is_reproducible_and_well_formed(tmp_path):
    a = make_dataset(tmp_path / "a", videos=3, seed=5, progress=False)
    make_dataset(tmp_path / "b", videos=3, seed=5, progress=False)
    assert (tmp_path / "a" / "train.jsonl").read_text() == (tmp_path / "b" / "train.jsonl").read_text()
    records = [json.loads(line) for split in ("train", "val") for line in (tmp_path / "a" / f"{split}.jsonl").read_text().splitlines()]
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


def _long_plans(count=40):
    import numpy as np

    from vtg_pipeline.synth import plan_video

    return [plan_video(np.random.default_rng([seed, 7]), long=True) for seed in range(count)]


def test_long_video_plans_hide_unique_targets_among_distractors():
    """Long videos (planned, not rendered): 20-60 min, an event every 30-60 s, one at a time, 5-10 unique targets."""
    import numpy as np

    from vtg_pipeline.synth import LONG_SIZES, _event_geometry, plan_video, query_records

    for seed, plan in enumerate(_long_plans()):
        assert 20 * 60 <= plan.duration <= 60 * 60 and plan.duration % CLIP_SECONDS == 0
        assert (plan.width, plan.height) in LONG_SIZES and plan.fps >= 0.5
        events = plan.events
        assert list(events) == sorted(events, key=lambda e: e.start)
        assert all(a.end < b.start for a, b in zip(events, events[1:])), "background between events"
        assert 0 <= events[0].start and events[-1].end <= plan.duration
        assert all(4 <= e.end - e.start <= 30 and e.start % CLIP_SECONDS == 0 == e.end % CLIP_SECONDS for e in events)
        assert 28 <= plan.duration / len(events) <= 62, "about one event every 30-60 s"
        targets = [e for e in events if e.target]
        distractors = [e for e in events if not e.target]
        assert 5 <= len(targets) <= 10 and len(distractors) >= len(targets)
        combos = [e.combo for e in events]
        assert all(combos.count(t.combo) == 1 for t in targets), "a target's combination appears once in its video"
        for d in distractors:
            shared = [sum(a == b for a, b in zip(d.combo, t.combo)) for t in targets]
            assert max(shared) in (1, 2), f"distractor {d.query} shares one or two attributes with a target"
        side = min(plan.width, plan.height)
        for event in events:
            for t in (event.start, event.end - 1e-6):
                cx, cy, r, _ = _event_geometry(event, t, plan.width, plan.height)
                assert (plan.width - side) / 2 <= cx - r and cx + r <= (plan.width + side) / 2
                assert (plan.height - side) / 2 <= cy - r and cy + r <= (plan.height + side) / 2

        records = query_records(seed, f"long_{seed:04d}", plan, np.random.default_rng(seed))
        assert sorted(r["query"] for r in records) == sorted(t.query for t in targets)
        assert len({r["qid"] for r in records}) == len(records)
        for r in records:
            assert r["duration"] == plan.duration and len(r["relevant_windows"]) == 1
            ((start, end),) = r["relevant_windows"]
            assert 0 <= start < end <= plan.duration
            assert r["relevant_clip_ids"] == list(range(int(start) // CLIP_SECONDS, int(end) // CLIP_SECONDS))
            assert len(r["saliency_scores"]) == len(r["relevant_clip_ids"])
            assert all(len(s) == 3 and all(1 <= v <= 4 for v in s) for s in r["saliency_scores"])

    again = plan_video(np.random.default_rng([0, 7]), long=True)
    assert again.events == _long_plans(1)[0].events, "the plan follows from the seed"


def test_long_video_frames_render_in_any_slice_and_show_the_events():
    import numpy as np

    from vtg_pipeline.synth import COLORS, _event_geometry, render_frames

    plan = _long_plans(1)[0]
    full = np.stack(list(render_frames(plan)))
    assert full.shape == (plan.frames, plan.height, plan.width, 3) and full.dtype == np.uint8
    target = next(e for e in plan.events if e.target)
    first, last = max(0, int(target.start * plan.fps) - 1), min(plan.frames, int(target.end * plan.fps) + 1)  # >= 2 s to the next event
    part = np.stack(list(render_frames(plan, first, last, chunk=7)))
    assert np.array_equal(part, full[first:last]), "a slice, in any chunking, is the same frames"
    for i in range(first, last):
        t = i / plan.fps
        drawn = np.all(full[i] == COLORS[target.color], axis=-1).any()
        visible = target.start <= t < target.end and _event_geometry(target, t, plan.width, plan.height)[3]
        assert drawn == bool(visible), f"frame {i}: the target is drawn exactly while it is visible"


def test_long_dataset_end_to_end(tmp_path):
    from vtg_pipeline.cli import build_parser
    from vtg_pipeline.synth import make_dataset

    args = build_parser().parse_args(["synth", "--out", str(tmp_path), "--long"])
    assert args.long and args.videos is None
    counts = make_dataset(tmp_path, videos=2, seed=4, progress=False, long=True)
    records = [json.loads(line) for split in ("train", "val") for line in (tmp_path / f"{split}.jsonl").read_text().splitlines()]
    assert counts == {
        "videos": 2,
        "train_queries": len(records) - counts["val_queries"],
        "val_queries": counts["val_queries"],
        "queries_sharing_words": counts["queries_sharing_words"],
    }
    assert sum(counts["queries_sharing_words"].values()) == len(records) and counts["queries_sharing_words"]["0"] == 0
    assert {r["vid"] for r in records} == {"long_0000", "long_0001"}
    assert len((tmp_path / "val_queries.jsonl").read_text().splitlines()) == counts["val_queries"] >= 5
    for vid in ("long_0000", "long_0001"):
        info = probe(str(tmp_path / "videos" / f"{vid}.mp4"))
        duration = next(r["duration"] for r in records if r["vid"] == vid)
        assert 20 * 60 <= duration <= 60 * 60 and abs(info.duration - duration) < 1.01
        assert info.width <= 128 and info.height <= 128 and 0.5 <= info.average_fps <= 2


def test_shared_words_counts_the_closest_other_event_of_each_query():
    import numpy as np

    from vtg_pipeline.synth import Event, VideoPlan, plan_video, shared_words

    def event(color, shape, action, target=True):
        return Event(color, shape, action, 0.0, 4.0, 0.5, 0.5, target)

    plan = VideoPlan(
        60,
        64,
        64,
        1,
        (
            event("red", "disc", "rises"),
            event("red", "disc", "falls", target=False),
            event("blue", "ring", "grows"),
            event("red", "disc", "rises"),
        ),
        np.zeros(0),
        np.zeros((1, 2, 3)),
    )
    assert shared_words(plan) == {"a red disc rises": 2, "a blue ring grows": 0}  # the repeat of a query is not another event
    for seed in range(3):  # long videos: every target has a distractor sharing one or two of its words
        assert set(shared_words(plan_video(np.random.default_rng([seed, 0]), long=True)).values()) <= {1, 2}
