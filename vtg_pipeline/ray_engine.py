"""The Ray runner: ``vtg extract|index|ground ... --ray [ADDRESS]`` on a Ray cluster (Ray Data, streaming).

Extraction runs the stages of ``extract`` as a Ray Data pipeline:

    videos to do (driver) -> probe (tasks) -> time ranges of at most ``RANGE_FRAMES`` samples
      -> decode_video (CPU tasks, one row per frame) -> encode_rows (backbone actors, batches mix videos)
      -> VideoFile (driver: each video's file written once, committed when complete)

Ray schedules and retries: a task or actor lost with its worker process or node is run again elsewhere, and the
driver writes a row that arrives twice only once. A long video is split into ranges, so one 2-hour video keeps every
worker busy instead of one. Files go into the same store as the local runner's (same layout, manifest, locks and
resume), so the store has to be on a filesystem every node mounts; that is checked before any work.

Torch in each task and actor uses as many threads as the CPUs Ray gave it. Nothing here runs without ``--ray``:
the local path imports no Ray module.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import pickle
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .backbone import Preprocess, load_backbone
from .extract import (
    DecodeFailed,
    ExtractConfig,
    ExtractError,
    ExtractSummary,
    Frames,
    Opened,
    Progress,
    VideoFile,
    VideoItem,
    abort_videos,
    decode_video,
    encode_rows,
    file_layout,
    is_up_to_date,
    output_folder,
    probe_or_reason,
    record_done,
    record_failure,
    run_settings,
    sample_count,
    select_videos,
    video_metadata,
)
from .features import FileLock, Manifest, remove_stale_partials
from .names import path_exists, printable
from .video import VideoInfo, make_decoder, sample_times

log = logging.getLogger(__name__)

INSTALL_HINT = "--ray needs Ray Data: pip install 'vtg_pipeline[ray]'"
RANGE_FRAMES = 256  # samples per decode task: a long video becomes several tasks (256 samples: 8 min 32 s at 0.5 fps)
CONNECT_TIMEOUT_S = 20.0  # an address that does not answer fails within this


def import_ray():
    """The ``ray`` module, or an ExtractError saying how to install it."""
    try:
        import ray
        import ray.data  # a subpackage: imported here so that a missing extra fails at once
    except ImportError:
        raise ExtractError(INSTALL_HINT) from None
    return ray


# ---- Joining a cluster --------------------------------------------------------------------------------------------


def _check_reachable(address: str) -> None:
    """A ``host:port`` address must accept a connection within CONNECT_TIMEOUT_S, else one line naming it."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", "local" and the like: ray.init resolves them and says what is wrong
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ExtractError(printable(f"--ray {address}: no Ray cluster answers there ({e.strerror or e})")) from None


@contextlib.contextmanager
def ray_cluster(address: str | None) -> Iterator[object]:
    """Join the cluster at ``address`` (``auto``: the one running on this machine), or start a local one and stop it
    afterwards when ``address`` is None (a new one, even beside a cluster that ``ray start`` runs here). Ray's own logs stay out of the terminal; the progress bar is the driver's."""
    ray = import_ray()
    if address:
        _check_reachable(address)
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address or "local", include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        except (ConnectionError, RuntimeError, ValueError) as e:
            hint = (
                "; a cluster with token authentication also needs RAY_AUTH_MODE=token and its token (ray get-auth-token)" if address else ""
            )
            raise ExtractError(printable(f"--ray {address or 'local'}: cannot join the cluster ({str(e).splitlines()[0]}){hint}")) from None
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver's one bar counts the job
    context.print_on_execution_start = False
    context.target_max_block_size = 16 * 2**20  # rows reach the driver (and the bar) every few batches, not at 128 MiB
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # per-dataset INFO lines and the pickled-column notice
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


