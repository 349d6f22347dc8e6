"""``extract``: folders of videos -> one feature file per video (see features.py).

Three stages, which the local runner here and the Ray runner (``ray_engine``) both call:

1. ``decode_video``: one video's sampled frames (or a range of them), resized and cropped, as ``Opened`` /
   ``Frames`` / ``Decoded`` / ``DecodeFailed`` messages;
2. ``encode_rows``: a batch of frames from any videos -> their rows of the stored states;
3. ``VideoFile``: one video's file (layout from ``FrozenBackbone.row_shapes``), filled as rows arrive and
   committed atomically once complete.

The local runner (``LocalRunner``): decoder threads open videos (``workers`` at a time) and post their messages on
a bounded queue; the main thread batches frames across videos, runs the frozen backbone, and streams rows into each
video's file. Memory is bounded by the queue and one batch, never by video length.

Resumable: a video whose feature file exists with the same source size and mtime and the same settings is skipped;
anything else is redone. The videos to do are probed first, so the progress bar (``Progress``) counts their sampled
frames, and a long video moves it too. One bad video is recorded as failed (manifest and summary) and the rest
continue. Under ``accelerate launch`` the videos are sharded over processes; a process whose run fails still meets
the others at the final gather, so none waits for it.

Runs sharing an output folder (two ``extract``, or ``extract`` and ``ground --features``) cooperate: a video is
written under its ``FileLock``; one that another run holds is taken up after the rest, once that run lets go of it,
and counts as done by that run when it finished it. A full or read-only disk stops the run with one line
(``ExtractError``); finished files stay, partial ones go.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .backbone import FrozenBackbone, Preprocess, load_backbone, spec_metadata
from .errors import UserError
from .extract_config import STORE_CHOICES, ExtractConfig
from .features import (
    FORMAT_VERSION,
    FP8,
    FileLock,
    Manifest,
    StreamingSafetensorsWriter,
    feature_path,
    read_metadata,
    remove_stale_partials,
)
from .names import UnsafeNameError, check_video_id, first_line, printable
from .video import (
    VIDEO_EXTENSIONS,
    Decoder,
    VideoError,
    VideoInfo,
    make_decoder,
    probe,
    sample_times,
)

log = logging.getLogger(__name__)


class ExtractError(UserError):
    """A problem with the whole run (bad arguments, duplicate ids); one line for the user."""


@dataclass(frozen=True)
class VideoItem:
    video_id: str  # path relative to its folder, without extension
    path: str


@dataclass
class ExtractSummary:
    done: int = 0
    skipped: int = 0  # already up to date
    failed: int = 0
    by_others: int = 0  # finished by another run sharing the output folder while this one waited
    frames: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    out: str = ""  # the output folder

    def count_failure(self, item: VideoItem, reason: str) -> None:
        self.failed += 1
        self.failures.append((item.path, reason))

    def line(self) -> str:
        if not (self.done or self.failed or self.by_others):
            return printable(f"extract: nothing to do: 0 done, {self.skipped} skipped (up to date in {self.out}), 0 failed")
        rate = self.frames / self.seconds if self.seconds else 0.0
        others = f", {self.by_others} done by another run" if self.by_others else ""
        return (
            f"extract: {self.done} done, {self.skipped} skipped, {self.failed} failed{others} ({self.frames} frames, {rate:.1f} frames/s)"
        )


def find_videos(paths: list[str]) -> list[VideoItem]:
    """Video files under each folder (recursively) or given directly, sorted by id.

    Raises ExtractError for a missing path or two files with the same id.
    """
    items: dict[str, VideoItem] = {}
    for root in paths:
        root_path = Path(root)
        if root_path.is_file():
            found = [(root_path.stem, root_path)]
        elif root_path.is_dir():
            found = [
                (str(p.relative_to(root_path).with_suffix("")), p)
                for p in sorted(root_path.rglob("*"))
                if p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith(".")
            ]
        else:
            raise ExtractError(printable(f"{root}: no such file or folder"))
        for video_id, path in found:
            if video_id in items:
                raise ExtractError(printable(f"two videos have the id {video_id!r}: {items[video_id].path} and {path}"))
            items[video_id] = VideoItem(video_id, str(path))
    return [items[k] for k in sorted(items)]


VISION_FP8 = "fp8_e4m3_token_scale"  # metadata "vision_format" of files whose vision states are stored in fp8
VISION_CLS = "cls_fp16"  # ... of files that keep the last layer's CLS state alone (``states="cls"``)
VISION_FORMATS = {"fp16": "fp16", "fp8": VISION_FP8, "cls": VISION_CLS}  # ExtractConfig.states -> metadata "vision_format"
BEFORE_THE_KEY = {"vision_format": "fp16"}  # run settings that files written before their key existed had


def stored_vision_shape(states: str, row_shape: tuple[int, ...]) -> tuple[int, ...]:
    """One frame's stored vision row: the backbone's (K, 1+P, D), or (1, 1, D) when ``states`` is ``cls``."""
    return (1, 1, row_shape[-1]) if states == "cls" else tuple(row_shape)


def run_settings(cfg: ExtractConfig, backbone: FrozenBackbone) -> dict[str, str]:
    """Metadata shared by every file of a run; a change in any of it means a redo."""
    return {
        **spec_metadata(backbone.spec),
        "fps": repr(float(cfg.fps)),
        "store": cfg.store,
        "precision": cfg.precision,
        "format_version": FORMAT_VERSION,
        "vision_format": VISION_FORMATS[cfg.states],
    }


def quantize_states(states: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """States (N, K, P, D) -> float8 e4m3 bytes (N, K, P, D) uint8 and a float16 scale per token (N, K, P): each
    token's largest magnitude maps to 448, e4m3's largest finite value (relative error at most 2^-4 per entry).
    ``data.VisionRows`` reads them back."""
    states = states.float()
    scale = (states.abs().amax(-1) / 448.0).clamp_min(1e-12).to(torch.float16)
    scaled = states / scale.float()[..., None]
    return scaled.to(torch.float8_e4m3fn).view(torch.uint8).cpu().numpy(), scale.cpu().numpy()


def source_metadata(path: str) -> dict[str, str]:
    stat = os.stat(path)
    return {"source_size": str(stat.st_size), "source_mtime": repr(stat.st_mtime)}


def is_up_to_date(out_file: Path, item: VideoItem, settings: dict[str, str]) -> bool:
    meta = read_metadata(out_file)
    if meta is None:
        return False
    try:
        wanted = {**settings, **source_metadata(item.path)}
    except OSError:
        return False
    return all(meta.get(k, BEFORE_THE_KEY.get(k)) == v for k, v in wanted.items())


def output_folder(out: str | Path) -> Path:
    """``out`` as a folder, created when missing; ExtractError (one line) when it is a file or cannot be made."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ExtractError(printable(f"{out}: exists and is not a folder"))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExtractError(printable(f"{out}: cannot create the folder ({e.strerror})")) from None
    return path


