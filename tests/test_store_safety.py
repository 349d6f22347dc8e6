"""A feature store's names are trusted for nothing: ids are checked where read, paths stay inside their folder,
names shown on the terminal cannot forge lines, and a store is found again from any working directory."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pattern import index_image
from safetensors.torch import save_file

from vtg_pipeline.cli import main
from vtg_pipeline.config import BackboneConfig, TrainConfig
from vtg_pipeline.extract import ExtractConfig, run_extract
from vtg_pipeline.features import Manifest, StreamingSafetensorsWriter
from vtg_pipeline.grounder import Grounder, unique_id
from vtg_pipeline.models import create_model
from vtg_pipeline.names import UnsafeNameError, check_video_id, path_in, printable
from vtg_pipeline.report import write_report
from vtg_pipeline.synth import write_video


def tiny_video(path: Path, frames: int = 10) -> Path:
    write_video(path, [index_image(i, 80, 48) for i in range(frames)], fps=10)
    return path


def extract_config(videos: Path, out: Path) -> ExtractConfig:
    return ExtractConfig(
        video_dirs=[str(videos)], out=str(out), fps=2.0, model="vtg-tiny", pretrained="random:0", store="both", progress=False, batch_size=8
    )


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, backbone_cache):
    """An untrained vtg-tiny checkpoint (a real one: config.json and model.safetensors with the backbone's hash)."""
    from vtg_pipeline.backbone import load_backbone

    backbone = load_backbone("vtg-tiny", "random:0", layers=4)
    cfg = TrainConfig(backbone=BackboneConfig("vtg-tiny", "random:0", 4))
    cfg.data.fps = 2.0
    cfg.model.vision_width, cfg.model.text_width, cfg.model.dims, cfg.model.heads = 64, backbone.spec.text_width, 32, 4
    folder = tmp_path_factory.mktemp("checkpoint")
    save_file({k: v.contiguous() for k, v in create_model(cfg.model).state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({**cfg.to_dict(), "backbone_spec": backbone.spec.to_dict()}))
    return folder


@pytest.mark.parametrize(
    "video_id,problem",
    [
        ("../x", "contains '..'"),
        ("a/../../x", "contains '..'"),
        ("/etc/x", "is absolute"),
        ("C:x", "is absolute"),
        ("a\nb", "control character"),
        ("a\\b", "backslash"),
        ("a//b", "empty or '.'"),
        ("./a", "empty or '.'"),
        ("", "non-empty"),
        (3, "non-empty string"),
    ],
)
def test_check_video_id_refuses_names_that_leave_or_confuse(video_id, problem):
    with pytest.raises(UnsafeNameError, match=problem) as e:
        check_video_id(video_id, "manifest.jsonl:7")
    assert str(e.value).startswith("manifest.jsonl:7: ") and "\n" not in str(e.value)


def test_check_video_id_keeps_ordinary_ids():
    for video_id in ("a", "sub/b", "clip 1.take-2", "über/ß", "..a", "a.."):
        assert check_video_id(video_id, "x") == video_id


def test_path_in_refuses_a_symlink_out_of_the_folder(tmp_path):
    store, outside = tmp_path / "store", tmp_path / "outside"
    store.mkdir(), outside.mkdir()
    (store / "link").symlink_to(outside)
    assert path_in(store, "sub/a", ".safetensors") == store / "sub" / "a.safetensors"
    for relative in ("link/a", "../outside/a", str(outside / "a")):
        with pytest.raises(UnsafeNameError, match="lies outside"):
            path_in(store, relative, ".safetensors")


def test_printable_escapes_line_breaks_and_terminal_controls():
    assert printable("a\nb\r\x1b[2J\u2028c") == "a\\nb\\r\\x1b[2J\\u2028c"
    assert printable("plain ü/é") == "plain ü/é"


def test_unique_id_makes_a_safe_id_from_any_file_stem():
    taken = {"a", "video"}
    for stem in ("a\nb", "x\\y", "..", ".", "   ", "\x1b[31m"):
        check_video_id(unique_id(stem, taken), "test")
    assert unique_id("a", taken) == "a-2" and unique_id("..", taken) == "video-2" and unique_id("a\nb", taken) == "a_b"


@pytest.mark.parametrize("bad", ["../../x", "/tmp/x", "sub/../../x"])
def test_manifest_records_refuse_an_unsafe_id_naming_the_line(tmp_path, bad):
    manifest = Manifest(tmp_path)
    manifest.append("good", "good.mp4", "done")
    with open(manifest.path, "a") as f:
        f.write(json.dumps({"id": bad, "path": "x.mp4", "status": "done"}) + "\n")
    with pytest.raises(UnsafeNameError, match=r"manifest\.jsonl:2: video id"):
        manifest.records()


def test_manifest_stores_absolute_real_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    Manifest(tmp_path / "out").append("a", "link/a.mp4", "done")
    assert Manifest(tmp_path / "out").records()["a"]["path"] == str((tmp_path / "real" / "a.mp4").resolve())


def test_ground_writes_nothing_outside_the_store_for_a_crafted_manifest(checkpoint, tmp_path):
    video = tiny_video(tmp_path / "videos" / "v.mp4")
    store, outside = tmp_path / "store", tmp_path / "outside"
    store.mkdir(), outside.mkdir()
    (store / "manifest.jsonl").write_text(json.dumps({"id": "../outside/evil", "path": str(video.resolve()), "status": "done"}) + "\n")
    grounder = Grounder.from_pretrained(checkpoint)
    with pytest.raises(UnsafeNameError, match=r"manifest\.jsonl:1: video id '\.\./outside/evil' contains '\.\.'"):
        grounder.encode_videos([str(video.resolve())], store)
    assert list(outside.iterdir()) == []


def test_ground_refuses_a_feature_file_linked_out_of_the_store(checkpoint, tmp_path):
    video = tiny_video(tmp_path / "videos" / "v.mp4")
    store, outside = tmp_path / "store", tmp_path / "outside"
    store.mkdir(), outside.mkdir()
    (outside / "v.safetensors").write_bytes(b"someone else's file")
    (store / "v.safetensors").symlink_to(outside / "v.safetensors")
    grounder = Grounder.from_pretrained(checkpoint)
    files, _ = grounder.encode_videos([str(video.resolve())], store)  # not in the manifest: the link is another video's
    assert Path(files[str(video.resolve())]).name == "v-2.safetensors"
    (store / "manifest.jsonl").write_text(json.dumps({"id": "v", "path": str(video.resolve())}) + "\n")  # the manifest names it
    with pytest.raises(UnsafeNameError, match="lies outside"):
        grounder.encode_videos([str(video.resolve())], store)
    assert (outside / "v.safetensors").read_bytes() == b"someone else's file"


def test_extract_neither_writes_nor_cleans_through_a_link_out_of_the_store(tmp_path):
    videos = tmp_path / "videos"
    tiny_video(videos / "a.mp4"), tiny_video(videos / "sub" / "b.mp4")
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir(), outside.mkdir()
    (out / "sub").symlink_to(outside)
    victim = outside / f".b.safetensors.{dead_pid()}.partial"  # what a killed run's partial file looks like
    victim.write_bytes(b"not a partial of ours")
    summary = run_extract(extract_config(videos, out))
    assert (summary.done, summary.failed) == (1, 1) and "lies outside" in summary.failures[0][1]
    assert victim.exists() and sorted(p.name for p in outside.iterdir()) == [victim.name]


def test_report_reads_no_feature_file_outside_the_store(tmp_path):
    store, outside = tmp_path / "store", tmp_path / "outside"
    store.mkdir()
    writer = StreamingSafetensorsWriter(outside / "secret.safetensors", {"frames": (np.uint8, (1, 3, 4, 4))}, {})
    writer.write("frames", 0, np.full((1, 3, 4, 4), 7, np.uint8))
    writer.commit()
    result = {
        "qid": 0,
        "query": "q",
        "video": str(tmp_path / "v.mp4"),
        "vid": "../outside/secret",
        "duration": 2.0,
        "pred_relevant_windows": [[0.0, 1.0, 0.9]],
        "pred_relevant_windows_hms": [["0:00:00.0", "0:00:01.0"]],
        "pred_saliency_scores": [0.9],
        "clip_times": [0.0],
    }
    with pytest.raises(UnsafeNameError, match="lies outside"):
        write_report([result], tmp_path / "report", store)


def test_a_file_name_with_a_newline_cannot_forge_the_extract_summary(tmp_path, capsys):
    videos = tmp_path / "videos"
    tiny_video(videos / "a.mp4")
    forged = "x\nextract: 9 done, 0 skipped, 0 failed"
    tiny_video(videos / f"{forged}.mp4")
    status = main(["extract", str(videos), "--out", str(tmp_path / "out"), "--model", "vtg-tiny", "--fps", "2", "--no-progress"])
    lines = capsys.readouterr().err.splitlines()
    summaries = [line for line in lines if line.startswith("extract:")]
    assert status == 1 and len(summaries) == 1 and summaries[0].startswith("extract: 1 done, 0 skipped, 1 failed")
    assert any("x\\nextract: 9 done" in line and "not extracted: video id" in line for line in lines)
    assert set(Manifest(tmp_path / "out").records()) == {"a"}


def test_a_video_name_with_a_newline_cannot_forge_a_ground_line(checkpoint, tmp_path, capsys):
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"video": "gone\nground: 9 queries grounded.mp4", "query": "a red disc"}) + "\n")
    status = main(
        ["ground", "--checkpoint", str(checkpoint), "--queries", str(queries), "--out", str(tmp_path / "p.jsonl"), "--no-progress"]
    )
    lines = capsys.readouterr().err.splitlines()
    assert status == 1
    assert not any(line.startswith("ground: 9") for line in lines)
    assert any(line.endswith("gone\\nground: 9 queries grounded.mp4: no such video file (qid 0)") for line in lines)


