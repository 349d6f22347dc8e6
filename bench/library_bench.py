"""Library search (issue 14, "Measure"): corpus-level quality, latency at 100 to 10,000 videos, and `vtg serve` under load.

    python bench/library_bench.py prepare --root runs/library             # vtg synth --videos 400 (100 val videos), extract, train
    python bench/library_bench.py quality --root runs/library             # -> bench/out/library_quality.json
    python bench/library_bench.py speed --root runs/library               # -> bench/out/library_speed.json
    python bench/library_bench.py load --root runs/library                # -> bench/out/library_load.json
    python bench/library_bench.py prepare --root runs/library --long      # vtg synth --long --videos 80 (20 val videos)
    python bench/library_bench.py quality --root runs/library --long      # -> bench/out/library_quality_long.json
    python bench/library_bench.py speed --root runs/library --long --windows --brute-videos 100   # -> library_speed_long.json
    python bench/library_bench.py load --root runs/library --long         # -> bench/out/library_load_long.json
    python bench/library_bench.py store --root runs/library --long        # -> bench/out/library_store_long.json

    # smoke test, a few minutes: 8 videos (2 for validation), 1 epoch
    python bench/library_bench.py prepare --root /tmp/lbs --videos 8 --epochs 1
    python bench/library_bench.py quality --root /tmp/lbs --latency-queries 3
    python bench/library_bench.py speed --root /tmp/lbs --windows 1000 10000 --videos 100 --brute-videos 100 --brute-queries 2 --speed-queries 5
    python bench/library_bench.py load --root /tmp/lbs --seconds 15

Every subcommand works on one set: ``ROOT/short`` (``vtg synth``, ``configs/synthetic.yaml``) or, with ``--long``,
``ROOT/long`` (``vtg synth --long``, ``configs/synthetic_long.yaml``), each holding ``data/`` (videos, jsonl,
``features/``), ``run/`` (the training run; ``run/best`` the checkpoint) and ``index/`` (the library index of the
validation videos).

``prepare``: ``vtg synth`` (``--videos``, default 400, or 80 with ``--long``; the last quarter is validation),
``vtg extract --model vtg-tiny --store both`` and ``vtg train --config configs/synthetic[_long].yaml`` (``--epochs``
overrides ``optim.epochs`` and drops ``optim.decay_epochs`` past it); each step is skipped when its output exists.

``quality``: indexes the validation videos with ``library.build_index`` (timed, per video hour: decode + encode +
embed; the embedding and faiss part alone too; reused with its timing unless ``--rebuild-index``), then searches
every distinct validation query against all of them. The ground truth of a query text is every window of every
validation record with that text (a text can name events in several videos). Systems: (a) brute force: the
checkpoint's Grounder grounds every video (``ground_features``, all queries batched per video) and every
video's moments are ranked by score; (b) stage 1 alone: ``LibraryIndex.windows`` (each window a moment);
(c) two-stage: ``LibraryIndex.search`` at each ``--candidates``; with ``--compressed`` (d): (c) on the index rebuilt
in the compressed layout (product-quantised codes, shortlist re-ranked exactly). R@1/5/10 at IoU 0.3 and 0.5 (a hit: the same
video and IoU >= θ with a ground-truth window) and video R@1 (the top result's video holds the query).
Latency p50/p99 per query with a fresh text cache (the query is encoded once, as a new query is): (a) one query
at a time over all videos for ``--latency-queries`` queries, (b) and (c) for every query.

``speed``: (1) stage 1 alone (faiss search of one query vector, the index's 20 candidates) at ``--windows``
windows, vectors tiled from the real index plus noise of norm ``--noise`` (renormalised), the queries the real
validation queries' embeddings: each of ``--layouts`` (``window_index``: flat, ivf, ivfpq as ``vtg index`` builds
them) and of the compressed ``--factories`` (faiss factory strings), searched with their own parameters, then each
``--nprobe`` and each compressed ``--rerank`` shortlist, build time, index RAM (the faiss index and the window table a loaded version
holds; a compressed index's full vectors are memory-mapped, not counted), p50/p99, recall of the exact top 20
(numpy, in blocks) and "source recall" (the real windows the exact top 20 are copies
of, found among its top 20: near-identical copies make the plain recall a coin toss among ties); (2) two-stage per-query
latency at ``--videos`` videos: the real library replicated (copy 0 exact, the others with noisy vectors; each
copy of a video grounds in that video's real feature file, so stage 2 runs on real windows), with the faiss index
``vtg index`` would build at that size;
brute force at ``--brute-videos`` (the real feature files cycled) for ``--brute-queries`` queries; (3) the memory
of a process holding the loaded index after one search, in a fresh process each (real and replicated). An empty
``--windows`` / ``--videos`` skips that part; the parts of bench/out's file that are not rerun are kept.

``load``: starts ``vtg serve --index ROOT/SET/index`` on a free port and runs ``--clients`` (16) threads for
``--seconds`` (60), each sending ``GET /api/search?q=…&k=10`` back to back; ``--queries unique`` (default) makes
every request's text new (a validation query plus `` #N``), ``val`` cycles the validation queries. Searches/s
answered, p50/p99 of the answered ones, 503s (overload, refused at once) apart from errors (any other non-200, or
no response), the server's RSS (with ``--workers``, summed over its processes) after warm-up, half-way, at the end and its peak (sampled every second; growth from
half-way to the end is growth, not warm-up). Written to bench/out/library_load[_long]_<clients>c.json.

``store``: indexes the validation videos once per ``--states`` layout of ``vtg index`` (fp16, fp8, on-demand, both) into
``ROOT/SET/store/<layout>``, then reports the store's bytes per video hour (states apart from the rest: frames for
thumbnails, timestamps) measured and as ViT-B/32 (K = 4) would store them, and two-stage search over the first
``--queries`` validation texts (fresh text cache each): R@k and p50/p99. On-demand is searched with no window cache
(every candidate window re-encoded from its video), then with the default cache twice over the same texts (the
second pass finds the windows the first re-encoded). ``both`` is on-demand with ``vtg index --keep-states`` for the
``--keep-fraction`` (0.25) of the videos that hold most of these texts' stage-1 candidates, searched the same three
ways. Written to bench/out/library_store[_long].json.

``batch``: in one process, ``max(--size)`` (16) new texts searched one by one, then in ``search_many`` batches of each
``--size`` (a `vtg serve` worker's batch), ``--repeats`` (5) times: median milliseconds per search at each size, and a
fit of ms per search = own + shared / n: the work no batch shares (``own``) and the most batching could save on one
core (``ceiling``, ms alone / own). Written to bench/out/library_batch[_long].json.

Timings are wall-clock on the machine's CPUs (torch's default threads, or ``--threads``) and only mean something on
idle cores: on 2 shared cores a busy neighbour made every torch call here about 10x slower, so each JSON records the
1-minute load average at the start and end. Results are printed as JSON lines and markdown and written to bench/out/.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import psutil
import torch
from safetensors import safe_open
from train_bench import peak_rss

from vtg_pipeline import library
from vtg_pipeline.config import load_config
from vtg_pipeline.data import TextCache
from vtg_pipeline.extract import find_videos
from vtg_pipeline.grounder import Grounder
from vtg_pipeline.inference import across_videos
from vtg_pipeline.library import LibraryIndex, Version, build_index, embed_video
from vtg_pipeline.window_index import COMPRESS_ABOVE, FLAT_UP_TO, WindowIndex, build_faiss, choose_layout

OUT = Path(__file__).parent / "out"
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
THRESHOLDS = (0.3, 0.5)
RANKS = (1, 5, 10)


# ---------------------------------------------------------------- helpers


def set_dir(args) -> Path:
    return Path(args.root) / ("long" if args.long else "short")


def suffix(args) -> str:
    return "_long" if args.long else ""


def checkpoint(folder: Path) -> Path:
    best = folder / "run" / "best"
    if not (best / "model.safetensors").exists():
        raise SystemExit(
            f"{best}: no checkpoint; run: python bench/library_bench.py prepare --root ROOT{' --long' if 'long' == folder.name else ''}"
        )
    return best


def val_records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "data" / "val.jsonl").read_text().splitlines() if line.strip()]


def ground_truth(records: list[dict]) -> dict[str, list[tuple[str, float, float]]]:
    """Each distinct query text -> every (vid, start, end) window of the validation records with that text."""
    truth: dict[str, list] = {}
    for r in records:
        truth.setdefault(r["query"], []).extend((r["vid"], float(s), float(e)) for s, e in r["relevant_windows"])
    return dict(sorted(truth.items()))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ms = float(np.percentile(values, q)) * 1000
    return round(ms, 3 if ms < 1 else 2 if ms < 10 else 1)


def lat(times: list[float]) -> dict:
    return {"p50 ms": percentile(times, 50), "p99 ms": percentile(times, 99), "latency_n": len(times)}


def markdown(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]
    for row in rows:
        lines.append(
            "| "
            + " | ".join("" if row.get(c) is None else f"{row[c]:,}" if isinstance(row[c], int) else str(row[c]) for c in columns)
            + " |"
        )
    return "\n".join(lines)


def machine(args) -> dict:
    """The threads and how busy the machine was (1-minute load average at start and now): timings need idle cores."""
    return {
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average_start": args.load_at_start[0],
        "load_average_end": round(os.getloadavg()[0], 2),
    }


def fresh_query(grounder: Grounder) -> None:
    """Forget the encoded queries, so the next search encodes its query as a new one would be."""
    grounder.text_cache = TextCache(grounder.backbone)


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


# ---------------------------------------------------------------- prepare


def prepare(args) -> None:
    folder = set_dir(args)
    data, out = folder / "data", folder / "run"
    videos = args.videos or (80 if args.long else 400)
    vtg = [sys.executable, "-m", "vtg_pipeline"]
    started = time.perf_counter()
    steps = {}
    if not (data / "val.jsonl").exists():
        run([*vtg, "synth", "--out", str(data), "--videos", str(videos), "--seed", str(args.seed), *(["--long"] if args.long else [])])
        steps["synth_s"] = round(time.perf_counter() - started)
    mark = time.perf_counter()
    run(
        [
            *vtg,
            "extract",
            str(data / "videos"),
            "--out",
            str(data / "features"),
            "--model",
            "vtg-tiny",
            "--pretrained",
            "random:0",
            "--store",
            "both",
            "--no-progress",
        ]
    )  # resumable: up-to-date videos are skipped
    steps["extract_s"] = round(time.perf_counter() - mark)
    if not (out / "best" / "model.safetensors").exists():
        config = CONFIGS / ("synthetic_long.yaml" if args.long else "synthetic.yaml")
        overrides = [f"data.root={data}", f"output_dir={out}"]
        if args.epochs:
            decay = [e for e in load_config(config).optim.decay_epochs if e < args.epochs]
            overrides += [f"optim.epochs={args.epochs}", f"optim.decay_epochs={json.dumps(decay)}"]
        mark = time.perf_counter()
        run([*vtg, "train", "--config", str(config), *overrides])
        steps["train_s"] = round(time.perf_counter() - mark)
    print(
        json.dumps(
            {
                "set": folder.name,
                "root": str(folder),
                "checkpoint": str(out / "best"),
                **steps,
                "wall_s": round(time.perf_counter() - started),
            }
        )
    )


# ---------------------------------------------------------------- quality


def open_index(folder: Path, rebuild: bool) -> tuple[LibraryIndex, dict]:
    """The library index of the set's validation videos, built (and timed) when missing or ``rebuild``."""
    index_dir, record_file = folder / "index", folder / "index_build.json"
    best = checkpoint(folder)
    if rebuild or not record_file.exists() or not (index_dir / "index.json").exists():
        grounder = Grounder.from_pretrained(best)
        vids = {r["vid"] for r in val_records(folder)}
        items = [item for item in find_videos([str(folder / "data" / "videos")]) if item.video_id in vids]
        shutil.rmtree(index_dir, ignore_errors=True)
        start = time.perf_counter()
        counts = build_index(items, grounder, index_dir, str(best), progress=False)
        build = time.perf_counter() - start
        index = LibraryIndex.open(index_dir, grounder)
        start = time.perf_counter()
        vectors = [embed_video(grounder, Path(v["feature_file"]))[1] for v in index.videos()]
        embed = time.perf_counter() - start
        start = time.perf_counter()
        indexed(torch.cat(vectors).numpy())
        faiss_s = time.perf_counter() - start
        hours = sum(v["duration"] for v in index.videos()) / 3600
        record = {
            "videos": counts["videos"],
            "failed": counts["failed"],
            "windows": counts["windows"],
            "kind": counts["kind"],
            "video_hours": round(hours, 2),
            "build_s": round(build, 1),
            "build_s_per_video_hour": round(build / hours, 1),
            "embed_s_per_video_hour": round(embed / hours, 2),
            "faiss_build_s": round(faiss_s, 3),
            "threads": torch.get_num_threads(),
        }
        record_file.write_text(json.dumps(record, indent=2))
        return index, record
    return LibraryIndex.open(index_dir), json.loads(record_file.read_text())


def iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def recall(ranked: dict[str, list[tuple[str, float, float]]], truth: dict[str, list]) -> dict:
    """R@k@θ and video R@1 (percent) of ``ranked`` (per query text: (vid, start, end), best first)."""
    metrics = {}
    for theta in THRESHOLDS:
        first = []
        for query, results in ranked.items():
            hit = [
                i for i, (vid, s, e) in enumerate(results, 1) if any(vid == v and iou((s, e), (a, b)) >= theta for v, a, b in truth[query])
            ]
            first.append(hit[0] if hit else math.inf)
        for k in RANKS:
            metrics[f"R@{k}@{theta}"] = round(100 * float(np.mean([f <= k for f in first])), 2)
    metrics["video R@1"] = round(100 * float(np.mean([bool(r) and r[0][0] in {v for v, _, _ in truth[q]} for q, r in ranked.items()])), 2)
    return metrics


def brute_force(index: LibraryIndex, queries: list[str], files: list[tuple[str, Path]], k: int = max(RANKS), chunk: int = 64) -> dict:
    """Per query: the top ``k`` moments over ``files`` [(vid, feature file)], every video grounded by the grounder, the
    scores put on one scale across videos as library search does (``inference.across_videos``)."""
    grounder, found = index.grounder, {q: [] for q in queries}
    for vid, file in files:
        with grounder.open_stored(file) as video:  # opened once for all the chunks of queries
            for start in range(0, len(queries), chunk):
                part = queries[start : start + chunk]
                for query, result in zip(part, grounder.ground_opened(video, part)):
                    found[query].append((result.get("reference", 0.0), vid, result["moments"][:k]))
    top = {}
    for query, by_video in found.items():
        factors = across_videos([reference for reference, _, _ in by_video], grounder.cfg.decode)
        moments = [
            (score * factor, vid, s, e)
            for factor, (_, vid, video_moments) in zip(factors.tolist(), by_video)
            for s, e, score in video_moments.tolist()
        ]
        top[query] = [(vid, s, e) for _, vid, s, e in heapq.nlargest(k, moments)]
    return top


