"""Training step time and peak memory of the side network (issue 15), and cached features versus online frames.

    python bench/train_bench.py                                   # -> bench/out/train_step.json
    python bench/train_bench.py --save-grads DIR                  # also the first step's loss and gradients, per run
    PYTHONPATH=BASE python bench/train_bench.py --variants default --save-grads DIR   # the same for the package in BASE
    python bench/train_bench.py --against DIR                     # compare loss and gradients with DIR's
    python bench/train_bench.py --modes features frames --clips 32 --query-tokens 12 --variants default   # features vs frames
    python bench/train_bench.py --device cuda --precision bf16    # on a GPU, autocast on the side network
    python bench/train_bench.py --queries-per-video 4             # batches of 4 queries per video (data.group_by_video)

Default shapes are issue 15's: the paper's side network (dims 256, K = 4, ViT-B/32 widths, its dropout), T = 75
clips per video, L = 16 query tokens, batch 8 and 32, in training mode: a full forward, the grounding losses,
backward and an AdamW step. Each configuration runs in its own process (clean peak memory), with inputs of the
right shapes from a fixed seed; the video states reach the model as ``training.video_states`` gives them (fp16 from
the store, in features mode). ``frames`` mode also runs the frozen ViT-B-32 (random weights, same compute) on uint8
frames inside the step. ``--queries-per-video G``: a batch of B queries holds B / G videos, each read and mapped once
(``data.group_by_video``). Variants: ``default``, and ``memory_saving`` (``optim.memory_saving``). The step time is the
fastest of ``--steps`` after the first; peak RSS is sampled every 50 ms; on CUDA the allocator's peak too.

``--save-grads DIR`` writes the first step's loss and every gradient to ``DIR/<mode>_b<batch>_<variant>.safetensors``;
``--against DIR`` reports the largest absolute difference of the loss and of the gradients from ``DIR``'s file of the
same mode and batch (``default`` variant): run it once with ``PYTHONPATH`` set to a checkout of the commit to compare
with. Dropout draws its masks from the RNG: compare with ``--dropout 0`` (in both runs) when the two commits draw
them differently. Timings mean something only on otherwise idle cores.
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


def one(mode: str, batch: int, variant: str, args) -> dict:
    from safetensors.torch import save_file

    from vtg_pipeline.backbone import load_backbone
    from vtg_pipeline.losses import LossConfig, grounding_losses
    from vtg_pipeline.models import ModelConfig, create_model
    from vtg_pipeline.training import video_states

    torch.manual_seed(0)
    dev, clips, tokens = torch.device(args.device), args.clips, args.query_tokens
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    backbone = load_backbone("ViT-B-32", "random:0", layers=4, device=dev, precision=args.precision)
    widths = {"vision_width": backbone.spec.vision_width, "text_width": backbone.spec.text_width}
    model = create_model(ModelConfig(**widths, **({"dropout": args.dropout} if args.dropout is not None else {}))).to(dev).train()
    model.r2.memory_saving = variant == "memory_saving"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)
    videos = batch // args.queries_per_video
    if mode == "frames":
        inputs = {"video": torch.randint(0, 256, (videos, clips, 3, 224, 224), dtype=torch.uint8)}  # host memory, as decoded
    else:
        inputs = {"video": torch.randn(videos, clips, 4, 50, 768).half()}  # host memory, as read from the store
    shared = {"video_index": torch.arange(videos, device=dev).repeat_interleave(args.queries_per_video)} if videos < batch else {}
    query = torch.randn(batch, tokens, 4, 512, device=dev)
    video_mask = torch.ones(batch, clips, dtype=torch.bool, device=dev)
    query_mask = torch.ones(batch, tokens, dtype=torch.bool, device=dev)
    windows = [torch.tensor([[10.0, 30.0]], device=dev)] * batch
    saliency = torch.zeros(batch, clips, device=dev)
    saliency[:, 5:15] = 1.0
    positive = torch.full((batch,), 8, device=dev)
    times = []
    for step in range(args.steps):
        start = time.perf_counter()
        video = video_states(inputs, backbone, mode, dev)
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32):
            out = model(video, video_mask, query, query_mask, **shared)  # without video_index: a commit before it runs this too
            losses = grounding_losses(out, windows, torch.full((batch,), 0.5, device=dev), saliency, video_mask, positive, LossConfig())
        loss = sum(losses.values())
        scaler.scale(loss).backward()
        if step == 0 and args.save_grads:
            grads = {name: p.grad.detach().float().cpu() for name, p in model.named_parameters() if p.grad is not None}
            args.save_grads.mkdir(parents=True, exist_ok=True)
            save_file(
                {"loss": loss.detach().float().cpu().reshape(1), **grads}, str(args.save_grads / f"{mode}_b{batch}_{variant}.safetensors")
            )
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step_s = min(times[1:]) if len(times) > 1 else times[0]
    row = {
        "mode": mode,
        "batch": batch,
        "queries_per_video": args.queries_per_video,
        "variant": variant,
        "dropout": model.cfg.dropout,
        "device": args.device,
        "precision": args.precision,
        "clips": clips,
        "query_tokens": tokens,
        "step_s": round(step_s, 3),
        "videos_per_s": round(batch / step_s, 1),
    }
    if dev.type == "cuda":
        row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return row


def peak_rss(cmd: list[str]) -> tuple[dict, float]:
    process = psutil.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak = 0
    while process.poll() is None:
        try:
            peak = max(peak, process.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    if process.returncode:
        raise SystemExit(f"{' '.join(cmd)}: exit status {process.returncode}")
    result = json.loads(process.stdout.read().strip().splitlines()[-1])
    return result, peak / 2**20


def differences(ours: Path, theirs: Path) -> dict:
    """Largest absolute differences of the loss and of the gradients between two --save-grads files."""
    from safetensors.torch import load_file

    a, b = load_file(str(ours)), load_file(str(theirs))
    if a.keys() != b.keys():
        return {"against": str(theirs), "error": f"different gradients: {sorted(a.keys() ^ b.keys())}"}
    grads = [name for name in a if name != "loss"]
    worst = max(grads, key=lambda name: (a[name] - b[name]).abs().max().item())
    return {
        "against": str(theirs),
        "loss": round(a["loss"].item(), 6),
        "loss_diff": (a["loss"] - b["loss"]).abs().item(),
        "grad_max_abs_diff": (a[worst] - b[worst]).abs().max().item(),
        "worst_grad": worst,
        "grad_max_abs": max(a[name].abs().max().item() for name in grads),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", nargs=3, metavar=("MODE", "BATCH", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--modes", nargs="+", default=["features"], choices=("features", "frames"))
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--variants", nargs="+", default=["default", "memory_saving"], choices=("default", "memory_saving"))
    parser.add_argument("--clips", type=int, default=75, help="frames per video (75: a 150 s QVHighlights video at 0.5 fps)")
    parser.add_argument("--query-tokens", type=int, default=16)
    parser.add_argument("--queries-per-video", type=int, default=1, help="queries per video in a batch (divides every batch)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument(
        "--dropout",
        type=float,
        default=None,
        help="model.dropout (default: the paper's, 0.5); 0 for --against a commit whose dropout draws other masks",
    )
    parser.add_argument("--save-grads", type=Path, default=None)
    parser.add_argument("--against", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="default: bench/out/train_step[_DEVICE_PRECISION].json")
    args = parser.parse_args()
    if any(batch % args.queries_per_video for batch in args.batches):
        parser.error(f"--queries-per-video {args.queries_per_video} must divide every batch size {args.batches}")
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.one[2], args)))
        return
    rows = []
    for mode in args.modes:
        for batch in args.batches:
            for variant in args.variants:
                cmd = [
                    sys.executable,
                    __file__,
                    "--one",
                    mode,
                    str(batch),
                    variant,
                    "--clips",
                    str(args.clips),
                    "--query-tokens",
                    str(args.query_tokens),
                    "--queries-per-video",
                    str(args.queries_per_video),
                    "--steps",
                    str(args.steps),
                    "--device",
                    args.device,
                    "--precision",
                    args.precision,
                ]
                cmd += ["--dropout", str(args.dropout)] if args.dropout is not None else []
                result, peak = peak_rss(cmd + (["--save-grads", str(args.save_grads)] if args.save_grads else []))
                result["peak_rss_mib"] = round(peak)
                if args.save_grads and args.against:
                    result.update(
                        differences(
                            args.save_grads / f"{mode}_b{batch}_{variant}.safetensors",
                            args.against / f"{mode}_b{batch}_default.safetensors",
                        )
                    )
                rows.append(result)
                print(json.dumps(result), flush=True)
    on_gpu = args.device.startswith("cuda")
    out = args.out or OUT / ("train_step.json" if not on_gpu else f"train_step_{args.device.replace(':', '')}_{args.precision}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"device": torch.cuda.get_device_name() if on_gpu else "cpu", "torch_threads": torch.get_num_threads(), "runs": rows}, indent=2
        )
    )


if __name__ == "__main__":
    main()
