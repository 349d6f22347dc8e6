"""Crash safety of a training run: a kill at any file operation leaves a run that ``--resume`` finishes exactly.

A kill is injected in-process: the chosen call of a file operation (every rename, every tensor file write of
``best/`` and ``last/``) raises ``Killed``, which nothing in the code catches, before, halfway through (the file
cut to half its bytes) or after the operation. Each resumed run must end with the same weights, bit for bit, and
the same metrics.jsonl and log.csv rows as an uninterrupted run.
"""

import csv
import json
import os
import shutil
from pathlib import Path

import accelerate.checkpointing
import pytest
import torch
from safetensors.torch import load_file
from test_training import tiny_config

import vtg_pipeline.checkpoint as checkpoint
import vtg_pipeline.training as training
from vtg_pipeline.checkpoint import recover_folder, swap_in
from vtg_pipeline.training import ResumeError, train

SCHEDULE = ("optim.epochs=2", "optim.decay_epochs=[1]")  # the lr decays from the first step of the second epoch


class Killed(BaseException):
    """Stands for kill -9: an ``except Exception`` does not catch it and no code path expects it."""


# (owner, attribute, index of the path argument): the file operations of a run's checkpoint writes.
OPERATIONS = {
    "rename": (os, "replace", 1),
    "torch.save": (torch, "save", 1),
    "accelerate save": (accelerate.checkpointing, "save", 1),
    "best weights": (checkpoint, "save_tensors", 1),
}
# Per run of SCHEDULE: 8 renames, 4 torch.save calls (2 optimizer, 2 RNG), 4 Accelerate saves (2 weights, 2 optimizer),
# 1 best/ weights file (best/ is written at epoch 1 on this data; test_swap_is_recoverable_at_every_point covers a swap
# over an existing best/).
POINTS = (
    [("rename", n, when) for n in range(1, 9) for when in ("before", "after")]
    + [("torch.save", n, "during") for n in range(1, 5)]
    + [("accelerate save", n, "during") for n in range(1, 5)]
    + [("best weights", 1, "during")]
)


def inject_kill(monkeypatch, operation: str, call: int, when: str) -> None:
    owner, name, path_arg = OPERATIONS[operation]
    real, seen = getattr(owner, name), [0]

    def operation_with_kill(*args, **kwargs):
        seen[0] += 1
        if seen[0] != call:
            return real(*args, **kwargs)
        if when == "before":
            raise Killed
        real(*args, **kwargs)
        if when == "during":
            path = Path(args[path_arg])
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        raise Killed

    monkeypatch.setattr(owner, name, operation_with_kill)


def run_outputs(out: Path) -> dict:
    """What an exact resume must reproduce: final and best weights, evaluation rows, logged steps."""
    with open(out / "log.csv", newline="") as f:
        log = [(r["step"], r["epoch"], r["lr"], r["loss"]) for r in csv.DictReader(f)]
    return {
        "last": load_file(str(out / "last" / "model.safetensors")),
        "best": load_file(str(out / "best" / "model.safetensors")),
        "metrics": (out / "metrics.jsonl").read_text(),
        "log": log,
        "progress": json.loads((out / "last" / "progress.json").read_text()),
        "predictions": (out / "val_predictions.jsonl").read_text(),
    }


