"""Run the tests against the lowest release of every dependency that pyproject.toml allows.

    python bench/dependency_floors.py --venv /tmp/floor            # constraints, a fresh venv, then the suite
    python bench/dependency_floors.py --venv /tmp/floor --print    # only print the constraints (Python 3.11+: tomllib)

Each ``name>=X`` of ``[project] dependencies`` is pinned to the lowest non-pre-release the package index has at or
above X (``pip index versions``). torch and torchvision stay at the Makefile's builds: this machine's pip caps them.
A floor that cannot resolve, or a test that fails at the floors, means the floor in pyproject.toml is wrong.
docs/BENCHMARKS.md ("Dependencies") records the last run.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import tomllib
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
KEPT = {"torch": "torch==2.14.1", "torchvision": "torchvision==0.29.1"}


def floors() -> list[str]:
    """``name==lowest`` for every direct dependency with a ``>=`` floor (torch and torchvision: the Makefile's)."""
    pins = []
    for requirement in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        name, floor = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[.*\])?>=([0-9.]+)", requirement).groups()
        if name in KEPT:
            pins.append(KEPT[name])
            continue
        listing = subprocess.run([sys.executable, "-m", "pip", "index", "versions", name], capture_output=True, text=True, check=True)
        versions = listing.stdout.split("Available versions:")[1].splitlines()[0].split(",")
        pins.append(f"{name}=={min(v for v in map(Version, versions) if v >= Version(floor) and not v.is_prerelease)}")
    return pins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, default=Path("/tmp/floor"))
    parser.add_argument("--print", action="store_true", help="print the constraints and stop")
    args = parser.parse_args()
    pins = floors()
    print("\n".join(pins))
    if args.print:
        return
    constraints = args.venv.with_suffix(".constraints.txt")
    constraints.write_text("\n".join(pins) + "\n")
    python = args.venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(args.venv)], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", *KEPT.values()], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "-c", constraints, "-e", f"{ROOT}[dev]"], check=True)
    sys.exit(subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=ROOT).returncode)


if __name__ == "__main__":
    main()