# ---- Stage 1: decode one video's samples -------------------------------------------------------------------------


@dataclass(frozen=True)
class Opened:
    """The decoder chose its backend for the video (``decoder``: its name, as the file's metadata records it)."""

    video_id: str
    decoder: str


@dataclass(frozen=True)
class Frames:
    """Rows ``row`` .. ``row + len(frames) - 1`` of a video: uint8 (n, 3, S, S) frames, resized and cropped."""

    video_id: str
    row: int
    frames: torch.Tensor


@dataclass(frozen=True)
class Decoded:
    """Every row asked of the decoder has been sent."""

    video_id: str


@dataclass(frozen=True)
class DecodeFailed:
    """The video cannot be decoded; ``reason`` is one line for the manifest and the summary."""

    video_id: str
    reason: str


DecodeMessage = Opened | Frames | Decoded | DecodeFailed


def probe_or_reason(path: str) -> VideoInfo | str:
    """The video's VideoInfo, or why it cannot be read."""
    try:
        return probe(path)
    except VideoError as e:
        return str(e)
    except Exception as e:  # one bad file must not stop the batch; record what happened
        return _unexpected(e)


def _unexpected(error: Exception) -> str:
    return f"unexpected {type(error).__name__}: {first_line(error)}"


def decode_video(
    video_id: str,
    info: VideoInfo,
    times: np.ndarray,
    first_row: int,
    decoder: Decoder,
    preprocess: Preprocess,
    device: torch.device,
    chunk: int,
) -> Iterator[DecodeMessage]:
    """Stage 1: the frames shown at ``times`` (s; the video's rows ``first_row`` on), ``chunk`` at a time, resized and
    cropped on ``device``: ``Opened``, then ``Frames`` messages, then ``Decoded``, or ``DecodeFailed`` at the first
    error (after any rows already sent)."""
    try:
        chosen = decoder.for_video(info)
        yield Opened(video_id, chosen.name)
        row = first_row
        for frames in chosen.chunks(info, times, chunk):
            frames = preprocess.resize_crop(frames.to(device))
            yield Frames(video_id, row, frames)
            row += len(frames)
        yield Decoded(video_id)
    except VideoError as e:
        yield DecodeFailed(video_id, str(e))
    except Exception as e:  # one bad file must not stop the batch; record what happened
        yield DecodeFailed(video_id, _unexpected(e))


