"""Training with Hugging Face Accelerate: mixed precision, DDP, accumulation, resume.

``train(cfg)`` reads top to bottom: build the frozen backbone (never prepared,
never in the optimizer, never saved), the data, the side network, AdamW with
linear warmup and step decay; then per epoch: train, evaluate, keep the best.

A run writes into ``cfg.output_dir``: ``best/`` (model.safetensors with the
trainable weights only, config.json, a model card README.md), ``last/`` (Accelerate state for
``--resume``), ``metrics.jsonl`` (one line per evaluation), ``log.csv`` and
TensorBoard events (per logged step), and ``val_predictions.jsonl`` (the best
checkpoint's predictions on the validation annotations).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import ConcatDataset, DataLoader
from tqdm import tqdm

from .backbone import FrozenBackbone, load_backbone
from .checkpoint import MARKERS, recover_folder, save_checkpoint, staging_folder, swap_in
from .config import TrainConfig, retrieves_windows, training_grid, training_window, uses_windows
from .data import (
    GroundingDataset,
    LengthGroupedBatches,
    StoredVideo,
    TextCache,
    WindowDataset,
    collate,
    collate_windows,
    dequantize,
    load_split,
)
from .errors import UserError
from .evaluation import MAIN_METRIC, evaluate
from .extract import warn_if_one_process_launched
from .features import atomic_write_text
from .inference import ground, predictions_for_batch, rounded, window_starts
from .losses import background_losses, grounding_losses, library_loss, moment_window, window_losses
from .models import create_model
from .names import first_line

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (for example a non-finite loss); one line."""


class ResumeError(UserError):
    """``--resume`` cannot use the saved state; one line naming the folder."""


def lr_factor(step: int, steps_per_epoch: int, cfg) -> float:
    """Learning-rate multiplier of optimizer step ``step`` (0-based, counted over the whole run).

    Linear warmup over the first ``warmup_steps`` steps, then x ``decay`` from the first step of each decay
    epoch (epoch = step // steps_per_epoch). A function of the step alone, so a resumed run matches.
    """
    warmup = cfg.warmup_ratio + (1 - cfg.warmup_ratio) * min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    return warmup * cfg.decay ** sum(step // steps_per_epoch >= e for e in cfg.decay_epochs)


def video_states(batch: dict, backbone: FrozenBackbone, mode: str, device: torch.device) -> torch.Tensor:
    """(Bv, T, K, P, D) or, for window items, (B, W, w, K, P, D), each distinct video of the batch once: cached states
    in half (float8 ones dequantised on ``device``: half the bytes cross to it; the model maps them layer by layer in
    float), or stored frames through the frozen backbone (no grad)."""
    video = batch["video"].to(device)
    if mode == "features":
        return dequantize(video, batch["video_scale"].to(device) if "video_scale" in batch else None)
    b, t = video.shape[:2]
    states = backbone.encode_frames(video.flatten(0, 1))  # inference mode: no graph, no gradient
    return states.view(b, t, *states.shape[1:]).clone()


def save_resume_state(accelerator: Accelerator, folder: Path, state: dict) -> None:
    """Write ``last/`` atomically on every process: Accelerate's state (weights, optimizer, RNG), then progress.json."""
    tmp = folder.with_name(f".{folder.name}.partial")
    if accelerator.is_main_process:
        staging_folder(folder)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_text(tmp / "progress.json", json.dumps(state))
        swap_in(tmp, folder)
    accelerator.wait_for_everyone()


def load_resume_state(accelerator: Accelerator, folder: Path) -> dict:
    """Restore Accelerate's state from ``last/`` and return its progress; ResumeError for an unusable folder."""
    if not (folder / "progress.json").is_file():
        raise ResumeError(f"{folder}: incomplete resume state (no progress.json); move it away to start over")
    try:
        progress = json.loads((folder / "progress.json").read_text())
        accelerator.load_state(str(folder))
    except (OSError, ValueError, RuntimeError, KeyError, EOFError) as e:
        raise ResumeError(f"{folder}: cannot resume ({type(e).__name__}: {first_line(e)})") from None
    if not isinstance(progress, dict) or not {"step", "epoch", "best", "best_metrics"} <= set(progress):
        raise ResumeError(f"{folder}/progress.json: not a progress record")
    return progress


def trim_logs(out_dir: Path, state: dict) -> None:
    """Drop rows of metrics.jsonl and log.csv that come after ``state`` (written by an interrupted epoch), and any
    line a kill cut short, so a resumed run does not repeat rows. A fresh run (step 0) starts both afresh."""
    metrics = out_dir / "metrics.jsonl"
    if metrics.exists():
        kept = []
        for line in metrics.read_text().splitlines():
            try:
                if json.loads(line)["epoch"] <= state["epoch"]:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                continue
        atomic_write_text(metrics, "".join(kept))
    log_file = out_dir / "log.csv"
    if log_file.exists():
        with open(log_file, newline="") as f:
            reader = csv.DictReader(f)
            rows = [
                r
                for r in reader
                if None not in r and None not in r.values() and r.get("step", "").isdigit() and int(r["step"]) <= state["step"]
            ]
        if not rows:  # a fresh run: append_csv starts the file with its header
            log_file.unlink()
            return
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=reader.fieldnames)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(log_file, text.getvalue())  # a kill here leaves the old log, never a part of it


