"""Training: run outputs, the frozen backbone's four guarantees, resume, NaN stop, 2 processes."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vtg_pipeline.config import ConfigError, load_config
from vtg_pipeline.data import TextCache
from vtg_pipeline.training import TrainingError, build_run, train

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(root: Path, out: Path, *overrides: str):
    return load_config(
        ROOT / "configs" / "synthetic.yaml",
        [
            f"data.root={root}",
            f"output_dir={out}",
            "optim.epochs=2",
            "optim.batch_size=4",
            "model.dims=32",
            "model.heads=4",
            "optim.warmup_steps=2",
            *overrides,
        ],
    )


def test_config_rejects_unknown_keys_and_coerces_types(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'model.depth'"):
        load_config(None, ["model.depth=3"])
    with pytest.raises(ConfigError, match="unknown config key 'nope'"):
        load_config(None, ["nope.x=1"])
    cfg = load_config(None, ["optim.lr=1", "model.strides=[1, 2]", "data.root=/x"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float) and cfg.model.strides == (1, 2)
    assert load_config(None, ["optim.lr=2e-3"]).optim.lr == 0.002  # YAML reads 2e-3 as a string
    with pytest.raises(ConfigError, match="optim.lr: expected float, got 'fast'"):
        load_config(None, ["optim.lr=fast"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {epochs: many}")
    with pytest.raises(ConfigError, match="optim.epochs: expected int"):
        load_config(bad)


def test_a_config_applies_its_base_first_and_a_base_cycle_or_missing_base_is_one_line(tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "long.yaml").write_text("model: {name: rgnet, dims: 128}\noptim: {lr: 3.0e-4}\n")
    (tmp_path / "mine.yaml").write_text("base: shared/long.yaml\nmodel: {dims: 64}\n")  # relative to the file naming it
    cfg = load_config(tmp_path / "mine.yaml", ["optim.lr=1e-3"])
    assert (cfg.model.name, cfg.model.dims, cfg.optim.lr) == ("rgnet", 64, 1e-3)  # base, then the file, then overrides
    refused = {  # file -> its text, and the one line load_config refuses it with
        "a.yaml": ("base: b.yaml\n", "a.yaml: its base chain comes back to it"),
        "b.yaml": ("base: a.yaml\n", "b.yaml: its base chain comes back to it"),
        "lost.yaml": ("base: nowhere.yaml\n", "nowhere.yaml: config file not found"),
        "bad_base.yaml": ("base: [x]\n", "bad_base.yaml: base must be the path of another config file"),
        "bad_key.yaml": ("base: shared/long.yaml\nmodel: {depth: 3}\n", "bad_key.yaml: unknown config key 'model.depth'"),
    }
    for name, (text, _) in refused.items():
        (tmp_path / name).write_text(text)
    for name, (_, message) in refused.items():
        with pytest.raises(ConfigError, match=message):
            load_config(tmp_path / name)


def test_training_writes_the_run_layout(synth_root, tmp_path):
    out = tmp_path / "run"
    best = train(tiny_config(synth_root, out))
    assert "MR-full-mAP" in best and "HL-min-VeryGood-Hit1" in best
    assert sorted(p.name for p in (out / "best").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert (out / "last" / "progress.json").exists()
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2] and "MR-full-R1@0.5" in lines[0]
    predictions = [json.loads(line) for line in (out / "val_predictions.jsonl").read_text().splitlines()]
    val_qids = {json.loads(line)["qid"] for line in (synth_root / "val.jsonl").read_text().splitlines()}
    assert {p["qid"] for p in predictions} == val_qids
    for p in predictions:
        scores = [w[2] for w in p["pred_relevant_windows"]]
        assert scores == sorted(scores, reverse=True) and all(0 <= w[0] <= w[1] for w in p["pred_relevant_windows"])
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["backbone_spec"]["backbone"] == "vtg-tiny" and len(config["backbone_spec"]["backbone_sha256"]) == 64
    assert "step" in (out / "log.csv").read_text().splitlines()[0]
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))


def test_clip_gets_no_gradient_no_optimizer_no_ddp_and_is_not_saved(synth_root, tmp_path):
    run = build_run(tiny_config(synth_root, tmp_path / "run", "optim.epochs=1"))
    clip_params = {id(p) for p in run.backbone.model.parameters()}
    optimized = {id(p) for group in run.optimizer.param_groups for p in group["params"]}
    assert not clip_params & optimized, "CLIP parameters are in the optimizer"
    assert all(m is not run.backbone.model for m in run.accelerator._models), "CLIP was prepared (wrapped) by accelerate"
    assert not any(p.requires_grad for p in run.backbone.model.parameters())
    before = {k: v.clone() for k, v in run.backbone.model.state_dict().items()}
    train(tiny_config(synth_root, tmp_path / "run", "optim.epochs=1"))
    assert all(p.grad is None for p in run.backbone.model.parameters())
    saved = load_file(str(tmp_path / "run" / "best" / "model.safetensors"))
    assert set(saved) == set(run.accelerator.unwrap_model(run.model).state_dict())
    assert not any(k.startswith(("visual.", "transformer.", "token_embedding")) for k in saved)
    assert all(torch.equal(before[k], v) for k, v in run.backbone.model.state_dict().items())


def test_frames_mode_runs_the_backbone_inside_the_step(synth_root, tmp_path):
    best = train(tiny_config(synth_root, tmp_path / "run", "data.mode=frames", "optim.epochs=1"))
    assert "MR-full-mAP" in best


def test_resume_continues_exactly(synth_root, tmp_path):
    straight = tmp_path / "straight"
    train(tiny_config(synth_root, straight, "optim.epochs=2", "eval_every=1"))
    split = tmp_path / "split"
    train(tiny_config(synth_root, split, "optim.epochs=1"))
    train(tiny_config(synth_root, split, "optim.epochs=2"), resume=True)
    assert (
        json.loads((split / "last" / "progress.json").read_text())["step"]
        == json.loads((straight / "last" / "progress.json").read_text())["step"]
    )
    a = load_file(str(straight / "last" / "model.safetensors"))
    b = load_file(str(split / "last" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), "resumed weights differ from an uninterrupted run"


def test_a_moving_average_is_what_is_evaluated_and_saved_and_resumes_exactly(synth_root, tmp_path):
    """``optim.ema``: best/ holds the weights' moving average, not the trained weights; ``last/`` keeps the average, so a
    resumed run averages what an uninterrupted one does."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_config(synth_root, straight, "optim.epochs=2", "eval_every=2", "optim.ema=0.9"))  # one evaluation: epoch 2
    train(tiny_config(synth_root, split, "optim.epochs=1", "optim.ema=0.9"))
    train(tiny_config(synth_root, split, "optim.epochs=2", "optim.ema=0.9"), resume=True)
    average = {run: torch.load(run / "last" / "custom_checkpoint_0.pkl", weights_only=True) for run in (straight, split)}
    assert int(average[straight]["n_averaged"]) == json.loads((straight / "last" / "progress.json").read_text())["step"]
    best = load_file(str(straight / "best" / "model.safetensors"))
    trained = load_file(str(straight / "last" / "model.safetensors"))
    assert all(torch.equal(best[k], average[straight][f"module.{k}"]) for k in best), "best/ is the average at epoch 2"
    assert any(not torch.allclose(best[k], trained[k]) for k in trained), "best/ holds the average, not the trained weights"
    assert all(torch.allclose(average[split][k].float(), average[straight][k].float(), atol=1e-6) for k in average[straight])
    with pytest.raises(ConfigError, match="optim.ema"):
        tiny_config(synth_root, tmp_path / "x", "optim.ema=1")


