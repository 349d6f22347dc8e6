"""Every backend returns exactly the frame a player shows at k / fps."""

import numpy as np
import pytest
import torch
from pattern import index_image, read_index, stored_frame

from vtg_pipeline.synth import write_video
from vtg_pipeline.video import (
    DecordDecoder,
    PyAVDecoder,
    VideoError,
    available_decoders,
    frame_indices_at,
    make_decoder,
    probe,
    sample_times,
)

BACKENDS = [name for name in ("pyav", "decord", "torchcodec") if name in available_decoders()]
RNG = np.random.default_rng(7)
VFR_TIMES = np.cumsum(np.concatenate([[0.0], RNG.choice([0.02, 0.05, 0.2, 0.5, 1.3], size=70)]))

# name: (frame times in seconds, size, encoder options)
CASES = {
    "cfr.mp4": (np.arange(120) / 12, (96, 64), {}),
    "vfr.mp4": (VFR_TIMES, (96, 64), {}),
    "vfr.mkv": (VFR_TIMES, (96, 64), {}),
    "start_offset.mkv": (np.arange(60) / 10 + 2.5, (96, 64), {}),
    "start_offset.mp4": (np.arange(60) / 10 + 2.5, (96, 64), {}),
    "odd_size.mp4": (np.arange(50) / 7, (97, 61), {"pix_fmt": "yuv444p"}),
    "shorter_than_period.mp4": (np.arange(5) / 25, (96, 64), {}),
    "rotate90.mp4": (np.arange(40) / 10, (96, 64), {"rotation": 90}),
    "rotate180.mp4": (np.arange(40) / 10, (96, 64), {"rotation": 180}),
    "rotate270.mp4": (np.arange(40) / 10, (96, 64), {"rotation": 270}),
    "bframes.mp4": (np.arange(90) / 15, (96, 64), {"options": {"preset": "medium", "bf": "3"}, "gop": 30}),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    paths = {}
    for name, (times, (w, h), opts) in CASES.items():
        rotation = opts.get("rotation", 0)
        frames = [stored_frame(index_image(i, w, h), rotation) for i in range(len(times))]
        paths[name] = write_video(
            root / name,
            frames,
            fps=10,
            times=list(times),
            rotation=rotation,
            pix_fmt=opts.get("pix_fmt", "yuv420p"),
            options=opts.get("options"),
            gop=opts.get("gop"),
        )
    return paths


def expected_indices(name: str, times: np.ndarray) -> list[int]:
    """Index of the last frame written at or before each sample time."""
    written = np.round(CASES[name][0] * 1000) / 1000  # write_video stores times in milliseconds
    return [int(i) for i in frame_indices_at(written - written[0], times)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("fps", [0.5, 3.0])
def test_backend_returns_frame_displayed_at_each_sample_time(videos, backend, name, fps):
    info = probe(str(videos[name]))
    times = sample_times(info.duration, fps)
    decoder = make_decoder(backend).for_video(info)
    frames = torch.cat(list(decoder.chunks(info, times, chunk=4)))
    width, height = CASES[name][1]
    assert frames.shape == (len(times), height, width, 3), "frames come out upright at the source size"
    assert [read_index(f.numpy()) for f in frames] == expected_indices(name, times)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["cfr.mp4", "vfr.mkv", "start_offset.mp4", "bframes.mp4", "rotate90.mp4"])
def test_a_range_of_the_samples_decodes_the_frames_shown_then(videos, backend, name):
    """A long video split into time ranges (the Ray runner's balance) gives each range exactly its frames; PyAV
    seeks to the keyframe before the range instead of decoding from the start."""
    info = probe(str(videos[name]))
    times = sample_times(info.duration, 3.0)
    decoder = make_decoder(backend).for_video(info)
    for start, stop in [(1, 5), (len(times) // 2, len(times)), (len(times) - 1, len(times))]:
        frames = torch.cat(list(decoder.chunks(info, times[start:stop], chunk=3)))
        assert [read_index(f.numpy()) for f in frames] == expected_indices(name, times)[start:stop], (start, stop)


def test_probe_measures_time_from_first_frame(videos):
    info = probe(str(videos["start_offset.mkv"]))
    assert info.start_time == pytest.approx(2.5)
    assert info.duration == pytest.approx(6.0, abs=0.11)
    rotated = probe(str(videos["rotate90.mp4"]))
    assert (rotated.rotation, rotated.width, rotated.height) == (90, 96, 64)


def test_sample_count_follows_design_rule():
    assert len(sample_times(150.0, 0.5)) == 75
    assert len(sample_times(151.9, 0.5)) == 75
    assert len(sample_times(0.2, 0.5)) == 1  # shorter than one period: still its first frame
    assert sample_times(10.0, 2.0)[-1] == pytest.approx(9.5)


def test_decord_falls_back_to_pyav_when_its_index_disagrees(videos, monkeypatch):
    pytest.importorskip("decord")
    import vtg_pipeline.video as video

    info = probe(str(videos["cfr.mp4"]))
    monkeypatch.setattr(video, "packet_times", lambda path: np.arange(3) / 10.0)  # PyAV sees a different stream
    assert isinstance(DecordDecoder().for_video(info), PyAVDecoder)


def test_a_frame_decord_cannot_decode_is_a_video_error(videos, monkeypatch):
    """One line naming the time, so the batch skips this video (decord2 3.4.0 failed so on 96x64 frames)."""
    decord = pytest.importorskip("decord")
    info = probe(str(videos["cfr.mp4"]))
    opened = DecordDecoder().for_video(info)

    def fail(indices):
        raise decord.DECORDError("[12:00:00] ndarray.cc:171: Check failed: from_size == to_size (24576 vs. 18432)\nStack trace")

    monkeypatch.setattr(opened.reader, "get_batch", fail, raising=False)
    with pytest.raises(VideoError, match=r"^decord cannot decode frames at 0.00 s \(.*from_size == to_size \(24576 vs. 18432\)\)$"):
        next(opened.chunks(info, sample_times(info.duration, 1.0), 4))


def test_streaming_never_yields_more_than_a_chunk(videos):
    info = probe(str(videos["cfr.mp4"]))
    sizes = [len(c) for c in PyAVDecoder().chunks(info, sample_times(info.duration, 3.0), chunk=4)]
    assert max(sizes) <= 4 and sum(sizes) == len(sample_times(info.duration, 3.0))


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"", "empty file"),
        (b"this is not a video at all" * 100, "not a readable video container"),
    ],
)
def test_bad_files_raise_one_line_errors(tmp_path, content, reason):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoError, match=reason) as error:
        probe(str(path))
    assert "\n" not in str(error.value)


def test_audio_only_file_is_refused(tmp_path):
    import av

    path = tmp_path / "audio.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for i in range(10):
            frame.pts = i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(VideoError, match="no video stream"):
        probe(str(path))


def test_truncated_file_is_refused(videos, tmp_path):
    data = videos["cfr.mp4"].read_bytes()
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError):
        info = probe(str(path))
        list(PyAVDecoder().chunks(info, sample_times(info.duration, 3.0), chunk=8))


def test_unknown_decoder_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown decoder"):
        make_decoder("nvdec9000")