# ---- Stage 2: encode a batch of frames -----------------------------------------------------------------------------


def encode_rows(backbone: FrozenBackbone, frames: torch.Tensor, states: str) -> dict[str, np.ndarray]:
    """Stage 2: uint8 frames (B, 3, S, S) from any videos -> their rows of the ``vision`` tensor as stored: float16
    (B, K, 1+P, D), with ``states="fp8"`` e4m3 bytes plus ``vision_scale`` (B, K, 1+P), with ``states="cls"`` float16
    (B, 1, 1, D) (the last layer's CLS state)."""
    encoded = backbone.encode_frames(frames)
    if states == "fp8":
        vision, scale = quantize_states(encoded)
        return {"vision": vision, "vision_scale": scale}
    if states == "cls":
        encoded = encoded[:, -1:, :1]
    return {"vision": encoded.to(torch.float16).cpu().numpy()}


def decode_samples(path: str, times: np.ndarray, preprocess: Preprocess, device: torch.device) -> torch.Tensor:
    """uint8 frames (N, 3, S, S) shown at ``times`` (s) in the video at ``path``, decoded (the ``auto`` decoder of
    ``device``) and resized and cropped as ``vtg extract`` stores them. VideoError (one line) when the video cannot be
    read."""
    frames = []
    decoder = make_decoder("auto", str(device))
    for message in decode_video(path, probe(path), times, 0, decoder, preprocess, device, ExtractConfig.chunk):
        if isinstance(message, DecodeFailed):
            raise VideoError(message.reason)
        if isinstance(message, Frames):
            frames.append(message.frames)
    return torch.cat(frames)


def encode_samples(backbone: FrozenBackbone, path: str, times: np.ndarray) -> torch.Tensor:
    """The float16 vision states (N, K, 1+P, D) of the frames shown at ``times`` (s) in the video at ``path``
    (``decode_samples``), encoded in batches as ``vtg extract`` stores them: what search re-encodes on demand.
    VideoError (one line) when the video cannot be read."""
    frames = decode_samples(path, times, backbone.preprocess, backbone.device)
    batches = [frames[i : i + ExtractConfig.batch_size] for i in range(0, len(frames), ExtractConfig.batch_size)]
    return torch.cat([torch.from_numpy(encode_rows(backbone, batch, "fp16")["vision"]) for batch in batches])


# ---- Stage 3: write one video's file -------------------------------------------------------------------------------


def file_layout(cfg: ExtractConfig, row_shapes: dict[str, tuple[int, ...]], count: int) -> dict[str, tuple]:
    """The tensors of a feature file of ``count`` samples: name -> (dtype, shape), rows from ``FrozenBackbone.row_shapes``."""
    tensors: dict[str, tuple] = {"timestamps": (np.float64, (count,))}
    if cfg.store in ("frames", "both"):
        tensors["frames"] = (np.uint8, (count, *row_shapes["frames"]))
    if cfg.store in ("features", "both"):
        tensors["vision"] = (FP8 if cfg.states == "fp8" else np.float16, (count, *stored_vision_shape(cfg.states, row_shapes["vision"])))
        if cfg.states == "fp8":
            tensors["vision_scale"] = (np.float16, (count, *row_shapes["vision"][:2]))
    return tensors