@contextlib.contextmanager
def interrupt_flag() -> Iterator[threading.Event]:
    """An event set when Ctrl-C (SIGINT) reaches this process meanwhile; the interrupt itself goes on as before.
    Outside the main thread, where no handler can be set, the event stays clear."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        interrupted.set()
        if callable(previous):
            previous(signum, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def use_assigned_cpus() -> int:
    """Set torch's threads to the CPUs Ray gave this task or actor (at least 1); returns that number."""
    import ray

    cpus = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    torch.set_num_threads(cpus)
    return cpus


def check_store_shared(ray, out_dir: Path) -> None:
    """Refuse, in one line, a store that some node of the cluster cannot see (a local folder on a multi-node cluster).

    A marker file is written into the store and a task pinned to each alive node looks for it.
    """
    marker = out_dir / f".vtg-shared-{uuid.uuid4().hex}"
    marker.write_text("vtg")
    try:
        check_visible(ray, marker, out_dir)
    finally:
        marker.unlink(missing_ok=True)


def check_visible(ray, path: Path, named: Path) -> None:
    """Refuse, in one line naming ``named``, a ``path`` that some alive node cannot see."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    sees = ray.remote(num_cpus=0)(path_exists)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    seen = ray.get(
        [sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(str(path)) for n in nodes]
    )
    blind = [n["NodeManagerAddress"] for n, ok in zip(nodes, seen) if not ok]
    if blind:
        raise ExtractError(
            printable(
                f"{named}: not visible from {len(blind)} of {len(nodes)} nodes ({', '.join(sorted(set(blind)))}); "
                f"put it on a filesystem every node mounts at the same path"
            )
        )


# ---- Extraction -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoRange:
    """Rows ``first`` .. ``first + len(times) - 1`` of one video, decoded by one task; ``times`` in seconds."""

    video_id: str
    info: VideoInfo
    first: int
    times: np.ndarray


def split_ranges(video_id: str, info: VideoInfo, fps: float, frames: int) -> list[VideoRange]:
    """A video's samples in ranges of at most ``frames`` rows, in order."""
    times = sample_times(info.duration, fps)
    return [VideoRange(video_id, info, first, times[first : first + frames]) for first in range(0, len(times), frames)]


def _probe_many(paths: list[str]) -> list[VideoInfo | str]:
    return [probe_or_reason(path) for path in paths]


def _decode_range(row: dict, decoder_name: str, preprocess: Preprocess, chunk: int, size: int) -> Iterator[dict]:
    """Ray task: one ``VideoRange`` (``row["range"]``) -> one output row per frame, or one error row at the first failure.
    Torch (the resize) runs one thread: a decode task holds at most one CPU.

    Output rows: ``video_id``, ``row`` (the frame's row in its file; -1 on an error row), ``decoder``, ``error`` ("" or
    the reason), ``frames`` uint8 (3, S, S) (zeros on an error row).
    """
    torch.set_num_threads(1)
    part: VideoRange = row["range"]
    decoder, name = make_decoder(decoder_name, "cpu"), ""
    for message in decode_video(part.video_id, part.info, part.times, part.first, decoder, preprocess, torch.device("cpu"), chunk):
        if isinstance(message, Opened):
            name = message.decoder
        elif isinstance(message, Frames):
            for k, frame in enumerate(message.frames.numpy()):
                yield {"video_id": part.video_id, "row": message.row + k, "decoder": name, "error": "", "frames": frame}
        elif isinstance(message, DecodeFailed):
            yield {
                "video_id": part.video_id,
                "row": -1,
                "decoder": name,
                "error": message.reason,
                "frames": np.zeros((3, size, size), np.uint8),
            }


