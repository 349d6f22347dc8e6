"""Bad input to `vtg extract` and `vtg inspect`: exit status 2, one error line naming the input, no traceback."""

import errno
import json
import os

import numpy as np
import pytest
from bad_input import assert_one_line_error
from test_store_safety import tiny_video

from vtg_pipeline.features import FileLock, StreamingSafetensorsWriter

TINY = ["--model", "vtg-tiny", "--fps", "2", "--no-progress"]


def feature_folder(tmp_path, manifest_ids=("a",)):
    """A store with one valid feature file and a manifest with a record per id."""
    out = tmp_path / "out"
    writer = StreamingSafetensorsWriter(out / "a.safetensors", {"timestamps": (np.float64, (2,))}, {"duration": "1.0"})
    writer.write("timestamps", 0, np.array([0.0, 0.5]))
    writer.commit()
    (out / "manifest.jsonl").write_text(
        "".join(json.dumps({"id": i, "path": f"/v/{i}.mp4", "status": "done"}) + "\n" for i in manifest_ids)
    )
    return out


def out_is_a_file(tmp_path, monkeypatch):
    (tmp_path / "videos").mkdir()
    (tmp_path / "out").write_text("a file")
    return ["extract", str(tmp_path / "videos"), "--out", str(tmp_path / "out"), *TINY], [str(tmp_path / "out"), "not a folder"]


def missing_video_folder(tmp_path, monkeypatch):
    return ["extract", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"), *TINY], [str(tmp_path / "nowhere")]


def read_only_out_folder(tmp_path, monkeypatch):
    """Root ignores permission bits, so the read-only file system's answer is given by the first file created in OUT."""
    tiny_video(tmp_path / "videos" / "a.mp4")

    def refuse(self, wait=True):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self.path))

    monkeypatch.setattr(FileLock, "acquire", refuse)
    return ["extract", str(tmp_path / "videos"), "--out", str(tmp_path / "out"), *TINY], [str(tmp_path / "out"), "Read-only file system"]


def extract_into_a_store_with_a_crafted_id(tmp_path, monkeypatch):
    tiny_video(tmp_path / "videos" / "a.mp4")
    out = feature_folder(tmp_path, ("a", "../x"))
    return ["extract", str(tmp_path / "videos"), "--out", str(out), *TINY], [f"{out / 'manifest.jsonl'}:2", "'../x'"]


def inspect_a_store_with_a_crafted_id(tmp_path, monkeypatch):
    out = feature_folder(tmp_path, ("/etc/x",))
    return ["inspect", str(out)], [f"{out / 'manifest.jsonl'}:1", "'/etc/x'"]


def inspect_an_empty_folder(tmp_path, monkeypatch):
    return ["inspect", str(tmp_path)], [str(tmp_path), "no feature files"]


def inspect_a_file(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("x")
    return ["inspect", str(tmp_path / "notes.txt")], [str(tmp_path / "notes.txt"), "not a folder"]


def inspect_a_missing_folder(tmp_path, monkeypatch):
    return ["inspect", str(tmp_path / "nowhere")], [str(tmp_path / "nowhere")]


def inspect_a_garbage_feature_file(tmp_path, monkeypatch):
    out = feature_folder(tmp_path)
    (out / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json" + os.urandom(64))
    return ["inspect", str(out)], [str(out / "junk.safetensors"), "not a readable feature file"]


@pytest.mark.parametrize(
    "case",
    [
        out_is_a_file,
        missing_video_folder,
        read_only_out_folder,
        extract_into_a_store_with_a_crafted_id,
        inspect_a_store_with_a_crafted_id,
        inspect_an_empty_folder,
        inspect_a_file,
        inspect_a_missing_folder,
        inspect_a_garbage_feature_file,
    ],
    ids=lambda case: case.__name__,
)
def test_bad_input_is_one_line_with_status_2(case, tmp_path, monkeypatch, capsys):
    argv, names = case(tmp_path, monkeypatch)
    assert_one_line_error(argv, capsys, *names)