def test_non_finite_loss_stops_naming_step_and_term(synth_root, tmp_path, monkeypatch):
    import vtg_pipeline.training as training

    real = training.grounding_losses

    def broken(*args, **kwargs):
        losses = real(*args, **kwargs)
        losses["reg"] = losses["reg"] * float("nan")
        return losses

    monkeypatch.setattr(training, "grounding_losses", broken)
    with pytest.raises(TrainingError, match=r"step 0: loss term 'reg' is nan"):
        train(tiny_config(synth_root, tmp_path / "run"))
    assert not (tmp_path / "run" / "best").exists()


def test_two_process_cpu_launch_steps_on_both_ranks(synth_root, tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "train",
        "--config",
        "configs/synthetic.yaml",
        f"data.root={synth_root}",
        f"output_dir={tmp_path / 'ddp'}",
        "optim.epochs=1",
        "optim.batch_size=2",
        "model.dims=32",
        "model.heads=4",
    ]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = dict(re.findall(r"\[process (\d)\] trained (\d+) steps", result.stderr))
    assert set(steps) == {"0", "1"} and all(int(n) > 0 for n in steps.values()) and steps["0"] == steps["1"]
    assert (tmp_path / "ddp" / "best" / "model.safetensors").exists()
    assert result.stdout.count('"output_dir"') == 1, "the result JSON is printed once, by the main process"


