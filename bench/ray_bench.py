"""`--ray` against the local runner and against accelerate's static split (docs/BENCHMARKS.md, "On a Ray cluster").

    python bench/ray_bench.py videos --out /tmp/raybench                       # the uniform and the skewed set (ffmpeg CLI)
    python bench/ray_bench.py overhead /tmp/raybench/uniform                   # vtg extract vs vtg extract --ray, one machine
    python bench/ray_bench.py skew /tmp/raybench/skewed --workers 2            # accelerate launch (2 ranks) vs --ray (2 backbone actors)
    python bench/ray_bench.py node-loss /tmp/raybench/uniform                  # a worker node removed mid-job vs no loss
    python bench/ray_bench.py costs /tmp/raybench/uniform                      # per-frame decode / encode / write, one core

Each figure is one command run alone on the machine: wall seconds, and the peak of the summed RSS of the command's
whole process tree (Ray's raylet, GCS and workers are children of the driver when it starts the cluster). ViT-B-32
with random weights (`random:0`): the compute of the real model. Results go to bench/out/ray_*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

OUT = Path(__file__).parent / "out"
ROOT = Path(__file__).resolve().parents[1]
MODEL = ["--model", "ViT-B-32", "--pretrained", "random:0"]


def make_videos(out: Path) -> None:
    """uniform/: 8 videos of 4 min; skewed/: one 60-min video and 24 of 1 min. 320x240 H.264 at 10 fps, a keyframe
    every 10 s (testsrc2: cheap to decode, so the backbone is most of the work, as on real footage at 0.5 fps)."""
    jobs = [(out / "uniform" / f"u{i}.mp4", 240) for i in range(8)]
    jobs += [(out / "skewed" / "long.mp4", 3600)] + [(out / "skewed" / f"s{i:02d}.mp4", 60) for i in range(24)]
    for path, seconds in jobs:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            subprocess.run(
                [
                    "ffmpeg",
                    "-v",
                    "error",
                    "-f",
                    "lavfi",
                    "-i",
                    f"testsrc2=size=320x240:rate=10:duration={seconds}",
                    "-c:v",
                    "libx264",
                    "-preset",
                    "veryfast",
                    "-g",
                    "100",
                    "-pix_fmt",
                    "yuv420p",
                    str(path),
                ],
                check=True,
            )
    print(json.dumps({"videos": len(jobs), "out": str(out)}))


def measure(cmd: list[str], env: dict | None = None, during=None) -> dict:
    """Run ``cmd``; wall seconds and the peak summed RSS (MiB) of its process tree, sampled every 0.1 s.
    ``during(process)``, if given, runs in a thread meanwhile (a fault to inject)."""
    start = time.perf_counter()
    process = subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    peak, root = 0, psutil.Process(process.pid)
    if during is not None:
        threading.Thread(target=during, args=(process,), daemon=True).start()
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.append(process.stderr.read()), daemon=True)
    reader.start()
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.1)
    reader.join()
    wall = time.perf_counter() - start
    last = (stderr[0].strip().splitlines() or [""])[-1]
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: status {process.returncode}: {stderr[0][-2000:]}")
    return {"wall_s": round(wall, 2), "peak_tree_rss_mib": round(peak / 2**20), "summary": last}


def vtg(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("vtg")), *args]


def overhead(videos: Path, runs: int) -> dict:
    rows = []
    for run in range(runs):
        for mode in ("local", "ray"):
            with tempfile.TemporaryDirectory() as tmp:
                extra = ["--ray"] if mode == "ray" else []
                rows.append(
                    {"mode": mode, "run": run, **measure(vtg("extract", str(videos), "--out", tmp, *MODEL, "--no-progress", *extra))}
                )
                print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows}


def skew(videos: Path, workers: int) -> dict:
    """accelerate's static split (every N-th video per rank) against --ray on a `ray start` cluster of ``workers`` CPUs
    (one backbone actor per CPU): both ``workers`` backbones of one torch thread each."""
    one_thread = {"OMP_NUM_THREADS": "1"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        launch = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(workers),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "extract",
            str(videos),
            "--out",
            f"{tmp}/static",
            *MODEL,
            "--no-progress",
        ]
        rows.append({"mode": f"accelerate launch, {workers} ranks", **measure(launch, {**one_thread, "ACCELERATE_USE_CPU": "1"})})
        print(json.dumps(rows[-1]), flush=True)
        address = start_cluster(workers)
        try:
            rows.append(
                {
                    "mode": f"--ray, {workers} encoder actors",
                    **measure(vtg("extract", str(videos), "--out", f"{tmp}/ray", *MODEL, "--no-progress", "--ray", address), one_thread),
                }
            )
        finally:
            subprocess.run([str(Path(sys.executable).with_name("ray")), "stop", "--force"], capture_output=True)
        print(json.dumps(rows[-1]), flush=True)
    rows.append({"ratio_ray_over_static": round(rows[1]["wall_s"] / rows[0]["wall_s"], 3)})
    return {"rows": rows}


def start_cluster(cpus: int) -> str:
    """`ray start --head` with ``cpus`` logical CPUs on this machine; returns the address to join it from here."""
    subprocess.run(
        [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            "--port",
            "6391",
            "--num-cpus",
            str(cpus),
            "--include-dashboard",
            "false",
        ],
        check=True,
        capture_output=True,
    )
    return "auto"


def node_loss(videos: Path, runs: int) -> dict:
    """The same job on a head (1 CPU) + 2 worker nodes (1 CPU each), with and without removing a worker node once
    the first file is committed."""
    code = r"""