class EncodeActor:
    """Ray actor: a frozen backbone (on its GPU when Ray gave it one) that turns batches of frames into stored rows.

    ``encoder_class(cfg)`` binds the settings (Ray Data builds the actors without arguments of ours).
    """

    def __init__(self, cfg: ExtractConfig):
        import ray

        use_assigned_cpus()
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.cfg = cfg
        self.backbone = load_backbone(cfg.model, cfg.pretrained, cfg.layers, torch.device(device), cfg.precision)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A batch of frame rows from any videos -> the same rows with ``vision`` (and ``vision_scale``) added;
        ``frames`` is kept only when the store keeps frames."""
        if self.cfg.store in ("features", "both"):  # an error row's zero frame too: one frame a failed video, ignored
            batch.update(encode_rows(self.backbone, torch.from_numpy(np.ascontiguousarray(batch["frames"])), self.cfg.states))
        if self.cfg.store == "features":
            del batch["frames"]
        return batch


def encoder_class(cfg: ExtractConfig) -> type:
    """``EncodeActor`` bound to ``cfg``, as a class Ray Data can build: constructor arguments would go through the
    object store, and an actor restarted after its node is lost could not read them back."""

    class BoundEncodeActor(EncodeActor):
        def __init__(self):
            super().__init__(cfg)

    return BoundEncodeActor


@dataclass
class _Open:
    """A video whose rows are arriving: its lock, its file and what it needs to be recorded."""

    item: VideoItem
    lock: FileLock
    file: VideoFile | None = None


class RayWriter:
    """The driver's end of the pipeline: each video's rows into its ``VideoFile``, under its lock; the manifest records.

    A video whose lock another run holds is set aside (``busy``) and its rows dropped; the runner retries it once that
    run lets go.
    """

    def __init__(
        self,
        cfg: ExtractConfig,
        settings: dict[str, str],
        row_shapes: dict,
        manifest: Manifest,
        summary: ExtractSummary,
        videos: dict[str, tuple[VideoItem, Path, VideoInfo]],
        progress: Progress,
    ):
        self.cfg, self.settings, self.row_shapes, self.manifest, self.summary = cfg, settings, row_shapes, manifest, summary
        self.videos, self.progress = videos, progress
        self.open: dict[str, _Open] = {}
        self.ended: set[str] = set()
        self.busy: set[str] = set()

    def take(self, batch: dict[str, np.ndarray]) -> None:
        """Write a batch of rows (any videos, any order) and commit each video that became complete."""
        names = [n for n in ("frames", "vision", "vision_scale") if n in batch]
        order = np.lexsort((batch["row"], batch["video_id"].astype(str)))
        ids = batch["video_id"][order]
        for start, stop in _runs(ids):
            video_id = str(ids[start])
            picked = order[start:stop]
            errors = [e for e in batch["error"][picked] if e]
            if video_id in self.ended or video_id in self.busy:
                continue
            video = self._claim(video_id, str(batch["decoder"][picked[0]]))
            if video is None:
                continue
            if errors:
                self.fail(video, errors[0])
                continue
            self._write(video, batch["row"][picked], {n: batch[n][picked] for n in names})

    def _claim(self, video_id: str, decoder: str) -> _Open | None:
        """The open video, locking it and opening its file on its first rows; None when another run holds it."""
        if video_id in self.open:
            return self.open[video_id]
        item, target, info = self.videos[video_id]
        lock = FileLock(target)
        if not lock.acquire(wait=False):
            self.busy.add(video_id)
            return None
        self.open[video_id] = video = _Open(item, lock)
        remove_stale_partials(target)  # under the lock: only a killed run's files are left
        if decoder:
            times = sample_times(info.duration, self.cfg.fps)
            video.file = VideoFile(
                target, file_layout(self.cfg, self.row_shapes, len(times)), video_metadata(self.settings, item, info, decoder), times
            )
        return video

    def _write(self, video: _Open, rows: np.ndarray, tensors: dict[str, np.ndarray]) -> None:
        new = 0
        for start, stop in _runs(rows - np.arange(len(rows))):  # runs of consecutive rows (the rows come sorted)
            new += video.file.write(int(rows[start]), {n: np.stack(t[start:stop]) for n, t in tensors.items()})
        self.summary.frames += new
        self.progress.advance(new)
        if video.file.complete:
            video.file.commit()
            record_done(self.manifest, self.summary, video.item, video.file.rows)
            self._close(video)
            self.progress.video_ended()

    def fail(self, video: _Open, reason: str) -> None:
        done = 0
        if video.file is not None:
            done = video.file.rows_done
            video.file.abort()
        self.progress.drop(sample_count(self.videos[video.item.video_id][2], self.cfg.fps) - done)
        record_failure(self.manifest, self.summary, video.item, reason)
        self._close(video)
        self.progress.video_ended(failed=True)

    def _close(self, video: _Open) -> None:
        del self.open[video.item.video_id]
        self.ended.add(video.item.video_id)
        video.lock.release()

    def abort_open(self) -> None:
        abort_videos(self.open.values())
        self.open.clear()


def _runs(values: np.ndarray) -> Iterator[tuple[int, int]]:
    """(start, stop) of each run of equal ``values``."""
    if not len(values):
        return
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    yield from zip(starts.tolist(), np.r_[starts[1:], len(values)].tolist())


def surviving_slots(per_node: list[float]) -> int:
    """Actor slots (GPUs or CPUs of each node) to use so that the actors of any one lost node can restart on the others:
    all of them on a one-node cluster, else all but the largest node's (at least one). A fuller pool hangs on a lost
    node: Ray retries the dead actor's batch on that actor, which has nowhere to restart."""
    total = int(sum(per_node))
    return total if len(per_node) < 2 else max(1, total - int(max(per_node)))