def video_metadata(settings: dict[str, str], item: VideoItem, info: VideoInfo, decoder: str) -> dict[str, str]:
    """A feature file's header metadata: the run's settings, the source's size and mtime, the decoder, duration (s), id."""
    return {**settings, **source_metadata(item.path), "decoder": decoder, "duration": repr(info.duration), "video_id": item.video_id}


class VideoFile:
    """Stage 3: one video's feature file, written as its rows arrive (in any order) and committed once, when complete.

    Rows arriving twice (a retried task) are written once. The file appears atomically at ``commit``; ``abort``
    removes the partial file.
    """

    def __init__(self, target: Path, layout: dict[str, tuple], metadata: dict[str, str], times: np.ndarray):
        self.rows = len(times)
        self.writer = StreamingSafetensorsWriter(target, layout, metadata)
        self.written = {name: np.zeros(self.rows, dtype=bool) for name in layout if name != "timestamps"}
        try:
            self.writer.write("timestamps", 0, times)
        except BaseException:
            self.writer.abort()
            raise

    def write(self, row: int, tensors: dict[str, np.ndarray]) -> int:
        """Place rows ``row`` .. of each named tensor; returns how many of them are new to ``vision`` (or ``frames``)."""
        new_rows = 0
        for name, rows in tensors.items():
            fresh = ~self.written[name][row : row + len(rows)]
            if fresh.all():
                self.writer.write(name, row, rows)
            else:
                for k in np.flatnonzero(fresh):
                    self.writer.write(name, row + int(k), rows[k : k + 1])
            self.written[name][row : row + len(rows)] = True
            new_rows = max(new_rows, int(fresh.sum()))
        return new_rows

    @property
    def rows_done(self) -> int:
        """Rows every tensor has (the encoded rows when frames are written first, as decoded)."""
        return int(min(mask.sum() for mask in self.written.values()))

    @property
    def complete(self) -> bool:
        return self.rows_done == self.rows

    def commit(self) -> Path:
        return self.writer.commit()

    def abort(self) -> None:
        self.writer.abort()


# ---- What both runners share: choosing the videos, the bar, the records ------------------------------------------


def select_videos(items: list[VideoItem], out_dir: Path, settings: dict[str, str], summary: ExtractSummary) -> list[tuple[VideoItem, Path]]:
    """Each item to extract with its feature file; counts those up to date as skipped and fails ids that cannot be stored."""
    todo = []
    for item in items:
        try:
            target = feature_path(out_dir, check_video_id(item.video_id, "not extracted"))
        except UnsafeNameError as e:  # a control character in a file name, a symlink out of the folder
            summary.count_failure(item, str(e))
            continue
        if is_up_to_date(target, item, settings):
            summary.skipped += 1
        else:
            todo.append((item, target))
    return todo


def sample_count(info: VideoInfo | str, fps: float) -> int:
    """How many frames sampling takes from a probed video (0 when probing failed)."""
    return len(sample_times(info.duration, fps)) if isinstance(info, VideoInfo) else 0


class Progress:
    """The bar of a run: frames encoded out of all the frames it will encode, and videos ended out of those to do."""

    def __init__(self, frames: int, videos: int, desc: str, show: bool):
        self.videos, self.ended, self.failed = videos, 0, 0
        self.bar = tqdm(total=frames, desc=desc, unit="frame", disable=not show, file=sys.stderr)
        self._show()

    def advance(self, frames: int) -> None:
        self.bar.update(frames)

    def drop(self, frames: int) -> None:
        """Take ``frames`` that the run will not encode (a failed video, one done by another run) off the total."""
        self.bar.total -= frames
        self.bar.refresh()

    def video_ended(self, failed: bool = False) -> None:
        self.ended += 1
        self.failed += failed
        self._show()

    def waiting(self, what: str) -> None:
        self.bar.set_postfix_str(what, refresh=False)

    def _show(self) -> None:
        failed = f", {self.failed} failed" if self.failed else ""
        self.bar.set_postfix_str(f"{self.ended}/{self.videos} videos{failed}", refresh=False)

    def close(self) -> None:
        self.bar.close()


