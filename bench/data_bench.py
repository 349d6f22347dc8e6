"""The training data path (issue 15): items/s that the DataLoader delivers from a ViT-B/32-sized feature store.

    python bench/data_bench.py make --store /tmp/data_bench --videos 160     # 75 frames per video, both stores, ~5 GB
    python bench/data_bench.py read --store /tmp/data_bench                   # -> bench/out/data_path.json
    python bench/data_bench.py make --store /tmp/data_bench_fp8 --videos 160 --states fp8   # the compact layout
    python bench/data_bench.py read --store /tmp/data_bench_fp8 --modes features --out bench/out/data_path_fp8.json
    python bench/data_bench.py read --store /tmp/data_bench --modes features --layers 1   # a model of model.layers=1

``make`` writes a feature store as ``vtg extract --store both`` would for ViT-B-32 at 0.5 fps (K = 4 layers of 50
tokens x 768, fp16; frames 3 x 224 x 224 uint8) with random contents (one video's, in every file), and ``train.jsonl`` with one query per video.
``read`` builds the training dataset (``data.load_split``) in ``features`` and ``frames`` mode and times a
DataLoader (batch 32, ``data.collate``, the training loader's settings) over ``--batches`` batches, with 0, 1 and
2 workers, from a warm page cache (every file read once before) and a cold one (``posix_fadvise(DONTNEED)`` on
every file before the run: the kernel drops the clean pages, no root needed). It reports items/s, MB/s of the
tensors delivered (the states as stored: fp16, or float8 bytes and scales that the training step dequantises on
its device), the stored MB per item read from disk, and the disk bandwidth a GPU step would need at batch 32 if a step took ``--gpu-step-ms`` (the
rate the loader would have to keep up).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "out"
FPS, FRAMES, LAYERS, TOKENS, WIDTH, SIZE = 0.5, 75, 4, 50, 768, 224


def backbone():
    from vtg_pipeline.backbone import load_backbone

    return load_backbone("ViT-B-32", "random:0", layers=LAYERS)


def make(args) -> None:
    import torch

    from vtg_pipeline.extract import ExtractConfig, quantize_states, run_settings
    from vtg_pipeline.features import FP8, StreamingSafetensorsWriter, feature_path

    store, rng = Path(args.store), np.random.default_rng(0)
    settings = run_settings(
        ExtractConfig(
            video_dirs=[],
            out=str(store / "features"),
            fps=FPS,
            model="ViT-B-32",
            pretrained="random:0",
            layers=LAYERS,
            store="both",
            states=args.states,
        ),
        backbone(),
    )
    frames = rng.integers(0, 256, (FRAMES, 3, SIZE, SIZE), dtype=np.uint8)  # the same contents in every file: reads cost the same
    vision = rng.standard_normal((FRAMES, LAYERS, TOKENS, WIDTH), dtype=np.float32).astype(np.float16)
    scale = None
    if args.states == "fp8":
        vision, scale = quantize_states(torch.from_numpy(vision))
    lines = []
    for i in range(args.videos):
        vid = f"video_{i:04d}"
        path = feature_path(store / "features", vid)
        tensors = {
            "timestamps": (np.float64, (FRAMES,)),
            "frames": (np.uint8, (FRAMES, 3, SIZE, SIZE)),
            "vision": (FP8 if scale is not None else np.float16, (FRAMES, LAYERS, TOKENS, WIDTH)),
        }
        if scale is not None:
            tensors["vision_scale"] = (np.float16, (FRAMES, LAYERS, TOKENS))
        writer = StreamingSafetensorsWriter(path, tensors, {**settings, "duration": repr(FRAMES / FPS), "video_id": vid})
        writer.write("timestamps", 0, (np.arange(FRAMES) + 0.5) / FPS)
        writer.write("frames", 0, frames)
        writer.write("vision", 0, vision)
        if scale is not None:
            writer.write("vision_scale", 0, scale)
        writer.commit()
        start = float(rng.integers(0, FRAMES / FPS - 20))
        lines.append(
            json.dumps({"qid": i, "query": f"query {i}", "duration": FRAMES / FPS, "vid": vid, "relevant_windows": [[start, start + 10.0]]})
        )
    (store / "train.jsonl").write_text("\n".join(lines) + "\n")
    print(
        json.dumps(
            {"store": str(store), "videos": args.videos, "bytes": sum(p.stat().st_size for p in (store / "features").glob("*.safetensors"))}
        )
    )


def drop_page_cache(files: list[Path]) -> None:
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def stored_bytes(file: Path, mode: str) -> int:
    """Bytes of one file's tensors that ``mode`` reads (vision and its scales, or frames)."""
    from safetensors import safe_open

    sizes = {"F16": 2, "F8_E4M3": 1, "U8": 1}
    with safe_open(str(file), framework="pt") as f:
        names = ["vision", "vision_scale"] if mode == "features" else ["frames"]
        return sum(int(np.prod(f.get_slice(n).get_shape())) * sizes[f.get_slice(n).get_dtype()] for n in names if n in f.keys())


