"""The long fuzz run: every property of tests/test_fuzz.py and serve's hostile-request property, with new random
cases (not the suite's fixed ones) and many more of them.

    python bench/fuzz.py                      # 2,000 examples per property -> bench/out/fuzz.json and a table
    python bench/fuzz.py --examples 20000

Each property runs in pytest with Hypothesis' statistics on; the table gives the examples tried, how many were
invalid (filtered) and the time per property. A failure prints Hypothesis' smallest failing case and exits 1.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
PROPERTIES = [
    "tests/test_fuzz.py",
    "tests/test_serve.py::test_hostile_parameters_ranges_and_tokens_get_a_4xx_with_a_message_and_the_server_answers_on",
]
STATISTICS = re.compile(r"^(?P<test>\S+::\S+):\s*$|^\s*- during generate phase \((?P<seconds>[\d.]+) seconds\):\s*$|"
                        r"^\s*- (?P<passing>\d+) passing, (?P<failing>\d+) failing, and (?P<invalid>\d+) invalid test cases", re.M)  # fmt: skip


def statistics(output: str) -> list[dict]:
    """Per property: examples passing, failing and invalid, and generate-phase seconds, from --hypothesis-show-statistics."""
    rows, current = [], None
    for match in STATISTICS.finditer(output):
        if match["test"]:
            current = {"property": match["test"].split("::", 1)[1], "seconds": 0.0}
            rows.append(current)
        elif match["seconds"] and current is not None:
            current["seconds"] += float(match["seconds"])
        elif match["passing"] and current is not None:
            for key in ("passing", "failing", "invalid"):
                current[key] = current.get(key, 0) + int(match[key])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=2000, help="examples per property (default 2,000)")
    args = parser.parse_args()
    env = {**os.environ, "VTG_FUZZ_EXAMPLES": str(args.examples), "VTG_FUZZ_RANDOM": "1"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--hypothesis-show-statistics", *PROPERTIES],
                          cwd=ROOT, env=env, capture_output=True, text=True)  # fmt: skip
    rows = statistics(done.stdout)
    summary = {"examples_per_property": args.examples, "exit": done.returncode, "seconds": round(time.perf_counter() - started, 1),
               "properties": rows}  # fmt: skip
    OUT.mkdir(exist_ok=True)
    (OUT / "fuzz.json").write_text(json.dumps(summary, indent=2))
    print("| property | passing | failing | invalid | seconds |\n|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['property']} | {row.get('passing', 0):,} | {row.get('failing', 0)} | {row.get('invalid', 0):,} | {row['seconds']:.1f} |"
        )
    print(f"\n{len(rows)} properties, {summary['seconds']} s, pytest exit {done.returncode}")
    if done.returncode:
        print(done.stdout[-6000:], file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
