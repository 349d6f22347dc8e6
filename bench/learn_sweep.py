"""Train several configurations on one dataset, side by side, and tabulate their validation curves.

    python bench/learn_sweep.py --root /tmp/synth500 --out runs/sweep \\
        --run full= --run control='fixed_query="a disc does something"' --run k1=model.layers=1 \\
        [--config configs/synthetic.yaml] [--seeds 0 1 2] [--parallel 2] [--set optim.epochs=20 ...]
    python bench/learn_sweep.py --root /tmp/synth500 --out runs/ablation --configs configs/ablation/*.yaml --seeds 0 1 2

Each ``--run NAME=OVERRIDES`` (space-separated ``key=value``, may be empty) is
trained once per seed with ``vtg train --config CONFIG data.root=ROOT
output_dir=OUT/NAME[_sSEED] --set... OVERRIDES``; each ``--configs`` file is a
run named after the file, trained with that config. ``--parallel`` runs go at
once, sharing the machine's threads. A run whose ``val_predictions.jsonl``
exists is not trained again. The table (best and last value of each
``--metrics``, the first being the main one, mean and spread over seeds) is
printed as JSON and markdown and written to ``OUT/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

METRICS = ("MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP", "HL-min-VeryGood-Hit1")


def parse_run(text: str, config: Path) -> tuple[str, Path, list[str]]:
    name, _, overrides = text.partition("=")
    if not name or "/" in name:
        raise SystemExit(f"--run {text!r}: expected NAME=OVERRIDES")
    return name, config, shlex.split(overrides)


def train_one(args, name: str, config: Path, overrides: list[str], seed: int | None, threads: int) -> dict:
    tag = name if seed is None else f"{name}_s{seed}"
    out = args.out / tag
    cmd = [
        sys.executable,
        "-m",
        "vtg_pipeline",
        "train",
        "--config",
        str(config),
        f"data.root={args.root}",
        f"output_dir={out}",
        *args.set,
        *overrides,
        *([f"seed={seed}"] if seed is not None else []),
    ]
    start = time.perf_counter()
    if not (out / "val_predictions.jsonl").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        with open(args.out / f"{tag}.log", "w") as log:
            returncode = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        if returncode:
            return {"run": name, "seed": seed, "error": f"exit {returncode}, see {args.out / f'{tag}.log'}"}
    curve = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    main = args.metrics[0]
    best = max(curve, key=lambda row: row[main])
    return {
        "run": name,
        "seed": seed,
        "wall_s": round(time.perf_counter() - start),
        "command": shlex.join(cmd),
        "curve": [row[main] for row in curve],
        "best_epoch": best["epoch"],
        **{f"best {k}": best[k] for k in args.metrics},
        **{f"last {k}": curve[-1][k] for k in args.metrics},
    }


def summarize(rows: list[dict], metrics: list[str]) -> list[dict]:
    """Mean and spread (half the range) of each metric over a run's seeds."""
    table = []
    for name in dict.fromkeys(r["run"] for r in rows):
        group = [r for r in rows if r["run"] == name and "error" not in r]
        if not group:
            table.append({"run": name, "error": next(r["error"] for r in rows if r["run"] == name)})
            continue
        line = {"run": name, "seeds": len(group)}
        for key in [f"{when} {k}" for when in ("best", "last") for k in metrics]:
            values = [r[key] for r in group]
            line[key] = round(statistics.mean(values), 2)
            line[key + " spread"] = round((max(values) - min(values)) / 2, 2)
        table.append(line)
    return table


def markdown(table: list[dict], metrics: list[str]) -> str:
    """The table as markdown: mean ± spread over seeds of each metric at the last evaluation, then the best of the first."""
    head = ["run", "seeds", *[f"{k} (last)" for k in metrics], f"{metrics[0]} (best epoch)"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for line in table:
        if "error" in line:
            lines.append(f"| {line['run']} | {line['error']} |")
            continue
        cells = [f"{line[key]:.2f} ± {line[key + ' spread']:.2f}" for key in [*[f"last {k}" for k in metrics], f"best {metrics[0]}"]]
        lines.append(f"| `{line['run']}` | {line['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="dataset folder (data.root)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=Path("configs/synthetic.yaml"))
    parser.add_argument("--run", action="append", default=[], metavar="NAME=OVERRIDES")
    parser.add_argument("--configs", nargs="*", type=Path, default=[], help="config files, each a run named after the file")
    parser.add_argument("--metrics", nargs="+", default=list(METRICS), help="metrics to tabulate; the first picks the best epoch")
    parser.add_argument("--set", nargs="*", default=[], help="overrides given to every run")
    parser.add_argument("--seeds", type=int, nargs="*", default=None, help="train each run once per seed")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="threads per run (default: the cores shared by --parallel)")
    args = parser.parse_args()
    runs = [parse_run(r, args.config) for r in args.run] + [(path.stem, path, []) for path in args.configs]
    if not runs:
        raise SystemExit("nothing to train: give --run NAME=OVERRIDES or --configs FILE...")
    jobs = [(name, config, overrides, seed) for seed in (args.seeds or [None]) for name, config, overrides in runs]  # seed by seed
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.parallel)
    with ThreadPoolExecutor(args.parallel) as pool:
        rows = list(pool.map(lambda job: train_one(args, *job, threads), jobs))
    for row in rows:
        print(json.dumps({k: v for k, v in row.items() if k != "command"}), flush=True)
    table = summarize(rows, args.metrics)
    print(json.dumps(table, indent=1))
    print(markdown(table, args.metrics))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps({"runs": rows, "table": table}, indent=2))


if __name__ == "__main__":
    main()
