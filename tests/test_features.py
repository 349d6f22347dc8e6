"""The streaming safetensors writer: a valid file, exact round trip, atomic."""

import json

import numpy as np
import pytest
from safetensors import safe_open

from vtg_pipeline.features import Manifest, StreamingSafetensorsWriter, load_features, read_metadata


def test_rows_written_in_chunks_round_trip_exactly(tmp_path):
    rng = np.random.default_rng(0)
    vision = rng.standard_normal((7, 2, 5, 3)).astype(np.float16)
    frames = rng.integers(0, 256, (7, 3, 4, 4)).astype(np.uint8)
    timestamps = np.arange(7) / 0.5
    path = tmp_path / "a" / "video.safetensors"
    writer = StreamingSafetensorsWriter(
        path,
        {"timestamps": (np.float64, (7,)), "frames": (np.uint8, frames.shape), "vision": (np.float16, vision.shape)},
        {"fps": "0.5", "layers": json.dumps([8, 9])},
    )
    writer.write("timestamps", 0, timestamps)
    for start in (4, 0):  # out of order on purpose
        writer.write("frames", start, frames[start : start + 4])
        writer.write("vision", start, np.transpose(vision[start : start + 4].transpose(0, 2, 1, 3), (0, 2, 1, 3)))  # non-contiguous
    assert not path.exists(), "nothing appears under the final name before commit"
    writer.commit()
    loaded = load_features(path, ["timestamps", "frames", "vision"])
    np.testing.assert_array_equal(loaded["vision"], vision)
    np.testing.assert_array_equal(loaded["frames"], frames)
    np.testing.assert_array_equal(loaded["timestamps"], timestamps)
    assert read_metadata(path) == {"fps": "0.5", "layers": "[8, 9]"}
    with safe_open(str(path), framework="pt") as f:  # also readable by the torch reader
        assert tuple(f.get_slice("vision").get_shape()) == vision.shape


def test_incomplete_file_is_never_committed(tmp_path):
    path = tmp_path / "video.safetensors"
    writer = StreamingSafetensorsWriter(path, {"vision": (np.float16, (4, 2))}, {})
    writer.write("vision", 0, np.zeros((2, 2), np.float16))
    with pytest.raises(ValueError, match="incomplete"):
        writer.commit()
    assert list(tmp_path.iterdir()) == []


def test_abort_leaves_previous_output_untouched(tmp_path):
    path = tmp_path / "video.safetensors"
    path.write_bytes(b"previous")
    writer = StreamingSafetensorsWriter(path, {"vision": (np.float16, (1, 2))}, {})
    writer.abort()
    assert path.read_bytes() == b"previous" and list(tmp_path.iterdir()) == [path]


def test_read_metadata_of_a_corrupt_file_is_none(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert read_metadata(bad) is None
    assert read_metadata(tmp_path / "missing.safetensors") is None


def test_manifest_latest_record_wins_and_survives_a_cut_line(tmp_path):
    manifest = Manifest(tmp_path)
    manifest.append("a", "a.mp4", "failed", reason="empty file (0 bytes)")
    manifest.append("b", "b.mp4", "done", frames=3)
    manifest.append("a", "a.mp4", "done", frames=5)
    with open(manifest.path, "a") as f:
        f.write('{"id": "c", "sta')  # a killed run
    records = manifest.records()
    assert records["a"]["status"] == "done" and set(records) == {"a", "b"}
    manifest.compact()
    assert [json.loads(line)["id"] for line in manifest.path.read_text().splitlines()] == ["a", "b"]
