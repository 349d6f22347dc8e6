"""Video decoding: the frames a player shows at fixed-rate sample times.

Sampling rule (docs/ARCHITECTURE.md): sample k is the frame displayed at
t_k = k / fps seconds, i.e. the last frame whose presentation time is <= t_k,
for k = 0 .. max(1, floor(duration * fps)) - 1. Times are measured from the
first frame's presentation time, and frames come out upright (the container's
rotation is applied).

Backends share one interface, ``Decoder.chunks(info, times)``, which yields the
sampled frames in order as uint8 tensors (n, H, W, 3) of at most ``chunk``
frames, so a caller never holds a whole video at full resolution:

- ``pyav``: the correctness reference; always available.
- ``decord``: ``decord.gpu`` when the build has CUDA, else CPU. Its frame index
  is checked against PyAV's packet timestamps first; a file where they disagree
  falls back to PyAV (decord's seeking is unreliable on such files).
- ``torchcodec``: optional CUDA decoder (``pip install vtg_pipeline[cuda-decode]``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

import av
import numpy as np
import torch

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v")


class VideoError(Exception):
    """A video that cannot be decoded; the message is one line naming the problem."""


@dataclass(frozen=True)
class VideoInfo:
    """What sampling needs to know about a video, read from its container.

    ``start_time`` is the first frame's presentation time in seconds (sample
    times are relative to it); ``duration`` is in seconds from that frame;
    ``rotation`` is the counter-clockwise turn (degrees, multiple of 90) that
    makes decoded frames upright; ``width``/``height`` are upright sizes.
    """

    path: str
    duration: float
    start_time: float
    width: int
    height: int
    rotation: int
    average_fps: float
    codec: str


def sample_times(duration: float, fps: float) -> np.ndarray:
    """Sample times t_k = k / fps in seconds, (T,) float64, T = max(1, floor(duration * fps))."""
    count = max(1, math.floor(duration * fps + 1e-6))
    return np.arange(count, dtype=np.float64) / fps


def frame_indices_at(frame_times: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the frame displayed at each time: the last frame with time <= t.

    ``frame_times`` (N,) seconds, ascending, relative to the first frame;
    ``times`` (T,) seconds. Returns (T,) int64 in [0, N).
    """
    idx = np.searchsorted(frame_times, times + 1e-6, side="right") - 1
    return np.clip(idx, 0, len(frame_times) - 1)


def _open(path: str) -> av.container.InputContainer:
    if not os.path.isfile(path):
        raise VideoError("no such file" if not os.path.exists(path) else "not a regular file")
    if os.path.getsize(path) == 0:
        raise VideoError("empty file (0 bytes)")
    try:
        container = av.open(path)
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise VideoError(f"not a readable video container ({_reason(e)})") from None
    if not container.streams.video:
        container.close()
        raise VideoError("no video stream (audio-only or data file)")
    return container


def _reason(error: Exception) -> str:
    text = getattr(error, "strerror", None) or str(error)
    return text.splitlines()[0] if text else type(error).__name__


def _rotation_steps(rotation: float) -> int:
    """Quarter turns counter-clockwise that make a frame upright, from FFmpeg's display rotation."""
    return int(round(rotation / 90.0)) % 4


def probe(path: str) -> VideoInfo:
    """Read a video's timing and orientation; decodes only its first frame.

    Raises VideoError for missing, empty, non-video, audio-only or undecodable files.
    """
    with _open(path) as container:
        stream = container.streams.video[0]
        try:
            first = next(container.decode(stream))
        except StopIteration:
            raise VideoError("video stream has no decodable frames") from None
        except av.error.FFmpegError as e:
            raise VideoError(f"cannot decode the first frame ({_reason(e)})") from None
        start = _frame_time(first, stream.time_base)
        end = _stream_end_time(container, stream)
        rotation = _rotation_steps(first.rotation) * 90
        width, height = first.width, first.height
        if rotation in (90, 270):
            width, height = height, width
        rate = stream.average_rate or stream.guessed_rate or 0
        duration = max(0.0, end - start) if end is not None else 0.0
        if duration == 0.0:
            duration = 1.0 / float(rate) if rate else 0.0
        return VideoInfo(
            path=path,
            duration=duration,
            start_time=start,
            width=width,
            height=height,
            rotation=rotation,
            average_fps=float(rate),
            codec=stream.codec_context.name,
        )


