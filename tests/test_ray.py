"""`--ray`: the same store as the local runner on a real 2-node Ray cluster (ray.cluster_utils.Cluster, one machine),
surviving a killed worker and a removed node; a bad file gets its record; Ctrl-C leaves a store a rerun continues;
bad addresses, a missing extra and a store some node cannot see are refused in one line."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from pattern import index_image
from test_store_safety import checkpoint  # noqa: F401  (an untrained vtg-tiny checkpoint)

from vtg_pipeline.cli import main
from vtg_pipeline.extract import ExtractConfig, VideoFile, find_videos, run_extract
from vtg_pipeline.features import Manifest, load_features, read_metadata
from vtg_pipeline.synth import write_video

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

import vtg_pipeline.ray_engine as ray_engine  # noqa: E402
from vtg_pipeline.ray_engine import extract_on_ray  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TENSORS = ["timestamps", "frames", "vision"]


def config(videos: Path, out: Path, **overrides) -> ExtractConfig:
    settings = dict(
        video_dirs=[str(videos)], out=str(out), fps=2.0, model="vtg-tiny", pretrained="random:0", store="both", progress=False, batch_size=8
    )
    return ExtractConfig(**{**settings, **overrides})


def write_videos(folder: Path, lengths: dict[str, int]) -> Path:
    """Videos of ``lengths[name]`` frames at 10 frame/s (sampled at 2 frame/s: a fifth of that many rows)."""
    for name, frames in lengths.items():
        write_video(folder / f"{name}.mp4", [index_image(i, 80, 48) for i in range(frames)], fps=10, gop=10)
    return folder


@pytest.fixture(scope="module")
def cluster():
    """A head node and a worker node of 1 CPU each (the machine's 2 cores); torch in each task uses 1 thread."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


@pytest.fixture()
def small_ranges(monkeypatch):
    """Ranges of 8 samples, so the test videos split into several decode tasks as a 2-hour video does."""
    monkeypatch.setattr(ray_engine, "RANGE_FRAMES", 8)


@pytest.fixture()
def commits(monkeypatch):
    """Every committed feature file, in order (the driver is this process)."""
    done: list[Path] = []
    real = VideoFile.commit
    monkeypatch.setattr(VideoFile, "commit", lambda self: done.append(real(self)) or done[-1])
    return done


@pytest.fixture()
def first_commit_held(commits, monkeypatch) -> threading.Event:
    """A driver run in the background (run_in_background) waits just after its first commit until the test sets the
    returned event: the job is surely still running then, however fast the machine would finish the rest. The test's
    own reference extraction, in the main thread, is not held."""
    release = threading.Event()
    counted = VideoFile.commit  # the commits fixture's wrapper

    def commit(self):
        path = counted(self)
        if len(commits) == 1 and threading.current_thread() is not threading.main_thread():
            release.wait(timeout=300)
        return path

    monkeypatch.setattr(VideoFile, "commit", commit)
    return release


def assert_same_store(ray_out: Path, local_out: Path) -> None:
    """The files of both stores, tensor by tensor: integers identical, states within one float16 rounding step (in fact
    equal here, see docs/ARCHITECTURE.md), and the same metadata; the same manifest statuses; nothing partial left."""
    names = sorted(p.relative_to(local_out) for p in local_out.rglob("*.safetensors"))
    assert sorted(p.relative_to(ray_out) for p in ray_out.rglob("*.safetensors")) == names
    for name in names:
        a, b = load_features(ray_out / name, TENSORS), load_features(local_out / name, TENSORS)
        assert np.array_equal(a["timestamps"], b["timestamps"]) and np.array_equal(a["frames"], b["frames"]), name
        step = np.spacing(np.abs(b["vision"])).astype(np.float32)
        assert (np.abs(a["vision"].astype(np.float32) - b["vision"].astype(np.float32)) <= step).all(), name
        assert read_metadata(ray_out / name) == read_metadata(local_out / name)
    statuses = lambda out: {k: r["status"] for k, r in Manifest(out).records().items()}  # noqa: E731
    assert statuses(ray_out) == statuses(local_out)
    assert not [p.name for p in ray_out.iterdir() if p.name.endswith((".partial", ".lock")) or p.name.startswith(".vtg-shared")]


def test_ray_extraction_equals_the_local_one_and_a_bad_file_gets_its_record(cluster, tmp_path, small_ranges, commits):
    videos = write_videos(tmp_path / "videos", {"a": 60, "b": 25, "sub/c": 90})
    (videos / "broken.mp4").write_bytes(b"not a video" * 50)
    local = tmp_path / "local"
    expected = run_extract(config(videos, local)).failures
    commits.clear()
    out = tmp_path / "ray"
    summary = extract_on_ray(config(videos, out), find_videos([str(videos)]), cluster.address)
    assert (summary.done, summary.skipped, summary.failed) == (3, 0, 1)
    assert summary.failures == expected and expected[0][0] == str(videos / "broken.mp4")
    assert sorted(p.name for p in commits) == ["a.safetensors", "b.safetensors", "c.safetensors"], "each video written once"
    assert_same_store(out, local)
    again = extract_on_ray(config(videos, out), find_videos([str(videos)]), cluster.address)
    assert (again.done, again.skipped, again.failed) == (0, 3, 1), "a rerun skips what is done, like the local runner"


def test_fp8_states_equal_the_local_ones(cluster, tmp_path):
    videos = write_videos(tmp_path / "videos", {"a": 40, "b": 30})
    for store, states in (("features", "fp8"),):
        local, out = tmp_path / f"local-{store}", tmp_path / f"ray-{store}"
        run_extract(config(videos, local, store=store, states=states))
        extract_on_ray(config(videos, out, store=store, states=states), find_videos([str(videos)]), cluster.address)
        for name in ("a.safetensors", "b.safetensors"):  # same header, tensors and bytes
            assert (out / name).read_bytes() == (local / name).read_bytes(), (store, name)


def test_skewed_lengths_complete_with_the_long_video_split(cluster, tmp_path, small_ranges, commits):
    """One video 12x longer than the others: its ranges go to the decode tasks like the short videos do."""
    videos = write_videos(tmp_path / "videos", {"long": 600, **{f"short{i}": 50 for i in range(4)}})
    local = tmp_path / "local"
    run_extract(config(videos, local))
    commits.clear()
    out = tmp_path / "ray"
    summary = extract_on_ray(config(videos, out), find_videos([str(videos)]), cluster.address)
    assert (summary.done, summary.failed) == (5, 0) and len(commits) == 5
    assert_same_store(out, local)


def test_ground_and_index_on_ray_give_the_local_predictions_and_vectors(cluster, tmp_path, checkpoint, capsys):  # noqa: F811
    """`vtg ground --ray` writes the local predictions file byte for byte (a broken video gets its error record in both);
    `vtg index --ray` holds the same videos and the same window vectors."""
    videos = write_videos(tmp_path / "videos", {"a": 120, "b": 60, "c": 200})
    (videos / "broken.mp4").write_bytes(b"not a video" * 50)
    ground = [
        "ground",
        str(videos),
        "--checkpoint",
        str(checkpoint),
        "--query",
        "a red disc rises",
        "--query",
        "the scene changes",
        "--no-progress",
    ]
    assert main([*ground, "--out", str(tmp_path / "local.jsonl"), "--features", str(tmp_path / "local-store")]) == 1  # broken.mp4
    assert main([*ground, "--out", str(tmp_path / "ray.jsonl"), "--features", str(tmp_path / "ray-store"), "--ray", cluster.address]) == 1
    local, on_ray = (tmp_path / "local.jsonl").read_text(), (tmp_path / "ray.jsonl").read_text()
    records = [json.loads(line) for line in local.splitlines()]
    assert local == on_ray and sum("error" in r for r in records) == 2 and sum("pred_relevant_windows" in r for r in records) == 6
    index = ["index", str(videos), "--checkpoint", str(checkpoint), "--no-progress"]
    assert main([*index, "--index", str(tmp_path / "local-index")]) == 1
    assert main([*index, "--index", str(tmp_path / "ray-index"), "--ray", cluster.address]) == 1
    (local_videos, local_vectors), (ray_videos, ray_vectors) = (index_contents(tmp_path / name) for name in ("local-index", "ray-index"))
    assert ray_videos == local_videos and len(local_videos) == 3
    assert sorted(ray_vectors) == sorted(local_vectors) and all(torch.equal(ray_vectors[k], local_vectors[k]) for k in local_vectors)


def index_contents(folder: Path) -> tuple[list[dict], dict]:
    """An index's video records and every tensor of its current version."""
    from safetensors.torch import load_file

    current = json.loads((folder / "index.json").read_text())["folder"]
    info = json.loads((folder / current / "library.json").read_text())
    return info["videos"], load_file(str(folder / current / "vectors.safetensors"))


def ray_worker_pids(title: str) -> list[int]:
    """Pids of this machine's Ray worker processes whose title holds ``title`` (Ray names them ray::<task or actor>)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and title in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def run_in_background(target, *args) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run():
        try:
            result["summary"] = target(*args)
        except BaseException as e:  # the assertion below shows it
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def wait_until(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def start_videos(tmp_path: Path, commits: list, address: str, count: int) -> tuple[Path, Path, threading.Thread, dict]:
    """``count`` 60-sample videos extracted locally (the reference store), then on Ray in a background thread:
    (local store, Ray store, the thread, its result)."""
    videos = write_videos(tmp_path / "videos", {f"v{i:02d}": 300 for i in range(count)})
    local = tmp_path / "local"
    run_extract(config(videos, local))
    commits.clear()
    out = tmp_path / "ray"
    thread, result = run_in_background(extract_on_ray, config(videos, out), find_videos([str(videos)]), address)
    return local, out, thread, result


def test_killed_worker_processes_still_leave_a_complete_store(cluster, tmp_path, small_ranges, commits):
    """A decode task's worker is killed, then the backbone actor's: Ray runs the task again and restarts the actor."""
    local, out, thread, result = start_videos(tmp_path, commits, cluster.address, 6)
    for title in ("ray::FlatMap(_decode_range)", "ray::MapWorker"):
        wait_until(lambda: ray_worker_pids(title) or not thread.is_alive())  # noqa: B023
        pids = ray_worker_pids(title)
        assert pids and thread.is_alive() and len(commits) < 6, f"the job was still running when {title} was killed"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
    thread.join(timeout=300)
    assert "error" not in result, result.get("error")
    assert result["summary"].done == 6 and sorted(p.name for p in commits) == [f"v{i:02d}.safetensors" for i in range(6)]
    assert_same_store(out, local)


def test_a_removed_node_still_leaves_a_complete_store(tmp_path, small_ranges, commits, first_commit_held):
    """Its own cluster of three 1-CPU nodes: a worker node the driver is not attached to is removed once the first
    file is done (the driver waits there meanwhile); its tasks and actor run again on the others (a pool holding every
    CPU hung here)."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)  # the driver's own node must stay: the job joins this connection
    try:
        driver_node = ray.get_runtime_context().get_node_id()
        victim = next(n for n in cluster.list_all_nodes() if not n.head and n.node_id != driver_node)
        local, out, thread, result = start_videos(tmp_path, commits, cluster.address, 8)
        wait_until(lambda: commits or not thread.is_alive())  # the backbones are encoding: a file is done
        assert thread.is_alive() and len(commits) == 1, "the job was still running when the node went"
        cluster.remove_node(victim)
        first_commit_held.set()
        thread.join(timeout=300)
        assert "error" not in result, result.get("error")
        assert result["summary"].done == 8 and len(commits) == 8
        assert_same_store(out, local)
    finally:
        ray.shutdown()
        cluster.shutdown()


def vtg(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "vtg_pipeline", *args], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True, **kwargs)