def brute_force_latency(index: LibraryIndex, queries: list[str], files: list[tuple[str, Path]]) -> list[float]:
    times = []
    for query in queries:
        fresh_query(index.grounder)
        start = time.perf_counter()
        brute_force(index, [query], files)
        times.append(time.perf_counter() - start)
    return times


def timed_searches(index: LibraryIndex, queries: list[str], search) -> tuple[dict, list[float]]:
    ranked, times = {}, []
    for query in queries:
        fresh_query(index.grounder)
        start = time.perf_counter()
        results = search(query)
        times.append(time.perf_counter() - start)
        ranked[query] = [(r["vid"], r["start"], r["end"]) for r in results if "error" not in r]
    return ranked, times


def quality(args) -> None:
    folder = set_dir(args)
    index, build = open_index(folder, args.rebuild_index)
    records = val_records(folder)
    truth = ground_truth(records)
    queries = list(truth)
    files = [(v["vid"], Path(v["feature_file"])) for v in index.videos()]
    print(
        json.dumps({"set": folder.name, "videos": len(files), "records": len(records), "query_texts": len(queries), "build": build}),
        flush=True,
    )
    rows = []
    start = time.perf_counter()
    ranked = brute_force(index, queries, files)
    batched = time.perf_counter() - start
    times = brute_force_latency(index, queries[: args.latency_queries], files)
    rows.append(
        {"system": "(a) brute force", **recall(ranked, truth), **lat(times), "batched_s_per_query": round(batched / len(queries), 3)}
    )
    print(json.dumps(rows[-1]), flush=True)
    ranked, times = timed_searches(index, queries, lambda q: index.windows(q, n=max(RANKS)))
    rows.append({"system": "(b) stage 1 alone", **recall(ranked, truth), **lat(times)})
    print(json.dumps(rows[-1]), flush=True)
    systems = [("(c) two-stage", index)]
    if args.compressed:
        systems.append(("(d) two-stage, compressed index", compressed(index)))
        print(json.dumps({"compressed layout": systems[-1][1].searcher.version.index.layout}), flush=True)
    for name, searched in systems:
        for n in args.candidates:
            ranked, times = timed_searches(searched, queries, lambda q, s=searched, n=n: s.search(q, k=max(RANKS), candidates=n))
            rows.append({"system": f"{name}, {n} candidates", **recall(ranked, truth), **lat(times)})
            print(json.dumps(rows[-1]), flush=True)
    columns = ["system", *[f"R@{k}@{t}" for t in THRESHOLDS for k in RANKS], "video R@1", "p50 ms", "p99 ms"]
    print(markdown(rows, columns))
    print(
        f"\n{build['videos']} videos, {build['video_hours']} h, {build['windows']:,} windows ({build['kind']}); index build "
        f"{build['build_s']} s = {build['build_s_per_video_hour']} s per video hour (embedding {build['embed_s_per_video_hour']} s of it)"
    )
    OUT.mkdir(exist_ok=True)
    (OUT / f"library_quality{suffix(args)}.json").write_text(
        json.dumps(
            {
                "set": folder.name,
                "root": str(folder),
                "checkpoint": str(checkpoint(folder)),
                "videos": len(files),
                "records": len(records),
                "query_texts": len(queries),
                "latency_queries_brute_force": min(args.latency_queries, len(queries)),
                "build": build,
                **machine(args),
                "rows": rows,
            },
            indent=2,
        )
    )


