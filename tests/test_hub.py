"""Hugging Face conventions: Hub repo ids through the Hub cache (offline here), save_pretrained, push_to_hub, and
the model card next to each best/."""

import json
import shutil
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
from bad_input import assert_one_line_error
from huggingface_hub import ModelCard
from safetensors.torch import load_file

import vtg_pipeline.checkpoint as checkpoint_module
import vtg_pipeline.grounder as grounder_module
from vtg_pipeline.checkpoint import CARD_KEYS, CheckpointError
from vtg_pipeline.cli import main
from vtg_pipeline.config import load_config
from vtg_pipeline.grounder import Grounder
from vtg_pipeline.training import train

ROOT = Path(__file__).resolve().parents[1]
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def best(synth_root, tmp_path_factory):
    """The best/ folder of a one-epoch training run on the shared synthetic dataset."""
    out = tmp_path_factory.mktemp("hub") / "run"
    train(
        load_config(
            ROOT / "configs" / "synthetic.yaml",
            [f"data.root={synth_root}", f"output_dir={out}", "optim.batch_size=4", "model.dims=32", "model.heads=4", "optim.epochs=1"],
        )
    )
    return out / "best"


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hub cache in ``tmp_path/hub`` with HF_HUB_OFFLINE on; the working directory holds no ``org/`` folder."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "hub"