def encoder_resources(ray) -> dict:
    """How the extraction pipeline uses the cluster.

    With GPUs: one backbone actor per GPU (``num_gpus=1``, 1 CPU), decoding in 1-CPU tasks on the CPUs left. Without:
    one backbone actor per CPU (one torch thread each), and decode tasks that take no CPU of Ray's, at most one per
    CPU: they share the cores with the backbones, as the local runner's decoder threads do (decoding a sample costs
    a few percent to half of encoding it), instead of keeping cores aside. On several nodes, one node's worth of
    slots stays free (``surviving_slots``).
    """
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= 1]
    cpus = int(sum(n["CPU"] for n in nodes))
    gpu_nodes = [n["GPU"] for n in nodes if n.get("GPU", 0) >= 1]
    if gpu_nodes:
        return {"actors": surviving_slots(gpu_nodes), "num_gpus": 1, "num_cpus": 1, "decode_cpus": 1, "decoders": cpus}
    return {"actors": surviving_slots([n["CPU"] for n in nodes]), "num_gpus": 0, "num_cpus": 1, "decode_cpus": 0, "decoders": cpus}


def extract_on_ray(cfg: ExtractConfig, items: list[VideoItem], address: str | None) -> ExtractSummary:
    """Extract ``items`` into ``cfg.out`` on the Ray cluster at ``address`` (None: a local one); the store, manifest
    and summary are those of the local runner. A store some node cannot see is refused before any work."""
    out_dir = output_folder(cfg.out)
    manifest = Manifest(out_dir)
    manifest.records()  # UnsafeNameError naming the line of a crafted id, before anything is written
    summary = ExtractSummary(out=str(out_dir))
    start = time.perf_counter()
    with ray_cluster(address) as ray:
        check_store_shared(ray, out_dir)
        backbone = load_backbone(cfg.model, cfg.pretrained, cfg.layers, torch.device("cpu"), cfg.precision)  # settings, shapes
        settings = run_settings(cfg, backbone)
        todo = select_videos(items, out_dir, settings, summary)
        try:
            if todo:
                _RayExtraction(ray, cfg, backbone.preprocess, backbone.row_shapes(), settings, manifest, summary).run(todo)
            if (summary.done or summary.failed) and manifest.path.exists():
                manifest.compact()
        except OSError as e:  # the output folder's disk: full, read-only, gone
            raise ExtractError(
                printable(f"{out_dir}: cannot write ({e.strerror or e}); finished videos are kept, unfinished ones removed")
            ) from None
    summary.seconds = time.perf_counter() - start
    return summary