@torch.no_grad()
def predict(model, loader, backbone, text_cache, cfg: TrainConfig, device) -> list[dict]:
    """Predictions (QVHighlights submission records) for every query of a loader."""
    model.eval()
    records = []
    for batch in loader:
        video = video_states(batch, backbone, cfg.data.mode, device)
        query, query_mask = text_cache(queries_of(batch, cfg), device)
        out = model(video, batch["video_mask"].to(device), query, query_mask, video_index=batch["video_index"].to(device))
        records += predictions_for_batch(out, batch, cfg.model.strides, cfg.decode)
    model.train()
    return records


@torch.no_grad()
def predict_in_windows(model, dataset: GroundingDataset, text_cache, cfg: TrainConfig, device) -> list[dict]:
    """Predictions for every query of ``dataset``, each video grounded as ``vtg ground`` does (windows, retrieval).

    Records also carry ``pred_windows`` [[start s, end s, score], ...], the windows ranked for the query.
    """
    model.eval()
    by_video: dict[str, list[dict]] = {}
    for record in dataset.records:
        by_video.setdefault(record["vid"], []).append(record)
    records = []
    for vid, group in by_video.items():
        query, query_mask = text_cache(queries_of({"queries": [r["query"] for r in group]}, cfg), device)
        with StoredVideo.open(dataset.path(vid)) as video:  # its shapes were checked when the dataset opened
            grounded = ground(
                model,
                video,
                query,
                query_mask,
                cfg.data.fps,
                cfg.model.strides,
                cfg.decode,
                duration=float(group[0]["duration"]),
                states=dataset.needed,
            )  # only the layers and tokens the model uses
        for record, g in zip(group, grounded):
            records.append(
                {
                    "qid": record["qid"],
                    "query": record["query"],
                    "vid": vid,
                    "pred_relevant_windows": rounded(g["moments"]),
                    "pred_saliency_scores": rounded(g["saliency"]),
                    **({"pred_windows": rounded(g["windows"])} if "windows" in g else {}),
                }
            )
    model.train()
    return records