import sys, threading, time, json
from pathlib import Path
from ray.cluster_utils import Cluster
import ray
from vtg_pipeline.extract import ExtractConfig, find_videos
from vtg_pipeline.ray_engine import extract_on_ray
videos, out, lose = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1"
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
for _ in range(2):
    cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
ray.init(address=cluster.address)
driver = ray.get_runtime_context().get_node_id()
victim = next(n for n in cluster.list_all_nodes() if not n.head and n.node_id != driver)
cfg = ExtractConfig(video_dirs=[videos], out=str(out), model="ViT-B-32", pretrained="random:0", progress=False)
lost_at = []
def lose_node():
    while not any(out.glob("*.safetensors")):
        time.sleep(0.05)
    lost_at.append(time.perf_counter())
    cluster.remove_node(victim)
if lose:
    threading.Thread(target=lose_node, daemon=True).start()
start = time.perf_counter()
summary = extract_on_ray(cfg, find_videos([videos]), cluster.address)
end = time.perf_counter()
print(json.dumps({"job_s": round(end - start, 2), "after_loss_s": round(end - lost_at[0], 2) if lost_at else None,
                  "done": summary.done}))
ray.shutdown(); cluster.shutdown()
"""
    rows = []
    for run in range(runs):
        for lose in ("0", "1"):
            with tempfile.TemporaryDirectory() as tmp:
                result = subprocess.run(
                    [sys.executable, "-c", code, str(videos), f"{tmp}/out", lose],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    env={**os.environ, "OMP_NUM_THREADS": "1"},
                )
                if result.returncode:
                    raise SystemExit(result.stderr[-3000:])
                rows.append({"node_lost": lose == "1", "run": run, **json.loads(result.stdout.strip().splitlines()[-1])})
                print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows}


def costs(videos: Path) -> dict:
    """Per-frame cost of each stage on one core: decode (PyAV, 0.5 fps sampling, resize/crop), encode (ViT-B-32 fp32,
    batch 32), write (fp16 rows to a feature file)."""
    import numpy as np
    import torch

    from vtg_pipeline.backbone import load_backbone
    from vtg_pipeline.extract import (
        ExtractConfig,
        VideoFile,
        decode_video,
        encode_rows,
        file_layout,
    )
    from vtg_pipeline.video import make_decoder, probe, sample_times

    torch.set_num_threads(1)
    backbone = load_backbone("ViT-B-32", "random:0", 4)
    paths = sorted(videos.glob("*.mp4"))[:2]
    frames, start = [], time.perf_counter()
    for path in paths:
        info = probe(str(path))
        for message in decode_video(
            path.stem, info, sample_times(info.duration, 0.5), 0, make_decoder("pyav"), backbone.preprocess, backbone.device, 16
        ):
            if hasattr(message, "frames"):
                frames.append(message.frames)
    decode_s = (time.perf_counter() - start) / sum(len(f) for f in frames)
    batch = torch.cat(frames)[:64]
    encode_rows(backbone, batch[:32], "fp16")  # warm-up
    start = time.perf_counter()
    rows = [encode_rows(backbone, batch[i : i + 32], "fp16") for i in range(0, len(batch), 32)]
    encode_s = (time.perf_counter() - start) / len(batch)
    vision = np.concatenate([r["vision"] for r in rows])
    cfg = ExtractConfig(video_dirs=[], out="")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        for k in range(8):
            file = VideoFile(
                Path(tmp) / f"{k}.safetensors", file_layout(cfg, backbone.row_shapes(), len(vision)), {}, np.arange(len(vision)) * 2.0
            )
            file.write(0, {"vision": vision})
            file.commit()
        write_s = (time.perf_counter() - start) / (8 * len(vision))
    row_mb = vision[0].nbytes / 1e6
    return {
        "decode_ms_per_frame": round(1e3 * decode_s, 2),
        "encode_ms_per_frame_cpu_1_thread": round(1e3 * encode_s, 2),
        "write_ms_per_frame": round(1e3 * write_s, 3),
        "row_mb_fp16": round(row_mb, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("videos", "overhead", "skew", "node-loss", "costs"))
    parser.add_argument("path", nargs="?", help="the videos folder (or, for `videos`, use --out)")
    parser.add_argument("--out", default="/tmp/raybench")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.what == "videos":
        if not shutil.which("ffmpeg"):
            raise SystemExit("the ffmpeg CLI makes the videos: apt-get install ffmpeg")
        return make_videos(Path(args.out))
    videos = Path(args.path)
    result = {
        "overhead": lambda: overhead(videos, args.runs),
        "skew": lambda: skew(videos, args.workers),
        "node-loss": lambda: node_loss(videos, args.runs),
        "costs": lambda: costs(videos),
    }[args.what]()
    OUT.mkdir(exist_ok=True)
    (OUT / f"ray_{args.what.replace('-', '_')}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