def test_ctrl_c_leaves_a_consistent_store_and_a_rerun_continues(tmp_path):
    """SIGINT the moment the first video is committed (sent by the driver to itself, so the remaining videos cannot all
    finish first on a fast machine): the driver stops (status 130), the finished file is whole, no partial is left,
    and a rerun does the rest only."""
    videos = write_videos(tmp_path / "videos", {f"v{i}": 150 for i in range(6)})
    out = tmp_path / "out"
    args = ["extract", str(videos), "--out", str(out), "--model", "vtg-tiny", "--fps", "2", "--store", "both", "--no-progress", "--ray"]
    interrupt_after_first_commit = (
        "import os, signal, sys; from vtg_pipeline.cli import main; from vtg_pipeline.extract import VideoFile; "
        "real = VideoFile.commit; "
        "VideoFile.commit = lambda self: (real(self), os.kill(os.getpid(), signal.SIGINT))[0]; "
        "sys.exit(main(sys.argv[1:]))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-c", interrupt_after_first_commit, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 130 and "interrupted" in run.stderr.splitlines()[-1], run.stderr[-2000:]
    finished = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(finished) == 1, finished
    assert not [p.name for p in out.iterdir() if p.name.endswith((".partial", ".lock"))]
    assert len(load_features(out / finished[0], ["vision"])["vision"]) == 30
    rerun = vtg(*args)
    err = rerun.communicate(timeout=300)[1]
    assert rerun.returncode == 0, err[-2000:]
    assert err.splitlines()[-1].startswith("extract: 5 done, 1 skipped, 0 failed"), err[-2000:]


def test_an_unreachable_address_is_one_line_and_status_2_within_30_s(tmp_path):
    write_videos(tmp_path / "videos", {"a": 10})
    start = time.monotonic()
    run = vtg("extract", str(tmp_path / "videos"), "--out", str(tmp_path / "out"), "--model", "vtg-tiny", "--ray", "127.0.0.1:9")
    err = run.communicate(timeout=60)[1]
    assert time.monotonic() - start < 30
    lines = [line for line in err.splitlines() if line.strip()]
    assert run.returncode == 2 and lines == ["vtg extract: error: --ray 127.0.0.1:9: no Ray cluster answers there (Connection refused)"], (
        err
    )


def test_without_the_extra_ray_is_one_line_saying_how_to_install_it(tmp_path):
    """Ray made unimportable (as without `pip install 'vtg_pipeline[ray]'`); the local path never imports it."""
    write_videos(tmp_path / "videos", {"a": 10})
    code = (
        "import sys; sys.modules['ray'] = None; from vtg_pipeline.cli import main; "
        "local = main(['extract', sys.argv[1], '--out', sys.argv[2], '--model', 'vtg-tiny', '--no-progress']); "
        "assert local == 0 and 'ray' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]; "
        "sys.exit(main(['extract', sys.argv[1], '--out', sys.argv[2], '--model', 'vtg-tiny', '--ray']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "videos"), str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.splitlines()[-1] == "vtg extract: error: --ray needs Ray Data: pip install 'vtg_pipeline[ray]'"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare for a node with its own mounts")
def test_a_store_that_a_node_cannot_see_is_refused_before_any_work(tmp_path):
    """A second node started in its own mount namespace, with an empty tmpfs over the store's parent: the store is a
    local folder there, as on a machine without the shared filesystem."""
    videos = write_videos(tmp_path / "videos", {"a": 10})
    store_parent = tmp_path / "stores"
    store_parent.mkdir()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    ray_bin = str(Path(sys.executable).with_name("ray"))
    node = subprocess.Popen(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            f'mount -t tmpfs none "{store_parent}" && exec "{ray_bin}" start --address {cluster.address} --num-cpus 1 --block',
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ray.init(address=cluster.address)
        wait_until(lambda: len([n for n in ray.nodes() if n["Alive"]]) == 2, timeout=60)
        ray.shutdown()
        out = store_parent / "out"
        with pytest.raises(ray_engine.ExtractError, match=rf"^{out}: not visible from 1 of 2 nodes .*filesystem every node mounts"):
            extract_on_ray(config(videos, out), find_videos([str(videos)]), cluster.address)
        assert [p.name for p in out.iterdir()] == [], "nothing was written"
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=60)
        cluster.shutdown()