# ---------------------------------------------------------------- store

VIT_B32_ROW_BYTES = {  # one frame's stored states with ViT-B/32, K = 4 (4 layers x 50 tokens x 768 dims)
    "fp16": 4 * 50 * 768 * 2,
    "fp8": 4 * 50 * 768 + 4 * 50 * 2,  # e4m3 values and a float16 scale per token
    "on-demand": 768 * 2,  # the last layer's CLS state, for embedding
}


def store_bytes(features: Path) -> dict[str, int]:
    """Bytes of a store's feature files: the vision states (with fp8's scales) and the rest (frames for thumbnails,
    timestamps, headers)."""
    states = total = 0
    for file in features.glob("*.safetensors"):
        total += file.stat().st_size
        with safe_open(str(file), framework="pt") as f:
            states += sum(f.get_tensor(name).nbytes for name in ("vision", "vision_scale") if name in f.keys())
    return {"states": states, "other": total - states}


LAYOUTS = {"fp16": "fp16", "fp8": "fp8", "on-demand": "on-demand", "both": "on-demand"}  # store's --states -> vtg index's


def popular_videos(index: LibraryIndex, queries: list[str], candidates: int, fraction: float) -> list[str]:
    """The ids of the ``fraction`` of the index's videos that hold most of ``queries``' stage-1 candidate windows (a
    server's traffic, known exactly here: the best case for keeping their states)."""
    hits = Counter(hit["vid"] for query in queries for hit in index.windows(query, candidates))
    return [vid for vid, _ in hits.most_common(max(1, round(fraction * len(index.videos()))))]


def store(args) -> None:
    """Each store layout of `vtg index --states` on the set's validation videos: its bytes per video hour and two-stage
    search latency and quality (on-demand: with no cache, then a second pass over the same texts with the default one)."""
    folder = set_dir(args)
    best = checkpoint(folder)
    grounder = Grounder.from_pretrained(best)
    records = val_records(folder)
    truth = ground_truth(records)
    queries = list(truth)[: args.queries]
    vids = {r["vid"] for r in records}
    items = [item for item in find_videos([str(folder / "data" / "videos")]) if item.video_id in vids]
    layouts = args.states
    if grounder.model.retrieval.reads_patches:  # model.retrieval_layout: an on-demand store cannot embed
        layouts = [states for states in args.states if LAYOUTS[states] != "on-demand"]
        if len(layouts) < len(args.states):
            print(f"{best}: its window embedding reads every patch token (model.retrieval_layout): no on-demand rows", file=sys.stderr)
    rows = []
    for states in layouts:
        index_dir = folder / "store" / states
        shutil.rmtree(index_dir, ignore_errors=True)
        start = time.perf_counter()
        keep = None
        if states == "both":  # on-demand, with stored states for the videos these texts hit most (their traffic)
            build_index(items, grounder, index_dir, str(best), progress=False, states="on-demand")
            keep = popular_videos(LibraryIndex.open(index_dir, grounder), queries, args.candidates, args.keep_fraction)
        counts = build_index(items, grounder, index_dir, str(best), progress=False, states=LAYOUTS[states], keep_states=keep)
        build_s = time.perf_counter() - start
        cached = LibraryIndex.open(index_dir, grounder)
        hours = sum(v["duration"] for v in cached.videos()) / 3600
        kept_hours = sum(v["duration"] for v in cached.videos() if v["vid"] in (keep or [])) / 3600
        stored = store_bytes(index_dir / "features")
        vit_row_bytes = (
            VIT_B32_ROW_BYTES[LAYOUTS[states]] + (VIT_B32_ROW_BYTES["fp16"] - VIT_B32_ROW_BYTES["on-demand"]) * kept_hours / hours
        )
        common = {
            "states": states if keep is None else f"on-demand, {len(keep)} of {counts['videos']} videos kept",
            "videos": counts["videos"],
            "video_hours": round(hours, 2),
            "build_s": round(build_s, 1),
            "states GB/h": round(stored["states"] / hours / 1e9, 5),
            "other GB/h": round(stored["other"] / hours / 1e9, 5),
            "ViT-B/32 states GB/h": round(vit_row_bytes * 3600 * grounder.fps / 1e9, 4),
        }
        searches = [("", cached)]
        if states in ("on-demand", "both"):  # every window re-encoded, then the cache filling and found again
            uncached = LibraryIndex.open(index_dir, grounder, window_cache_bytes=0)
            searches = [("no cache", uncached), ("cache, first pass", cached), ("cache, second pass", cached)]
        for label, index in searches:
            ranked, times = timed_searches(index, queries, lambda q, index=index: index.search(q, k=max(RANKS), candidates=args.candidates))
            rows.append({**common, "search": label, **recall(ranked, truth), **lat(times)})
            print(json.dumps(rows[-1]), flush=True)
    columns = ["states", "search", "states GB/h", "other GB/h", "ViT-B/32 states GB/h", "R@5@0.5", "p50 ms", "p99 ms", "build_s"]
    print(markdown(rows, columns))
    OUT.mkdir(exist_ok=True)
    (OUT / f"library_store{suffix(args)}.json").write_text(
        json.dumps(
            {
                "set": folder.name,
                "checkpoint": str(best),
                "queries": len(queries),
                "candidates": args.candidates,
                **machine(args),
                "rows": rows,
            },
            indent=2,
        )
    )