@torch.no_grad()
def mine_hard_windows(model, dataset: WindowDataset, text_cache, pool: int, device) -> dict[int, list[int]]:
    """Per training record index: the first frames of its ``pool`` negative windows (``WindowDataset.negative_starts``)
    that the library dual encoder (``model.retrieval``, frozen CLIP states: cheap) ranks highest for its query."""
    head = model.retrieval
    was_training = head.training
    head.eval()
    by_video: dict[str, list[int]] = {}
    for index, record in enumerate(dataset.records):
        by_video.setdefault(record["vid"], []).append(index)
    hard = {}
    for vid, indices in by_video.items():
        with StoredVideo.open(dataset.path(vid)) as video:
            states = video.last_layer_states(head.tokens_read).to(device)
        starts = window_starts(len(states), dataset.window, dataset.stride)
        query, query_mask = text_cache([dataset.records[i]["query"] for i in indices], device)
        scores = head.embed_queries(query, query_mask).float() @ head.embed_grid(states, starts, dataset.window).float().T  # (Q, W)
        for index, row in zip(indices, scores.cpu().numpy()):
            negative = set(dataset.negative_starts(index))
            ranked = [starts[w] for w in np.argsort(-row, kind="stable") if starts[w] in negative]
            hard[index] = ranked[:pool]
    head.train(was_training)
    return hard


def warn_if_windows_too_short(records: list[dict], cfg: TrainConfig) -> None:
    """One warning line when training moments are longer than the training windows (each is then cut to its window)
    or than the inference windows (``decode.window``, where no moment can be found longer than a window): the
    shorter of the two."""
    key, window = min(training_window(cfg), ("decode.window", cfg.decode.window), key=lambda setting: setting[1])
    lengths = [end - start for r in records for start, end in r["relevant_windows"]]
    longer = [length for length in lengths if length > window]
    if longer:
        log.warning(
            f"{key}={window:g} s is shorter than {len(longer)} of the {len(lengths)} training "
            f"moments (longest {max(longer):.1f} s): each is cut to its window and cannot be found whole; "
            f"raise {key} above {max(longer):.0f} s"
        )


def batch_losses(model, batch: dict, backbone, text_cache, cfg: TrainConfig, accelerator) -> tuple[dict, dict]:
    """The weighted loss terms of one training batch, and statistics to log (the sparsifier's kept fraction)."""
    device = accelerator.device
    query, query_mask = text_cache(queries_of(batch, cfg), device)
    negative = text_cache(batch["negative_queries"], device) if "negative_queries" in batch else ()  # BM-DETR, (B, L', ...)
    windowed = "window_mask" in batch
    if not windowed:  # one item per query: the whole video, each distinct video mapped once (video_index)
        video, heads_mask = video_states(batch, backbone, cfg.data.mode, device), batch["video_mask"].to(device)
        video_index = batch["video_index"].to(device)
        with accelerator.autocast():
            out = model(video, heads_mask, query, query_mask, *negative, video_index=video_index)
    else:  # B queries x W windows (the positive first); the heads run on the positive windows only
        b, w = batch["window_mask"].shape
        video = video_states(batch, backbone, "features", device).flatten(0, 1)
        frame_mask = batch["frame_mask"].to(device).flatten(0, 1)
        positive_rows = torch.arange(b, device=device) * w
        negative_rows, negative_real = positive_rows[:, None] + torch.arange(1, w, device=device), batch["window_mask"].to(device)[:, 1:]
        background_rows = negative_rows[negative_real] if cfg.loss.background_windows else None  # heads on real negative windows
        heads = accelerator.unwrap_model(model).window_arguments(positive_rows, background_rows)
        with accelerator.autocast():
            out = model(video, frame_mask, query.repeat_interleave(w, 0), query_mask.repeat_interleave(w, 0), *negative, **heads)
        heads_mask = frame_mask[positive_rows]
    out = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in out.items()}
    saliency = batch["saliency"].to(device)
    losses = grounding_losses(
        out, [x.to(device) for x in batch["windows"]], batch["fps"].to(device), saliency, heads_mask, batch["positive"].to(device), cfg.loss
    )
    if "frame_prob" in out:  # BM-DETR
        losses.update(background_losses(out, saliency > 0, heads_mask, cfg.loss))
    # Stage 1 of library search: the retrieval head on each query's window (its own window item's positive window,
    # else decode.window frames around its moment). Its inputs are frozen states: no gradient reaches the grounding model.
    head = accelerator.unwrap_model(model).retrieval
    tokens = head.tokens_read
    if windowed:
        states, library_mask, starts = video[positive_rows, :, -1, tokens], heads_mask, batch["starts"][:, 0].to(device)
    else:
        states, library_mask, starts = moment_window(
            video[video_index, :, -1, tokens], heads_mask, batch["windows"], cfg.data.fps, cfg.decode.window_frames(cfg.data.fps)[0]
        )
    own = {}
    with accelerator.autocast():
        embedded = head.embed_windows(states, library_mask).float(), head.embed_queries(query, query_mask).float()
        if windowed and cfg.loss.library_own_negatives:  # the negative windows of each item (rows 1.. of its W)
            rows = negative_rows.flatten()
            negatives = head.embed_windows(video[rows, :, -1, tokens], frame_mask[rows]).float()
            own = {"own_negatives": negatives.unflatten(0, (b, w - 1)), "own_mask": negative_real}  # w = 1: none (R² on windows)
    losses["library"] = cfg.loss.library * library_loss(
        *embedded,
        [r["vid"] for r in batch["records"]],
        queries_of(batch, cfg),
        starts,
        library_mask.sum(1),
        cfg.loss.library_temperature,
        **own,
    )
    if "window_logit" not in out:  # a model that does not score windows (R² trained on windows: the two-stage baseline's grounder)
        return losses, {}
    losses.update(window_losses(out, batch["window_mask"].to(device), batch["in_moment"].to(device).flatten(0, 1), frame_mask, cfg.loss))
    real = batch["window_mask"].to(device).flatten()
    kept = (out["gate"][real] * frame_mask[real]).sum() / frame_mask[real].sum()
    return losses, {"kept_fraction": kept.item()}