def record_failure(manifest: Manifest, summary: ExtractSummary, item: VideoItem, reason: str) -> None:
    """A video failed: in the manifest and the summary (the caller holds its lock)."""
    manifest.append(item.video_id, item.path, "failed", reason=reason)
    summary.count_failure(item, reason)


def record_done(manifest: Manifest, summary: ExtractSummary, item: VideoItem, frames: int) -> None:
    manifest.append(item.video_id, item.path, "done", frames=frames)
    summary.done += 1


def abort_videos(videos) -> None:
    """The run is stopping: remove the partial file (``.file``, None before it opened) of each unfinished video and
    release its lock (``.lock``)."""
    for video in videos:
        if video.file is not None:
            video.file.abort()
        video.lock.release()


# ---- The local runner: decoder threads and one backbone in this process -------------------------------------------


@dataclass
class _Job:
    """A video being extracted under its lock: its sample times (s), its file and whether every row was decoded."""

    item: VideoItem
    target: Path
    lock: FileLock
    info: VideoInfo
    times: np.ndarray
    file: VideoFile | None = None
    decoded_all: bool = False


class _Stopped(Exception):
    """The consumer has gone away; a decoder thread stops quietly."""


def _post(out: queue.Queue, stop: threading.Event, message: DecodeMessage) -> None:
    while not stop.is_set():
        try:
            out.put(message, timeout=0.5)
            return
        except queue.Full:
            continue
    raise _Stopped


def _decode_thread(job: _Job, decoder: Decoder, backbone: FrozenBackbone, chunk: int, out: queue.Queue, stop: threading.Event) -> None:
    """Decoder thread: post the messages of ``decode_video`` for the whole of ``job``'s video until told to stop."""
    try:
        for message in decode_video(job.item.video_id, job.info, job.times, 0, decoder, backbone.preprocess, backbone.device, chunk):
            _post(out, stop, message)
            if isinstance(message, DecodeFailed):
                return
    except _Stopped:
        return


