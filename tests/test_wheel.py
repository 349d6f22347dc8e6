"""The package as a user installs it: a wheel built from the sdist (so the sdist is complete), installed into a fresh
venv (not editable), then the whole path run from a folder outside the clone, training through `accelerate launch -m`."""

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def run(args: list, cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """The sdist and the wheel built from it, checked by twine."""
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT], cwd=ROOT)
    files = sorted(out.iterdir())
    assert sorted(f.suffix for f in files) == [".gz", ".whl"], files
    run([sys.executable, "-m", "twine", "check", "--strict", *files], cwd=out)
    return out


def test_the_wheel_holds_the_package_its_data_and_the_vtg_command(dist):
    [wheel] = dist.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "vtg_pipeline/model_configs/vtg-tiny.json" in names and "vtg_pipeline/models/__init__.py" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "train/", "extract/"))], "only the package ships"
    [entry_points] = [n for n in names if n.endswith("entry_points.txt")]
    assert "vtg = vtg_pipeline.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_a_wheel_install_runs_synth_extract_train_and_ground_outside_the_clone(dist, tmp_path, backbone_cache):
    [wheel] = dist.glob("*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index", wheel], cwd=tmp_path)
    # The dependencies come from this environment's site-packages, added as a plain path: its .pth files (the clone's
    # editable install among them) are not run, so `vtg_pipeline` can only come from the wheel.
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": "", "VTG_CACHE": str(backbone_cache)}
    installed = run([python, "-c", "import vtg_pipeline; print(vtg_pipeline.__file__)"], cwd=work, env=env)
    assert Path(installed.strip()).is_relative_to(site), installed

    assert "ground" in run(["vtg", "--help"], cwd=work, env=env)
    run(["vtg", "synth", "--out", "data", "--videos", "4", "--seed", "0"], cwd=work, env=env)
    tiny = ["--model", "vtg-tiny", "--pretrained", "random:0", "--no-progress"]
    run(["vtg", "extract", "data/videos", "--out", "data/features", *tiny], cwd=work, env=env)
    launch = [python, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no"]
    run([*launch, "--dynamo_backend", "no", "-m", "vtg_pipeline", "train", "data.root=data", "output_dir=run", "backbone.name=vtg-tiny",
         "backbone.pretrained=random:0", "optim.epochs=1"], cwd=work, env=env)  # fmt: skip
    assert (work / "run" / "best" / "model.safetensors").is_file()
    run(["vtg", "ground", "--checkpoint", "run/best", "--queries", "data/val_queries.jsonl", "--features", "data/features",
         "--out", "predictions.jsonl"], cwd=work, env=env)  # fmt: skip
    predictions = [json.loads(line) for line in (work / "predictions.jsonl").read_text().splitlines()]
    queries = (work / "data" / "val_queries.jsonl").read_text().splitlines()
    assert len(predictions) == len(queries) and all(p["pred_relevant_windows"] for p in predictions)
