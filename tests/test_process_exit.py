"""Real commands exit promptly once their work is done: little time and CPU between the last line and the exit.

CPython's exit garbage-collects every object left; after importing torch and open_clip that took 1-2 s of CPU
(more on a busy machine) until `vtg` froze them at exit. A thread pool, a spinning OpenMP pool, a DataLoader
worker or an open process group left behind would show here as seconds of wall time or CPU.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
from test_store_safety import checkpoint, tiny_video  # noqa: F401  (checkpoint is a fixture)

from vtg_pipeline.features import StreamingSafetensorsWriter

ROOT = Path(__file__).resolve().parents[1]
EXIT_SECONDS = 5.0  # wall time from the last line to the exit, on a loaded 2-core machine
EXIT_CPU_SECONDS = 0.6  # CPU used meanwhile; it was 1.2-1.6 s before the exit froze the objects


def watch(argv: list[str]) -> tuple[int, str, float, float]:
    """Run ``vtg argv``; returns its status, output, and the wall and CPU seconds between its last line and its exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vtg_pipeline", *argv], cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    watched, lines, last, cpu = psutil.Process(proc.pid), [], time.monotonic(), 0.0
    for line in proc.stdout:
        last, lines = time.monotonic(), [*lines, line]
        try:
            times = watched.cpu_times()
            cpu = times.user + times.system
        except psutil.Error:  # exited between the line and this look; wait4 below counts the rest
            pass
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, "".join(lines), time.monotonic() - last, usage.ru_utime + usage.ru_stime - cpu


def assert_prompt_exit(argv: list[str], status: int = 0) -> str:
    code, output, seconds, cpu = watch(argv)
    assert code == status, output[-3000:]
    assert seconds < EXIT_SECONDS and cpu < EXIT_CPU_SECONDS, f"{seconds:.2f} s and {cpu:.2f} s of CPU after: {output[-500:]}"
    return output


def test_extract_exits_promptly_after_its_summary(tmp_path):
    tiny_video(tmp_path / "videos" / "a.mp4"), tiny_video(tmp_path / "videos" / "b.mp4", 20)
    (tmp_path / "videos" / "bad.mp4").write_bytes(b"not a video" * 10)
    output = assert_prompt_exit(
        ["extract", str(tmp_path / "videos"), "--out", str(tmp_path / "out"), "--model", "vtg-tiny", "--fps", "2", "--no-progress"],
        status=1,
    )
    assert output.splitlines()[-1].startswith("extract: 2 done, 0 skipped, 1 failed")


def test_eval_exits_promptly(tmp_path):
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
    (tmp_path / "gt.jsonl").write_text(json.dumps(gt) + "\n")
    (tmp_path / "pred.jsonl").write_text(json.dumps(pred) + "\n")
    output = assert_prompt_exit(["eval", "--pred", str(tmp_path / "pred.jsonl"), "--gt", str(tmp_path / "gt.jsonl")])
    assert json.loads(output)["brief"]["MR-full-mAP"] == 100.0


def test_inspect_exits_promptly(tmp_path):
    writer = StreamingSafetensorsWriter(tmp_path / "v.safetensors", {"timestamps": ("float64", (2,))}, {"duration": "4.0"})
    writer.write("timestamps", 0, np.array([0.0, 2.0]))
    writer.commit()
    assert json.loads(assert_prompt_exit(["inspect", str(tmp_path)]))["frames"] == 2


def test_ground_exits_promptly_after_its_summary(checkpoint, tmp_path):  # noqa: F811
    video = tiny_video(tmp_path / "v.mp4", 40)
    output = assert_prompt_exit(
        [
            "ground",
            "--checkpoint",
            str(checkpoint),
            str(video),
            "--query",
            "a red disc",
            "--out",
            str(tmp_path / "p.jsonl"),
            "--no-progress",
        ]
    )
    assert output.splitlines()[-1].startswith("ground: 1 queries grounded, 0 failed")


def openmp_settings(env: dict) -> dict:
    """The OpenMP wait settings a process has once it imported vtg_pipeline and torch, started with ``env``."""
    code = (
        "import os, vtg_pipeline, torch; torch.ones(4).sum(); "
        "print(repr(os.environ.get('GOMP_SPINCOUNT')), repr(os.environ.get('OMP_WAIT_POLICY')))"
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, check=True).stdout
    spin, policy = (eval(value) for value in out.split())
    return {"GOMP_SPINCOUNT": spin, "OMP_WAIT_POLICY": policy}


def test_openmp_threads_spin_briefly_unless_the_user_chose_otherwise():
    """Idle OpenMP threads spin 1,000 rounds, not libgomp's 300,000: beside a busy neighbour long spinning made a
    training step 4 to 20 times slower (bench/neighbour_bench.py). A user's own spin count or wait policy is kept."""
    assert openmp_settings({}) == {"GOMP_SPINCOUNT": "1000", "OMP_WAIT_POLICY": None}
    assert openmp_settings({"GOMP_SPINCOUNT": "5"})["GOMP_SPINCOUNT"] == "5"
    assert openmp_settings({"OMP_WAIT_POLICY": "ACTIVE"}) == {"GOMP_SPINCOUNT": None, "OMP_WAIT_POLICY": "ACTIVE"}