def test_a_new_video_never_takes_the_name_of_a_feature_file_missing_from_the_manifest(checkpoint, tmp_path):
    """A store's feature file that its manifest does not list (copied in, or the manifest lost) still holds a
    video: a new video with the same stem gets another id, and the file is left as it was."""
    tiny_video(tmp_path / "first" / "a.mp4")
    store = tmp_path / "store"
    run_extract(extract_config(tmp_path / "first", store))
    (store / "manifest.jsonl").unlink()
    kept = (store / "a.safetensors").read_bytes()
    other = tiny_video(tmp_path / "second" / "a.mp4", 14)
    files, failures = Grounder.from_pretrained(checkpoint).encode_videos([str(other.resolve())], store)
    assert failures == {} and Path(files[str(other.resolve())]).name == "a-2.safetensors"
    assert (store / "a.safetensors").read_bytes() == kept, "the unlisted video's states are not overwritten"


def test_ground_reuses_a_store_extracted_from_another_working_directory(checkpoint, tmp_path, monkeypatch):
    videos = tmp_path / "videos"
    tiny_video(videos / "a.mp4"), tiny_video(videos / "b.mp4", 14)
    monkeypatch.chdir(tmp_path)
    run_extract(extract_config(Path("videos"), Path("store")))  # relative paths, as a user types them
    store = tmp_path / "store"
    before = {p.name: p.stat().st_mtime_ns for p in store.glob("*.safetensors")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    grounder = Grounder.from_pretrained(checkpoint)
    paths = [str((videos / n).resolve()) for n in ("a.mp4", "b.mp4")]
    files, failures = grounder.encode_videos(paths, store)
    assert failures == {} and {Path(f).name for f in files.values()} == {"a.safetensors", "b.safetensors"}
    assert before == {p.name: p.stat().st_mtime_ns for p in store.glob("*.safetensors")}, "nothing was encoded again"
    old = [json.loads(line) for line in (store / "manifest.jsonl").read_text().splitlines()]
    (store / "manifest.jsonl").write_text("".join(json.dumps({**r, "path": f"videos/{r['id']}.mp4"}) + "\n" for r in old))
    files, failures = grounder.encode_videos(paths, store)  # an older manifest's relative paths: read, maybe not matched
    assert failures == {} and all(Path(f).is_file() for f in files.values())