class _RayExtraction:
    """One ``extract_on_ray`` job: probe, then stream ranges through decode tasks and backbone actors into files."""

    def __init__(
        self,
        ray,
        cfg: ExtractConfig,
        preprocess: Preprocess,
        row_shapes: dict,
        settings: dict[str, str],
        manifest: Manifest,
        summary: ExtractSummary,
    ):
        self.ray, self.cfg, self.preprocess, self.row_shapes = ray, cfg, preprocess, row_shapes
        self.settings, self.manifest, self.summary = settings, manifest, summary

    def probe(self, todo: list[tuple[VideoItem, Path]]) -> list[VideoInfo | str]:
        probe_many = self.ray.remote(num_cpus=1)(_probe_many)
        paths = [item.path for item, _ in todo]
        chunks = [paths[i : i + 64] for i in range(0, len(paths), 64)]
        return [info for part in self.ray.get([probe_many.remote(c) for c in chunks]) for info in part]

    def run(self, todo: list[tuple[VideoItem, Path]]) -> None:
        infos = self.probe(todo)
        videos = {item.video_id: (item, target, info) for (item, target), info in zip(todo, infos)}
        progress = Progress(sum(sample_count(i, self.cfg.fps) for i in infos), len(todo), "extract[ray]", self.cfg.progress)
        try:
            pending = list(videos)
            while pending:
                busy = self._pass({v: videos[v] for v in pending}, progress)
                pending = self._wait_for_others(busy, videos, progress)
        finally:
            progress.close()

    def _pass(self, videos: dict[str, tuple[VideoItem, Path, VideoInfo | str]], progress: Progress) -> set[str]:
        """Stream ``videos`` through the pipeline once; returns the ids another run was writing."""
        readable = {v: entry for v, entry in videos.items() if isinstance(entry[2], VideoInfo)}
        writer = RayWriter(self.cfg, self.settings, self.row_shapes, self.manifest, self.summary, readable, progress)
        for item, target, reason in videos.values():
            if not isinstance(reason, VideoInfo):
                self._fail_unprobed(item, target, reason, writer, progress)
        ranges = [part for v, (_, _, info) in readable.items() for part in split_ranges(v, info, self.cfg.fps, RANGE_FRAMES)]
        if not ranges:
            return writer.busy
        with interrupt_flag() as interrupted:
            try:
                for batch in self._pipeline(ranges).iter_batches(batch_size=None, batch_format="numpy"):
                    writer.take(batch)
            except BaseException:
                writer.abort_open()
                if interrupted.is_set():  # Ray Data may turn the interrupt into an error of an actor it cancelled
                    raise KeyboardInterrupt from None
                raise
        missing = set(readable) - writer.ended - writer.busy
        for video_id in sorted(missing):  # every row of a range is sent or an error row is: a gap means a bug, said plainly
            video = writer.open.get(video_id)
            if video is not None:
                writer.fail(video, "not every sampled frame came back from the cluster")
        return writer.busy

    def _pipeline(self, ranges: list[VideoRange]):
        """The Ray Data pipeline: ranges -> decode tasks -> backbone actors (batches of cfg.batch_size frames)."""
        ray = self.ray
        size = self.row_shapes["frames"][-1]
        resources = encoder_resources(ray)
        decode = functools.partial(
            _decode_range, decoder_name=self.cfg.decoder, preprocess=self.preprocess, chunk=self.cfg.chunk, size=size
        )
        return (
            ray.data.from_items([{"range": r} for r in ranges], override_num_blocks=len(ranges))
            .flat_map(decode, num_cpus=resources["decode_cpus"], compute=ray.data.TaskPoolStrategy(size=resources["decoders"]))
            .map_batches(
                encoder_class(self.cfg),
                batch_size=self.cfg.batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=resources["actors"]),
                num_cpus=resources["num_cpus"],
                num_gpus=resources["num_gpus"],
            )
        )

    def _fail_unprobed(self, item: VideoItem, target: Path, reason: str, writer: RayWriter, progress: Progress) -> None:
        """A video that could not be probed gets its failure record, under its lock as locally."""
        with FileLock(target):
            if is_up_to_date(target, item, self.settings):
                self.summary.by_others += 1
                progress.video_ended()
                return
            record_failure(self.manifest, self.summary, item, reason)
        writer.ended.add(item.video_id)
        progress.video_ended(failed=True)

    def _wait_for_others(self, busy: set[str], videos: dict, progress: Progress) -> list[str]:
        """Wait for the runs holding ``busy`` videos; those they finished count as theirs, the rest go round again."""
        again = []
        for video_id in sorted(busy):
            item, target, info = videos[video_id]
            progress.waiting("waiting for another run")
            with FileLock(target):
                if is_up_to_date(target, item, self.settings):
                    self.summary.by_others += 1
                    progress.drop(sample_count(info, self.cfg.fps))
                    progress.video_ended()
                else:
                    again.append(video_id)
        return again