# ---------------------------------------------------------------- speed


def real_vectors(index: LibraryIndex) -> np.ndarray:
    with safe_open(str(index.searcher.version.folder / "vectors.safetensors"), framework="pt") as f:
        return f.get_tensor("vectors").float().numpy()


def noisy(vectors: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """``vectors`` plus Gaussian noise of norm about ``noise``, renormalised to unit length (float32)."""
    out = vectors + rng.standard_normal(vectors.shape, dtype=np.float32) * (noise / math.sqrt(vectors.shape[1]))
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def tiled(vectors: np.ndarray, n: int, noise: float, seed: int = 0) -> np.ndarray:
    """``n`` rows: the real vectors, then noisy copies of them (made in blocks, for memory)."""
    rng, out = np.random.default_rng(seed), np.empty((n, vectors.shape[1]), dtype=np.float32)
    out[: min(n, len(vectors))] = vectors[:n]
    for first in range(len(vectors), n, len(vectors)):
        count = min(len(vectors), n - first)
        out[first : first + count] = noisy(vectors[:count], noise, rng)
    return out


def query_vectors(index: LibraryIndex, queries: list[str]) -> np.ndarray:
    grounder = index.grounder
    with torch.no_grad():
        states, mask = grounder.text_cache(queries, grounder.backbone.device)
        return grounder.model.retrieval.embed_queries(states, mask).float().cpu().numpy()


def indexed(
    vectors: np.ndarray, flat_up_to: int = FLAT_UP_TO, compress_above: int = COMPRESS_ABOVE, layout: dict | None = None
) -> WindowIndex:
    """The window index ``vtg index`` builds for ``vectors`` (or in ``layout``); a compressed one re-ranks against
    ``vectors`` in RAM, where ``vtg search`` maps them from disk."""
    layout = layout or choose_layout(len(vectors), vectors.shape[1], flat_up_to, compress_above)
    layout = {**layout, "trained_on": len(vectors)} if layout["kind"] == "ivfpq" else layout
    return WindowIndex(build_faiss(vectors, layout), layout, vectors if layout["kind"] == "ivfpq" else None)


def exact_top(vectors: np.ndarray, queries: np.ndarray, n: int, block: int = 2**20) -> np.ndarray:
    """The exact top ``n`` rows of ``vectors`` for every query (Q, n), computed in blocks of rows (no second copy)."""
    best_scores, best_rows = np.full((len(queries), 0), -np.inf, np.float32), np.zeros((len(queries), 0), np.int64)
    for first in range(0, len(vectors), block):
        scores = queries @ vectors[first : first + block].T
        top = np.argpartition(-scores, min(n, scores.shape[1] - 1), axis=1)[:, :n]
        best_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, axis=1)], axis=1)
        best_rows = np.concatenate([best_rows, top + first], axis=1)
        keep = np.argsort(-best_scores, axis=1, kind="stable")[:, :n]
        best_scores, best_rows = np.take_along_axis(best_scores, keep, axis=1), np.take_along_axis(best_rows, keep, axis=1)
    return best_rows


