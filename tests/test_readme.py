"""Every command block of the README runs as written, after `make demo` and `source .venv/bin/activate`.

The test builds a small stand-in for `make demo`'s outputs (`demo/data`: the 4-video synthetic dataset with its
features; `demo/run/best`: a 1-epoch checkpoint; `demo/predictions.jsonl`), in a scratch folder that links the
project's Makefile, configs, entry points and `.venv`. Each ```bash block then runs in bash with the venv's `bin/`
first on PATH (what `activate` does), each ```python block with the venv's Python, all from that folder. A block
preceded by ``<!-- readme-test: skip (reason) -->`` needs something a test machine lacks (real weights, GPUs,
another dataset) and is skipped with its reason. The lines `make demo` and `make test` stand for the fixture and
for this suite, and are not run again.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vtg_pipeline.config import load_config
from vtg_pipeline.grounder import Grounder, read_requests
from vtg_pipeline.training import train

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(?:<!-- readme-test: skip \((?P<skip>[^)]*)\) -->\n)?```(?P<lang>bash|python)\n(?P<body>.*?)```", re.S)
STANDS_FOR = {"make demo", "make test"}  # the fixture builds what `make demo` makes; `make test` is this suite
LINKED = ("Makefile", "pyproject.toml", "configs", "extract", "train", ".venv")


def readme_blocks() -> list:
    blocks = []
    for match in BLOCK.finditer((ROOT / "README.md").read_text()):
        line = (ROOT / "README.md").read_text()[: match.start("body")].count("\n") + 1
        marks = [pytest.mark.skip(reason=match["skip"])] if match["skip"] else []
        blocks.append(pytest.param(match["lang"], match["body"], id=f"README.md:{line}", marks=marks))
    return blocks


@pytest.fixture(scope="module")
def demo_project(synth_root, tmp_path_factory):
    """A folder laid out as the project after `make demo`, with a small demo."""
    project = tmp_path_factory.mktemp("readme") / "project"
    project.mkdir()
    for name in LINKED:
        (project / name).symlink_to(ROOT / name)
    data = project / "demo" / "data"
    shutil.copytree(synth_root, data, ignore=shutil.ignore_patterns("run"))
    run = project / "demo" / "run"
    train(
        load_config(
            ROOT / "configs" / "synthetic.yaml",
            [f"data.root={data}", f"output_dir={run}", "optim.epochs=1", "optim.batch_size=4", "model.dims=32", "model.heads=4"],
        )
    )
    results = Grounder.from_pretrained(run / "best").ground_many(read_requests(data / "val_queries.jsonl"), data / "features")
    (project / "demo" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    return project


def activated_env() -> dict:
    """The environment `source .venv/bin/activate` gives: the venv's bin/ first on PATH."""
    venv = Path(sys.prefix)
    return {**os.environ, "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.parametrize("lang, body", readme_blocks())
def test_readme_block_runs_as_written(lang, body, demo_project):
    if lang == "bash":
        script = "\n".join(line for line in body.splitlines() if line.split("#")[0].strip() not in STANDS_FOR)
        command = ["bash", "-euo", "pipefail", "-c", script]
    else:
        command = [sys.executable, "-c", body]
    result = subprocess.run(command, cwd=demo_project, env=activated_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{body}\nexit {result.returncode}\n{result.stderr[-3000:]}"


def test_the_readme_says_to_activate_the_venv_before_its_first_command():
    text = (ROOT / "README.md").read_text()
    first = BLOCK.search(text)["body"]
    assert "source .venv/bin/activate" in first.splitlines()[1], "activation belongs right after make demo"