def read(args) -> None:
    import torch
    from torch.utils.data import DataLoader

    from vtg_pipeline.data import DataConfig, collate, load_split

    store = Path(args.store)
    files = sorted((store / "features").glob("*.safetensors"))
    model = backbone()
    rows = []
    for mode in args.modes:
        dataset = load_split(
            DataConfig(root=str(store), mode=mode, fps=FPS), "train", model, needed=(slice(-args.layers, None), slice(None))
        )
        for workers in args.workers:
            for cache in ("warm", "cold"):
                if cache == "cold":
                    drop_page_cache(files)
                else:
                    for file in files:  # every page once into the cache
                        with open(file, "rb") as f:
                            while f.read(1 << 24):
                                pass
                loader = DataLoader(
                    dataset,
                    batch_size=args.batch,
                    shuffle=True,
                    collate_fn=lambda items: collate(items, FPS),
                    num_workers=workers,
                    generator=torch.Generator().manual_seed(0),
                )
                started, items, nbytes = time.perf_counter(), 0, 0
                for number, batch in enumerate(loader, 1):
                    items += len(batch["records"])
                    nbytes += sum(batch[k].numel() * batch[k].element_size() for k in ("video", "video_scale") if k in batch)
                    if number == args.batches:
                        break
                seconds = time.perf_counter() - started
                item_mb = nbytes / items / 1e6
                needed = args.batch / (args.gpu_step_ms / 1000)  # items/s a GPU step of that length consumes
                rows.append(
                    {
                        "mode": mode,
                        "layers": args.layers,
                        "workers": workers,
                        "cache": cache,
                        "items": items,
                        "items/s": round(items / seconds, 1),
                        "MB/s": round(nbytes / seconds / 1e6),
                        "MB per item": round(item_mb, 1),
                        "stored MB per item": round(stored_bytes(files[0], mode) / 1e6, 1),
                        f"GPU at {args.gpu_step_ms:g} ms/step needs items/s": round(needed),
                        "GPU needs MB/s": round(needed * item_mb),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    out = args.out or OUT / "data_path.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"store": str(store), "videos": len(files), "cpus": os.cpu_count(), "runs": rows}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make")
    p.add_argument("--store", required=True)
    p.add_argument("--videos", type=int, default=160)
    p.add_argument("--states", choices=("fp16", "fp8"), default="fp16", help="vtg extract --states")
    p.set_defaults(func=make)
    p = sub.add_parser("read")
    p.add_argument("--store", required=True)
    p.add_argument("--modes", nargs="+", default=["features", "frames"])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--layers", type=int, default=LAYERS, help="model.layers: the last this many stored layers are read")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--gpu-step-ms", type=float, default=30.0, help="a GPU training step at batch 32 (issue 15: tens of ms)")
    p.add_argument("--out", type=Path, default=None, help="default: bench/out/data_path.json")
    p.set_defaults(func=read)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
