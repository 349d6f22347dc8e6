"""The feature store: one safetensors file per video, plus a manifest.

``OUT/<video id>.safetensors`` holds ``timestamps`` float64 (T,) seconds,
``frames`` uint8 (T, 3, S, S) and/or ``vision`` float16 (T, K, 1+P, D), with
string metadata (docs/ARCHITECTURE.md lists the keys). Files are written by
``StreamingSafetensorsWriter``, which lays out the safetensors format (8-byte
header length, JSON header, contiguous tensor bytes) with exact shapes known
up front and fills rows as they arrive, so a long video is never held in
memory. Files are read with the ``safetensors`` library itself. Writes go to a
temporary file ``.<name>.<pid>.partial`` that is renamed into place only when
complete; a writer holds ``FileLock(<file>)`` meanwhile, so two runs never write
one video at once, and a partial file is removed only once its process is gone.

``OUT/manifest.jsonl`` has one record per video and attempt (``id``, ``path``
the source's absolute real path, ``status`` done or failed with ``reason``); the
latest record for an id wins. Every path built from an id goes through
``feature_path``, which refuses one that leaves ``OUT``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from safetensors import safe_open

from .names import check_video_id, first_line, path_in, printable

FORMAT_VERSION = "1"
_DTYPES = {np.dtype("float64"): "F64", np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("uint8"): "U8"}
_DTYPE_NAMES = {code: str(dtype) for dtype, code in _DTYPES.items()}  # F16 -> float16
FP8 = "F8_E4M3"  # safetensors' float8 e4m3fn: a writer's tensor of this dtype takes its rows as their bytes (uint8)


def partial_path(path: Path) -> Path:
    """The hidden, per-process sibling of ``path`` that an atomic write goes to before its rename."""
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def feature_path(out_dir: str | Path, video_id: str) -> Path:
    """``OUT/<video id>.safetensors``; UnsafeNameError when it lies outside ``out_dir`` (``..``, a symlink out)."""
    return path_in(out_dir, video_id, ".safetensors")


def stored_ids(out_dir: str | Path) -> set[str]:
    """The video ids that have a feature file in ``out_dir`` (``<id>.safetensors``, ids may hold folders)."""
    out_dir = Path(out_dir)
    return {path.relative_to(out_dir).with_suffix("").as_posix() for path in out_dir.rglob("*.safetensors")}


def _remove_quietly(path: Path) -> None:
    """Unlink ``path`` if possible; a read-only or vanished disk keeps it (the next run clears partial files)."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def umask() -> int:
    """This process's umask (Linux reports it in /proc; elsewhere it is read by setting and restoring it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return int(next(line.split()[1] for line in f if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def save_tensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' ``save_file`` with the permissions every other output gets (0666 less the umask, 0644 as a rule);
    ``save_file`` itself makes files only their owner can read."""
    from safetensors.torch import save_file  # imports torch, which readers of the store do not need

    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, 0o666 & ~umask())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    tmp = partial_path(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_partials(path: Path) -> None:
    """Delete ``path``'s partial files whose writing process is gone (a killed run); a live writer's file stays."""
    prefix, suffix = f".{path.name}.", ".partial"
    if not path.parent.is_dir():
        return
    for entry in path.parent.iterdir():
        pid = entry.name[len(prefix) : -len(suffix)]
        if entry.name.startswith(prefix) and entry.name.endswith(suffix) and pid.isdigit() and not _alive(int(pid)):
            entry.unlink(missing_ok=True)


class FileLock:
    """An exclusive ``fcntl.flock`` on the hidden file ``.<name>.lock`` next to ``path``, removed on release.

    One holder at a time across processes and within one (each FileLock opens its own file). The kernel
    drops the lock when its holder dies, so a killed run never leaves a file locked.
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        self.path = path.with_name(f".{path.name}.lock")
        self._fd: int | None = None

    def acquire(self, wait: bool = True) -> bool:
        """Take the lock, waiting for its holder; with ``wait=False``, return False at once when it is held."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return False
            try:
                if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    self._fd = fd
                    return True
            except FileNotFoundError:
                pass
            os.close(fd)  # the previous holder removed this file on release: lock the one there now

    def release(self) -> None:
        """Remove the lock file and let go (the file is removed first, so a waiter re-locks a fresh one)."""
        if self._fd is None:
            return
        _remove_quietly(self.path)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class StreamingSafetensorsWriter:
    """Write a safetensors file whose tensors arrive in row chunks.

    ``tensors`` maps name -> (numpy dtype or ``FP8``, shape); rows are along dim 0.
    ``write(name, start_row, array)`` places rows; ``commit()`` renames the
    finished file into place; ``abort()`` removes the partial file.
    """

    def __init__(self, path: str | Path, tensors: dict[str, tuple[np.dtype, tuple[int, ...]]], metadata: dict[str, str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = partial_path(self.path)
        self._layout: dict[str, tuple[np.dtype, tuple[int, ...], int]] = {}
        header: dict[str, object] = {"__metadata__": {k: str(v) for k, v in metadata.items()}}
        offset = 0
        for name, (dtype, shape) in tensors.items():
            code = FP8 if isinstance(dtype, str) and dtype == FP8 else _DTYPES[np.dtype(dtype)]
            dtype = np.dtype(np.uint8) if code == FP8 else np.dtype(dtype)
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._layout[name] = (dtype, tuple(shape), offset)
            offset += nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)
        self._data_start = 8 + len(encoded)
        self._rows_written = {name: 0 for name in tensors}
        self._file = open(self.tmp, "wb")
        try:
            self._file.write(len(encoded).to_bytes(8, "little") + encoded)
            self._file.truncate(self._data_start + offset)
        except BaseException:
            self.abort()
            raise

    def write(self, name: str, start_row: int, rows: np.ndarray) -> None:
        dtype, shape, offset = self._layout[name]
        if rows.shape[1:] != shape[1:] or start_row + len(rows) > shape[0]:
            raise ValueError(f"{name}: rows {rows.shape} at {start_row} do not fit {shape}")
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self._file.seek(self._data_start + offset + start_row * row_bytes)
        self._file.write(np.ascontiguousarray(rows, dtype=dtype).tobytes())
        self._rows_written[name] += len(rows)

    def commit(self) -> Path:
        missing = {n: (w, self._layout[n][1][0]) for n, w in self._rows_written.items() if w != self._layout[n][1][0]}
        if missing:
            self.abort()
            raise ValueError(f"{self.path.name}: incomplete tensors (rows written, expected): {missing}")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial file (quietly: a full disk may refuse the buffered bytes, a read-only one the removal)."""
        with contextlib.suppress(OSError):
            self._file.close()
        _remove_quietly(self.tmp)


def read_metadata(path: str | Path) -> dict[str, str] | None:
    """A feature file's metadata, or None when the file is missing or unreadable."""
    try:
        with safe_open(str(path), framework="np") as f:
            return dict(f.metadata() or {})
    except Exception:  # OSError for a missing file, SafetensorError for a corrupt one
        return None


def load_features(path: str | Path, names: Iterable[str] = ("timestamps", "vision")) -> dict[str, np.ndarray]:
    """Load the named tensors of a feature file as numpy arrays (memory-mapped reads)."""
    with safe_open(str(path), framework="np") as f:
        missing = [n for n in names if n not in f.keys()]
        if missing:
            raise KeyError(f"{path}: no tensor(s) {missing}; it holds {sorted(f.keys())}")
        return {n: f.get_tensor(n) for n in names}


class Manifest:
    """Status log ``OUT/manifest.jsonl``; the latest record per video id wins.

    Appends and compaction hold ``FileLock(manifest.jsonl)``, so runs sharing a store never lose a record.
    """

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / "manifest.jsonl"

    def append(self, video_id: str, path: str, status: str, **fields) -> None:
        """Record ``status`` of a video; ``path`` (its source) is stored as an absolute real path."""
        record = {"id": video_id, "path": os.path.realpath(path), "status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **fields}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(self.path), open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def records(self) -> dict[str, dict]:
        """The latest record per id; an unsafe id (``../x``, absolute) is an UnsafeNameError naming ``manifest.jsonl:LINE``."""
        latest: dict[str, dict] = {}
        if not self.path.exists():
            return latest
        with open(self.path, encoding="utf-8", errors="replace") as f:  # our lines are ASCII; other bytes match nothing
            for number, line in enumerate(f, 1):
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, RecursionError):
                    continue  # a line cut short by a killed run, or not ours
                where = printable(f"{self.path}:{number}")
                if not isinstance(record, dict) or not isinstance(record.get("path"), str):
                    raise ValueError(f"{where}: not a manifest record (an object with 'id' and 'path')")
                latest[check_video_id(record.get("id"), where)] = record
        return latest

    def compact(self) -> None:
        """Rewrite the log atomically with only the latest record per id, sorted by id; appends wait meanwhile."""
        with FileLock(self.path):
            records = self.records()
            atomic_write_text(self.path, "".join(json.dumps(records[video_id]) + "\n" for video_id in sorted(records)))


def summarize_store(out_dir: str | Path) -> dict:
    """Counts, settings, tensor shapes and size of a feature store, for ``vtg inspect``.

    Files that share settings and tensors form one entry of ``settings``, with its number of videos; ``T`` in a
    tensor's shape is a video's number of sampled frames, whose range ``frames_per_video`` gives.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"{printable(out_dir)}: not a folder")
    files = sorted(out_dir.rglob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{printable(out_dir)}: no feature files (*.safetensors)")
    frames, seconds, groups = 0, 0.0, {}
    for path in files:
        try:
            with safe_open(str(path), framework="np") as f:
                meta = f.metadata() or {}
                tensors = {name: _tensor_summary(f.get_slice(name)) for name in sorted(f.keys())}
                count = f.get_slice("timestamps").get_shape()[0]
            seconds += float(meta.get("duration", 0.0))
            settings = {
                "backbone": meta.get("backbone"),
                "pretrained": meta.get("pretrained"),
                "layers": json.loads(meta["layers"]) if "layers" in meta else None,
                "fps": float(meta["fps"]) if "fps" in meta else None,
                "store": meta.get("store"),
            }
        except Exception as e:  # SafetensorError for a garbage file, a missing tensor, a bad duration, fps or layers
            reason = first_line(e) or type(e).__name__
            raise ValueError(printable(f"{path}: not a readable feature file ({reason})")) from None
        frames += count
        group = groups.setdefault(
            json.dumps([settings, tensors], sort_keys=True),
            {**settings, "videos": 0, "frames_per_video": {"min": count, "max": count}, "tensors": tensors},
        )
        group["videos"] += 1
        span = group["frames_per_video"]
        span["min"], span["max"] = min(span["min"], count), max(span["max"], count)
    statuses = [r["status"] for r in Manifest(out_dir).records().values()]
    return {
        "folder": str(out_dir),
        "videos": len(files),
        "failed": statuses.count("failed"),
        "hours_of_video": round(seconds / 3600, 3),
        "frames": frames,
        "settings": [groups[key] for key in sorted(groups)],
        "megabytes": round(sum(p.stat().st_size for p in files) / 2**20, 1),
    }


def _tensor_summary(tensor) -> dict:
    """Shape (first axis named ``T``, the sampled frames) and numpy dtype name of a safetensors slice."""
    return {"shape": ["T", *tensor.get_shape()[1:]], "dtype": _DTYPE_NAMES.get(tensor.get_dtype(), tensor.get_dtype())}