class LocalRunner:
    """Extracts videos in this process: decoder threads feed one backbone, whose batches mix frames of any videos."""

    def __init__(self, cfg: ExtractConfig, backbone: FrozenBackbone, settings: dict[str, str], manifest: Manifest, summary: ExtractSummary):
        self.cfg, self.backbone, self.settings, self.manifest, self.summary = cfg, backbone, settings, manifest, summary
        self.row_shapes = backbone.row_shapes()
        self.jobs: dict[str, _Job] = {}
        self.pending: list[Frames] = []  # frames waiting for the backbone
        self.progress: Progress | None = None

    def run(self, videos: list[tuple[VideoItem, Path]], decoder: Decoder, desc: str) -> None:
        """Extract ``videos``, one decoder thread per claimed video; a video another run holds waits for it.

        The videos are probed first, so the bar (``desc``) counts frames out of all their samples.
        """
        workers = max(1, self.cfg.workers)
        messages: queue.Queue = queue.Queue(maxsize=max(4, 2 * workers))
        stop = threading.Event()
        decoding, show = 0, self.cfg.progress
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
            try:
                infos = tqdm(
                    pool.map(probe_or_reason, [item.path for item, _ in videos]),
                    total=len(videos),
                    desc=f"{desc} probe",
                    unit="video",
                    leave=False,
                    disable=not show,
                    file=sys.stderr,
                )
                todo = deque((item, target, info) for (item, target), info in zip(videos, infos))
                frames = sum(sample_count(info, self.cfg.fps) for *_, info in todo)
                self.progress = Progress(frames, len(todo), desc, show)
                while todo or decoding:
                    claimed = self._claim(todo, workers - decoding)
                    for job in claimed:
                        pool.submit(_decode_thread, job, decoder, self.backbone, self.cfg.chunk, messages, stop)
                    decoding += len(claimed)
                    if not decoding:
                        if todo:  # every video left is being written by another run
                            self.flush()
                            self.progress.waiting("waiting for another run")
                            time.sleep(0.2)
                        continue
                    try:
                        message = messages.get(timeout=0.5)
                    except queue.Empty:
                        self.flush()  # decoders are slow: do not sit on a partial batch
                        continue
                    self.handle(message)
                    decoding -= isinstance(message, (Decoded, DecodeFailed))
                self.flush()
            except BaseException:
                stop.set()
                pool.shutdown(wait=False, cancel_futures=True)  # probes not started yet are dropped, not waited for
                self.abort_open()
                raise
            finally:
                if self.progress is not None:
                    self.progress.close()

    def _claim(self, todo: deque[tuple[VideoItem, Path, VideoInfo | str]], slots: int) -> list[_Job]:
        """Take up to ``slots`` videos off the front of ``todo`` and lock them for this run; returns their jobs.

        A video locked by another run goes to the back of ``todo``; one that another run finished meanwhile
        counts as done by it; one that could not be probed is recorded as failed.
        """
        busy, claimed = [], []
        while todo and len(claimed) < slots:
            item, target, info = todo.popleft()
            lock = FileLock(target)
            if not lock.acquire(wait=False):
                busy.append((item, target, info))
            elif is_up_to_date(target, item, self.settings):
                lock.release()
                self.summary.by_others += 1
                self.progress.drop(sample_count(info, self.cfg.fps))
                self.progress.video_ended()
            elif isinstance(info, str):
                self._fail_video(item, info)
                lock.release()
            else:
                self.jobs[item.video_id] = job = _Job(item, target, lock, info, sample_times(info.duration, self.cfg.fps))
                claimed.append(job)
                remove_stale_partials(target)  # under the lock: only a killed run's files are left
        todo.extend(busy)
        return claimed

    def handle(self, message: DecodeMessage) -> None:
        job = self.jobs[message.video_id]
        if isinstance(message, Opened):
            layout = file_layout(self.cfg, self.row_shapes, len(job.times))
            job.file = VideoFile(job.target, layout, video_metadata(self.settings, job.item, job.info, message.decoder), job.times)
        elif isinstance(message, Frames):
            self._frames(job, message)
        elif isinstance(message, Decoded):
            job.decoded_all = True
            self._finish_ready()
        else:
            self._fail(job, message.reason)

    def _frames(self, job: _Job, message: Frames) -> None:
        if self.cfg.store in ("frames", "both"):
            job.file.write(message.row, {"frames": message.frames.cpu().numpy()})
        if self.cfg.store == "frames":
            self.summary.frames += len(message.frames)
            self.progress.advance(len(message.frames))
            return
        self.pending.append(message)
        if sum(len(m.frames) for m in self.pending) >= self.cfg.batch_size:
            self.flush()

    def flush(self) -> None:
        """Run the backbone on every pending frame (from any number of videos) and write the rows."""
        if not self.pending:
            return
        rows = encode_rows(self.backbone, torch.cat([m.frames for m in self.pending]), self.cfg.states)
        offset = 0
        for message in self.pending:
            n = len(message.frames)
            self.jobs[message.video_id].file.write(message.row, {name: r[offset : offset + n] for name, r in rows.items()})
            offset += n
        self.summary.frames += offset
        self.progress.advance(offset)
        self.pending = []
        self._finish_ready()

    def _finish_ready(self) -> None:
        for job in list(self.jobs.values()):
            if job.decoded_all and job.file.complete:
                job.file.commit()
                record_done(self.manifest, self.summary, job.item, len(job.times))
                self._close(job)
                self.progress.video_ended()

    def _close(self, job: _Job) -> None:
        """Forget a finished or failed video and let other runs at it."""
        del self.jobs[job.item.video_id]
        job.lock.release()

    def abort_open(self) -> None:
        abort_videos(self.jobs.values())

    def _fail(self, job: _Job, reason: str) -> None:
        if job.file is not None:
            job.file.abort()
        self.pending = [m for m in self.pending if m.video_id != job.item.video_id]
        self.progress.drop(len(job.times) - (job.file.rows_done if job.file is not None else 0))
        self._fail_video(job.item, reason)
        self._close(job)

    def _fail_video(self, item: VideoItem, reason: str) -> None:
        record_failure(self.manifest, self.summary, item, reason)
        self.progress.video_ended(failed=True)


