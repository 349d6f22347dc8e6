"""``extract``: folders of videos -> one feature file per video (see features.py).

Pipeline per process: decoder threads open videos (``workers`` at a time),
decode the sampled frames in chunks and resize/crop them at once (on the
backbone's device), and put them on a bounded queue. The main thread batches
frames across videos, runs the frozen backbone, and streams rows into each
video's feature file. Memory is bounded by the queue and one batch, never by
video length.

Resumable: a video whose feature file exists with the same source size and
mtime and the same settings is skipped; anything else is redone. The videos to
do are probed first (in the decoder threads), so the progress bar counts their
sampled frames, and a long video moves it too. One bad video is recorded as
failed (manifest and summary) and the rest continue. Under ``accelerate
launch`` the videos are sharded over processes.

Runs sharing an output folder (two ``extract``, or ``extract`` and ``ground
--features``) cooperate: a video is written under its ``FileLock``; one that
another run holds is taken up after the rest, once that run lets go of it, and
counts as done by that run when it finished it. A full or read-only disk stops
the run with one line (``ExtractError``); finished files stay, partial ones go.
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .backbone import FrozenBackbone, load_backbone, spec_metadata
from .features import FORMAT_VERSION, FP8, FileLock, Manifest, StreamingSafetensorsWriter, feature_path, read_metadata, remove_stale_partials
from .names import UnsafeNameError, check_video_id, first_line, printable
from .video import VIDEO_EXTENSIONS, Decoder, VideoError, VideoInfo, make_decoder, probe, sample_times

log = logging.getLogger(__name__)

STORE_CHOICES = ("features", "frames", "both")


class ExtractError(Exception):
    """A problem with the whole run (bad arguments, duplicate ids); one line for the user."""


@dataclass
class ExtractConfig:
    """Settings of one ``extract`` run; the CLI flags map 1:1 onto these fields."""

    video_dirs: list[str]
    out: str
    fps: float = 0.5
    model: str = "ViT-B-32-quickgelu"
    pretrained: str | None = "openai"
    layers: int = 4
    store: str = "features"
    decoder: str = "auto"
    batch_size: int = 32  # frames per backbone forward
    workers: int = 2  # videos decoded at once
    chunk: int = 16  # frames per decoded chunk
    precision: str = "fp32"
    states: str = "fp16"  # how vision states are stored: fp16 | fp8 (e4m3 with a per-token scale: half the bytes)
    device: str | None = None  # default: this process's accelerate device
    progress: bool = True


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

    def line(self) -> str:
        if not (self.done or self.failed or self.by_others):
            return printable(f"extract: nothing to do: 0 done, {self.skipped} skipped (up to date in {self.out}), 0 failed")
        rate = self.frames / self.seconds if self.seconds else 0.0
        others = f", {self.by_others} done by another run" if self.by_others else ""
        return f"extract: {self.done} done, {self.skipped} skipped, {self.failed} failed{others} ({self.frames} frames, {rate:.1f} frames/s)"


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
BEFORE_THE_KEY = {"vision_format": "fp16"}  # run settings that files written before their key existed had


def run_settings(cfg: ExtractConfig, backbone: FrozenBackbone) -> dict[str, str]:
    """Metadata shared by every file of a run; a change in any of it means a redo."""
    return {
        **spec_metadata(backbone.spec),
        "fps": repr(float(cfg.fps)),
        "store": cfg.store,
        "precision": cfg.precision,
        "format_version": FORMAT_VERSION,
        "vision_format": VISION_FP8 if cfg.states == "fp8" else BEFORE_THE_KEY["vision_format"],
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


@dataclass
class _Job:
    """A video being extracted under its lock: its sample times (s), its writer and how many rows reached the file."""

    item: VideoItem
    target: Path
    lock: FileLock
    info: VideoInfo
    times: np.ndarray
    writer: StreamingSafetensorsWriter | None = None
    encoded: int = 0
    decoded_all: bool = False
    failed: bool = False


class _Stopped(Exception):
    """The consumer has gone away; a decoder thread stops quietly."""


def _post(out: queue.Queue, stop: threading.Event, message: tuple) -> None:
    while not stop.is_set():
        try:
            out.put(message, timeout=0.5)
            return
        except queue.Full:
            continue
    raise _Stopped


def _probe(path: str) -> VideoInfo | str:
    """The video's VideoInfo, or why it cannot be read."""
    try:
        return probe(path)
    except VideoError as e:
        return str(e)
    except Exception as e:  # one bad file must not stop the batch; record what happened
        return _unexpected(e)


def _unexpected(error: Exception) -> str:
    return f"unexpected {type(error).__name__}: {first_line(error)}"