def test_cli_train_reports_config_errors_in_one_line(capsys, tmp_path):
    from vtg_pipeline.cli import main

    config = str(ROOT / "configs" / "synthetic.yaml")
    assert main(["train", "--config", config, "optim.nope=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vtg train: error: unknown config key 'optim.nope'") and len(err.splitlines()) == 1
    assert main(["train", "--config", config, "data.root=/no/such/dir", f"output_dir={tmp_path}"]) == 2
    assert "annotation file not found" in capsys.readouterr().err
    long = str(ROOT / "configs" / "synthetic_long.yaml")
    assert main(["train", "--config", long, "data.group_by_video=true", f"output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "data.group_by_video applies to whole-video training" in err and len(err.splitlines()) == 1


def test_dataset_refuses_features_of_another_backbone_or_fps(synth_root):
    from vtg_pipeline.backbone import load_backbone
    from vtg_pipeline.data import DataConfig, DataError, load_split

    other = load_backbone("vtg-tiny", "random:1")
    with pytest.raises(DataError, match="backbone_sha256"):
        load_split(DataConfig(root=str(synth_root)), "train", other)
    same = load_backbone("vtg-tiny", "random:0")
    with pytest.raises(DataError, match="fps is '0.5' but the config needs '1.0'"):
        load_split(DataConfig(root=str(synth_root), fps=1.0), "train", same)


def test_length_grouped_batches_cover_every_item_once_with_little_padding():
    from vtg_pipeline.data import LengthGroupedBatches

    lengths = [int(x) for x in torch.randint(15, 91, (500,), generator=torch.Generator().manual_seed(0))]
    sampler = LengthGroupedBatches(lengths, batch_size=32, seed=3, pool=4)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 16
    assert sorted(i for b in batches for i in b) == list(range(500))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded < 1.25 * sum(lengths), "grouped batches are mostly real frames (random batches: about 1.6x)"
    assert list(sampler) == batches, "same seed and epoch: same batches (resume)"
    sampler.set_epoch(1)
    assert list(sampler) != batches
    dropping = LengthGroupedBatches(lengths, batch_size=32, drop_last=True)
    assert len(list(dropping)) == len(dropping) == 15 and all(len(b) == 32 for b in dropping)


def test_grouped_batches_keep_a_videos_items_together():
    """groups: each key's items are one block (cut only at a pool or batch end), blocks shuffled per epoch."""
    from vtg_pipeline.data import LengthGroupedBatches

    groups = [f"v{int(x)}" for x in torch.randint(0, 60, (300,), generator=torch.Generator().manual_seed(1))]
    lengths = [10 + int(g[1:]) % 7 for g in groups]  # one length per video, shared by other videos
    sampler = LengthGroupedBatches(lengths, batch_size=8, seed=3, pool=4, groups=groups)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(300))
    for key in set(groups):
        holding = [b for b in batches if any(groups[i] == key for i in b)]
        assert len(holding) <= -(-groups.count(key) // 8) + 2, f"{key} is spread over {len(holding)} batches"
    ungrouped = LengthGroupedBatches(lengths, batch_size=8, seed=3, pool=4)
    videos_read = [sum(len({groups[i] for i in b}) for b in batches) for batches in (batches, ungrouped)]
    assert videos_read[0] < 100 < 200 < videos_read[1], videos_read  # 60 videos; measured 87 vs 244
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_collate_stacks_each_video_once_and_indexes_it_per_query():
    from vtg_pipeline.data import collate

    def item(key, frames, value):
        return {
            "record": {"query": f"q{value}"},
            "video": torch.full((frames, 2), float(value)),
            "video_scale": None,
            "video_key": key,
            "windows": torch.zeros(1, 2),
            "saliency": torch.ones(frames),
            "positive": 0,
        }

    a = item("a", 3, 1)
    batch = collate([a, item("b", 5, 2), {**a, "record": {"query": "q3"}}, item(None, 3, 4), item(None, 4, 5)], fps=0.5)
    assert batch["video_index"].tolist() == [0, 1, 0, 2, 3]  # None: an item's own video (BM-DETR shifted it)
    assert batch["video"][:, :, 0].tolist() == [[1, 1, 1, 0, 0], [2] * 5, [4, 4, 4, 0, 0], [5, 5, 5, 5, 0]]
    assert batch["video_mask"].sum(1).tolist() == [3, 5, 3, 3, 4] and batch["queries"] == ["q1", "q2", "q3", "q4", "q5"]


def test_a_grouped_batch_gives_the_loss_and_gradients_of_its_videos_repeated(synth_root, tmp_path):
    """data.group_by_video: a batch holds a video's queries together, mapped once, with the numbers of one video per query."""
    from vtg_pipeline.training import batch_losses

    run = build_run(tiny_config(synth_root, tmp_path / "run", "data.group_by_video=true", "optim.batch_size=8"))
    batch = max(run.train_loader, key=lambda b: len(b["queries"]) - len(b["video"]))
    assert len(batch["video"]) < len(batch["queries"]), "some video has several queries in a batch"
    repeated = {**batch, "video": batch["video"][batch["video_index"]], "video_index": torch.arange(len(batch["queries"]))}
    results = []
    for b in (batch, repeated):
        run.model.zero_grad()
        losses, _ = batch_losses(run.model, b, run.backbone, run.text_cache, run.cfg, run.accelerator)
        sum(losses.values()).backward()
        results.append((losses, [p.grad.clone() for p in run.model.parameters() if p.grad is not None]))
    (grouped, grouped_grads), (alone, alone_grads) = results
    assert grouped.keys() == alone.keys()
    for name in grouped:
        torch.testing.assert_close(grouped[name], alone[name], rtol=1e-5, atol=1e-6, msg=name)
    for g, a in zip(grouped_grads, alone_grads, strict=True):
        torch.testing.assert_close(g, a, rtol=1e-4, atol=1e-6)


def test_training_reads_only_the_layers_and_tokens_the_model_uses(synth_root, tmp_path):
    """model.layers=2 of 4 stored, no spatial pooling: items hold the last 2 layers' CLS tokens, and a batch of them
    gives the losses of the whole states."""
    from vtg_pipeline.data import GroundingDataset, collate
    from vtg_pipeline.training import batch_losses

    run = build_run(tiny_config(synth_root, tmp_path / "run", "model.layers=2", "model.spatial_pooling=false", "optim.batch_size=4"))
    whole = GroundingDataset(run.train_set.records, run.train_set.feature_dir, run.backbone, 0.5)
    items = [run.train_set[i] for i in range(4)]
    assert items[0]["video"].shape[1:3] == (2, 1) and whole[0]["video"].shape[1:3] == (4, 17)
    assert torch.equal(items[0]["video"], whole[0]["video"][:, -2:, :1])
    run.model.eval()  # no random numbers: the two passes compare
    read, full = (
        batch_losses(run.model, collate(batch, 0.5), run.backbone, run.text_cache, run.cfg, run.accelerator)[0]
        for batch in (items, [whole[i] for i in range(4)])
    )
    for name in read:
        torch.testing.assert_close(read[name], full[name], rtol=0, atol=0, msg=name)


def test_float8_states_cross_to_the_device_as_stored_and_are_dequantised_there(synth_root, tmp_path):
    """A `--states fp8` store: batches (whole videos and window items) carry the e4m3 bytes and the scales, half the
    bytes of float16, and video_states gives exactly what VisionRows reads; a store part fp16 is collated as float16."""
    import shutil

    from safetensors import safe_open

    from vtg_pipeline.data import VisionRows, WindowDataset, collate, collate_windows
    from vtg_pipeline.extract import ExtractConfig, run_extract
    from vtg_pipeline.training import video_states

    features = tmp_path / "fp8"
    run_extract(
        ExtractConfig(
            video_dirs=[str(synth_root / "videos")],
            out=str(features),
            model="vtg-tiny",
            pretrained="random:0",
            states="fp8",
            progress=False,
        )
    )
    run = build_run(
        tiny_config(synth_root, tmp_path / "run", f"data.features={features}", "data.group_by_video=true", "data.num_workers=1")
    )  # the float8 bytes also cross from a worker process

    def read(vid):
        with safe_open(str(features / f"{vid}.safetensors"), framework="pt") as f:
            return VisionRows(f, features / f"{vid}.safetensors")[:]

    batch = next(iter(run.train_loader))
    assert batch["video"].dtype == torch.float8_e4m3fn and batch["video_scale"].shape == batch["video"].shape[:-1]
    states = video_states(batch, run.backbone, "features", run.accelerator.device)
    for row, record in {int(i): r for i, r in zip(batch["video_index"], batch["records"])}.items():
        expected = read(record["vid"])
        assert torch.equal(states[row, : len(expected)], expected) and not states[row, len(expected) :].any()

    windows = WindowDataset(run.train_set.records, features, run.backbone, 0.5, 8, 4, negatives=2)
    items = [windows[i] for i in range(3)]
    batch = collate_windows(items, 0.5)
    assert batch["video"].dtype == torch.float8_e4m3fn
    states = video_states(batch, run.backbone, "features", run.accelerator.device)
    first = int(batch["starts"][0, 0])
    torch.testing.assert_close(states[0, 0], read(items[0]["record"]["vid"])[first : first + 8], rtol=0, atol=0)

    vid = run.train_set.records[0]["vid"]
    shutil.copy(synth_root / "features" / f"{vid}.safetensors", features / f"{vid}.safetensors")  # this video fp16
    run.train_set._last_read = None
    mixed = collate([run.train_set[i] for i in range(len(run.train_set))], 0.5)
    assert mixed["video"].dtype == torch.float16 and "video_scale" not in mixed


def test_bf16_autocast_and_gradient_accumulation(synth_root, tmp_path):
    """bf16 autocast reaches the side network; grad_accum=2 steps the optimizer once per two batches."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # earlier tests in this process set mixed_precision=no
    cfg = tiny_config(synth_root, tmp_path / "run", "mixed_precision=bf16", "optim.grad_accum=2", "optim.epochs=1")
    run = build_run(cfg)
    batch = next(iter(run.train_loader))
    query, query_mask = run.text_cache(batch["queries"], run.accelerator.device)
    seen = []
    run.accelerator.unwrap_model(run.model).cls_head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    with run.accelerator.autocast():
        run.model(batch["video"].float(), batch["video_mask"], query, query_mask, video_index=batch["video_index"])
    assert seen and set(seen) == {torch.bfloat16}
    batches = len(run.train_loader)
    assert batches >= 2
    train(cfg)
    progress = json.loads((tmp_path / "run" / "last" / "progress.json").read_text())
    assert progress["step"] == -(-batches // 2)
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()[1:]
    assert len(rows) == progress["step"] and all(float(r.split(",")[3]) > 0 for r in rows)
    AcceleratorState._reset_state(reset_partial_state=True)


def test_main_metric_chooses_the_best_checkpoint_and_must_exist(synth_root, tmp_path):
    cfg = tiny_config(synth_root, tmp_path / "a", "optim.epochs=1", "main_metric=MR-full-R1@0.7")
    best = train(cfg)
    assert json.loads((tmp_path / "a" / "best" / "config.json").read_text())["metrics"] == best
    with pytest.raises(TrainingError, match="main_metric 'R1@0.3' is not among the evaluation's metrics"):
        train(tiny_config(synth_root, tmp_path / "b", "optim.epochs=1", "main_metric=R1@0.3"))


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.relative_to(ROOT / "configs").as_posix())
def test_every_shipped_config_loads_and_builds_its_model(path):
    from vtg_pipeline.models import create_model

    cfg = load_config(path, ["data.root=/nowhere", "output_dir=/tmp/unused"])
    cfg.model.vision_width, cfg.model.text_width = 64, 64
    create_model(cfg.model)


ROW_OPTIONS = {  # ablation row -> the settings it adds to the R² row (docs/BENCHMARKS.md)
    "r2": {},
    "r2_asr": {"model.score_refinement": True},
    "r2_asr_cas": {"model.score_refinement": True, "loss.clip_aware": 0.8},
    "r2_aca": {"model.fusion": "dummy"},
    "r2_bm": {
        "model.background_matching": True,
        "data.negative_queries": True,
        "loss.frame_margin": 1.0,
        "loss.frame_prob": 1.0,
        "loss.semantic": 1.0,
    },
}
ROW_OPTIONS["all"] = {**ROW_OPTIONS["r2_asr_cas"], **ROW_OPTIONS["r2_bm"]}


def flat(cfg) -> dict:
    return {
        f"{section}.{key}": value for section, values in cfg.to_dict().items() if isinstance(values, dict) for key, value in values.items()
    }


def changes(cfg, base) -> dict:
    base = flat(base)
    return {k: v for k, v in flat(cfg).items() if v != base[k]}


@pytest.mark.parametrize(
    "folder, recipe, winner, budget, extra",
    [
        ("ablation", "synthetic.yaml", "r2", {"optim.epochs": 10, "optim.decay_epochs": (8,)}, {"data.temporal_shift_below": 60.0}),
        (
            "ablation/long",
            "synthetic_long.yaml",
            "r2_bm",
            {
                "optim.epochs": 16,
                "optim.decay_epochs": (13,),
                "decode.window_prior": 0.0,
                "model.sparsifier": True,
                "model.retrieval_motion": False,
                "model.retrieval_layout": 0,
                "loss.library_own_negatives": False,
                "data.window": 0.0,
                "data.window_stride": 0.0,
                "decode.window": 64.0,
                "decode.window_stride": 32.0,
                "decode.window_temperature": 0.0,
            },
            {},
        ),
    ],
)
def test_ablation_rows_share_one_budget_and_the_default_config_is_the_winner(folder, recipe, winner, budget, extra):
    """Each row is the R² row plus its options; the default config is the winning row on its own (longer) budget (the
    long one also with issue 21's window prior, its motion- and layout-aware dual encoder trained on the item's own negatives too,
    without the sparsifier, and with its window score's temperature and inference grid, which the issue-6 rows predate)."""
    rows = {row: load_config(ROOT / "configs" / folder / f"{row}.yaml", []) for row in ROW_OPTIONS}
    for row, options in ROW_OPTIONS.items():
        expected = {**options, **(extra if "data.negative_queries" in options else {})}
        assert changes(rows[row], rows["r2"]) == expected, row
    default = load_config(ROOT / "configs" / recipe, [])
    assert changes(rows[winner], default) == budget


def test_a_limited_text_cache_keeps_the_most_recent_queries_and_never_drops_those_asked(tiny_backbone):
    def states_of(answer, i):
        states, mask = answer
        return states[i][mask[i]]

    cache = TextCache(tiny_backbone, limit=2)
    first = cache(["a red disc", "a blue square"], "cpu")
    cache(["a green ring"], "cpu")  # the least recently asked, "a red disc", goes
    assert list(cache._cache) == ["a blue square", "a green ring"]
    many = cache(["a red disc", "a blue square", "a green ring"], "cpu")  # more than the limit in one call: all answered
    assert len(cache) == 3  # encoded again in another batch: the same states up to float rounding (stored in half)
    torch.testing.assert_close(states_of(many, 0), states_of(first, 0), rtol=1e-2, atol=1e-2)
    cache(["a blue square"], "cpu")
    assert list(cache._cache) == ["a green ring", "a blue square"]
    unlimited = TextCache(tiny_backbone)  # training's: every query stays
    unlimited([f"query {i}" for i in range(5)], "cpu")
    unlimited(["query 9"], "cpu")
    assert len(unlimited) == 6
