"""The library's window vectors made searchable (faiss, inner product on unit vectors).

Three layouts, chosen by the number of windows W (``choose_layout``; the measurements behind the thresholds are in
docs/BENCHMARKS.md, "Library search at a million videos"):

- ``flat``: exact search of the float32 vectors in RAM, up to ``FLAT_UP_TO`` windows (under 10 ms).
- ``ivf``: an inverted file of the float32 vectors in RAM (``IVF{lists},Flat``), up to ``COMPRESS_ABOVE`` windows,
  where the vectors take 1 GiB at 256 dims.
- ``ivfpq``: product-quantised codes in RAM (``IVF{lists},PQ{m}x8``: m = 64 bytes a window, 8 bytes of id),
  searched for a shortlist of ``rerank`` × n windows that is re-ranked exactly against the full float32 vectors,
  which stay on disk, memory-mapped (``vectors.safetensors``): only the shortlist's rows are read. An OPQ rotation
  was measured and dropped: the same recall, 2.7× the build time.

A layout is a dict recorded in library.json (``kind``, ``factory``, ``lists``, ``nprobe``, ``rerank``,
``trained_on``) and printed by ``vtg index``. A rebuild of a compressed index reuses the previous version's trained
centroids and codebooks while the library has at most twice the windows they were trained on, so adding a few
videos to ten million windows re-encodes them instead of training again.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import faiss
import numpy as np

FLAT_UP_TO = 100_000  # windows: exact search up to here (8.5 ms at 100k)
COMPRESS_ABOVE = 1_000_000  # windows: product quantisation above here (float32 vectors would take over 1 GiB of RAM)
PQ_BYTES = 64  # bytes of code per window (m sub-quantisers of 8 bits): 99 % of the exact top 20 at 1M (32: 80 %)
RERANK = 20  # the compressed index's shortlist: RERANK × n windows, re-ranked exactly (400 for the top 20)
TRAIN_PER_LIST = 64  # k-means training vectors per inverted list (faiss warns below 39)
MAX_TRAIN = 2**18  # training sample cap (vectors)


def choose_layout(windows: int, dims: int, flat_up_to: int = FLAT_UP_TO, compress_above: int = COMPRESS_ABOVE) -> dict:
    """The layout for ``windows`` vectors of ``dims``: flat, ivf or ivfpq (see the module docstring). The inverted
    file has a power of two near √W lists (the same lists over a 2× range of sizes, so rebuilds can reuse the
    training) and scans 1/16 of them (1/32 compressed), at least 8, per search."""
    if windows <= flat_up_to:
        return {"kind": "flat", "factory": "Flat"}
    lists = 2 ** max(0, round(math.log2(math.sqrt(windows))))
    nprobe = min(lists, max(8, lists // 16))
    if windows <= compress_above:
        return {"kind": "ivf", "factory": f"IVF{lists},Flat", "lists": lists, "nprobe": nprobe}
    m = PQ_BYTES if dims % PQ_BYTES == 0 else math.gcd(dims, PQ_BYTES)
    # 8 bits (256 centroids a sub-quantiser, trained on 39 vectors each at least) from 10k windows up; fewer below
    # (only tests compress so few windows)
    bits = min(8, max(2, int(math.log2(windows / 39))))
    # 1/32 of the lists: at 10M windows the same recall as 1/16 (the shortlist limits it), at half the time
    return {
        "kind": "ivfpq",
        "factory": f"IVF{lists},PQ{m}x{bits}",
        "lists": lists,
        "nprobe": min(lists, max(8, lists // 32)),
        "rerank": RERANK,
    }


def describe_layout(layout: dict) -> str:
    """One line for people: the kind, the faiss factory string and the search parameters."""
    parts = [layout["kind"], layout["factory"]]
    if "nprobe" in layout:
        parts.append(f"scans {layout['nprobe']} of {layout['lists']} lists")
    if "rerank" in layout:
        parts.append(f"shortlist {layout['rerank']}x re-ranked exactly, trained on {layout['trained_on']:,} windows")
    return ", ".join(parts)


def build_faiss(vectors: np.ndarray, layout: dict, trained: faiss.Index | None = None) -> faiss.Index:
    """A faiss index of ``vectors`` (W, E) float32 (row i = window i) in ``layout``. ``trained``: an index of the same
    factory whose training is reused (its vectors are dropped); None trains on a fixed sample of ``vectors``."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if trained is not None:
        index = faiss.clone_index(trained)
        index.reset()
    else:
        index = faiss.index_factory(vectors.shape[1], layout["factory"], faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            count = min(len(vectors), MAX_TRAIN, TRAIN_PER_LIST * layout["lists"])
            sample = np.random.default_rng(0).choice(len(vectors), count, replace=False)
            index.train(vectors[np.sort(sample)])
    if "nprobe" in layout:
        faiss.extract_index_ivf(index).nprobe = layout["nprobe"]  # written with the index
    for first in range(0, len(vectors), 2**20):  # in blocks: faiss' add makes float copies of what it is given
        index.add(vectors[first : first + 2**20])
    return index


def reusable_training(old_layout: dict | None, old_index: faiss.Index | None, layout: dict, windows: int) -> faiss.Index | None:
    """The previous version's compressed index when its training can serve ``windows`` windows in ``layout``: the
    same factory and at most twice the windows it was trained on; else None (train afresh)."""
    if (
        old_index is None
        or not isinstance(old_layout, dict)
        or layout["kind"] != "ivfpq"
        or old_layout.get("factory") != layout["factory"]
        or windows > 2 * old_layout.get("trained_on", 0)
    ):
        return None
    return old_index


def mapped_tensor(path: str | Path, name: str) -> np.ndarray:
    """Tensor ``name`` of a safetensors file, memory-mapped read-only (rows are read from disk when touched). The
    file's layout: 8 bytes of header length (little-endian), the JSON header, then the data."""
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "F64": np.float64}
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        entry = json.loads(f.read(length))[name]
    first, last = entry["data_offsets"]
    dtype, shape = np.dtype(dtypes[entry["dtype"]]), tuple(entry["shape"])
    if last - first != dtype.itemsize * math.prod(shape):
        raise ValueError(f"tensor {name!r}: {last - first} bytes for shape {list(shape)} of {entry['dtype']}")
    if not shape or math.prod(shape) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=8 + length + first, shape=shape)


