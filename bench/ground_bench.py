"""Grounding speed and memory (`vtg ground`).

    python bench/ground_bench.py videos --out /tmp/gbench            # 10-min, 1-h and 2-h 320x180 test videos (ffmpeg CLI)
    python bench/ground_bench.py queries /tmp/gbench/ten_min.mp4     # 1, 10, 100 queries on one encoded video
    python bench/ground_bench.py scale /tmp/gbench/ten_min.mp4 /tmp/gbench/one_hour.mp4 /tmp/gbench/two_hours.mp4
    python bench/ground_bench.py queries /tmp/gbench/ten_min.mp4 --device cuda   # on a GPU

ViT-B-32 with random weights (`random:0`, the compute of the real model) and
the paper-sized side network (dims 256, K = 4), untrained: speed does not
depend on the weights. Results are printed as JSON and written to bench/out/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from train_bench import peak_rss

from vtg_pipeline.backbone import load_backbone
from vtg_pipeline.checkpoint import save_checkpoint
from vtg_pipeline.config import load_config
from vtg_pipeline.grounder import Grounder
from vtg_pipeline.models import create_model

OUT = Path(__file__).parent / "out"
VIDEOS = {"ten_min.mp4": 600, "one_hour.mp4": 3600, "two_hours.mp4": 7200}
QUERIES = [f"a person does thing number {i} in the kitchen" for i in range(100)]


def make_videos(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, seconds in VIDEOS.items():
        subprocess.run(
            [
                "ffmpeg",
                "-y",
                "-loglevel",
                "error",
                "-f",
                "lavfi",
                "-i",
                f"testsrc2=size=320x180:rate=4:duration={seconds}",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
                str(out / name),
            ],
            check=True,
        )
        print(out / name, flush=True)


def make_grounder(tmp: Path, device: str = "cpu", overrides: tuple[str, ...] = ()) -> Grounder:
    """An untrained ViT-B-32 checkpoint in ``tmp`` (config ``overrides`` applied), loaded back as a user would."""
    cfg = load_config(None, ["backbone.name=ViT-B-32", "backbone.pretrained=random:0", f"output_dir={tmp}", *overrides])
    backbone = load_backbone(cfg.backbone.name, cfg.backbone.pretrained, cfg.backbone.layers)
    cfg.model.vision_width, cfg.model.text_width = backbone.spec.vision_width, backbone.spec.text_width
    torch.manual_seed(0)
    save_checkpoint(tmp / "best", create_model(cfg.model), cfg, backbone, {})
    return Grounder.from_pretrained(tmp / "best", device)


def queries(video: str, device: str = "cpu") -> dict:
    """Encode once, then time the side network for 1, 10 and 100 queries (best of 2)."""
    with tempfile.TemporaryDirectory() as tmp:
        grounder = make_grounder(Path(tmp), device)
        start = time.perf_counter()
        files, failures = grounder.encode_videos([str(Path(video).resolve())], Path(tmp) / "store")
        encode = time.perf_counter() - start
        feature_file = next(iter(files.values()))
        rows = []
        for n in (1, 10, 100):
            times = []
            for _ in range(2):
                start = time.perf_counter()
                grounder.ground_features(feature_file, QUERIES[:n])
                times.append(time.perf_counter() - start)
            rows.append({"queries": n, "side_network_s": round(min(times), 3), "queries_per_s": round(n / min(times), 1)})
    one, hundred = rows[0]["side_network_s"], rows[-1]["side_network_s"]
    return {
        "video": video,
        "device": str(grounder.backbone.device),
        "encode_s": round(encode, 1),
        "runs": rows,
        "hundred_vs_one": round(hundred / one, 1),
        "end_to_end_100_vs_100x1": round((encode + hundred) / (100 * (encode + one)), 3),
    }


def one_scale(video: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        grounder = make_grounder(Path(tmp))
        start = time.perf_counter()
        results = grounder.ground_many([(video, q) for q in QUERIES[:10]], Path(tmp) / "store")
        seconds = time.perf_counter() - start
    assert all("error" not in r for r in results), results[0]
    return {"video": video, "duration_s": results[0]["duration"], "queries": 10, "wall_s": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("videos", "queries", "scale", "one-scale"))
    parser.add_argument("paths", nargs="*")
    parser.add_argument("--out", type=Path, default=Path("/tmp/gbench"))
    parser.add_argument("--device", default="cpu", help="queries: torch device of the backbone and side network")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    if args.what == "videos":
        make_videos(args.out)
    elif args.what == "queries":
        result = queries(args.paths[0], args.device)
        print(json.dumps(result))
        (OUT / ("ground_queries.json" if args.device == "cpu" else "ground_queries_cuda.json")).write_text(json.dumps(result, indent=2))
    elif args.what == "one-scale":
        print(json.dumps(one_scale(args.paths[0])))
    else:
        rows = []
        for video in args.paths:
            result, peak = peak_rss([sys.executable, __file__, "one-scale", video])
            result["peak_rss_mib"] = round(peak)
            rows.append(result)
            print(json.dumps(result), flush=True)
        (OUT / "ground_scale.json").write_text(json.dumps({"device": "cpu", "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