def process_state():
    """This process's place under ``accelerate launch`` (one process otherwise).

    ``PartialState`` alone ignores ACCELERATE_USE_CPU and, with no GPU, would not
    join the other processes; CPU-only launches need ``cpu=True`` to use gloo.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def launched() -> bool:
    """Whether ``accelerate launch`` started this process (both of its launchers set ACCELERATE_DYNAMO_BACKEND)."""
    return "ACCELERATE_DYNAMO_BACKEND" in os.environ


def warn_if_one_process_launched(state, command: str = "extract") -> None:
    """Say so when ``accelerate launch --num_processes N COMMAND`` started one process that will do all the work.

    Without ``--multi_gpu`` (or a GPU) the launcher runs the script once, with MASTER_ADDR set but no WORLD_SIZE.
    """
    if launched() and state.num_processes == 1 and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ:
        log.warning(
            f"accelerate launch started 1 process, which does all the work, not --num_processes of them: add "
            f"--multi_gpu (without a GPU: ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N {command} ...)"
        )


def run_extract(cfg: ExtractConfig) -> ExtractSummary:
    """Extract every video under ``cfg.video_dirs``; returns this process's counts.

    Under accelerate each process takes every num_processes-th pending video.
    """
    if cfg.store not in STORE_CHOICES:
        raise ExtractError(f"--store must be one of {', '.join(STORE_CHOICES)}, got {cfg.store!r}")
    if cfg.fps <= 0:
        raise ExtractError(f"--fps must be positive, got {cfg.fps}")
    state = process_state()
    warn_if_one_process_launched(state)
    items = find_videos(cfg.video_dirs)
    output_folder(cfg.out)  # a bad --out fails before the backbone loads
    device = torch.device(cfg.device) if cfg.device else state.device
    backbone = load_backbone(cfg.model, cfg.pretrained, cfg.layers, device, cfg.precision)
    return extract_videos(cfg, items, backbone, state)


def extract_videos(cfg: ExtractConfig, items: list[VideoItem], backbone: FrozenBackbone, state=None) -> ExtractSummary:
    """Extract ``items`` into ``cfg.out`` with a loaded backbone (``cfg.video_dirs`` is not read).

    ``state``: the accelerate process state to shard over (default: this process's). A manifest with an unsafe
    id is refused before any work; a disk fault in the folder is an ExtractError naming it.
    """
    state = state or process_state()
    decoder = make_decoder(cfg.decoder, str(backbone.device))
    out_dir = output_folder(cfg.out)
    manifest = Manifest(out_dir)
    manifest.records()  # UnsafeNameError naming the line of a crafted id, before anything is written
    mine = items[state.process_index :: state.num_processes]
    start = time.perf_counter()
    summary = ExtractSummary(out=str(out_dir))
    error = None
    try:
        settings = run_settings(cfg, backbone)
        todo = select_videos(mine, out_dir, settings, summary)
        if todo:  # else no bar: the summary says there was nothing to do
            LocalRunner(cfg, backbone, settings, manifest, summary).run(todo, decoder, desc=f"extract[{state.process_index}]")
    except OSError as e:  # the output folder's disk: full, read-only, gone
        error = printable(f"{out_dir}: cannot write ({e.strerror or e}); finished videos are kept, unfinished ones removed")
    summary.seconds = time.perf_counter() - start
    error = _finalize(state, manifest, summary, error)
    if error:
        raise ExtractError(error)
    return summary


def _finalize(state, manifest: Manifest, summary: ExtractSummary, error: str | None) -> str | None:
    """Across processes: add up the counts, then compact the manifest once if this run added to it.

    Every process reaches the gather, one whose run failed (``error``) too, so no process waits for one that has
    left; the first error of any process is returned to all of them.
    """
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        parts = gather_object([json.dumps({**summary.__dict__, "error": error})])
        state.wait_for_everyone()
        merged = [json.loads(p) for p in parts]
        for key in ("done", "skipped", "failed", "by_others", "frames"):
            setattr(summary, key, sum(p[key] for p in merged))
        summary.failures = [tuple(f) for p in merged for f in p["failures"]]
        error = next((p["error"] for p in merged if p["error"]), None)
    if error is None and state.is_main_process and (summary.done or summary.failed) and manifest.path.exists():
        try:
            manifest.compact()
        except OSError as e:
            error = printable(f"{manifest.path}: cannot write ({e.strerror or e})")
    return error
