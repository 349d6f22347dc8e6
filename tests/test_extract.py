"""`extract` end to end: files, resume, redo, bad input, sharding over processes."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_input import assert_one_line_error
from pattern import index_image

from vtg_pipeline.cli import main
from vtg_pipeline.extract import ExtractConfig, ExtractError, find_videos, run_extract
from vtg_pipeline.features import StreamingSafetensorsWriter, load_features, read_metadata
from vtg_pipeline.synth import write_video

ROOT = Path(__file__).resolve().parents[1]


def make_folder(root: Path) -> Path:
    videos = root / "videos"
    write_video(videos / "a.mp4", [index_image(i, 96, 64) for i in range(60)], fps=10)
    write_video(videos / "sub" / "b.mkv", [index_image(i, 96, 64) for i in range(45)], fps=15)
    write_video(videos / "c.webm", [index_image(i, 80, 48) for i in range(30)], fps=10, codec="libvpx-vp9", pix_fmt="yuv420p")
    (videos / "notes.txt").write_text("not a video and not picked up")
    return videos


def config(videos: Path, out: Path, **overrides) -> ExtractConfig:
    settings = dict(
        video_dirs=[str(videos)], out=str(out), fps=2.0, model="vtg-tiny", pretrained="random:0", store="both", progress=False, batch_size=8
    )
    settings.update(overrides)
    return ExtractConfig(**settings)


@pytest.fixture()
def videos(tmp_path):
    return make_folder(tmp_path)


def test_extract_writes_design_format_and_matches_direct_backbone(videos, tmp_path, tiny_backbone):
    out = tmp_path / "features"
    summary = run_extract(config(videos, out))
    assert (summary.done, summary.failed) == (3, 0)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.safetensors")) == [
        "a.safetensors",
        "c.safetensors",
        "sub/b.safetensors",
    ]
    data = load_features(out / "a.safetensors", ["timestamps", "frames", "vision"])
    assert data["timestamps"].dtype == np.float64 and data["timestamps"].tolist() == [i / 2 for i in range(12)]
    assert data["frames"].shape == (12, 3, 64, 64) and data["frames"].dtype == np.uint8
    assert data["vision"].shape == (12, 4, 17, 64) and data["vision"].dtype == np.float16
    meta = read_metadata(out / "a.safetensors")
    for key in (
        "backbone",
        "pretrained",
        "backbone_sha256",
        "layers",
        "image_size",
        "fps",
        "decoder",
        "duration",
        "source_size",
        "source_mtime",
        "format_version",
    ):
        assert key in meta
    assert meta["backbone_sha256"] == tiny_backbone.spec.backbone_sha256 and json.loads(meta["layers"]) == [0, 1, 2, 3]
    direct = tiny_backbone.encode_frames(torch.from_numpy(data["frames"])).half().numpy()
    np.testing.assert_allclose(data["vision"].astype(np.float32), direct.astype(np.float32), atol=1e-2)
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {(r["id"], r["status"]) for r in manifest} == {("a", "done"), ("sub/b", "done"), ("c", "done")}


def test_rerun_skips_finished_and_redoes_changed(videos, tmp_path):
    out = tmp_path / "features"
    run_extract(config(videos, out))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    again = run_extract(config(videos, out))
    assert (again.done, again.skipped) == (0, 3)
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    write_video(videos / "a.mp4", [index_image(i, 96, 64) for i in range(80)], fps=10)  # source changed
    changed_source = run_extract(config(videos, out))
    assert (changed_source.done, changed_source.skipped) == (1, 2)
    assert load_features(out / "a.safetensors", ["timestamps"])["timestamps"].shape == (16,)
    changed_settings = run_extract(config(videos, out, fps=1.0))
    assert changed_settings.done == 3


def test_bad_files_are_recorded_and_the_rest_complete(videos, tmp_path):
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "garbage.mov").write_bytes(os.urandom(4096))
    good = (videos / "a.mp4").read_bytes()
    (videos / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (videos / "dangling.mp4").symlink_to(videos / "nowhere.mp4")
    out = tmp_path / "features"
    summary = run_extract(config(videos, out))
    assert (summary.done, summary.failed) == (3, 4)
    records = {json.loads(line)["id"]: json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()}
    assert records["empty"]["reason"] == "empty file (0 bytes)"
    assert records["dangling"]["reason"] == "no such file"
    assert all(records[k]["status"] == "failed" and "\n" not in records[k]["reason"] for k in ("garbage", "truncated"))
    assert not list(out.rglob("*.partial")) and not (out / "empty.safetensors").exists()


def test_cli_exit_status_and_summary(videos, tmp_path, capsys):
    out = tmp_path / "features"
    args = ["extract", str(videos), "--out", str(out), "--model", "vtg-tiny", "--fps", "1", "--no-progress"]
    assert main(args) == 0
    assert "3 done, 0 skipped, 0 failed" in capsys.readouterr().err
    (videos / "broken.mp4").write_bytes(b"nope" * 10)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "broken.mp4: not a readable video container" in err and "0 done, 3 skipped, 1 failed" in err
    (videos / "broken.mp4").unlink()
    assert main(args[:-1]) == 0  # with progress bars: none for a run with nothing to do
    assert capsys.readouterr().err == f"extract: nothing to do: 0 done, 3 skipped (up to date in {out}), 0 failed\n"


def test_the_bar_counts_frames_so_a_long_video_moves_it(tmp_path, monkeypatch):
    import vtg_pipeline.extract as extract

    shown = []

    class Recorded(extract.tqdm):
        def update(self, n=1):
            super().update(n)
            shown.append((self.n, self.total, self.postfix))

    monkeypatch.setattr(extract, "tqdm", Recorded)
    write_video(tmp_path / "v" / "long.mp4", [index_image(i, 96, 64) for i in range(60)], fps=10)
    (tmp_path / "v" / "broken.mp4").write_bytes(b"nope" * 10)
    run_extract(config(tmp_path / "v", tmp_path / "out", batch_size=4, chunk=4, progress=True))
    during = "1/2 videos, 1 failed"  # the broken video ends when probed; 6 s at 2 frame/s: 12 frames
    assert shown == [(4, 12, during), (8, 12, during), (12, 12, during)]


def test_inspect_prints_structured_values(videos, tmp_path, capsys):
    out = tmp_path / "features"
    run_extract(config(videos, out, fps=1.0))
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    summary = json.loads(text)
    counts = [len(load_features(path, ["timestamps"])["timestamps"]) for path in out.rglob("*.safetensors")]
    assert (summary["videos"], summary["frames"], summary["failed"]) == (3, sum(counts), 0)
    [group] = summary["settings"]
    assert group["layers"] == [0, 1, 2, 3] and group["fps"] == 1.0 and group["videos"] == 3
    assert group["frames_per_video"] == {"min": min(counts), "max": max(counts)}
    assert group["tensors"] == {
        "timestamps": {"shape": ["T"], "dtype": "float64"},
        "frames": {"shape": ["T", 3, 64, 64], "dtype": "uint8"},
        "vision": {"shape": ["T", 4, 17, 64], "dtype": "float16"},
    }
    assert '"shape": ["T", 4, 17, 64]' in text, "a shape on one line"


@pytest.mark.parametrize(
    "args,message",
    [
        (["extract", "/no/such/dir", "--out", "x"], "/no/such/dir: no such file or folder"),
        (["extract", ".", "--out", "x", "--model", "not-a-model"], "unknown open_clip model"),
        (["extract", ".", "--out", "x", "--model", "vtg-tiny", "--decoder", "magic"], "unknown decoder"),
    ],
)
def test_cli_user_errors_are_one_line(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_disk_fault_keeps_finished_videos_and_ends_with_one_line(videos, tmp_path, capsys, monkeypatch, code):
    """The disk fills up (or turns read-only) after the first video is committed."""
    out = tmp_path / "features"
    committed, real_write, real_commit = [], StreamingSafetensorsWriter.write, StreamingSafetensorsWriter.commit

    def write(self, name, start_row, rows):
        if committed:
            raise OSError(code, os.strerror(code), str(self.tmp))
        real_write(self, name, start_row, rows)

    monkeypatch.setattr(StreamingSafetensorsWriter, "write", write)
    monkeypatch.setattr(StreamingSafetensorsWriter, "commit", lambda self: committed.append(real_commit(self)) or committed[-1])
    args = [
        "extract",
        str(videos),
        "--out",
        str(out),
        "--model",
        "vtg-tiny",
        "--fps",
        "2",
        "--store",
        "both",
        "--batch-size",
        "2",
        "--workers",
        "1",
        "--no-progress",
    ]
    assert_one_line_error(args, capsys, str(out), os.strerror(code))
    assert committed and sorted(out.rglob("*.safetensors")) == sorted(committed)
    for path in committed:
        data = load_features(path, ["timestamps", "frames", "vision"])
        assert len(data["timestamps"]) == len(data["frames"]) == len(data["vision"]) > 0
    assert not list(out.rglob(".*")), "no partial or lock file is left"


def test_duplicate_video_ids_name_both_files(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "x.mp4").write_bytes(b"1")
    (tmp_path / "v" / "x.mkv").write_bytes(b"2")
    with pytest.raises(ExtractError, match=r"x\.mp4.*x\.mkv|x\.mkv.*x\.mp4"):
        find_videos([str(tmp_path / "v")])


def launch(args: list[str], *launcher: str) -> subprocess.CompletedProcess:
    """``accelerate launch [launcher flags] extract args`` on CPU, as a user runs it."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *launcher,
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "extract",
        *args,
        "--model",
        "vtg-tiny",
        "--fps",
        "1",
        "--no-progress",
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def assert_failures_then_summary_last(err: str, summary: str) -> None:
    """The broken video's line and the summary, once each, are the last lines; no launcher traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert (
        "Traceback" not in err and lines[-1].startswith(summary) and [text for text in lines if text.startswith("extract:")] == lines[-1:]
    ), err
    broken = [line for line in lines if "broken.mp4: not a readable video container" in line]
    assert broken == lines[-2:-1], err


def test_accelerate_launch_shards_videos_over_two_processes(videos, tmp_path):
    """Both ranks work; a broken video is listed once, then the summary, by the main rank; status 0 (see --help)."""
    for i in range(3):
        write_video(videos / f"extra{i}.mp4", [index_image(j, 96, 64) for j in range(20)], fps=10)
    (videos / "broken.mp4").write_bytes(b"nope" * 10)
    out = tmp_path / "features"
    result = launch([str(videos), "--out", str(out)], "--multi_gpu", "--num_processes", "2")
    assert result.returncode == 0, result.stderr[:3000]
    assert_failures_then_summary_last(result.stderr, "extract: 6 done, 0 skipped, 1 failed")
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(["a", "broken", "c", "sub/b", "extra0", "extra1", "extra2"])
    assert len(list(out.rglob("*.safetensors"))) == 6


def test_a_rank_whose_run_fails_neither_hangs_nor_cuts_short_the_others(tmp_path):
    """Rank 1's first video cannot be written (its file's place is taken by a folder). Rank 1 stops and meets rank 0 at
    the gather; rank 0 finishes its own videos, then every rank ends with the one line naming the folder. (Rank 1 decodes
    several videos at once, so one of its others may be finished first: which depends on timing.)"""
    videos = tmp_path / "videos"
    for name in "abcdef":  # sorted ids: rank 0 takes a, c, e; rank 1 takes b, d, f
        write_video(videos / f"{name}.mp4", [index_image(i, 96, 64) for i in range(200)], fps=10)
    out = tmp_path / "features"
    (out / "b.safetensors").mkdir(parents=True)
    result = launch([str(videos), "--out", str(out)], "--multi_gpu", "--num_processes", "2")
    assert result.returncode != 0 and f"{out}: cannot write" in result.stderr, result.stderr[-3000:]
    written = {p.stem for p in out.glob("*.safetensors") if p.is_file()}
    # rank 0 finishes all of its own; rank 1's decoder threads may finish d or f before b fails (kept: they are whole)
    assert {"a", "c", "e"} <= written <= {"a", "c", "d", "e", "f"}, written
    assert not list(out.glob(".*.partial"))


def test_a_launch_that_starts_one_process_says_how_to_start_several(tmp_path):
    """Without --multi_gpu the launcher starts one process for --num_processes 2; it says so and does all the work."""
    write_video(tmp_path / "videos" / "a.mp4", [index_image(i, 96, 64) for i in range(10)], fps=10)
    (tmp_path / "videos" / "broken.mp4").write_bytes(b"nope" * 10)
    result = launch([str(tmp_path / "videos"), "--out", str(tmp_path / "out")], "--num_processes", "2")
    assert result.returncode == 0, result.stderr[:3000]
    warning = next(line for line in result.stderr.splitlines() if "accelerate launch started 1 process" in line)
    assert "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N extract" in warning
    assert_failures_then_summary_last(result.stderr, "extract: 1 done, 0 skipped, 1 failed")


def test_make_extract_passes_its_variables_through():
    result = subprocess.run(
        ["make", "-n", "extract", "VIDEOS=clips", "OUT=feats", "MODEL=vtg-tiny", "FPS=1", "STORE=both", "LAYERS=2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    command = result.stdout.replace("\\\n\t", "")
    assert (
        "python extract clips --out feats --fps 1 --model vtg-tiny --pretrained random:0 --layers 2 --store both --decoder auto" in command
    )
    usage = subprocess.run(["make", "-s", "extract"], cwd=ROOT, capture_output=True, text=True, env={**os.environ, "MAKEFLAGS": ""})
    assert usage.returncode != 0 and "usage: make extract VIDEOS=dir OUT=dir" in usage.stdout


def test_fp8_states_are_half_the_bytes_within_e4m3_error_and_read_back_everywhere(videos, tmp_path, tiny_backbone):
    """`--states fp8`: e4m3 values with one scale per token, read back as half by every reader (VisionRows); a store
    switched from fp16 to fp8 is redone, and fp16 files without a `vision_format` (every older file) still read."""
    from safetensors import safe_open

    from vtg_pipeline.data import VisionRows
    from vtg_pipeline.features import FP8

    fp16, fp8 = tmp_path / "fp16", tmp_path / "fp8"
    run_extract(config(videos, fp16))
    run_extract(config(videos, fp8, states="fp8"))
    with safe_open(str(fp16 / "a.safetensors"), framework="pt") as f:
        exact = VisionRows(f, fp16 / "a.safetensors")[:].float()
    with safe_open(str(fp8 / "a.safetensors"), framework="pt") as f:
        assert f.get_slice("vision").get_dtype() == FP8 and list(f.get_slice("vision_scale").get_shape()) == [12, 4, 17]
        rows = VisionRows(f, fp8 / "a.safetensors")
        read = rows[:].float()
        assert rows[3:5].dtype == torch.float16 and torch.equal(rows[3:5], rows[:][3:5])
    peak = exact.abs().amax(-1, keepdim=True)  # per token: e4m3 keeps 3 mantissa bits, so 2^-4 of the largest entry
    assert ((read - exact).abs() <= peak / 16 + 1e-3).all() and (read - exact).abs().mean() < 0.03 * exact.abs().mean()
    sizes = [(folder / "a.safetensors").stat().st_size for folder in (fp16, fp8)]
    frames_bytes = 12 * 3 * 64 * 64
    assert abs((sizes[1] - frames_bytes) / (sizes[0] - frames_bytes) - (17 * 64 + 17 * 2) / (17 * 64 * 2)) < 0.01
    assert read_metadata(fp8 / "a.safetensors")["vision_format"] == "fp8_e4m3_token_scale"
    assert run_extract(config(videos, fp8, states="fp8")).skipped == 3
    assert run_extract(config(videos, fp8)).done == 3  # back to fp16: every file redone


def test_a_file_written_before_vision_format_existed_counts_as_fp16(videos, tmp_path, tiny_backbone):
    from vtg_pipeline.extract import VideoItem, is_up_to_date, run_settings, source_metadata

    item = VideoItem("a", str(videos / "a.mp4"))
    settings = run_settings(config(videos, tmp_path), tiny_backbone)
    older = {k: v for k, v in settings.items() if k != "vision_format"}  # what every file before --states held
    writer = StreamingSafetensorsWriter(
        tmp_path / "a.safetensors", {"timestamps": (np.float64, (1,))}, {**older, **source_metadata(item.path)}
    )
    writer.write("timestamps", 0, np.zeros(1))
    writer.commit()
    assert settings["vision_format"] == "fp16" and is_up_to_date(tmp_path / "a.safetensors", item, settings)
    assert not is_up_to_date(tmp_path / "a.safetensors", item, run_settings(config(videos, tmp_path, states="fp8"), tiny_backbone))