def queries_of(batch: dict, cfg: TrainConfig) -> list[str]:
    return [cfg.fixed_query] * len(batch["queries"]) if cfg.fixed_query else batch["queries"]


@dataclass
class Run:
    """Everything a training run holds; ``backbone`` is frozen and outside ``accelerator.prepare``."""

    cfg: TrainConfig
    accelerator: Accelerator
    backbone: FrozenBackbone
    text_cache: TextCache
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_set: GroundingDataset
    val_set: GroundingDataset
    train_loader: DataLoader
    val_loader: DataLoader
    state: dict
    ema: AveragedModel | None  # optim.ema: the weights' moving average, what is evaluated and saved

    @property
    def evaluated(self) -> torch.nn.Module:
        """The side network that evaluation and ``best/`` use: the moving average when ``optim.ema`` is on."""
        return self.ema.module if self.ema is not None else self.accelerator.unwrap_model(self.model)


def build_run(cfg: TrainConfig, resume: bool = False) -> Run:
    """Backbone, data, side network and optimizer, prepared by Accelerate; resumed from ``last/`` if asked."""
    out_dir = Path(cfg.output_dir)
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.optim.grad_accum,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "tensorboard")),
        dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()),  # copies overlap the step
    )
    warn_if_one_process_launched(accelerator.state, "train")
    set_seed(cfg.seed)
    device = accelerator.device

    # The frozen backbone: outside prepare(), the optimizer and every checkpoint.
    backbone = load_backbone(cfg.backbone.name, cfg.backbone.pretrained, cfg.backbone.layers, device, cfg.backbone.precision)
    cfg.model.vision_width, cfg.model.text_width = backbone.spec.vision_width, backbone.spec.text_width

    # Only the stored states the model reads: its last model.layers layers, and the CLS token alone without spatial pooling.
    needed = (slice(-cfg.model.layers, None), slice(None) if cfg.model.spatial_pooling else slice(0, 1))
    train_set = load_split(cfg.data, "train", backbone, cfg.seed, needed)
    val_set = load_split(cfg.data, "val", backbone, cfg.seed, needed)
    batch_collate = partial(collate, fps=cfg.data.fps)
    if uses_windows(cfg):  # one positive window per query, plus same-video negatives for a retrieval model
        fps = cfg.data.fps
        retrieval = retrieves_windows(cfg)
        training_length, training_stride = training_grid(cfg)
        warn_if_windows_too_short(train_set.records, cfg)
        train_set = WindowDataset(
            train_set.records,
            train_set.feature_dir,
            backbone,
            fps,
            *replace(cfg.decode, window=training_length, window_stride=training_stride).window_frames(fps),
            cfg.data.negatives if retrieval else 0,
            cfg.seed,
            cfg.data.cross_video_negatives if retrieval else 0,
            train_set.negatives,
            needed,
            cfg.data.hard_negatives if retrieval else 0,
        )
        if retrieval and cfg.data.hard_negatives and cfg.data.hard_mining == "words":
            train_set.set_hard(train_set.word_sharing_pool(cfg.data.hard_pool))
            accelerator.print(f"hard negatives by shared words: {len(train_set.hard)} of {len(train_set)} training queries have some")
        train_collate = partial(collate_windows, fps=fps)
    else:
        train_collate = batch_collate
    repeated = len(train_set) * cfg.optim.repeat  # batches group videos of similar length: less padding
    groups = [(copy, r["vid"]) for copy in range(cfg.optim.repeat) for r in train_set.records] if cfg.data.group_by_video else None
    sampler = LengthGroupedBatches(
        train_set.frame_counts() * cfg.optim.repeat, cfg.optim.batch_size, repeated > cfg.optim.batch_size, cfg.seed, groups=groups
    )
    pinned = device.type == "cuda"  # page-locked batches: the copy to the GPU runs beside the step
    train_loader = DataLoader(
        ConcatDataset([train_set] * cfg.optim.repeat),
        batch_sampler=sampler,
        collate_fn=train_collate,
        num_workers=cfg.data.num_workers,
        pin_memory=pinned,
    )
    val_batches = LengthGroupedBatches(val_set.frame_counts(), cfg.optim.batch_size, pool=len(val_set))
    val_loader = DataLoader(
        val_set, batch_sampler=val_batches, collate_fn=batch_collate, num_workers=cfg.data.num_workers, pin_memory=pinned
    )

    model = create_model(cfg.model)
    model.r2.memory_saving = cfg.optim.memory_saving
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    ema = None
    if cfg.optim.ema:  # a copy of the plain module; every process averages the same weights; last/ keeps it for --resume
        ema = AveragedModel(model, device=device, multi_avg_fn=get_ema_multi_avg_fn(cfg.optim.ema))
        accelerator.register_for_checkpointing(ema)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    state = {"step": 0, "epoch": 0, "best": -math.inf, "best_metrics": {}}
    if accelerator.is_main_process:  # a kill during a swap of best/ or last/ left two folders: keep the complete one
        for name in MARKERS:
            recover_folder(out_dir / name)
    accelerator.wait_for_everyone()
    if resume and (out_dir / "last").exists():
        state = load_resume_state(accelerator, out_dir / "last")
        accelerator.print(f"resumed from {out_dir / 'last'} at epoch {state['epoch']}, step {state['step']}")
    if accelerator.is_main_process:
        trim_logs(out_dir, state)
    text_cache = TextCache(backbone)
    text_cache.precompute([cfg.fixed_query] if cfg.fixed_query else [r["query"] for r in train_set.records + val_set.records])
    return Run(cfg, accelerator, backbone, text_cache, model, optimizer, train_set, val_set, train_loader, val_loader, state, ema)


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train, evaluate every ``eval_every`` epochs, keep the best checkpoint; returns the best metrics."""
    run = build_run(cfg, resume)
    accelerator, backbone, text_cache, model, optimizer = run.accelerator, run.backbone, run.text_cache, run.model, run.optimizer
    train_set, val_set, train_loader, val_loader, state = run.train_set, run.val_set, run.train_loader, run.val_loader, run.state
    out_dir, device = Path(cfg.output_dir), accelerator.device
    main_metric = cfg.main_metric or MAIN_METRIC.get(cfg.data.metrics or cfg.data.dataset, "MR-full-mAP")
    accelerator.init_trackers("train")
    log_file = out_dir / "log.csv"
    steps_per_epoch = math.ceil(len(train_loader) / cfg.optim.grad_accum)  # Accelerate also steps at the loader's end
    for epoch in range(state["epoch"], cfg.optim.epochs):
        train_set.set_epoch(epoch)
        if cfg.data.hard_negatives and cfg.data.hard_mining == "encoder" and epoch > 0 and uses_windows(cfg):  # trained an epoch
            train_set.set_hard(mine_hard_windows(accelerator.unwrap_model(model), train_set, text_cache, cfg.data.hard_pool, device))
        train_loader.set_epoch(epoch)  # Accelerate's loader passes it to the length-grouped batches (also after --resume)
        bar = tqdm(
            train_loader, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", disable=not accelerator.is_local_main_process, file=sys.stderr
        )
        started, samples = time.perf_counter(), 0
        for batch in bar:
            lr = cfg.optim.lr * lr_factor(state["step"], steps_per_epoch, cfg.optim)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with accelerator.accumulate(model):
                losses, stats = batch_losses(model, batch, backbone, text_cache, cfg, accelerator)
                for name, value in losses.items():
                    if not torch.isfinite(value):
                        raise TrainingError(f"step {state['step']}: loss term {name!r} is {value.item()}; nothing was saved for this epoch")
                total = sum(losses.values())
                accelerator.backward(total)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                optimizer.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                if run.ema is not None:
                    run.ema.update_parameters(accelerator.unwrap_model(model))
                state["step"] += 1
                samples += len(batch["queries"]) * accelerator.num_processes
                row = {
                    "step": state["step"],
                    "epoch": epoch + 1,
                    "lr": lr,
                    "loss": total.item(),
                    **{k: v.item() for k, v in losses.items()},
                    **stats,
                }
                accelerator.log(row, step=state["step"])
                bar.set_postfix(loss=f"{total.item():.3f}", samples_per_s=f"{samples / (time.perf_counter() - started):.0f}")
                if accelerator.is_main_process:
                    append_csv(log_file, row)

        state["epoch"] = epoch + 1
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.optim.epochs:
            if accelerator.is_main_process:
                if uses_windows(cfg):
                    predictions = predict_in_windows(run.evaluated, val_set, text_cache, cfg, device)
                else:
                    predictions = predict(run.evaluated, val_loader, backbone, text_cache, cfg, device)
                metrics = evaluate(predictions, val_set.records, cfg.data.metrics or cfg.data.dataset)["brief"]
                if main_metric not in metrics:
                    raise TrainingError(f"main_metric {main_metric!r} is not among the evaluation's metrics: {', '.join(metrics)}")
                with open(out_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps({"epoch": epoch + 1, "step": state["step"], **metrics}) + "\n")
                accelerator.print(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v}" for k, v in metrics.items()))
                if metrics[main_metric] > state["best"]:
                    state["best"], state["best_metrics"] = metrics[main_metric], metrics
                    save_checkpoint(out_dir / "best", run.evaluated, cfg, backbone, {"epoch": epoch + 1, "metrics": metrics})
                    atomic_write_text(out_dir / "val_predictions.jsonl", "".join(json.dumps(p) + "\n" for p in predictions))
            state = broadcast_state(accelerator, state)
        save_resume_state(accelerator, out_dir / "last", state)
    accelerator.end_training()
    print(f"[process {accelerator.process_index}] trained {state['step']} steps", file=sys.stderr)
    return state["best_metrics"]


def broadcast_state(accelerator: Accelerator, state: dict) -> dict:
    """Every process continues with the main process's view of the best score."""
    from accelerate.utils import broadcast_object_list

    holder = [state]
    broadcast_object_list(holder, from_process=0)
    return holder[0]


def append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