# ---- Grounding and embedding stored videos ----------------------------------------------------------------------------


def actor_resources(ray) -> dict:
    """Actors that need no decoding beside them: one per GPU (``num_gpus=1``), else one per CPU; on several nodes
    one node's worth of slots stays free (``surviving_slots``)."""
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= 1]
    gpu_nodes = [n["GPU"] for n in nodes if n.get("GPU", 0) >= 1]
    if gpu_nodes:
        return {"num_gpus": 1, "num_cpus": 1, "actors": surviving_slots(gpu_nodes)}
    return {"num_gpus": 0, "num_cpus": 1, "actors": surviving_slots([n["CPU"] for n in nodes])}


class GrounderActor:
    """Ray actor: a ``Grounder`` loaded from its checkpoint folder (on its GPU when Ray gave it one) that runs
    ``task(grounder, job)`` on each job of a batch (jobs and results travel pickled)."""

    def __init__(self, folder: str, task):
        import ray

        from .grounder import Grounder

        use_assigned_cpus()
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.grounder, self.task = Grounder.from_pretrained(folder, device=device), task

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            "index": batch["index"],
            "result": np.array([pickle.dumps(self.task(self.grounder, pickle.loads(job))) for job in batch["job"]], dtype=object),
        }


def grounder_class(folder: str, task) -> type:
    """``GrounderActor`` bound to a checkpoint folder and a task (see ``encoder_class``)."""

    class BoundGrounderActor(GrounderActor):
        def __init__(self):
            super().__init__(folder, task)

    return BoundGrounderActor


class RayEngine:
    """``--ray``: extraction (``extract_on_ray``) and the per-video tasks (grounding, embedding) on a Ray cluster; this
    process, the driver, writes every output. Use as a context manager: it joins (or starts) the cluster once."""

    def __init__(self, address: str | None):
        self.address = address
        self._session = None

    def __enter__(self) -> RayEngine:
        self._session = ray_cluster(self.address)
        self.ray = self._session.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._session.__exit__(*exc)

    def extract(self, cfg: ExtractConfig, items: list[VideoItem], backbone) -> ExtractSummary:
        return extract_on_ray(cfg, items, self.address)

    def map_stored(self, grounder, task, jobs: list, progress: bool = False, desc: str = "") -> list:
        """``task(grounder, job)`` for each job, in Grounder actors; results in the order of ``jobs``."""
        if not jobs:
            return []
        if grounder.folder is None:
            raise ExtractError("--ray loads the checkpoint in each actor: give a checkpoint folder or Hub id, not an in-memory Grounder")
        check_visible(self.ray, grounder.folder / "config.json", grounder.folder)
        resources = actor_resources(self.ray)
        rows = [{"index": i, "job": pickle.dumps(job)} for i, job in enumerate(jobs)]
        dataset = self.ray.data.from_items(rows, override_num_blocks=min(len(rows), 8 * resources["actors"])).map_batches(
            grounder_class(str(grounder.folder), task),
            batch_size=1,
            batch_format="numpy",
            compute=self.ray.data.ActorPoolStrategy(size=resources["actors"]),
            num_cpus=resources["num_cpus"],
            num_gpus=resources["num_gpus"],
        )
        results: list = [None] * len(jobs)
        with tqdm(total=len(jobs), desc=f"{desc}[ray]", unit="video", disable=not progress, file=sys.stderr) as bar:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for index, result in zip(batch["index"], batch["result"]):
                    results[int(index)] = pickle.loads(result)
                bar.update(len(batch["index"]))
        return results
