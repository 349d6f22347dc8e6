"""Start-up time of the light `vtg` commands, and what they still import.

    python bench/cli_startup.py              # median of 5 runs each -> markdown table, bench/out/cli_startup.json
    python bench/cli_startup.py --runs 11

Times, as a user runs them, `vtg --help`, `vtg eval --help`, `vtg eval` on a one-query QVHighlights pair (with
saliency, so sklearn loads) and on a Charades-style pair (no saliency), and `vtg inspect` on a one-file store:
wall seconds from start to exit, median of --runs. Then one `python -X importtime` run per command gives the
top-level imports that cost the most (cumulative ms), i.e. what is left to make lazy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vtg_pipeline.features import StreamingSafetensorsWriter

OUT = Path(__file__).parent / "out"


def fixtures(folder: Path) -> dict[str, list[str]]:
    """The commands to time (argv after ``vtg``), with their input files written into ``folder``."""
    gt = {
        "qid": 1,
        "query": "q",
        "vid": "v",
        "duration": 10,
        "relevant_windows": [[2, 4]],
        "relevant_clip_ids": [1],
        "saliency_scores": [[4, 4, 4]],
    }
    pred = {"qid": 1, "query": "q", "vid": "v", "pred_relevant_windows": [[2, 4, 0.9]], "pred_saliency_scores": [0.1, 0.9, 0.2, 0.1, 0.1]}
    (folder / "gt.jsonl").write_text(json.dumps(gt) + "\n")
    (folder / "pred.jsonl").write_text(json.dumps(pred) + "\n")
    store = folder / "store"
    writer = StreamingSafetensorsWriter(
        store / "v.safetensors", {"timestamps": (np.float64, (2,))}, {"duration": "4.0", "layers": "[0, 1]", "fps": "0.5"}
    )
    writer.write("timestamps", 0, np.array([0.0, 2.0]))
    writer.commit()
    pair = ["--pred", str(folder / "pred.jsonl"), "--gt", str(folder / "gt.jsonl")]
    return {
        "vtg --help": ["--help"],
        "vtg eval --help": ["eval", "--help"],
        "vtg eval (qvhighlights)": ["eval", *pair],
        "vtg eval (charades)": ["eval", *pair, "--dataset", "charades"],
        "vtg inspect": ["inspect", str(store)],
    }


def vtg() -> list[str]:
    """The console script next to this Python, else ``python -m vtg_pipeline``."""
    script = Path(sys.executable).parent / "vtg"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vtg_pipeline"]


def wall_seconds(argv: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([*vtg(), *argv], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def heaviest_imports(argv: list[str], top: int = 4) -> list[tuple[str, float]]:
    """The ``top`` top-level imports of ``vtg argv`` by cumulative time (ms), from ``python -X importtime``."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "vtg_pipeline", *argv], check=True, capture_output=True, text=True)
    rows = []
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|")
            if cumulative.strip().isdigit() and not name.startswith("  "):  # one space: a top-level import
                rows.append((name.strip(), int(cumulative) / 1000))
    return sorted(rows, key=lambda row: -row[1])[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs per command; the median is reported (default 5)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv in fixtures(Path(tmp)).items():
            times = wall_seconds(argv, args.runs)
            rows.append(
                {
                    "command": name,
                    "median_s": round(statistics.median(times), 3),
                    "min_s": round(min(times), 3),
                    "max_s": round(max(times), 3),
                    "heaviest_imports_ms": heaviest_imports(argv),
                }
            )
    print(f"| command | median s ({args.runs} runs) | min s | max s | heaviest imports (cumulative ms) |")
    print("|---|---|---|---|---|")
    for row in rows:
        imports = ", ".join(f"{name} {ms:.0f}" for name, ms in row["heaviest_imports_ms"])
        print(f"| `{row['command']}` | {row['median_s']:.2f} | {row['min_s']:.2f} | {row['max_s']:.2f} | {imports} |")
    OUT.mkdir(exist_ok=True)
    (OUT / "cli_startup.json").write_text(json.dumps({"runs": args.runs, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
