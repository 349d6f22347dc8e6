"""Long videos (issue 5): RGNet grounding cost against duration, and unified versus two-stage training.

    python bench/long_bench.py scale --minutes 30 60 120          # -> bench/out/long_scale.json
    python bench/long_bench.py compare --root runs/long/data --runs runs/long   # -> bench/out/long_compare.json
    python bench/long_bench.py compare ... --systems "unified (RGNet)"          # only that row (others in the file kept)
    python bench/long_bench.py calibrate --root runs/long/data --runs runs/long/unified --topk 5 10 20 --evidence 0 0.25 0.5 0.75 1
    python bench/long_bench.py calibrate ... --window 48 64 --stride 16 32     # the inference grid too (s; stride <= window)
    python bench/long_bench.py calibrate ... --temperature 0 0.1 0.3 0.5 1   # the window score's temperature (0: sigmoid)
    python bench/long_bench.py confusions --root runs/l21/heldout --seed 2 --runs runs/l21/ho_nosparse_s0
    python bench/long_bench.py probe --root runs/l21/tune --seed 1 [--tokens 1]

``scale``: the paper-sized RGNet side network (dims 256, K = 4, 180-s windows every
90 s, top 30 windows per query; random weights: speed does not depend on them) on
stored ViT-B-32-shaped states (T, 4, 50, 768) of 30-, 60- and 120-minute videos at
0.5 fps, each length in a fresh process: wall time for 1 and 10 queries and peak
RSS. Decoding and encoding a video (linear in duration, docs/BENCHMARKS.md) come
on top and are shared by all of its queries.

``compare``: reads the runs trained by the commands in docs/BENCHMARKS.md under
``--runs`` (``unified``: configs/synthetic_long.yaml, ``retriever``, ``oracle_grounder``, ``sparsifier``)
and evaluates on the validation videos of ``--root``: window retrieval R@1/R@5,
grounding R1@0.3 inside the oracle window (the grid window that holds the
moment), end-to-end R1@0.3/R5@0.3 (the two-stage baseline chains the retriever's
top windows into the oracle-trained grounder), and the sparsifier's kept fraction.

``calibrate``: the window score at inference (``decode.window_prior`` p,
``decode.retrieval_topk`` k, ``decode.window_evidence`` e and ``decode.window_temperature`` T;
``inference.windows_of`` and ``merge_windows``) and the inference grid (``decode.window`` and ``window_stride``,
``--window`` / ``--stride``, default the run's) for a trained RGNet run (``--runs`` is the
run folder), on the validation split of ``--root``. For each grid and p, each video's
windows are scored and grounded once with the largest k; every (k, e, T) is then a merge of
those results. Prints one row per (window, stride, p, k, e, T) and the best by R1@0.3 (then window R@1, R5@0.3).

``confusions``: what a run's top moment is when it misses (R1@0.3), on a ``vtg synth --long`` folder: every event
is drawn again from the folder's ``--seed`` (``vtg synth --seed``), and a missed query is counted by the event its
top moment overlaps most, by which of colour, look and action that event does not share with the query's, or as
background. Reads the run's ``val_predictions.jsonl`` (its last evaluation).

``probe``: whether an event's action can be read from the stored states at all: a small supervised probe (each frame's
last-layer tokens, the first ``--tokens`` of them (CLS first), flattened -> Linear -> a temporal conv and a GRU -> one of
the 7 actions) trained on every event of the training videos of a ``vtg synth --long`` folder, its frames cut from the
plan drawn again from ``--seed``, and scored on the validation videos' events.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from ground_bench import QUERIES, make_grounder
from safetensors import safe_open
from safetensors.torch import save_file
from train_bench import peak_rss

from vtg_pipeline.config import TrainConfig
from vtg_pipeline.data import GroundingDataset, StoredVideo, TextCache
from vtg_pipeline.evaluation import evaluate, top1_ious
from vtg_pipeline.grounder import Grounder
from vtg_pipeline.inference import decode_windows, merge_windows, rounded, window_starts, windows_of
from vtg_pipeline.synth import ACTIONS, plan_video
from vtg_pipeline.training import predict_in_windows

OUT = Path(__file__).parent / "out"
RGNET = (
    "model.name=rgnet",
    "model.rg_ffn_dims=2048",
    "decode.window=180",
    "decode.window_stride=90",
    "decode.retrieval_topk=30",
    "decode.max_moments=100",
    "decode.nms_threshold=0.5",
)


def write_states(path: Path, minutes: int, fps: float = 0.5) -> None:
    """A feature file of random ViT-B-32-shaped states (T, 4, 50, 768) fp16 for a video of ``minutes``."""
    frames = int(minutes * 60 * fps)
    generator = torch.Generator().manual_seed(minutes)
    vision = torch.randn(frames, 4, 50, 768, generator=generator, dtype=torch.float32).half()
    save_file(
        {"timestamps": torch.arange(frames, dtype=torch.float64) / fps, "vision": vision},
        str(path),
        metadata={"duration": str(minutes * 60.0), "video_id": f"{minutes}min"},
    )


def one_scale(minutes: int, features: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        grounder = make_grounder(Path(tmp), overrides=RGNET)
        grounder.text_cache.precompute(QUERIES[:10])
        times = {}
        for n in (1, 10):
            start = time.perf_counter()
            results = grounder.ground_features(features, QUERIES[:n])
            times[n] = time.perf_counter() - start
    per_query = (times[10] - times[1]) / 9
    windows = len(results[0]["pred_windows"])
    return {
        "minutes": minutes,
        "windows": windows,
        "one_query_s": round(times[1], 2),
        "ten_queries_s": round(times[10], 2),
        "marginal_per_query_s": round(per_query, 3),
        "per_video_s": round(times[1] - per_query, 3),
        "moments_per_query": len(results[0]["pred_relevant_windows"]),
    }


def scale(minutes: list[int]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in minutes:
            path = Path(tmp) / f"{m}min.safetensors"
            write_states(path, m)
            result, peak = peak_rss([sys.executable, __file__, "one-scale", str(m), str(path)])
            result["peak_rss_mib"] = round(peak)
            result["feature_file_mib"] = round(path.stat().st_size / 2**20)
            rows.append(result)
            print(json.dumps(result), flush=True)
            path.unlink()
    return rows


class TwoStage(torch.nn.Module):
    """The disjoint baseline: a retriever's window scores (and its dual encoder's, for ``decode.window_prior``) chained
    into a separately trained grounder."""

    retrieves_windows = True

    def __init__(self, retriever: torch.nn.Module, grounder: torch.nn.Module):
        super().__init__()
        self.retriever, self.grounder = retriever, grounder

    @property
    def retrieval(self) -> torch.nn.Module:
        return self.retriever.retrieval

    def forward(self, *inputs, **kwargs):
        """The grounder's outputs, with the retriever's ``window_logit`` (inference runs every pair through one forward;
        the retriever stops before its heads)."""
        return {**self.grounder(*inputs, **kwargs), "window_logit": self.retriever.retrieve(*inputs, **kwargs)[1]["window_logit"]}


@torch.no_grad()
def oracle_window_r1(model, cfg: TrainConfig, dataset: GroundingDataset, text_cache: TextCache) -> float:
    """R1@0.3 (percent, IoU >= 0.3) of the grounder run on each query's oracle window only.

    The oracle window is the grid window that contains the query's first moment (the one
    with the most overlap when none contains it).
    """
    fps = cfg.data.fps
    window, stride = round(cfg.decode.window * fps), round(cfg.decode.window_stride * fps)
    predictions = []
    model.eval()
    for record in dataset.records:
        with safe_open(str(dataset.path(record["vid"])), framework="pt") as f:
            vision = f.get_slice("vision")
            n = vision.get_shape()[0]
            a, b = (np.asarray(record["relevant_windows"][0]) * fps).tolist()
            starts = np.asarray(window_starts(n, window, stride))
            overlap = np.minimum(starts + window, b) - np.maximum(starts, a)
            start = int(starts[np.argmax(overlap)])
            states = vision[start : start + window].float()[None]
        query, query_mask = text_cache([record["query"]], states.device)
        out = model(states, torch.ones(1, states.size(1), dtype=torch.bool), query, query_mask)
        moments = decode_windows(out, 0, fps, states.size(1) / fps, cfg.decode)
        moments[:, :2] += start / fps
        predictions.append({"qid": record["qid"], "pred_relevant_windows": moments.tolist()})
    metrics = evaluate(predictions, dataset.records, "mad", match_number=False)["brief"]
    return metrics["R1@0.3"]


def kept_fraction(run: Path) -> float | None:
    """The sparsifier's kept fraction over the last epoch's training steps (log.csv)."""
    import csv

    rows = list(csv.DictReader(open(run / "log.csv")))
    last = [float(r["kept_fraction"]) for r in rows if r.get("kept_fraction") and r["epoch"] == rows[-1]["epoch"]]
    return round(float(np.mean(last)), 3) if last else None


SYSTEMS = {
    "unified (RGNet)": ("unified", "unified"),
    "two-stage": ("retriever", "oracle_grounder"),
    "unified, with the sparsifier": ("sparsifier", "sparsifier"),
}


def compare(root: Path, runs: Path, only: list[str] | None = None) -> list[dict]:
    grounders = {
        name: Grounder.from_pretrained(runs / name / "best")
        for name in ("unified", "retriever", "oracle_grounder", "sparsifier")
        if (runs / name / "best").exists()
    }
    some = next(iter(grounders.values()))
    cfg = some.cfg
    records = [json.loads(line) for line in (root / cfg.data.val).read_text().splitlines() if line.strip()]
    dataset = GroundingDataset(records, root / cfg.data.features, some.backbone, cfg.data.fps)
    rows = []
    for label, (retriever, grounder) in SYSTEMS.items():
        if retriever not in grounders or grounder not in grounders or (only and label not in only):
            continue
        model = TwoStage(grounders[retriever].model, grounders[grounder].model) if retriever != grounder else grounders[grounder].model
        run_cfg = grounders[grounder].cfg
        run_cfg.decode = grounders[retriever].cfg.decode
        metrics = evaluate(predict_in_windows(model, dataset, grounders[grounder].text_cache, run_cfg, "cpu"), records, "mad")["brief"]
        rows.append(
            {
                "system": label,
                "WR-overlap-R1": metrics["WR-overlap-R1"],
                "WR-overlap-R5": metrics["WR-overlap-R5"],
                "WR-contain-R1": metrics["WR-contain-R1"],
                "WR-contain-R5": metrics["WR-contain-R5"],
                "oracle-window R1@0.3": oracle_window_r1(grounders[grounder].model, run_cfg, dataset, grounders[grounder].text_cache),
                "R1@0.3": metrics["R1@0.3"],
                "R5@0.3": metrics["R5@0.3"],
                "R1@0.5": metrics["R1@0.5"],
                "R5@0.5": metrics["R5@0.5"],
                "kept_fraction": kept_fraction(runs / retriever),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def calibrate(
    root: Path,
    run: Path,
    topks: list[int],
    evidence: list[float],
    priors: list[float],
    windows: list[float] | None = None,
    strides: list[float] | None = None,
    temperatures: list[float] | None = None,
) -> list[dict]:
    """Metrics of every (window, window_stride, window_prior, retrieval_topk, window_evidence, window_temperature) on
    the validation split of ``root``; see the module docstring."""
    grounder = Grounder.from_pretrained(run / "best")
    cfg, model = grounder.cfg, grounder.model
    grids = [(w, s) for w in windows or [cfg.decode.window] for s in strides or [cfg.decode.window_stride] if s <= w]
    records = [json.loads(line) for line in (root / cfg.data.val).read_text().splitlines() if line.strip()]
    dataset = GroundingDataset(records, root / cfg.data.features, grounder.backbone, cfg.data.fps)
    by_video: dict[str, list[dict]] = {}
    for record in records:
        by_video.setdefault(record["vid"], []).append(record)
    rows = []
    for (window, stride), prior in [(grid, prior) for grid in grids for prior in priors]:
        deepest = replace(cfg.decode, retrieval_topk=max(topks), window_prior=prior, window=window, window_stride=stride)
        videos = []
        for vid, group in by_video.items():
            query, query_mask = grounder.text_cache([r["query"] for r in group], "cpu")
            duration = float(group[0]["duration"])
            with StoredVideo.open(dataset.path(vid)) as video:
                found = windows_of(
                    model,
                    lambda a, b: video.rows(a, b),
                    video.frames,
                    duration,
                    query,
                    query_mask,
                    cfg.data.fps,
                    cfg.model.strides,
                    deepest,
                )
            videos.append((group, found, duration))
        for k, e, temperature in itertools.product(topks, evidence, temperatures or [cfg.decode.window_temperature]):
            decode = replace(deepest, retrieval_topk=k, window_evidence=e, window_temperature=temperature)
            predictions = []
            for group, results, duration in videos:
                for i, record in enumerate(group):
                    top = set(np.argsort(-results.logits[i], kind="stable")[:k].tolist())
                    merged = merge_windows(
                        {w: m for w, m in results.found[i].items() if w in top}, results.logits[i], results.spans, duration, decode
                    )
                    predictions.append(
                        {
                            "qid": record["qid"],
                            "query": record["query"],
                            "vid": record["vid"],
                            "pred_relevant_windows": rounded(merged["moments"]),
                            "pred_windows": rounded(merged["windows"]),
                        }
                    )
            metrics = evaluate(predictions, records, "mad")["brief"]
            rows.append(
                {
                    "window": window,
                    "window_stride": stride,
                    "window_prior": prior,
                    "retrieval_topk": k,
                    "window_evidence": e,
                    "window_temperature": temperature,
                    **{m: metrics[m] for m in CALIBRATION_METRICS},
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    best = max(rows, key=lambda r: (r["R1@0.3"], r["WR-overlap-R1"], r["R5@0.3"]))
    print("best by R1@0.3:", json.dumps(best), flush=True)
    return rows


def confusions(root: Path, run: Path, seed: int) -> dict[str, int]:
    """Counts over the validation queries of ``root``: ``right`` (top moment IoU >= 0.3), ``background`` (it overlaps
    no event), ``the query's event`` (it overlaps that event most but too little), or ``differs in ...`` (the
    attributes the event it overlaps most does not share with the query's event)."""
    records = [json.loads(line) for line in (root / "val.jsonl").read_text().splitlines()]
    predictions = {p["qid"]: p for p in map(json.loads, (run / "val_predictions.jsonl").read_text().splitlines())}
    ious = top1_ious([predictions[r["qid"]] for r in records], records)
    plans, counts = {}, {"right": 0}
    for record, iou in zip(records, ious):
        if iou >= 0.3:
            counts["right"] += 1
            continue
        index = int(record["vid"].rsplit("_", 1)[1])
        if index not in plans:
            plans[index] = plan_video(np.random.default_rng([seed, index]), long=True)  # as synth.make_video_record
        events = plans[index].events
        target = next(e for e in events if e.query == record["query"])
        top = np.asarray(predictions[record["qid"]]["pred_relevant_windows"][0][:2])
        overlap = [min(top[1], e.end) - max(top[0], e.start) for e in events]
        if max(overlap) <= 0:
            kind = "background"
        elif (chosen := events[int(np.argmax(overlap))]) is target:
            kind = "the query's event"
        else:
            kind = "differs in " + " + ".join(
                name for name, a, b in zip(("colour", "look", "action"), chosen.combo, target.combo) if a != b
            )
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def event_clips(root: Path, split: str, seed: int, tokens: int, frames: int = 15) -> tuple[torch.Tensor, ...]:
    """Every event of ``split``'s videos: its first ``frames`` frames of last-layer states, their first ``tokens``
    tokens (E, frames, tokens, D), zero-padded; the action's index in ``synth.ACTIONS`` (E,); the valid frames (E, frames)."""
    videos = sorted({json.loads(line)["vid"] for line in (root / f"{split}.jsonl").read_text().splitlines()})
    clips, actions, masks = [], [], []
    for vid in videos:
        plan = plan_video(np.random.default_rng([seed, int(vid.rsplit("_", 1)[1])]), long=True)
        with StoredVideo.open(root / "features" / f"{vid}.safetensors") as video:
            states = video.rows(0, video.frames, (slice(-1, None), slice(0, tokens)))[:, 0].float()  # (T, tokens, D): only those read
            fps = video.frames / video.duration
        for event in plan.events:
            clip = states[int(event.start * fps) : math.ceil(event.end * fps)][:frames]
            clips.append(torch.cat((clip, clip.new_zeros(frames - len(clip), *clip.shape[1:]))))
            masks.append(torch.arange(frames) < len(clip))
            actions.append(ACTIONS.index(event.action))
    return torch.stack(clips), torch.tensor(actions), torch.stack(masks)