def stage_one_layouts(size: int, dims: int, kinds: list[str], factories: list[str]) -> list[dict]:
    """The layouts measured at ``size`` windows: ``flat``, ``ivf``, ``ivfpq`` (as vtg index builds them), then
    compressed layouts of other faiss ``factories`` (``[OPQm_d,]IVFn,PQmxb``), searched as ``ivfpq`` is."""
    compressed = choose_layout(size, dims, 0, 0)
    layouts = {"flat": choose_layout(size, dims, size, size), "ivf": choose_layout(size, dims, 0, size), "ivfpq": compressed}
    chosen = [{**layouts[kind], "kind": kind} for kind in kinds]
    for factory in factories:
        lists = int(re.search(r"IVF(\d+)", factory)[1])
        chosen.append(
            {**compressed, "kind": "ivfpq-" + factory, "factory": factory, "lists": lists, "nprobe": min(lists, max(8, lists // 16))}
        )
    return chosen


def stage_one_speed(
    index: LibraryIndex,
    queries: list[str],
    sizes: list[int],
    noise: float,
    nprobes: list[int],
    reranks: list[int],
    kinds: list[str],
    factories: list[str],
) -> list[dict]:
    vectors, embedded, n = real_vectors(index), query_vectors(index, queries), library.CANDIDATES
    rows = []
    for size in sizes:
        data = tiled(vectors, size, noise)
        exact = exact_top(data, embedded, n)
        for layout in stage_one_layouts(size, data.shape[1], kinds, factories):
            start = time.perf_counter()
            built = indexed(data, layout={**layout, "kind": layout["kind"].split("-")[0]})
            build_s = time.perf_counter() - start
            table_bytes = size * sum(torch.empty(0, dtype=dtype).element_size() for dtype in library.TABLE.values())
            ram_mib = round((built.ram_bytes() + table_bytes) / 2**20, 1)  # what a loaded version holds in RAM
            settings = [(None, None)] + [(p, None) for p in nprobes] + [(None, r) for r in reranks]
            for nprobe, rerank in settings if layout["kind"] != "flat" else [(None, None)]:  # (None, None): as vtg search runs
                if rerank and not layout["kind"].startswith("ivfpq"):
                    continue
                times, found = [], []
                for row in embedded:
                    start = time.perf_counter()
                    _, ids = built.search(row[None], n, nprobe=nprobe, rerank=rerank)
                    times.append(time.perf_counter() - start)
                    found.append(ids[0])
                hits = np.mean([len(set(f) & set(e)) / n for f, e in zip(found, exact)])
                real = len(vectors)  # row i of the tiled vectors is a copy of real window i % real
                sources = np.mean([len(set(f % real) & set(e % real)) / len(set(e % real)) for f, e in zip(found, exact)])
                rows.append(
                    {
                        "windows": size,
                        "index": layout["kind"],
                        "factory": layout["factory"],
                        "nprobe": nprobe or layout.get("nprobe"),
                        "shortlist": (rerank or layout.get("rerank") or 0) * n or None,
                        "build s": round(build_s, 1),
                        "index RAM MiB": ram_mib,
                        "p50 ms": percentile(times, 50),
                        "p99 ms": percentile(times, 99),
                        f"recall@{n}": round(float(hits), 3),
                        f"source recall@{n}": round(float(sources), 3),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
            del built
        del data
    return rows


def compressed(index: LibraryIndex) -> LibraryIndex:
    """``index`` with its faiss index rebuilt in the compressed layout (``window_index``, as above COMPRESS_ABOVE,
    trained on these few windows: fewer code bits than at scale, so at most as good)."""
    version = index.searcher.version
    vectors = real_vectors(index)
    index_of = indexed(vectors, flat_up_to=0, compress_above=0)
    return LibraryIndex(
        index.folder,
        Version(version.number, version.folder, version.info, version.table, index_of, version.stamp),
        index.grounder,
        pinned=True,
    )


def replicated(index: LibraryIndex, videos: int, noise: float) -> LibraryIndex:
    """A library of ``videos`` videos made of copies of the real ones (copy 0 exact, the others with noisy vectors);
    each copy grounds in its real video's feature file."""
    version = index.searcher.version
    real, table, vectors = version.info["videos"], version.table, real_vectors(index)
    rng = np.random.default_rng(0)
    parts = [(c, np.flatnonzero(table["video"] + c * len(real) < videos)) for c in range(math.ceil(videos / len(real)))]
    columns = {
        name: np.concatenate([table[name][rows] + (c * len(real) if name == "video" else 0) for c, rows in parts]) for name in library.TABLE
    }
    data = np.concatenate([vectors[rows] if c == 0 else noisy(vectors[rows], noise, rng) for c, rows in parts])
    info = {**version.info, "videos": [real[j % len(real)] for j in range(videos)]}
    copies = Version(version.number, version.folder, info, columns, indexed(data), version.stamp)
    return LibraryIndex(index.folder, copies, index.grounder, pinned=True)


def two_stage_speed(
    index: LibraryIndex, queries: list[str], sizes: list[int], brute_sizes: list[int], brute_queries: int, noise: float
) -> list[dict]:
    real = [(v["vid"], Path(v["feature_file"])) for v in index.videos()]
    rows = []
    for videos in sizes:
        library_index = replicated(index, videos, noise)
        _, stage_one = timed_searches(library_index, queries, library_index.windows)
        _, both = timed_searches(library_index, queries, partial(library_index.search, k=10))
        row = {
            "videos": videos,
            "windows": library_index.searcher.version.index.ntotal,
            "index": library_index.searcher.version.index.layout["kind"],
            "stage 1 p50 ms": percentile(stage_one, 50),
            "stage 1 p99 ms": percentile(stage_one, 99),
            "two-stage p50 ms": percentile(both, 50),
            "two-stage p99 ms": percentile(both, 99),
        }
        if videos in brute_sizes:
            times = brute_force_latency(index, queries[:brute_queries], [real[j % len(real)] for j in range(videos)])
            row.update(
                {
                    "brute force p50 ms": percentile(times, 50),
                    "brute force p99 ms": percentile(times, 99),
                    "speed-up (p50)": round(np.median(times) / np.median(both), 1),
                }
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
        del library_index
    return rows


def rss_in_process(args) -> dict:
    """Hidden ``rss`` subcommand: open the index (replicated to ``--videos`` if given), search once, report RSS."""
    index = LibraryIndex.open(Path(args.index))
    if args.videos:
        index = replicated(index, args.videos, args.noise)
    index.search(val_records(Path(args.index).parent)[0]["query"], k=10)
    return {
        "videos": args.videos or len(index.videos()),
        "windows": index.searcher.version.index.ntotal,
        "rss_mib": round(psutil.Process().memory_info().rss / 2**20),
    }


def memory(folder: Path, sizes: list[int], noise: float) -> list[dict]:
    rows = []
    for videos in [None, *sizes]:
        cmd = [
            sys.executable,
            __file__,
            "rss",
            "--index",
            str(folder / "index"),
            "--noise",
            str(noise),
            *(["--videos", str(videos)] if videos else []),
        ]
        result, peak = peak_rss(cmd)
        rows.append(
            {
                "library": "real index" if videos is None else f"{videos:,} videos (replicated)",
                "windows": result["windows"],
                "RSS after a search MiB": result["rss_mib"],
                "peak RSS MiB": round(peak),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def speed(args) -> None:
    folder = set_dir(args)
    index = LibraryIndex.open(folder / "index")
    queries = list(ground_truth(val_records(folder)))[: args.speed_queries]
    print(
        json.dumps(
            {
                "set": folder.name,
                "videos": len(index.videos()),
                "windows": index.searcher.version.index.ntotal,
                "queries": len(queries),
                "threads": torch.get_num_threads(),
            }
        ),
        flush=True,
    )
    stage1 = (
        stage_one_speed(index, queries, args.windows, args.noise, args.nprobe, args.rerank, args.layouts, args.factories)
        if args.windows
        else []
    )
    two = two_stage_speed(index, queries, args.videos, args.brute_videos, args.brute_queries, args.noise) if args.videos else []
    mem = memory(folder, args.videos, args.noise) if not args.no_memory else []
    if stage1:
        print(f"\nStage 1 alone (faiss search of one query vector, top {library.CANDIDATES})\n")
        print(markdown(stage1, list(stage1[0])))
    if two:
        print("\nPer-query latency (fresh query encoding each)\n")
        print(markdown(two, list(dict.fromkeys(k for r in two for k in r))))
    if mem:
        print("\nMemory of a process holding the loaded index\n")
        print(markdown(mem, list(mem[0])))
    OUT.mkdir(exist_ok=True)
    path = OUT / f"library_speed{suffix(args)}.json"
    old = json.loads(path.read_text()) if path.exists() else {}  # parts not rerun are kept
    new = {
        "set": folder.name,
        "root": str(folder),
        "queries": len(queries),
        "noise": args.noise,
        **machine(args),
        "flat_up_to": FLAT_UP_TO,
        "compress_above": COMPRESS_ABOVE,
        "stage_one": stage1,
        "two_stage": two,
        "memory": mem,
    }
    path.write_text(json.dumps({**old, **{k: v for k, v in new.items() if v != [] or k not in old}}, indent=2))


# ---------------------------------------------------------------- load


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 60) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def tree_rss(process: psutil.Process) -> int:
    """Resident bytes of ``process`` and its descendants (``vtg serve --workers``: the supervisor and its workers)."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:  # exited meanwhile
            pass
    return total


def load(args) -> None:
    folder = set_dir(args)
    queries = list(ground_truth(val_records(folder)))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(folder / "serve.log", "w")
    server = psutil.Popen(
        [
            sys.executable,
            "-m",
            "vtg_pipeline",
            "serve",
            "--index",
            str(folder / "index"),
            "--port",
            str(port),
            "--workers",
            str(args.workers),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                raise SystemExit(f"vtg serve exited with {server.returncode}; see {folder / 'serve.log'}")
            try:
                if get(base + "/api/videos", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"vtg serve did not answer within 180 s; see {folder / 'serve.log'}")
            time.sleep(0.5)
        for query in queries[:3]:  # warm-up
            get(f"{base}/api/search?" + urllib.parse.urlencode({"q": query, "k": 10}))
        rss_start = tree_rss(server)
        counter, lock, results, samples = iter(range(10**9)), threading.Lock(), [], []
        stop = time.monotonic() + args.seconds

        def client(number: int) -> None:
            while time.monotonic() < stop:
                with lock:
                    n = next(counter)
                query = queries[n % len(queries)] + (f" #{n}" if args.queries == "unique" else "")
                url = f"{base}/api/search?" + urllib.parse.urlencode({"q": query, "k": 10})
                start = time.perf_counter()
                try:
                    status, body = get(url)
                    ok = status == 200 and isinstance(json.loads(body).get("results"), list)
                    outcome = "ok" if ok else f"HTTP {status}"
                except Exception as e:  # no response: refused, reset, timed out
                    outcome = type(e).__name__
                results.append((time.perf_counter() - start, outcome))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            samples.append(tree_rss(server))
            time.sleep(1)
        for t in threads:
            t.join()
        rss_end = tree_rss(server)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    times = [t for t, outcome in results if outcome == "ok"]
    errors = Counter(outcome for _, outcome in results if outcome not in ("ok", "HTTP 503"))
    half = samples[len(samples) // 2] if samples else rss_end
    row = {
        "workers": args.workers,
        "clients": args.clients,
        "seconds": args.seconds,
        "queries": args.queries,
        "requests": len(results),
        "searches/s": round(len(times) / args.seconds, 2),
        "p50 ms": percentile(times, 50),
        "p99 ms": percentile(times, 99),
        "503s": sum(outcome == "HTTP 503" for _, outcome in results),
        "errors": sum(errors.values()),
        "RSS start MiB": round(rss_start / 2**20),
        "RSS half-time MiB": round(half / 2**20),
        "RSS end MiB": round(rss_end / 2**20),
        "RSS growth 2nd half %": round(100 * (rss_end - half) / half, 2),
        "RSS peak MiB": round(max(samples + [rss_end]) / 2**20),
    }
    print(json.dumps({**row, "error_kinds": dict(errors)}))
    print(markdown([row], list(row)))
    OUT.mkdir(exist_ok=True)
    (OUT / f"library_load{suffix(args)}_{args.clients}c{f'_{args.workers}w' if args.workers > 1 else ''}.json").write_text(
        json.dumps(
            {
                "set": folder.name,
                "index": str(folder / "index"),
                **machine(args),
                **row,
                "error_kinds": dict(errors),
                "rss_mib_per_second": [round(s / 2**20) for s in samples],
            },
            indent=2,
        )
    )


# ---------------------------------------------------------------- batch


def batch(args) -> None:
    """What batching saves in one process, and the most it could: the same ``max(--size)`` new texts searched one by
    one (a batch of 1), then in ``search_many`` batches of each ``--size`` (what a `vtg serve` worker runs when that
    many requests wait), ``--repeats`` times, each time other texts; medians of milliseconds per search. Then a
    least-squares fit of ms per search = own + shared / n over the sizes: ``shared`` is the work a batch does once
    (text encoder, faiss, each forward's fixed cost, each window's states read and mapped), ``own`` the work each
    search does whatever the batch (its (query, window) pairs through the model, decoding, NMS), and ``ceiling`` =
    ms alone / own the most any batch could save on one core."""
    folder = set_dir(args)
    index = LibraryIndex.open(folder / "index", Grounder.from_pretrained(checkpoint(folder)))
    texts = list(ground_truth(val_records(folder)))
    index.search_many(texts[:2], k=10)  # warm: first calls, the page cache
    sizes = sorted(set(args.size) | {1})
    count = max(sizes)
    per_search: dict[int, list[float]] = {n: [] for n in sizes}
    for repeat in range(args.repeats):
        chosen = [texts[(repeat * count + i) % len(texts)] for i in range(count)]
        for n in sizes:
            fresh_query(index.grounder)
            batches = [[f"{text} #{n}.{repeat}" for text in chosen[first : first + n]] for first in range(0, count, n)]
            start = time.perf_counter()
            for queries in batches:
                index.search_many(queries, k=10)
            per_search[n].append((time.perf_counter() - start) / count)
    ms = {n: float(np.median(times)) * 1000 for n, times in per_search.items()}
    shared, own = np.polyfit([1 / n for n in sizes], [ms[n] for n in sizes], 1) if len(sizes) > 1 else (0.0, ms[1])
    rows = [{"size": n, "repeats": args.repeats, "ms/search": round(ms[n], 1), "gain": round(ms[1] / ms[n], 2)} for n in sizes]
    fit = {"shared ms": round(float(shared), 1), "own ms/search": round(float(own), 1), "ceiling": round(ms[1] / float(own), 2)}
    print(markdown(rows, list(rows[0])))
    print(markdown([fit], list(fit)))
    OUT.mkdir(exist_ok=True)
    (OUT / f"library_batch{suffix(args)}.json").write_text(
        json.dumps({"set": folder.name, **machine(args), "rows": rows, "fit": fit}, indent=2)
    )


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", required=True, help="holds ROOT/short (and ROOT/long)")
    common.add_argument("--long", action="store_true", help="the vtg synth --long set (ROOT/long, configs/synthetic_long.yaml)")
    common.add_argument("--threads", type=int, help="torch and faiss threads in this process (default: torch's, the cores)")
    p = sub.add_parser("prepare", parents=[common], help="synth, extract and train (each skipped when done)")
    p.add_argument("--videos", type=int, help="vtg synth --videos (default 400, or 80 with --long)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, help="optim.epochs (default: the config's)")
    p = sub.add_parser("quality", parents=[common], help="corpus-level R@k of brute force, stage 1 and two-stage")
    p.add_argument("--candidates", type=int, nargs="+", default=[10, 20, 50], help="stage-1 windows passed to stage 2")
    p.add_argument("--latency-queries", type=int, default=30, help="queries timed one at a time for brute force")
    p.add_argument("--rebuild-index", action="store_true", help="build (and time) the index again")
    p.add_argument("--compressed", action="store_true", help="also (d): two-stage on the index rebuilt in the compressed layout")
    p = sub.add_parser("speed", parents=[common], help="stage-1 and two-stage latency at scale, memory")
    p.add_argument("--windows", type=int, nargs="*", default=[1_000, 10_000, 100_000, 1_000_000])
    p.add_argument("--nprobe", type=int, nargs="*", default=[], help="inverted-file lists to scan, besides the index's own")
    p.add_argument("--rerank", type=int, nargs="*", default=[], help="compressed: shortlists of RERANK x 20, besides the index's own")
    p.add_argument(
        "--layouts",
        nargs="*",
        default=["flat", "ivf", "ivfpq"],
        choices=("flat", "ivf", "ivfpq"),
        help="stage-1 layouts measured at each --windows size (flat and ivf hold every vector in RAM twice)",
    )
    p.add_argument("--factories", nargs="*", default=[], help="also these compressed faiss layouts, e.g. IVF1024,PQ64x8")
    p.add_argument("--videos", type=int, nargs="*", default=[100, 1_000, 10_000])
    p.add_argument("--brute-videos", type=int, nargs="*", default=[100, 1_000])
    p.add_argument("--brute-queries", type=int, default=5)
    p.add_argument("--speed-queries", type=int, default=100)
    p.add_argument("--noise", type=float, default=0.1, help="norm of the noise added to copied unit vectors")
    p.add_argument("--no-memory", action="store_true")
    p = sub.add_parser("store", parents=[common], help="bytes per video hour and search latency of each vtg index --states")
    p.add_argument("--states", nargs="+", default=["fp16", "fp8", "on-demand", "both"], choices=("fp16", "fp8", "on-demand", "both"))
    p.add_argument("--keep-fraction", type=float, default=0.25, help="both: the share of videos whose states are kept (--keep-states)")
    p.add_argument("--queries", type=int, default=None, help="the first N validation query texts (default all)")
    p.add_argument("--candidates", type=int, default=library.CANDIDATES, help="stage-1 windows passed to stage 2")
    p = sub.add_parser("load", parents=[common], help="16 clients against vtg serve")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--queries", choices=("unique", "val"), default="unique")
    p.add_argument("--workers", type=int, default=1, help="vtg serve --workers (RSS is summed over its processes)")
    p = sub.add_parser("batch", parents=[common], help="ms per search, one by one and in search_many batches")
    p.add_argument("--size", type=int, nargs="+", default=[16], help="searches a batch (one row each; 1 is always measured)")
    p.add_argument("--repeats", type=int, default=5)
    p = sub.add_parser("rss")  # internal: one memory measurement in a fresh process
    p.add_argument("--index", required=True)
    p.add_argument("--videos", type=int)
    p.add_argument("--noise", type=float, default=0.1)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if getattr(args, "threads", None):
        import faiss

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    args.load_at_start = [round(x, 2) for x in os.getloadavg()]
    if args.what not in ("rss", "prepare"):  # timings are only meaningful on idle cores: say how busy they were
        print(json.dumps(machine(args)), flush=True)
    if args.what == "rss":
        print(json.dumps(rss_in_process(args)))
    else:
        {"prepare": prepare, "quality": quality, "speed": speed, "load": load, "store": store, "batch": batch}[args.what](args)


if __name__ == "__main__":
    main()