def _decode_into(job: _Job, decoder: Decoder, backbone: FrozenBackbone, cfg: ExtractConfig, out: queue.Queue, stop: threading.Event) -> None:
    """Decoder thread: decode the job's sample times, resize/crop; post ('start'|'frames'|'end'|'error', ...) messages."""
    if stop.is_set():
        return
    post = lambda message: _post(out, stop, message)  # noqa: E731
    item = job.item
    try:
        chosen = decoder.for_video(job.info)
        post(("start", item, chosen.name))
        row = 0
        for chunk in chosen.chunks(job.info, job.times, cfg.chunk):
            frames = backbone.preprocess.resize_crop(chunk.to(backbone.device))
            post(("frames", item, row, frames))
            row += len(frames)
        post(("end", item))
    except _Stopped:
        return
    except VideoError as e:
        _post_quietly(post, ("error", item, str(e)))
    except Exception as e:  # one bad file must not stop the batch; record what happened
        _post_quietly(post, ("error", item, _unexpected(e)))


def _post_quietly(post, message: tuple) -> None:
    try:
        post(message)
    except _Stopped:
        pass


class _Extractor:
    """The consumer side: claims videos, batches their frames across videos through the backbone into feature files."""

    def __init__(self, cfg: ExtractConfig, backbone: FrozenBackbone, settings: dict[str, str], manifest: Manifest):
        self.cfg, self.backbone, self.settings, self.manifest = cfg, backbone, settings, manifest
        self.out_dir = manifest.path.parent
        self.jobs: dict[str, _Job] = {}
        self.pending: list[tuple[_Job, int, torch.Tensor]] = []  # frames waiting for the backbone
        self.summary = ExtractSummary(out=str(self.out_dir))
        self.bar: tqdm | None = None
        self.videos = self.ended = 0  # videos this run extracts, and those of them finished, failed or done by another run

    def select(self, items: list[VideoItem]) -> list[tuple[VideoItem, Path]]:
        """Each item to extract with its feature file; counts those up to date, fails ids that cannot be stored."""
        todo = []
        for item in items:
            try:
                target = feature_path(self.out_dir, check_video_id(item.video_id, "not extracted"))
            except UnsafeNameError as e:  # a control character in a file name, a symlink out of the folder
                self._count_failure(item, str(e))
                continue
            if is_up_to_date(target, item, self.settings):
                self.summary.skipped += 1
            else:
                todo.append((item, target))
        return todo

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
                infos = tqdm(pool.map(_probe, [item.path for item, _ in videos]), total=len(videos), desc=f"{desc} probe",
                             unit="video", leave=False, disable=not show, file=sys.stderr)
                todo = deque((item, target, info) for (item, target), info in zip(videos, infos))
                frames = sum(self._samples(info) for *_, info in todo)
                self.videos = len(todo)
                self.bar = tqdm(total=frames, desc=desc, unit="frame", disable=not show, file=sys.stderr)
                self._show_videos()
                while todo or decoding:
                    claimed = self._claim(todo, workers - decoding)
                    for job in claimed:
                        pool.submit(_decode_into, job, decoder, self.backbone, self.cfg, messages, stop)
                    decoding += len(claimed)
                    if not decoding:
                        if todo:  # every video left is being written by another run
                            self.flush()
                            self.bar.set_postfix_str("waiting for another run", refresh=False)
                            time.sleep(0.2)
                        continue
                    try:
                        message = messages.get(timeout=0.5)
                    except queue.Empty:
                        self.flush()  # decoders are slow: do not sit on a partial batch
                        continue
                    self.handle(message)
                    decoding -= message[0] in ("end", "error")
                self.flush()
            except BaseException:
                stop.set()
                pool.shutdown(wait=False, cancel_futures=True)  # probes not started yet are dropped, not waited for
                self.abort_open()
                raise
            finally:
                if self.bar is not None:
                    self.bar.close()

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
                self._drop_frames(self._samples(info))
                self._video_ended()
            elif isinstance(info, str):
                self._record_failure(item, info)
                lock.release()
            else:
                self.jobs[item.video_id] = job = _Job(item, target, lock, info, sample_times(info.duration, self.cfg.fps))
                claimed.append(job)
                remove_stale_partials(target)  # under the lock: only a killed run's files are left
        todo.extend(busy)
        return claimed

    def _samples(self, info: VideoInfo | str) -> int:
        """How many frames sampling takes from a probed video (0 when probing failed)."""
        return len(sample_times(info.duration, self.cfg.fps)) if isinstance(info, VideoInfo) else 0

    def _drop_frames(self, frames: int) -> None:
        """Take ``frames`` that this run will not encode (a failed video, one done by another run) off the bar's total."""
        self.bar.total -= frames
        self.bar.refresh()

    def _video_ended(self) -> None:
        self.ended += 1
        self._show_videos()

    def _show_videos(self) -> None:
        failed = f", {self.summary.failed} failed" if self.summary.failed else ""
        self.bar.set_postfix_str(f"{self.ended}/{self.videos} videos{failed}", refresh=False)

    def handle(self, message: tuple) -> None:
        kind, item = message[0], message[1]
        job = self.jobs[item.video_id]
        if kind == "start":
            self._start(job, message[2])
        elif kind == "frames":
            self._frames(job, *message[2:])
        elif kind == "end":
            job.decoded_all = True
            self._finish_ready()
        else:
            self._fail(job, message[2])

    def _start(self, job: _Job, decoder_name: str) -> None:
        size, count = self.backbone.spec.image_size, len(job.times)
        tensors = {"timestamps": (np.float64, (count,))}
        if self.cfg.store in ("frames", "both"):
            tensors["frames"] = (np.uint8, (count, 3, size, size))
        if self.cfg.store in ("features", "both"):
            k, tokens, width = len(self.backbone.spec.layers), (size // self.backbone.model.visual.patch_size[0]) ** 2 + 1, self.backbone.spec.vision_width
            tensors["vision"] = (FP8 if self.cfg.states == "fp8" else np.float16, (count, k, tokens, width))
            if self.cfg.states == "fp8":
                tensors["vision_scale"] = (np.float16, (count, k, tokens))
        metadata = {
            **self.settings,
            **source_metadata(job.item.path),
            "decoder": decoder_name,
            "duration": repr(job.info.duration),
            "video_id": job.item.video_id,
        }
        job.writer = StreamingSafetensorsWriter(job.target, tensors, metadata)
        job.writer.write("timestamps", 0, job.times)

    def _frames(self, job: _Job, row: int, frames: torch.Tensor) -> None:
        if job.failed:
            return
        if self.cfg.store in ("frames", "both"):
            job.writer.write("frames", row, frames.cpu().numpy())
        if self.cfg.store == "frames":
            job.encoded += len(frames)
            self.summary.frames += len(frames)
            self.bar.update(len(frames))
            return
        self.pending.append((job, row, frames))
        if sum(len(f) for _, _, f in self.pending) >= self.cfg.batch_size:
            self.flush()

    def flush(self) -> None:
        """Run the backbone on every pending frame (from any number of videos) and write the rows."""
        if not self.pending:
            return
        batch = torch.cat([f for _, _, f in self.pending])
        encoded = self.backbone.encode_frames(batch)
        states, scales = quantize_states(encoded) if self.cfg.states == "fp8" else (encoded.to(torch.float16).cpu().numpy(), None)
        offset = written = 0
        for job, row, frames in self.pending:
            n = len(frames)
            if not job.failed:
                job.writer.write("vision", row, states[offset : offset + n])
                if scales is not None:
                    job.writer.write("vision_scale", row, scales[offset : offset + n])
                job.encoded += n
                written += n
            offset += n
        self.summary.frames += len(batch)
        self.bar.update(written)
        self.pending = []
        self._finish_ready()

    def _finish_ready(self) -> None:
        for video_id, job in list(self.jobs.items()):
            if job.decoded_all and not job.failed and job.encoded == len(job.times):
                job.writer.commit()
                self.manifest.append(video_id, job.item.path, "done", frames=len(job.times))
                self.summary.done += 1
                self._close(job)
                self._video_ended()

    def _close(self, job: _Job) -> None:
        """Forget a finished or failed video and let other runs at it."""
        del self.jobs[job.item.video_id]
        job.lock.release()

    def abort_open(self) -> None:
        """Remove the partial files of every unfinished video and unlock it (the run is stopping)."""
        for job in self.jobs.values():
            if job.writer is not None:
                job.writer.abort()
            job.lock.release()

    def _fail(self, job: _Job, reason: str) -> None:
        job.failed = True
        if job.writer is not None:
            job.writer.abort()
        self.pending = [p for p in self.pending if p[0] is not job]
        self._drop_frames(len(job.times) - job.encoded)
        self._record_failure(job.item, reason)
        self._close(job)

    def _record_failure(self, item: VideoItem, reason: str) -> None:
        """A video of this run failed: in the manifest, the summary and the bar (the caller holds its lock)."""
        self.manifest.append(item.video_id, item.path, "failed", reason=reason)
        self._count_failure(item, reason)
        self._video_ended()

    def _count_failure(self, item: VideoItem, reason: str) -> None:
        self.summary.failed += 1
        self.summary.failures.append((item.path, reason))


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
        log.warning(f"accelerate launch started 1 process, which does all the work, not --num_processes of them: add "
                    f"--multi_gpu (without a GPU: ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N {command} ...)")


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
    try:
        extractor = _Extractor(cfg, backbone, run_settings(cfg, backbone), manifest)
        todo = extractor.select(mine)
        if todo:  # else no bar: the summary says there was nothing to do
            extractor.run(todo, decoder, desc=f"extract[{state.process_index}]")
        summary = extractor.summary
        summary.seconds = time.perf_counter() - start
        _finalize(state, manifest, summary)
    except OSError as e:  # the output folder's disk: full, read-only, gone
        raise ExtractError(printable(f"{out_dir}: cannot write ({e.strerror or e}); finished videos are kept, "
                                     f"unfinished ones removed")) from None
    return summary


def _finalize(state, manifest: Manifest, summary: ExtractSummary) -> None:
    """Across processes: add up the counts, then compact the manifest once if this run added to it."""
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        parts = gather_object([json.dumps(summary.__dict__)])
        state.wait_for_everyone()
        merged = [json.loads(p) for p in parts]
        for key in ("done", "skipped", "failed", "by_others", "frames"):
            setattr(summary, key, sum(p[key] for p in merged))
        summary.failures = [tuple(f) for p in merged for f in p["failures"]]
    if state.is_main_process and (summary.done or summary.failed) and manifest.path.exists():
        manifest.compact()
