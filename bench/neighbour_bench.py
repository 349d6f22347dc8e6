"""Training beside a busy neighbour (issue 15): the step time alone and beside a second training process.

    python bench/neighbour_bench.py --data runs/library/short/data                       # -> bench/out/neighbour.json
    python bench/neighbour_bench.py --data runs/library/short/data --base /tmp/base      # also the package in BASE (another commit)

A worker (``--worker``) builds the training run of ``configs/synthetic.yaml`` on ``--data`` (vtg-tiny features,
R² model, batch 8: the learning check's small steps, where threads that wait by spinning cost most) and times
``--steps`` training steps (data, forward, losses, backward, AdamW) after ``--warmup``, as ``train`` runs them. It
reports the median step time and the process's CPU seconds per step. A neighbour is the same worker with no end,
started first, killed after the measurement. Scenarios: ``alone`` and ``neighbour``, for this checkout's package and,
with ``--base``, for the one in BASE (``PYTHONPATH=BASE``), each worker in a fresh process with the environment it
would get from a shell (``--env KEY=VALUE`` adds to both). Needs the whole machine: nothing else may run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "out"
CONFIG = Path(__file__).parent.parent / "configs" / "synthetic.yaml"


def worker(args) -> None:
    import torch

    from vtg_pipeline.config import load_config  # the package first, as `vtg train` imports it: it sets up OpenMP
    from vtg_pipeline.training import batch_losses, build_run

    cfg = load_config(str(CONFIG), [f"data.root={args.data}", f"output_dir={args.run_dir}", "optim.epochs=1000"])
    run = build_run(cfg)
    model, optimizer, accelerator = run.model, run.optimizer, run.accelerator
    times, cpu, done = [], [], 0
    while args.forever or done < args.warmup + args.steps:
        for batch in run.train_loader:
            started, cpu_started = time.perf_counter(), time.process_time()
            losses, _ = batch_losses(model, batch, run.backbone, run.text_cache, cfg, accelerator)
            accelerator.backward(sum(losses.values()))
            optimizer.step()
            optimizer.zero_grad()
            if done >= args.warmup:
                times.append(time.perf_counter() - started)
                cpu.append(time.process_time() - cpu_started)
            done += 1
            if not args.forever and done >= args.warmup + args.steps:
                break
    print(
        json.dumps(
            {
                "step_ms": round(1000 * statistics.median(times), 1),
                "cpu_ms_per_step": round(1000 * statistics.median(cpu), 1),
                "threads": torch.get_num_threads(),
                "steps": len(times),
            }
        )
    )


def start_worker(args, base: str | None, forever: bool, run_dir: str) -> subprocess.Popen:
    env = dict(os.environ, **dict(kv.split("=", 1) for kv in args.env))
    if base:
        env["PYTHONPATH"] = base
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--data",
        args.data,
        "--run-dir",
        run_dir,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ] + (["--forever"] if forever else [])
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=base or None)


def measure(args, base: str | None, neighbour: bool) -> dict:
    other = start_worker(args, base, True, "/tmp/neighbour_bench/neighbour") if neighbour else None
    try:
        if other:
            time.sleep(args.neighbour_start)  # the neighbour is past its start-up and training
        process = start_worker(args, base, False, "/tmp/neighbour_bench/measured")
        out, _ = process.communicate()
    finally:
        if other:
            other.kill()
            other.wait()
    if process.returncode:
        raise SystemExit(f"the worker failed (exit status {process.returncode})")
    return {"code": base or "this checkout", "scenario": "neighbour" if neighbour else "alone", **json.loads(out.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a vtg synth folder with vtg-tiny features (train.jsonl, features/)")
    parser.add_argument("--base", default=None, help="a checkout of another commit to measure too")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--neighbour-start", type=float, default=20.0, help="seconds the neighbour runs before the measurement")
    parser.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--forever", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", default="/tmp/neighbour_bench/run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    args.data = os.path.abspath(args.data)
    rows = []
    for base in [None] + ([os.path.abspath(args.base)] if args.base else []):
        for neighbour in (False, True):
            rows.append(measure(args, base, neighbour))
            print(json.dumps(rows[-1]), flush=True)
        alone, beside = rows[-2]["step_ms"], rows[-1]["step_ms"]
        rows[-1]["slowdown"] = round(beside / alone, 2)
        print(json.dumps({"code": rows[-1]["code"], "slowdown beside a neighbour": rows[-1]["slowdown"]}), flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "neighbour.json").write_text(json.dumps({"env": args.env, "cores": os.cpu_count(), "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
