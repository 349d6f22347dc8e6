"""Bad input to `vtg train` and `vtg ground` ends with one line naming the input and status 2, never a traceback;
a bad feature file costs only its own video; wrong results are refused, not returned."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from bad_input import assert_one_line_error
from safetensors import safe_open
from safetensors.torch import save_file

from vtg_pipeline.config import load_config
from vtg_pipeline.extract import VISION_CLS
from vtg_pipeline.grounder import Grounder
from vtg_pipeline.training import train

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["optim.batch_size=4", "model.dims=32", "model.heads=4", "optim.epochs=1"]


@pytest.fixture(scope="module")
def checkpoint(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad_inputs") / "run"
    train(load_config(ROOT / "configs" / "synthetic.yaml", [f"data.root={synth_root}", f"output_dir={out}", *SMALL]))
    return out / "best"


def copy_dataset(synth_root: Path, tmp_path: Path) -> Path:
    """A copy of the synthetic dataset's annotations and features (videos left out) to spoil."""
    root = tmp_path / "data"
    root.mkdir()
    for name in ("train.jsonl", "val.jsonl"):
        shutil.copy(synth_root / name, root / name)
    shutil.copytree(synth_root / "features", root / "features")
    return root


def rewrite_features(path: Path, change) -> None:
    """Rewrite a feature file with ``change(tensors)`` applied, keeping its metadata."""
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    change(tensors)
    save_file(tensors, str(path), metadata=meta)


def cls_only(path: Path) -> None:
    """Rewrite a feature file as ``extract --states cls`` writes it: the last layer's CLS states alone."""
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["vision"] = tensors["vision"][:, -1:, :1].clone()
    save_file(tensors, str(path), metadata={**meta, "vision_format": VISION_CLS})


def first_val_video(root: Path) -> str:
    return json.loads((root / "val.jsonl").read_text().splitlines()[0])["vid"]


def nan_states(tensors):
    tensors["vision"][3, 0, 0, 0] = float("nan")


def fewer_rows(tensors):
    tensors["vision"] = tensors["vision"][:-5].clone()