@pytest.fixture(scope="module")
def uninterrupted(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    train(tiny_config(synth_root, out, *SCHEDULE))
    return run_outputs(out)


def assert_same_run(got: dict, expected: dict) -> None:
    for name in ("last", "best"):
        assert got[name].keys() == expected[name].keys()
        differing = [k for k in expected[name] if not torch.equal(got[name][k], expected[name][k])]
        assert not differing, f"{name}/ weights differ from an uninterrupted run: {differing[:3]}"
    for name in ("metrics", "log", "progress", "predictions"):
        assert got[name] == expected[name], f"{name} differs from an uninterrupted run"


@pytest.mark.parametrize("operation, call, when", POINTS, ids=[f"{o}-{n}-{w}" for o, n, w in POINTS])
def test_kill_at_any_checkpoint_write_then_resume_is_exact(synth_root, tmp_path, monkeypatch, uninterrupted, operation, call, when):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        inject_kill(patch, operation, call, when)
        with pytest.raises(Killed):
            train(tiny_config(synth_root, out, *SCHEDULE))
    train(tiny_config(synth_root, out, *SCHEDULE), resume=True)
    assert_same_run(run_outputs(out), uninterrupted)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [], "leftover temporary folders"


def test_resume_from_every_epoch_end_matches(synth_root, tmp_path, uninterrupted):
    """Stopping cleanly after epoch 1 (the lr decays at the next step) and resuming is exact too."""
    out = tmp_path / "run"
    train(tiny_config(synth_root, out, "optim.epochs=1", "optim.decay_epochs=[1]"))
    train(tiny_config(synth_root, out, *SCHEDULE), resume=True)
    assert_same_run(run_outputs(out), uninterrupted)


def test_lr_is_a_function_of_the_step(synth_root, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(synth_root, out, *SCHEDULE))
    with open(out / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    per_epoch = len(rows) // 2
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[per_epoch] == pytest.approx(lrs[per_epoch - 1] * 0.1), "the first step of the decay epoch must be decayed"
    assert len({r["step"] for r in rows}) == len(rows)


@pytest.mark.parametrize("folder", ["best", "last"])
@pytest.mark.parametrize("rename, when", [(1, "before"), (2, "before"), (2, "after")])
def test_swap_is_recoverable_at_every_point(tmp_path, monkeypatch, folder, rename, when):
    """A kill before, between or after the two renames of a swap over an existing folder loses neither version."""
    marker = checkpoint.MARKERS[folder]
    target = tmp_path / folder
    target.mkdir()
    (target / marker).write_text("old")
    new = checkpoint.staging_folder(target)
    (new / marker).write_text("new")
    inject_kill(monkeypatch, "rename", rename, when)
    with pytest.raises(Killed):
        swap_in(new, target)
    monkeypatch.undo()
    recover_folder(target)
    assert (target / marker).read_text() == ("old" if (rename, when) == (1, "before") else "new")
    assert [p.name for p in tmp_path.iterdir()] == [folder]


def test_resume_refuses_an_incomplete_state_in_one_line(synth_root, tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny_config(synth_root, out, "optim.epochs=1"))
    (out / "last" / "progress.json").unlink()
    with pytest.raises(ResumeError, match="incomplete resume state"):
        train(tiny_config(synth_root, out, "optim.epochs=2"), resume=True)
    train(tiny_config(synth_root, out, "optim.epochs=1"))  # a fresh run replaces it
    optimizer = out / "last" / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    from bad_input import assert_one_line_error

    args = [
        "train",
        "--config",
        "configs/synthetic.yaml",
        "--resume",
        f"data.root={synth_root}",
        f"output_dir={out}",
        "optim.epochs=2",
        "optim.batch_size=4",
        "model.dims=32",
        "model.heads=4",
    ]
    os.chdir(Path(__file__).resolve().parents[1])
    assert_one_line_error(args, capsys, str(out / "last"), "cannot resume")
    shutil.rmtree(out)


def test_a_kill_while_trimming_the_logs_keeps_them_whole(tmp_path, monkeypatch):
    """Trimming rewrites log.csv and metrics.jsonl atomically: a kill at the rename leaves the old file, not a part."""
    log = "step,epoch,lr,loss\n1,1,0.1,2.0\n2,1,0.1,1.5\n3,2,0.01,1.2\n"
    (tmp_path / "log.csv").write_text(log)
    inject_kill(monkeypatch, "rename", 1, "before")
    with pytest.raises(Killed):
        training.trim_logs(tmp_path, {"step": 2, "epoch": 1})
    monkeypatch.undo()
    assert (tmp_path / "log.csv").read_text() == log
    training.trim_logs(tmp_path, {"step": 2, "epoch": 1})
    assert (tmp_path / "log.csv").read_text().splitlines() == log.splitlines()[:3]
