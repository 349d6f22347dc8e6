"""Extraction speed and memory (issue: `make extract` measurements).

    python bench/extract_bench.py videos --out /tmp/bench              # make the test videos with the ffmpeg CLI
    python bench/extract_bench.py speed /tmp/bench/ten_min_720p.mp4    # decode / backbone / extract / two-step reference
    python bench/extract_bench.py memory /tmp/bench/long_30min_360p.mp4 /tmp/bench/long_120min_360p.mp4
    python bench/extract_bench.py decode /tmp/bench/ten_min_720p.mp4 --repeats 3   # decode only, each backend (decord's version)

Results are printed as JSON and written to bench/out/*.json; docs/BENCHMARKS.md
quotes them with the command. ViT-B-32 with random weights (`random:0`): the
compute is that of the real model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import psutil
import torch

from vtg_pipeline.backbone import load_backbone
from vtg_pipeline.extract import ExtractConfig, run_extract
from vtg_pipeline.video import available_decoders, make_decoder, probe, sample_times

OUT = Path(__file__).parent / "out"
MODEL, PRETRAINED = "ViT-B-32", "random:0"


def make_videos(out: Path) -> None:
    """10-min 1280x720 H.264 30 fps, keyframe every 250 frames; 30-min and 2-h 640x360 at 10 fps."""
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        ("ten_min_720p.mp4", "1280x720", 30, 600, "veryfast"),
        ("long_30min_360p.mp4", "640x360", 10, 1800, "ultrafast"),
        ("long_120min_360p.mp4", "640x360", 10, 7200, "ultrafast"),
    ]
    for name, size, rate, seconds, preset in jobs:
        if (out / name).exists():
            continue
        subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                f"testsrc2=size={size}:rate={rate}",
                "-t",
                str(seconds),
                "-c:v",
                "libx264",
                "-preset",
                preset,
                "-g",
                "250",
                "-keyint_min",
                "250",
                "-sc_threshold",
                "0",
                "-pix_fmt",
                "yuv420p",
                str(out / name),
            ],
            check=True,
        )


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def decode_only(path: str, backend: str, fps: float) -> dict:
    info = probe(path)
    times = sample_times(info.duration, fps)
    decoder = make_decoder(backend).for_video(info)
    count, seconds = timed(lambda: sum(len(c) for c in decoder.chunks(info, times, 16)))
    return {
        "backend": decoder.name,
        "sampled_frames": count,
        "seconds": round(seconds, 2),
        "sampled_frames_per_s": round(count / seconds, 1),
    }


def naive_decode(path: str, fps: float) -> dict:
    """Decode every frame and convert every one to RGB, then keep the sampled ones."""
    info = probe(path)
    targets = sample_times(info.duration, fps) + info.start_time

    def run():
        kept, k, total, previous = 0, 0, 0, None
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                rgb = frame.to_ndarray(format="rgb24")
                total += 1
                while k < len(targets) and frame.time > targets[k] + 1e-6:
                    kept, k = kept + 1, k + 1
                previous = rgb
        kept += len(targets) - k
        del previous
        return total, kept

    (total, kept), seconds = timed(run)
    return {"decoded_frames": total, "sampled_frames": kept, "seconds": round(seconds, 2), "sampled_frames_per_s": round(kept / seconds, 1)}


def backbone_only(path: str, fps: float, batch_size: int = 32) -> dict:
    info = probe(path)
    times = sample_times(info.duration, fps)
    backbone = load_backbone(MODEL, PRETRAINED, layers=4)
    frames = torch.cat([backbone.preprocess.resize_crop(c) for c in make_decoder("pyav").chunks(info, times, 16)])
    backbone.encode_frames(frames[:2])  # warm-up

    def run():
        for start in range(0, len(frames), batch_size):
            backbone.encode_frames(frames[start : start + batch_size]).half().numpy()

    _, seconds = timed(run)
    return {"frames": len(frames), "seconds": round(seconds, 2), "frames_per_s": round(len(frames) / seconds, 1)}


def full_extract(path: str, fps: float) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cfg = ExtractConfig(video_dirs=[path], out=out, fps=fps, model=MODEL, pretrained=PRETRAINED, progress=False)
        load_backbone(MODEL, PRETRAINED)  # create the random checkpoint outside the timing
        summary, seconds = timed(lambda: run_extract(cfg))
    return {"frames": summary.frames, "seconds": round(seconds, 2), "frames_per_s": round(summary.frames / seconds, 1)}


def two_step_reference(path: str, fps: float, batch_size: int = 32) -> dict:
    """ffmpeg fps filter -> PNG frames on disk -> PIL + open_clip transform -> backbone."""
    import open_clip
    from PIL import Image

    backbone = load_backbone(MODEL, PRETRAINED, layers=4)
    _, _, pil_transform = open_clip.create_model_and_transforms(MODEL, pretrained=None)
    folder = Path(tempfile.mkdtemp())
    try:
        _, ffmpeg_seconds = timed(
            lambda: subprocess.run(["ffmpeg", "-v", "error", "-i", path, "-vf", f"fps={fps}", str(folder / "%06d.png")], check=True)
        )
        files = sorted(folder.glob("*.png"))

        def encode():
            for start in range(0, len(files), batch_size):
                pixels = torch.stack([pil_transform(Image.open(f).convert("RGB")) for f in files[start : start + batch_size]])
                with torch.inference_mode():
                    backbone.model.forward_intermediates(
                        image=pixels,
                        image_indices=list(backbone.spec.layers),
                        image_output_fmt="NLC",
                        image_output_extra_tokens=True,
                        intermediates_only=True,
                    )

        _, encode_seconds = timed(encode)
    finally:
        shutil.rmtree(folder)
    total = ffmpeg_seconds + encode_seconds
    return {
        "frames": len(files),
        "ffmpeg_seconds": round(ffmpeg_seconds, 2),
        "load_and_backbone_seconds": round(encode_seconds, 2),
        "seconds": round(total, 2),
        "frames_per_s": round(len(files) / total, 1),
    }


def speed(args) -> dict:
    path = args.video
    info = probe(path)
    result = {
        "video": Path(path).name,
        "duration_s": round(info.duration, 1),
        "size": f"{info.width}x{info.height}",
        "fps_sampled": args.fps,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": psutil.cpu_count(),
    }
    result["decode_only"] = [decode_only(path, b, args.fps) for b in available_decoders()]
    result["naive_decode_all_rgb"] = naive_decode(path, args.fps)
    result["backbone_only"] = backbone_only(path, args.fps)
    result["extract"] = full_extract(path, args.fps)
    pyav = next(d for d in result["decode_only"] if d["backend"] == "pyav")
    result["extract_over_decode_plus_backbone"] = round(
        result["extract"]["seconds"] / (pyav["seconds"] + result["backbone_only"]["seconds"]), 3
    )
    if shutil.which("ffmpeg"):
        result["two_step_reference"] = two_step_reference(path, args.fps)
    return result


def decode(args) -> dict:
    """Decode-only seconds of every available backend, the median of ``--repeats`` runs, with the installed versions."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    runs = {b: [decode_only(args.video, b, args.fps) for _ in range(args.repeats)] for b in available_decoders()}
    medians = {b: sorted(r, key=lambda x: x["seconds"])[len(r) // 2] for b, r in runs.items()}
    packages = {name: installed(name) for name in ("decord", "decord2", "av", "torchcodec")}
    return {"video": Path(args.video).name, "repeats": args.repeats, "packages": packages, "median": medians}


def peak_rss_of(cmd: list[str]) -> tuple[float, float]:
    """Run a command; return (wall seconds, peak resident MiB of it and its children), sampled every 0.1 s."""
    start = time.perf_counter()
    process = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0

    def sample():
        nonlocal peak
        while process.poll() is None:
            try:
                tree = [process, *process.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass
            time.sleep(0.1)

    watcher = threading.Thread(target=sample)
    watcher.start()
    _, err = process.communicate()
    watcher.join()
    if process.returncode:
        raise RuntimeError(err.decode()[-2000:])
    return time.perf_counter() - start, peak / 2**20


def memory(args) -> dict:
    load_backbone(MODEL, PRETRAINED)  # the random checkpoint exists before measuring
    rows = []
    for video in args.videos:
        with tempfile.TemporaryDirectory() as out:
            seconds, peak = peak_rss_of(
                [
                    sys.executable,
                    "-m",
                    "vtg_pipeline",
                    "extract",
                    video,
                    "--out",
                    out,
                    "--model",
                    MODEL,
                    "--pretrained",
                    PRETRAINED,
                    "--store",
                    "features",
                    "--layers",
                    "4",
                    "--no-progress",
                ]
            )
            size = sum(p.stat().st_size for p in Path(out).rglob("*.safetensors"))
        info = probe(video)
        rows.append(
            {
                "video": Path(video).name,
                "duration_min": round(info.duration / 60, 1),
                "size": f"{info.width}x{info.height}",
                "wall_s": round(seconds, 1),
                "peak_rss_mib": round(peak),
                "feature_file_mib": round(size / 2**20),
            }
        )
    return {"store": "features", "layers": 4, "model": MODEL, "runs": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    videos = sub.add_parser("videos")
    videos.add_argument("--out", type=Path, default=Path("/tmp/bench"))
    sp = sub.add_parser("speed")
    sp.add_argument("video")
    sp.add_argument("--fps", type=float, default=0.5)
    mem = sub.add_parser("memory")
    mem.add_argument("videos", nargs="+")
    dec = sub.add_parser("decode")
    dec.add_argument("video")
    dec.add_argument("--fps", type=float, default=0.5)
    dec.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.command == "videos":
        make_videos(args.out)
        return
    result = {"speed": speed, "memory": memory, "decode": decode}[args.command](args)
    OUT.mkdir(exist_ok=True)
    (OUT / f"extract_{args.command}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