class ActionProbe(torch.nn.Module):
    """(E, F, tokens, D) event clips and (E, F) valid frames -> (E, 7) action logits."""

    def __init__(self, width: int, hidden: int = 128):
        super().__init__()
        nn = torch.nn
        self.frame = nn.Sequential(nn.Flatten(2), nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU())
        self.conv, self.gru, self.out = (
            nn.Conv1d(hidden, hidden, 3, padding=1),
            nn.GRU(hidden, hidden, batch_first=True),
            nn.Linear(hidden, len(ACTIONS)),
        )

    def forward(self, clips: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.frame(clips)
        x = x + torch.relu(self.conv(x.transpose(1, 2)).transpose(1, 2))
        states, _ = self.gru(x * mask[..., None])
        return self.out(states[torch.arange(len(states)), mask.sum(1) - 1])


def probe(root: Path, seed: int, tokens: int, epochs: int = 20) -> list[dict]:
    """Train ``ActionProbe`` on the training videos' events; accuracy on both splits every 5 epochs."""
    torch.manual_seed(0)
    train, val = event_clips(root, "train", seed, tokens), event_clips(root, "val", seed, tokens)
    net = ActionProbe(train[0].shape[2] * train[0].shape[3])
    optimizer = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=0.01)
    rows = []
    for epoch in range(1, epochs + 1):
        with torch.enable_grad():
            for batch in torch.randperm(len(train[1])).split(64):
                loss = torch.nn.functional.cross_entropy(net(train[0][batch], train[2][batch]), train[1][batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        if epoch % 5 == 0:
            accuracy = {
                f"{name} accuracy": float((net(x, m).argmax(1) == y).float().mean()) for name, (x, y, m) in (("train", train), ("val", val))
            }
            rows.append({"epoch": epoch, "tokens": train[0].shape[2], "train events": len(train[1]), "val events": len(val[1]), **accuracy})
            print(json.dumps(rows[-1]), flush=True)
    return rows


CALIBRATION_METRICS = ("R1@0.3", "R5@0.3", "R1@0.5", "R5@0.5", "WR-overlap-R1", "WR-overlap-R5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("scale", "one-scale", "compare", "calibrate", "confusions", "probe"))
    parser.add_argument("args", nargs="*")
    parser.add_argument("--minutes", type=int, nargs="*", default=[30, 60, 120])
    parser.add_argument("--root", type=Path)
    parser.add_argument("--runs", type=Path)
    parser.add_argument("--systems", nargs="*", choices=list(SYSTEMS), help="compare: only these rows")
    parser.add_argument("--topk", type=int, nargs="*", default=[5, 10, 20], help="calibrate: retrieval_topk values")
    parser.add_argument("--evidence", type=float, nargs="*", default=[0.0, 0.25, 0.5, 0.75, 1.0], help="calibrate: window_evidence values")
    parser.add_argument("--prior", type=float, nargs="*", default=[0.0], help="calibrate: window_prior values")
    parser.add_argument("--window", type=float, nargs="*", help="calibrate: decode.window values (s; default the run's)")
    parser.add_argument("--stride", type=float, nargs="*", help="calibrate: decode.window_stride values (s; default the run's)")
    parser.add_argument(
        "--temperature", type=float, nargs="*", help="calibrate: decode.window_temperature values (0: sigmoid; default the run's)"
    )
    parser.add_argument("--seed", type=int, help="confusions, probe: the vtg synth --seed of --root")
    parser.add_argument("--tokens", type=int, default=10**6, help="probe: the first N tokens of each frame (1: CLS; default all)")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    torch.set_grad_enabled(False)
    if args.what == "one-scale":
        print(json.dumps(one_scale(int(args.args[0]), Path(args.args[1]))))
    elif args.what == "calibrate":
        rows = calibrate(args.root, args.runs, args.topk, args.evidence, args.prior, args.window, args.stride, args.temperature)
        (OUT / f"long_calibrate_{args.runs.name}.json").write_text(json.dumps(rows, indent=2))
    elif args.what in ("confusions", "probe") and args.seed is None:
        parser.error(f"{args.what} needs --seed, the vtg synth --seed of --root")
    elif args.what == "probe":
        rows = probe(args.root, args.seed, args.tokens)
        (OUT / f"long_probe_{args.root.name}_{min(args.tokens, 999)}.json").write_text(json.dumps(rows, indent=2))
    elif args.what == "confusions":
        counts = confusions(args.root, args.runs, args.seed)
        print(json.dumps({"run": str(args.runs), "queries": sum(counts.values()), **counts}))
        (OUT / f"long_confusions_{args.runs.name}.json").write_text(json.dumps(counts, indent=2))
    elif args.what == "scale":
        rows = scale(args.minutes)
        (OUT / "long_scale.json").write_text(json.dumps({"device": "cpu", "threads": torch.get_num_threads(), "runs": rows}, indent=2))
    else:
        path = OUT / "long_compare.json"  # rows of earlier calls are kept unless recomputed
        rows = {r["system"]: r for r in (json.loads(path.read_text()) if path.exists() else [])}
        rows.update({r["system"]: r for r in compare(args.root, args.runs, args.systems)})
        path.write_text(json.dumps(list(rows.values()), indent=2))


if __name__ == "__main__":
    main()