class WindowIndex:
    """A faiss index of the window vectors with its layout; ``search`` re-ranks a compressed index's shortlist exactly
    against ``vectors`` (W, E), the full vectors (memory-mapped)."""

    def __init__(self, index: faiss.Index, layout: dict, vectors: np.ndarray | None = None):
        if layout["kind"] == "ivfpq" and vectors is None:
            raise ValueError("a compressed index needs the full vectors to re-rank its shortlist")
        self.faiss, self.layout, self.vectors = index, layout, vectors

    @property
    def ntotal(self) -> int:
        return self.faiss.ntotal

    def search(self, queries: np.ndarray, n: int, nprobe: int | None = None, rerank: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` windows nearest each query (Q, E): similarities (Q, n) float32 and rows (Q, n) int64, best first,
        -1 past the last window. ``nprobe`` / ``rerank`` override the layout's (for measuring)."""
        params = None if nprobe is None else faiss.SearchParametersIVF(nprobe=nprobe)
        if self.layout["kind"] != "ivfpq":
            return self.faiss.search(queries, n, params=params)
        if params is not None and isinstance(self.faiss, faiss.IndexPreTransform):
            params = faiss.SearchParametersPreTransform(index_params=params)
        shortlist = n * (rerank or self.layout["rerank"])
        _, candidates = self.faiss.search(queries, shortlist, params=params)
        similarities, rows = np.full((len(queries), n), -np.inf, np.float32), np.full((len(queries), n), -1, np.int64)
        for q, found in enumerate(candidates):
            found = np.sort(found[found >= 0])  # ascending rows: the reads from the mapped file go forward
            exact = self.vectors[found] @ queries[q]
            best = np.argsort(-exact, kind="stable")[:n]
            similarities[q, : len(best)], rows[q, : len(best)] = exact[best], found[best]
        return similarities, rows

    def ram_bytes(self) -> int:
        """Bytes the faiss index takes in RAM (its serialised size; the mapped vectors are not counted)."""
        return faiss.serialize_index(self.faiss).nbytes