def _frame_time(frame: av.VideoFrame, time_base: Fraction) -> float:
    pts = frame.pts if frame.pts is not None else frame.dts
    if pts is None:
        raise VideoError("frames carry no timestamps")
    return float(pts * time_base)


def _stream_end_time(container, stream) -> float | None:
    """End of the video stream in seconds (absolute).

    From the stream header when it has a duration (mp4, mov); otherwise (mkv,
    webm, whose container duration counts from 0 rather than from the start
    offset) from the last packets, found by a seek near the end.
    """
    if stream.duration is not None and stream.start_time is not None:
        return float((stream.start_time + stream.duration) * stream.time_base)
    if container.duration is not None:
        guess = (container.start_time or 0) + container.duration
        try:
            container.seek(max(0, guess - 30 * av.time_base), backward=True)
        except av.error.FFmpegError:
            container.seek(0)
    else:
        container.seek(0)
    end = None
    for packet in container.demux(stream):
        if packet.pts is not None:
            packet_end = float((packet.pts + (packet.duration or 0)) * stream.time_base)
            end = packet_end if end is None else max(end, packet_end)
    return end


def packet_times(path: str) -> np.ndarray:
    """Presentation times (seconds, ascending, relative to the first) of every video packet.

    Demuxes without decoding, so it is cheap even for long files.
    """
    with _open(path) as container:
        stream = container.streams.video[0]
        pts = [p.pts for p in container.demux(stream) if p.pts is not None and p.size > 0]
        if not pts:
            raise VideoError("video stream has no timestamped packets")
        times = np.sort(np.asarray(pts, dtype=np.float64)) * float(stream.time_base)
    return times - times[0]


def _upright(frames: torch.Tensor, rotation: int) -> torch.Tensor:
    """Turn (n, H, W, 3) frames counter-clockwise by ``rotation`` degrees."""
    steps = _rotation_steps(rotation)
    return torch.rot90(frames, steps, dims=(1, 2)).contiguous() if steps else frames


def _already_upright(frames: torch.Tensor, info: VideoInfo, backend: str) -> torch.Tensor:
    """decord 0.6 and torchcodec >= 0.17 apply the display matrix themselves; refuse anything else."""
    if tuple(frames.shape[1:3]) != (info.height, info.width):
        raise VideoError(f"{backend} returned {tuple(frames.shape[1:3])} frames, expected upright {(info.height, info.width)}")
    return frames


class Decoder(Protocol):
    name: str

    def for_video(self, info: VideoInfo) -> Decoder:
        """The decoder to use for this file: itself, or an exact fallback."""

    def chunks(self, info: VideoInfo, times: np.ndarray, chunk: int) -> Iterator[torch.Tensor]:
        """Yield the frames displayed at ``times`` (seconds), upright, as uint8 (n, H, W, 3)."""


