"""Runs sharing an output folder: both finish, each video is written once or twice but never corrupted,
a live writer's partial file survives, and the manifest loses no record."""

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from test_store_safety import dead_pid, extract_config, tiny_video

import vtg_pipeline.features as features
from vtg_pipeline.extract import run_extract
from vtg_pipeline.features import FileLock, Manifest, StreamingSafetensorsWriter, load_features, remove_stale_partials

ROOT = Path(__file__).resolve().parents[1]


def assert_complete(out: Path, samples: dict[str, int]) -> None:
    """Every video has one whole feature file (``samples[name]`` rows) and a done record; no partial or lock file is left."""
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(f"{n}.safetensors" for n in samples)
    for name, rows in samples.items():
        data = load_features(out / f"{name}.safetensors", ["timestamps", "frames", "vision"])
        assert len(data["timestamps"]) == len(data["frames"]) == len(data["vision"]) == rows
        assert data["timestamps"].tolist() == [k / 2 for k in range(rows)] and np.isfinite(data["vision"].astype(np.float32)).all()
    assert {k: r["status"] for k, r in Manifest(out).records().items()} == {n: "done" for n in samples}
    assert not [p.name for p in out.iterdir() if p.name.endswith((".partial", ".lock"))]


def test_two_extract_processes_on_one_folder_both_finish(tmp_path, tiny_backbone):
    samples = {f"v{i}": 4 + i for i in range(4)}  # 10 frame/s videos sampled at 2 frame/s
    for name, rows in samples.items():
        tiny_video(tmp_path / "videos" / f"{name}.mp4", 5 * rows)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "vtg_pipeline",
        "extract",
        str(tmp_path / "videos"),
        "--out",
        str(out),
        "--model",
        "vtg-tiny",
        "--fps",
        "2",
        "--store",
        "both",
        "--batch-size",
        "4",
        "--workers",
        "1",
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [run.communicate(timeout=300)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errs
    for err in errs:  # each run accounts for every video: done by it, already there, or done by the other
        line = next(text for text in err.splitlines() if text.startswith("extract: "))
        numbers = [int(word) for word in line.split(" (")[0].replace(",", "").split() if word.isdigit()]
        assert sum(numbers) == len(samples) and " 0 failed" in line, line
    assert_complete(out, samples)


def test_a_video_held_by_another_run_is_waited_for_and_its_partial_kept(tmp_path, tiny_backbone):
    videos = tmp_path / "videos"
    for name in ("a", "b", "c"):
        tiny_video(videos / f"{name}.mp4")
    reference = tmp_path / "reference"
    run_extract(extract_config(videos, reference))
    out = tmp_path / "out"
    lock = FileLock(out / "a.safetensors")
    assert lock.acquire(wait=False)  # another run is writing a
    live = out / f".a.safetensors.{os.getpid()}.partial"
    live.write_bytes(b"in flight")
    result = {}
    worker = threading.Thread(target=lambda: result.update(summary=run_extract(extract_config(videos, out))))
    worker.start()
    deadline = time.monotonic() + 120
    while not {"b", "c"} <= set(Manifest(out).records()) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    assert worker.is_alive() and live.exists(), "the run waits for a and leaves the other run's partial file alone"
    shutil.copy2(reference / "a.safetensors", out / "a.safetensors")  # the other run commits a ...
    live.unlink()
    lock.release()  # ... and lets go of it
    worker.join(120)
    summary = result["summary"]
    assert (summary.done, summary.by_others, summary.failed) == (2, 1, 0)
    assert "2 done, 0 skipped, 0 failed, 1 done by another run" in summary.line()
    assert not list(out.glob(".*"))


def test_stale_partial_of_a_dead_writer_is_removed_and_a_live_one_kept(tmp_path):
    target = tmp_path / "a.safetensors"
    writer = StreamingSafetensorsWriter(target, {"vision": (np.float16, (1, 2))}, {})  # live: this process
    stale = tmp_path / f".a.safetensors.{dead_pid()}.partial"
    stale.write_bytes(b"left by a killed run")
    other = tmp_path / f".b.safetensors.{dead_pid()}.partial"
    other.write_bytes(b"another video's")
    remove_stale_partials(target)
    assert writer.tmp.exists() and not stale.exists() and other.exists()
    writer.write("vision", 0, np.ones((1, 2), np.float16))
    writer.commit()
    assert load_features(target, ["vision"])["vision"].tolist() == [[1.0, 1.0]]


def test_file_lock_is_exclusive_and_leaves_no_file(tmp_path):
    first, second = FileLock(tmp_path / "a.safetensors"), FileLock(tmp_path / "a.safetensors")
    assert first.acquire(wait=False) and not second.acquire(wait=False)
    first.release()
    assert not first.path.exists() and second.acquire(wait=False)
    second.release()
    assert list(tmp_path.iterdir()) == []


def test_compaction_keeps_a_record_appended_meanwhile(tmp_path, monkeypatch):
    manifest = Manifest(tmp_path)
    manifest.append("a", "a.mp4", "failed", reason="x")
    manifest.append("a", "a.mp4", "done")
    real_write, appender = features.atomic_write_text, threading.Thread(target=Manifest(tmp_path).append, args=("b", "b.mp4", "done"))

    def write_while_another_appends(path, text):
        appender.start()  # between compaction's read and its rewrite
        appender.join(0.5)  # unlocked, the record would land in the file about to be replaced
        real_write(path, text)

    monkeypatch.setattr(features, "atomic_write_text", write_while_another_appends)
    manifest.compact()
    appender.join()
    assert {k: r["status"] for k, r in manifest.records().items()} == {"a": "done", "b": "done"}