def cache_repo(hub: Path, repo_id: str, files: Path) -> Path:
    """Lay ``files``' checkpoint out as the Hub cache does after a download of ``repo_id`` at main (commit ``SHA``)."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / SHA
    shutil.copytree(files, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    return snapshot


def first_video(synth_root: Path) -> Path:
    return sorted((synth_root / "videos").glob("*.mp4"))[0]


def test_training_writes_a_model_card_that_the_hub_reads(best, synth_root):
    config = json.loads((best / "config.json").read_text())
    card = ModelCard.load(best / "README.md")
    assert card.data.library_name == "vtg_pipeline"
    assert {"video-temporal-grounding", "moment-retrieval", "qvhighlights", "r2"} <= set(card.data.tags)
    text = card.text
    assert "vtg-tiny" in text and config["backbone_spec"]["backbone_sha256"] in text
    assert str(synth_root) in text and "`train.jsonl`" in text and "`val.jsonl`" in text
    assert "Epoch 1 of 1" in text
    assert all(f"`{key}`" in text for key in CARD_KEYS)
    assert config["metrics"] and all(f"| {name} | {value} |" in text for name, value in config["metrics"].items())


def test_save_pretrained_round_trip(best, synth_root, tmp_path):
    loaded = Grounder.from_pretrained(best)
    folder = tmp_path / "export" / "mine"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("kept")
    assert loaded.save_pretrained(folder) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors", "notes.txt"]
    assert json.loads((folder / "config.json").read_text()) == json.loads((best / "config.json").read_text())
    assert (folder / "README.md").read_text() == (best / "README.md").read_text()
    saved, trained = load_file(folder / "model.safetensors"), load_file(best / "model.safetensors")
    assert saved.keys() == trained.keys() and all(saved[k].equal(trained[k]) for k in saved)
    video = first_video(synth_root)
    assert Grounder.from_pretrained(folder).ground(video, "a red disc rises") == loaded.ground(video, "a red disc rises")


def test_a_repo_id_loads_from_the_offline_hub_cache_and_grounds(best, synth_root, offline_hub, capsys):
    cache_repo(offline_hub, "org/name", best)
    video = first_video(synth_root)
    expected = Grounder.from_pretrained(best).ground(video, "a red disc rises")
    for checkpoint in ("org/name", f"org/name@{SHA}", "org/name@main"):
        hub = Grounder.from_pretrained(checkpoint)
        assert hub.trained["epoch"] == 1 and hub.ground(video, "a red disc rises") == expected, checkpoint
    out = offline_hub.parent / "preds.jsonl"
    assert main(["ground", "--checkpoint", "org/name", str(video), "--query", "a red disc rises", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["pred_relevant_windows"] == expected[0]["pred_relevant_windows"]


def test_a_local_folder_wins_over_a_repo_id_of_the_same_name(best, offline_hub):
    shutil.copytree(best, offline_hub.parent / "org" / "name")  # relative to the working directory; the cache is empty
    assert Grounder.from_pretrained("org/name").trained["epoch"] == 1
    with pytest.raises(CheckpointError, match=r"^other/name/config\.json: not found"):
        Grounder.from_pretrained(Path("other/name"))  # a Path is always a folder, never a repo id
    with pytest.raises(CheckpointError, match=r"^org/missing/config\.json: not found"):
        Grounder.from_pretrained("./org/missing")  # not a repo id: two slashes


def test_an_uncached_repo_id_without_the_hub_is_one_line(best, synth_root, offline_hub, monkeypatch, capsys):
    cache = huggingface_hub.constants.HF_HUB_CACHE
    with pytest.raises(CheckpointError) as offline:
        Grounder.from_pretrained("org/missing")
    assert str(offline.value) == (
        f"org/missing: no such folder, and Hugging Face Hub model org/missing is not in the cache ({cache}) "
        "and the Hub cannot be reached (HF_HUB_OFFLINE is set)"
    )
    cache_repo(offline_hub, "org/name", best)
    with pytest.raises(CheckpointError, match=r"^org/name@v2: no such folder, and Hugging Face Hub model org/name is not in the cache"):
        Grounder.from_pretrained("org/name@v2")  # cached at main only
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(checkpoint_module, "hub_reachable", lambda *args, **kwargs: False)
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"^org/missing: .* not in the cache \(.*\) and the Hub cannot be reached$"):
        Grounder.from_pretrained("org/missing")
    assert time.perf_counter() - started < 10
    assert Grounder.from_pretrained("org/name").trained["epoch"] == 1  # unreachable: the cache serves
    assert_one_line_error(
        [
            "ground",
            "--checkpoint",
            "org/missing",
            str(first_video(synth_root)),
            "--query",
            "x",
            "--out",
            str(offline_hub.parent / "p.jsonl"),
        ],
        capsys,
        "org/missing",
        "cannot be reached",
    )


def test_push_to_hub_creates_the_repo_and_uploads_the_checkpoint_in_one_commit(best, monkeypatch):
    """No network: HfApi's two calls are replaced by recorders; the folder handed to upload_folder is checked as it is."""
    calls = {}

    def create_repo(api, repo_id, **kwargs):
        calls["create_repo"] = (repo_id, kwargs)
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(api, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        calls["upload_folder"] = (repo_id, sorted(p.name for p in folder.iterdir()), kwargs)
        calls["card"] = ModelCard.load(folder / "README.md").data.library_name
        calls["config"] = json.loads((folder / "config.json").read_text())
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/{SHA}"})()

    monkeypatch.setattr(grounder_module.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(grounder_module.HfApi, "upload_folder", upload_folder)
    url = Grounder.from_pretrained(best).push_to_hub("me/grounder", private=True)
    assert url == f"https://huggingface.co/me/grounder/commit/{SHA}"
    assert calls["create_repo"] == ("me/grounder", {"private": True, "exist_ok": True})
    assert calls["upload_folder"] == (
        "me/grounder",
        ["README.md", "config.json", "model.safetensors"],
        {"commit_message": "Upload vtg_pipeline checkpoint"},
    )
    assert calls["card"] == "vtg_pipeline" and calls["config"] == json.loads((best / "config.json").read_text())


def test_a_reachable_hub_is_asked_for_the_revision(best, offline_hub, monkeypatch):
    """Online, the snapshot is resolved (and completed) through the Hub, not only read from the cache."""
    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(best)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(checkpoint_module, "hub_reachable", lambda *args, **kwargs: True)
    monkeypatch.setattr(checkpoint_module, "snapshot_download", snapshot_download)
    assert Grounder.from_pretrained("org/name@v2").trained["epoch"] == 1
    assert calls == [
        ("org/name", {"revision": "v2", "allow_patterns": ["config.json", "model.safetensors", "README.md"], "local_files_only": False})
    ]