class PyAVDecoder:
    """Sequential PyAV decode; converts to RGB only the frames that sampling picks."""

    name = "pyav"

    def __init__(self, threads: int = 0):
        self.threads = threads

    def for_video(self, info: VideoInfo) -> PyAVDecoder:
        return self

    def chunks(self, info: VideoInfo, times: np.ndarray, chunk: int) -> Iterator[torch.Tensor]:
        targets = times + info.start_time
        pending: list[torch.Tensor] = []
        k = 0
        with _open(info.path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if self.threads:
                stream.codec_context.thread_count = self.threads
            previous, previous_rgb, last_time = None, None, None
            try:
                for t, frame in _frames_from(container, stream, targets[0] if len(targets) else 0.0):
                    if last_time is not None and t <= last_time:
                        continue  # duplicate or out-of-order timestamp: the earlier frame stays on screen
                    while k < len(targets) and t > targets[k] + 1e-6:
                        if previous_rgb is None:
                            previous_rgb = _to_tensor(previous)
                        pending.append(previous_rgb)
                        k += 1
                        if len(pending) == chunk:
                            yield _upright(torch.stack(pending), info.rotation)
                            pending = []
                    if k == len(targets):
                        break
                    previous, previous_rgb, last_time = frame, None, t
            except av.error.FFmpegError as e:
                raise VideoError(f"decoding failed at {last_time or 0:.2f} s ({_reason(e)})") from None
            if previous is None:
                raise VideoError("video stream has no decodable frames")
            _check_not_truncated(info, last_time - info.start_time, times[k:])
            while k < len(targets):
                if previous_rgb is None:
                    previous_rgb = _to_tensor(previous)
                pending.append(previous_rgb)
                k += 1
                if len(pending) == chunk:
                    yield _upright(torch.stack(pending), info.rotation)
                    pending = []
        if pending:
            yield _upright(torch.stack(pending), info.rotation)


def _frames_from(container, stream, target: float) -> Iterator[tuple[float, av.VideoFrame]]:
    """(presentation time s, frame) in decode order, from the last keyframe at or before ``target`` (stream seconds).

    A range of a long video starts near its first sample instead of at the file's start. The seek lands on a
    keyframe; when the first frame decoded there is already past ``target`` (a container whose index misleads the
    seek), decoding restarts at the beginning, so the frame shown at ``target`` is always among those yielded.
    """
    frames = container.decode(stream)
    if target > 0:
        container.seek(int(target / stream.time_base), stream=stream, backward=True, any_frame=False)
        frames = container.decode(stream)
        first = next(frames, None)
        if first is not None and _frame_time(first, stream.time_base) <= target + 1e-6:
            yield _frame_time(first, stream.time_base), first
        else:
            container.seek(0, stream=stream, backward=True, any_frame=False)
            frames = container.decode(stream)
    for frame in frames:
        yield _frame_time(frame, stream.time_base), frame


def _to_tensor(frame: av.VideoFrame) -> torch.Tensor:
    return torch.from_numpy(frame.to_ndarray(format="rgb24"))


def _check_not_truncated(info: VideoInfo, last_frame_time: float, remaining: np.ndarray) -> None:
    """Refuse a stream that stops well before the samples its header promises."""
    if len(remaining) == 0:
        return
    slack = 1.0 + (2.0 / info.average_fps if info.average_fps else 0.0)
    if remaining[-1] - last_frame_time > slack:
        raise VideoError(f"truncated: frames end at {last_frame_time:.2f} s but the header says {info.duration:.2f} s")


class DecordDecoder:
    """decord decode by frame index (from real timestamps, never time x average fps).

    Uses ``decord.gpu(device)`` when asked and the build supports CUDA, else CPU.
    ``for_video`` checks decord's frame index against PyAV's packet timestamps
    and returns PyAV for a file where they disagree.
    """

    name = "decord"

    def __init__(self, device: str = "cpu"):
        import decord

        self._decord = decord
        self.context = decord.cpu(0)
        if device.startswith("cuda"):
            gpu = decord.gpu(torch.device(device).index or 0)
            if _decord_has_cuda(decord, gpu):
                self.context = gpu
            else:
                log.warning("decord: this build has no CUDA support; decoding on CPU")

    def for_video(self, info: VideoInfo) -> Decoder:
        try:
            reader = self._decord.VideoReader(info.path, ctx=self.context)
            frame_times = reader.get_frame_timestamp(np.arange(len(reader)))[:, 0].astype(np.float64)
        except self._decord.DECORDError as e:
            raise VideoError(f"decord cannot open the file ({_reason(e)})") from None
        frame_times -= frame_times[0]
        reference = packet_times(info.path)
        if len(reference) != len(frame_times) or not np.allclose(reference, frame_times, atol=2e-3):
            log.warning("decord: frame index of %s disagrees with its timestamps; decoding it with PyAV", info.path)
            return PyAVDecoder()
        return _DecordVideo(reader, frame_times, self.context.device_type != 1, self._decord.DECORDError)

    def chunks(self, info: VideoInfo, times: np.ndarray, chunk: int) -> Iterator[torch.Tensor]:
        return self.for_video(info).chunks(info, times, chunk)


class _DecordVideo:
    """One opened file, checked by ``DecordDecoder.for_video``."""

    name = "decord"

    def __init__(self, reader, frame_times: np.ndarray, on_gpu: bool, error: type[Exception]):
        self.reader, self.frame_times, self.on_gpu, self.error = reader, frame_times, on_gpu, error

    def for_video(self, info: VideoInfo) -> _DecordVideo:
        return self

    def chunks(self, info: VideoInfo, times: np.ndarray, chunk: int) -> Iterator[torch.Tensor]:
        _check_not_truncated(info, self.frame_times[-1], times[times > self.frame_times[-1]])
        indices = frame_indices_at(self.frame_times, times)
        for start in range(0, len(indices), chunk):
            try:
                batch = self.reader.get_batch(indices[start : start + chunk].tolist())
            except self.error as e:  # e.g. decord2 3.4 on 96x64 frames: a VideoError, so the batch goes on
                raise VideoError(f"decord cannot decode frames at {times[start]:.2f} s ({_reason(e)})") from None
            frames = torch.from_dlpack(batch.to_dlpack()) if self.on_gpu else torch.from_numpy(batch.asnumpy())
            yield _already_upright(frames, info, self.name)


def _decord_has_cuda(decord, context) -> bool:
    try:
        decord.ndarray.empty((1,), ctx=context)
        return True
    except Exception:  # decord raises a bare DECORDError/TVMError without CUDA
        return False


class TorchCodecDecoder:
    """torchcodec's ``get_frames_played_at`` (the same sampling rule), on CUDA or CPU."""

    name = "torchcodec"

    def __init__(self, device: str = "cpu"):
        from torchcodec.decoders import VideoDecoder

        self._decoder_class = VideoDecoder
        self.device = device

    def for_video(self, info: VideoInfo) -> TorchCodecDecoder:
        return self

    def chunks(self, info: VideoInfo, times: np.ndarray, chunk: int) -> Iterator[torch.Tensor]:
        try:
            decoder = self._decoder_class(info.path, device=self.device, dimension_order="NHWC")
        except Exception as e:  # torchcodec raises RuntimeError/ValueError for unreadable files
            raise VideoError(f"torchcodec cannot open the file ({_reason(e)})") from None
        for start in range(0, len(times), chunk):
            seconds = (times[start : start + chunk] + info.start_time).tolist()
            yield _already_upright(decoder.get_frames_played_at(seconds=seconds).data, info, self.name)


def available_decoders() -> list[str]:
    """Backends importable in this environment, in the order ``auto`` prefers on CUDA."""
    names = []
    for name, module in (("torchcodec", "torchcodec"), ("decord", "decord")):
        try:
            __import__(module)
        except Exception:  # an optional backend may fail to import for many reasons (missing FFmpeg libs)
            continue
        if name == "torchcodec" and not _torchcodec_has_ffmpeg():
            continue
        names.append(name)
    return names + ["pyav"]


def _torchcodec_has_ffmpeg() -> bool:
    """torchcodec imports without FFmpeg's shared libraries and fails only when it decodes; its
    ops module records whether they loaded (private flag; assumed present if it ever goes away)."""
    import torchcodec._core.ops as ops

    return bool(getattr(ops, "_FFMPEG_AVAILABLE", True))


def make_decoder(name: str = "auto", device: str = "cpu") -> Decoder:
    """Build a decoder by name. ``auto``: a CUDA decoder when ``device`` is CUDA, else PyAV.

    On CPU PyAV is chosen: it is the exact reference, and decord's CPU build is
    only about 7% faster on a 720p H.264 file (docs/BENCHMARKS.md) while
    needing an extra timestamp check per file.
    """
    if name == "auto":
        if device.startswith("cuda"):
            if "torchcodec" in available_decoders():
                return TorchCodecDecoder(device)
            return DecordDecoder(device)
        return PyAVDecoder()
    if name == "pyav":
        return PyAVDecoder()
    if name not in ("decord", "torchcodec"):
        raise ValueError(f"unknown decoder {name!r}; choose auto, pyav, decord or torchcodec")
    if name not in available_decoders():
        raise ValueError(f"decoder {name!r} is not installed in this environment")
    return DecordDecoder(device) if name == "decord" else TorchCodecDecoder(device)
