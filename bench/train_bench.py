"""Training step time and peak memory: cached features versus frames through an online ViT-B-32.

    python bench/train_bench.py                       # batch 8 and 32, both modes, -> bench/out/train_step.json
    python bench/train_bench.py --device cuda --precision bf16   # on a GPU, autocast on the side network
    python bench/train_bench.py --one features 8      # a single configuration (used internally)

Each configuration runs in its own process (clean peak memory): the paper's
side network (dims 256, K=4) on T clips per video with random inputs of the
right shapes, AdamW, a full forward/backward/step. ``frames`` mode also runs
the frozen ViT-B-32 (random weights, same compute) on uint8 frames under
inference mode inside the step. On CUDA the time is taken after a synchronize
and peak memory is also reported as the allocator's peak (``peak_gpu_mib``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch

OUT = Path(__file__).parent / "out"
CLIPS = 32  # frames per video: a 64 s video at 0.5 fps
QUERY_TOKENS = 12


def one(mode: str, batch: int, steps: int, device: str, precision: str) -> dict:
    from vtg_pipeline.backbone import load_backbone
    from vtg_pipeline.losses import LossConfig, grounding_losses
    from vtg_pipeline.models import ModelConfig, create_model

    torch.manual_seed(0)
    dev = torch.device(device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    backbone = load_backbone("ViT-B-32", "random:0", layers=4, device=dev, precision=precision)
    model = create_model(ModelConfig(vision_width=backbone.spec.vision_width, text_width=backbone.spec.text_width)).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)
    frames = torch.randint(0, 256, (batch, CLIPS, 3, 224, 224), dtype=torch.uint8)  # host memory, as decoded
    cached = torch.randn(batch, CLIPS, 4, 50, 768).half()  # host memory, as read from the store
    query = torch.randn(batch, QUERY_TOKENS, 4, 512, device=dev)
    video_mask = torch.ones(batch, CLIPS, dtype=torch.bool, device=dev)
    query_mask = torch.ones(batch, QUERY_TOKENS, dtype=torch.bool, device=dev)
    windows = [torch.tensor([[10.0, 30.0]], device=dev)] * batch
    saliency = torch.zeros(batch, CLIPS, device=dev)
    saliency[:, 5:15] = 1.0
    positive = torch.full((batch,), 8, device=dev)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        if mode == "frames":
            states = backbone.encode_frames(frames.flatten(0, 1))
            video = states.view(batch, CLIPS, *states.shape[1:]).clone()  # leave inference mode
        else:
            video = cached.to(dev, non_blocking=True).float()
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32):
            out = model(video, video_mask, query, query_mask)
            losses = grounding_losses(out, windows, torch.full((batch,), 0.5, device=dev), saliency, video_mask, positive, LossConfig())
        scaler.scale(sum(losses.values())).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step = min(times[1:]) if len(times) > 1 else times[0]
    row = {"mode": mode, "batch": batch, "device": device, "precision": precision, "clips_per_video": CLIPS,
           "step_s": round(step, 3), "videos_per_s": round(batch / step, 1)}
    if dev.type == "cuda":
        row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return row


def peak_rss(cmd: list[str]) -> tuple[dict, float]:
    process = psutil.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = 0
    while process.poll() is None:
        try:
            peak = max(peak, process.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    result = json.loads(process.stdout.read().strip().splitlines()[-1])
    return result, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", nargs=2, metavar=("MODE", "BATCH"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.steps, args.device, args.precision)))
        return
    on_gpu = args.device.startswith("cuda")
    rows = []
    for mode in ("features", "frames"):
        for batch in (8, 32):
            steps = args.steps if on_gpu or mode == "features" or batch == 8 else 2
            result, peak = peak_rss([sys.executable, __file__, "--one", mode, str(batch), "--steps", str(steps),
                                     "--device", args.device, "--precision", args.precision])
            result["peak_rss_mib"] = round(peak)
            rows.append(result)
            print(json.dumps(result), flush=True)
    OUT.mkdir(exist_ok=True)
    name = "train_step.json" if not on_gpu else f"train_step_{args.device.replace(':', '')}_{args.precision}.json"
    (OUT / name).write_text(json.dumps({"device": torch.cuda.get_device_name() if on_gpu else "cpu",
                                        "torch_threads": torch.get_num_threads(), "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