def window_past_the_end(root: Path) -> None:
    lines = (root / "val.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    record["relevant_windows"] = [[record["duration"] + 10, record["duration"] + 20]]
    record["duration"] += 30
    (root / "val.jsonl").write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")


TRAIN_CASES = {
    "batch size 0": ([], ["optim.batch_size=0"], "optim.batch_size"),
    "accumulation 0": ([], ["optim.grad_accum=0"], "optim.grad_accum"),
    "decay epochs not numbers": ([], ["optim.decay_epochs=[a]"], "optim.decay_epochs"),
    "dims not divisible by heads": ([], ["model.dims=30", "model.heads=4"], "model.dims"),
    "zero epochs": ([], ["optim.epochs=0"], "optim.epochs"),
    "no layers": ([], ["model.layers=0"], "model.layers"),
    "unknown key": ([], ["optim.speed=3"], "optim.speed"),
}


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_train_refuses_bad_config_values(case, synth_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    _, overrides, named = TRAIN_CASES[case]
    args = ["train", "--config", "configs/synthetic.yaml", f"data.root={synth_root}", f"output_dir={tmp_path / 'run'}", *SMALL, *overrides]
    assert_one_line_error(args, capsys, named)
    assert not (tmp_path / "run").exists()


SPOILED_DATA = {
    "NaN in a feature file": (
        lambda root: rewrite_features(root / "features" / f"{first_val_video(root)}.safetensors", nan_states),
        "non-finite",
    ),
    "vision shorter than timestamps": (
        lambda root: rewrite_features(root / "features" / f"{first_val_video(root)}.safetensors", fewer_rows),
        "vision has shape",
    ),
    "a store of CLS states alone": (
        lambda root: cls_only(root / "features" / f"{first_val_video(root)}.safetensors"),
        "--states fp16 or fp8",
    ),
    "a window past the stored frames": (window_past_the_end, "starting after"),
    "config file missing": (lambda root: None, "nothing.yaml"),
    "config file not YAML": (lambda root: (root / "bad.yaml").write_text("optim: {epochs: [1,"), "bad.yaml"),
}


@pytest.mark.parametrize("case", SPOILED_DATA)
def test_train_names_the_bad_file(case, synth_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    root = copy_dataset(synth_root, tmp_path)
    spoil, words = SPOILED_DATA[case]
    spoil(root)
    config = {"config file missing": str(root / "nothing.yaml"), "config file not YAML": str(root / "bad.yaml")}.get(
        case, "configs/synthetic.yaml"
    )
    args = ["train", "--config", config, f"data.root={root}", f"output_dir={tmp_path / 'run'}", *SMALL]
    if case in ("config file not YAML", "config file missing"):
        assert_one_line_error(args, capsys, config, words)
    elif case == "NaN in a feature file":
        line = assert_one_line_error(args, capsys, words)
        assert ".safetensors" in line  # the file is named; which split reads it first depends on the order
    else:
        assert_one_line_error(args, capsys, f"{first_val_video(root)}.safetensors", words)


def test_train_warns_with_a_count_for_windows_running_past_the_features(synth_root, tmp_path, capsys):
    root = copy_dataset(synth_root, tmp_path)
    lines = (root / "val.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    record["relevant_windows"] = [[record["relevant_windows"][0][0], record["duration"] + 20]]
    record["duration"] += 20
    (root / "val.jsonl").write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    train(load_config(ROOT / "configs" / "synthetic.yaml", [f"data.root={root}", f"output_dir={tmp_path / 'run'}", *SMALL]))
    assert f"1 of {len(lines)} queries have a window or duration past their video's stored frames" in capsys.readouterr().err


def spoil_config(change):
    def spoil(checkpoint: Path) -> None:
        config = json.loads((checkpoint / "config.json").read_text())
        change(config)
        (checkpoint / "config.json").write_text(json.dumps(config))

    return spoil


def other_layers(config):
    config["backbone"]["layers"] = 3
    config["model"]["layers"] = 3


BAD_CHECKPOINTS = {
    "config not JSON": (lambda c: (c / "config.json").write_text("{not json"), "config.json"),
    "config a list": (lambda c: (c / "config.json").write_text("[1, 2]"), "config.json"),
    "config out of range": (spoil_config(lambda config: config["optim"].update(batch_size=0)), "config.json"),
    "config with other backbone layers": (spoil_config(other_layers), "config.json"),
    "weights empty": (lambda c: (c / "model.safetensors").write_bytes(b""), "model.safetensors"),
    "weights truncated": (
        lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:500]),
        "model.safetensors",
    ),
    "weights garbage": (
        lambda c: (c / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage!" * 10),
        "model.safetensors",
    ),
    "weights of another model": (lambda c: save_file({"x": torch.zeros(2)}, str(c / "model.safetensors")), "model.safetensors"),
    "no checkpoint": (lambda c: shutil.rmtree(c), "config.json"),
}


@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_ground_refuses_a_bad_checkpoint(case, checkpoint, synth_root, tmp_path, capsys):
    spoilt = tmp_path / "best"
    shutil.copytree(checkpoint, spoilt)
    spoil, named = BAD_CHECKPOINTS[case]
    spoil(spoilt)
    video = str(sorted((synth_root / "videos").glob("*.mp4"))[0])
    assert_one_line_error(
        ["ground", "--checkpoint", str(spoilt), video, "--query", "a red disc", "--out", str(tmp_path / "p.jsonl"), "--no-progress"],
        capsys,
        str(spoilt / named),
    )
    assert not (tmp_path / "p.jsonl").exists()


def test_other_backbone_layers_in_the_config_are_refused_naming_the_field(checkpoint, tmp_path):
    spoilt = tmp_path / "best"
    shutil.copytree(checkpoint, spoilt)
    spoil_config(other_layers)(spoilt)
    with pytest.raises(ValueError, match="trained on backbone layers"):
        Grounder.from_pretrained(spoilt)


@pytest.mark.parametrize("target, flag", [("folder", "--out"), ("file", "--report"), ("under a file", "--out")])
def test_ground_checks_its_outputs_before_any_work(target, flag, checkpoint, synth_root, tmp_path, capsys, monkeypatch):
    import vtg_pipeline.grounder as grounder

    monkeypatch.setattr(grounder.Grounder, "from_pretrained", lambda *a, **k: pytest.fail("work started before the outputs were checked"))
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("keep me")
    bad = {"folder": tmp_path / "a_folder", "file": tmp_path / "a_file", "under a file": tmp_path / "a_file" / "p.jsonl"}[target]
    outputs = {"--out": str(tmp_path / "p.jsonl"), "--report": str(tmp_path / "report"), flag: str(bad)}
    video = str(sorted((synth_root / "videos").glob("*.mp4"))[0])
    assert_one_line_error(
        ["ground", "--checkpoint", str(checkpoint), video, "--query", "x", "--out", outputs["--out"], "--report", outputs["--report"]],
        capsys,
        str(bad),
    )
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_a_bad_feature_file_costs_only_its_own_video(checkpoint, synth_root, tmp_path, capsys):
    """A NaN in one stored video, or fewer vision rows than timestamps, gives that video error records; the rest are kept."""
    from vtg_pipeline.cli import main

    store = tmp_path / "store"
    shutil.copytree(synth_root / "features", store)
    shutil.copytree(synth_root / "videos", tmp_path / "videos")  # the manifest names these sources; copy keeps mtimes
    videos = sorted((synth_root / "videos").glob("*.mp4"))
    rewrite_features(store / f"{videos[0].stem}.safetensors", nan_states)
    rewrite_features(store / f"{videos[1].stem}.safetensors", fewer_rows)
    out = tmp_path / "p.jsonl"
    status = main(
        [
            "ground",
            "--checkpoint",
            str(checkpoint),
            *map(str, videos),
            "--query",
            "a red disc rises",
            "--features",
            str(store),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert status == 1
    results = {Path(r["video"]).stem: r for r in map(json.loads, out.read_text().splitlines())}
    assert "non-finite" in results[videos[0].stem]["error"]
    assert "vision has shape" in results[videos[1].stem]["error"]
    assert all("error" not in results[v.stem] and results[v.stem]["pred_relevant_windows"] for v in videos[2:])
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("target", ["a file", "under a file"])
def test_synth_refuses_an_out_it_cannot_write(target, tmp_path, capsys):
    (tmp_path / "a_file").write_text("keep me")
    out = tmp_path / "a_file" if target == "a file" else tmp_path / "a_file" / "data"
    assert_one_line_error(["synth", "--out", str(out), "--videos", "2"], capsys, str(out))
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_a_crafted_video_id_in_a_feature_file_costs_only_its_video(checkpoint, synth_root, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(synth_root / "features", store)
    videos = sorted((synth_root / "videos").glob("*.mp4"))[:2]
    path = store / f"{videos[0].stem}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata={**meta, "video_id": "../../outside"})
    results = Grounder.from_pretrained(checkpoint).ground_many([(str(v), "a red disc rises") for v in videos], store)
    assert "video_id" in results[0]["error"] and "error" not in results[1]
