"""The ``vtg`` command: one entry point, a subcommand per stage.

User errors (missing file, unknown model, bad flag value) print one line and
exit with status 2; no traceback.

Heavy modules (torch, open_clip, sklearn) are imported inside the subcommands
that need them, so ``--help``, ``eval`` and ``inspect`` start in well under a
second.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import gc
import json
import logging
import sys
import tempfile

from .extract_config import ExtractConfig, non_negative_int, positive_int
from .names import printable

# At exit CPython garbage-collects every object left, ~0.5 M after importing torch and open_clip: 1-2 s of CPU
# after the last line. Frozen objects are skipped, and the operating system frees the memory at once.
atexit.register(gc.freeze)


# Bad input: one line and status 2. Every error of ours that means bad input is an ``errors.UserError`` (a
# ValueError), and so are the ValueErrors of argument checks; a missing file is a FileNotFoundError.
USER_ERRORS = (ValueError, FileNotFoundError)


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One argument per field of the dataclass ``config_class`` that has help in its metadata: ``--name-with-dashes``
    with the field's default, or a positional list (``positional``), or a switch that turns a true default off
    (``flag``); ``choices`` and ``type`` (a parse function) from the metadata too."""
    for spec in dataclasses.fields(config_class):
        meta = spec.metadata
        if "help" not in meta:
            continue  # set by code, not a flag
        if meta.get("positional"):
            parser.add_argument(spec.name, nargs="+", metavar=meta.get("metavar"), help=meta["help"])
        elif "flag" in meta:
            parser.add_argument(meta["flag"], dest=spec.name, action="store_false", help=meta["help"])
        else:
            required = spec.default is dataclasses.MISSING
            shown = "" if required or spec.default is None or "(default" in meta["help"] else f" (default {spec.default})"
            parser.add_argument("--" + spec.name.replace("_", "-"), dest=spec.name, required=required, default=None if required else spec.default,
                                type=meta.get("type"), choices=meta.get("choices"), help=meta["help"] + shown)  # fmt: skip


def add_extract_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, ExtractConfig)
    add_ray_argument(parser)


def add_ray_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run on a Ray cluster (pip install 'vtg_pipeline[ray]'): ADDRESS as ray.init takes it, 'auto' joins the "
        "cluster started on this machine with `ray start`; without ADDRESS a local cluster is started and "
        "stopped. The store must be on a filesystem every node mounts (README: On a cluster)",
    )


def extract_main(args: argparse.Namespace) -> int:
    from .extract import launched, process_state, run_extract

    cfg = ExtractConfig(**{spec.name: getattr(args, spec.name) for spec in dataclasses.fields(ExtractConfig) if hasattr(args, spec.name)})
    if args.ray is not None:
        return extract_on_ray_main(cfg, args.ray)
    state = process_state()
    try:
        summary = run_extract(cfg)
        if state.is_main_process:  # every rank's failures, gathered
            print_extract_summary(summary)
    finally:
        state.destroy_process_group()  # a gloo group left to interpreter exit can abort a rank after its work is done
    return 1 if summary.failed and not launched() else 0  # a launched rank's non-zero status makes the launcher print a traceback


def extract_on_ray_main(cfg, address: str) -> int:
    from .extract import ExtractError, find_videos, launched
    from .ray_engine import extract_on_ray

    if launched():
        raise ExtractError("--ray runs one driver: start it with vtg extract (or python extract), not accelerate launch")
    summary = extract_on_ray(cfg, find_videos(cfg.video_dirs), address or None)
    print_extract_summary(summary)
    return 1 if summary.failed else 0


def engine_for(args: argparse.Namespace):
    """A context giving where ground and index run: this process, or with --ray the cluster it joins (or starts)."""
    import contextlib

    if args.ray is None:
        from .engine import LocalEngine

        return contextlib.nullcontext(LocalEngine())
    from .ray_engine import RayEngine

    return RayEngine(args.ray or None)


def print_extract_summary(summary) -> None:
    """The failures, one line each, then the counts: what the user reads last."""
    for path, reason in summary.failures:
        print(printable(f"{path}: {reason}"), file=sys.stderr)  # a file name cannot forge a line
    print(summary.line(), file=sys.stderr)


def synth_main(args: argparse.Namespace) -> int:
    from .synth import make_dataset

    ensure_writable(args.out, is_folder=True)
    counts = make_dataset(args.out, videos=args.videos, seed=args.seed, long=args.long)
    print(json.dumps({"out": args.out, **counts}))
    return 0


def inspect_main(args: argparse.Namespace) -> int:
    import re

    from .features import summarize_store

    text = json.dumps(summarize_store(args.features), indent=2)
    # A list of numbers or strings (a shape, the layers) on one line; JSON strings hold no raw newline, so this cannot cut one.
    print(re.sub(r"\[\n\s+([^\[\]{}]*?)\n\s*\]", lambda m: "[" + re.sub(r",\n\s+", ", ", m[1]) + "]", text))
    return 0


def train_main(args: argparse.Namespace) -> int:
    from .config import load_config
    from .training import TrainingError, train

    cfg = load_config(args.config, args.overrides)
    try:
        best = train(cfg, resume=args.resume)
    except TrainingError as e:
        print(f"vtg train: error: {e}", file=sys.stderr)
        return 1
    from accelerate import PartialState

    if PartialState().is_main_process:  # once, not once per launched process
        print(json.dumps({"output_dir": cfg.output_dir, "best": best}))
    return 0


def eval_main(args: argparse.Namespace) -> int:
    from .evaluation import PredictionError, evaluate, load_ground_truth, load_predictions

    predictions = load_predictions(args.pred)  # both files checked line by line first: errors name file and line
    needs_windows = any("pred_relevant_windows" in p or "pred_windows" in p for p in predictions)  # else saliency only
    ground_truth = load_ground_truth(args.gt, args.dataset, require_windows=needs_windows)
    try:
        result = evaluate(predictions, ground_truth, args.dataset, match_number=not args.allow_missing, iou_compare=args.iou_compare)
    except PredictionError as e:  # about the predictions as a whole (qids, fields), so no line to name
        raise PredictionError(f"{args.pred}: {e}") from None
    print(json.dumps(result if args.full else {"brief": result["brief"]}, indent=2))
    return 0


def ground_main(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from .evaluation import load_ground_truth
    from .extract import find_videos
    from .features import atomic_write_text
    from .grounder import Grounder, Request, read_requests
    from .report import write_report

    if bool(args.videos) == bool(args.queries):
        raise ValueError("give videos with --query, or --queries FILE (not both)")
    for flag, value in (("--gt", args.gt), ("--report-media", args.report_media)):
        if value and not args.report:
            raise ValueError(f"{flag} {value}: it is for the report; give --report DIR too")
    if args.queries:
        requests = read_requests(args.queries)
    else:
        if not args.query:
            raise ValueError("give at least one --query with the videos")
        videos = []
        for path in args.videos:  # a missing path becomes an error record, a folder its videos
            videos += [item.path for item in find_videos([path])] if Path(path).is_dir() else [path]
        requests = [Request(video, query) for video in videos for query in args.query]
    ensure_writable(args.out, is_folder=False)  # before any work: a bad --out must not throw the grounding away
    for folder in (args.report, args.features):
        if folder:
            ensure_writable(folder, is_folder=True)
    ground_truth = load_ground_truth(args.gt, "qvhighlights") if args.gt else None  # a bad file fails before any work
    grounder = Grounder.from_pretrained(args.checkpoint, device=args.device or "cpu")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vtg-ground-") as tmp, engine_for(args) as engine:
        store = args.features or tmp
        results = grounder.ground_many(requests, store, progress=not args.no_progress, engine=engine)
        atomic_write_text(args.out, "".join(json.dumps(r) + "\n" for r in results))
        report = (
            write_report(results, args.report, store, media=args.report_media or "absolute", ground_truth=ground_truth)
            if args.report
            else None
        )
    seconds = time.perf_counter() - started
    errors = [r for r in results if "error" in r]
    for r in errors:
        print(printable(f"{r['video']}: {r['error']} (qid {r['qid']})"), file=sys.stderr)  # a file name cannot forge a line
    done = len(results) - len(errors)
    print(
        printable(
            f"ground: {done} queries grounded, {len(errors)} failed, {len({r['video'] for r in results})} videos, "
            f"{seconds:.1f} s ({done / max(seconds, 1e-9):.1f} queries/s) -> {args.out}" + (f", report {report}" if report else "")
        ),
        file=sys.stderr,
    )
    return 1 if errors else 0


def index_main(args: argparse.Namespace) -> int:
    from .extract import find_videos
    from .grounder import Grounder
    from .library import LibraryError, build_index, read_keep_list
    from .window_index import describe_layout

    if args.keep_states and args.states != "on-demand":
        raise LibraryError(
            f"--keep-states {args.keep_states}: goes with --states on-demand (--states {args.states} keeps every video's states)"
        )
    keep_states = read_keep_list(args.keep_states) if args.keep_states else None
    items = find_videos(args.video_dirs)  # a missing folder or two videos with one id fail before any work
    ensure_writable(args.index, is_folder=True)
    grounder = Grounder.from_pretrained(args.checkpoint, device=args.device or "cpu")
    with engine_for(args) as engine:
        counts = build_index(
            items,
            grounder,
            args.index,
            args.checkpoint,
            rebuild=args.rebuild,
            progress=not args.no_progress,
            engine=engine,
            folders=args.video_dirs,
            states=args.states,
            keep_states=keep_states,
        )
    print(
        printable(
            f"index: {counts['videos']} videos ({counts['new']} new, {counts['changed']} changed, {counts['unchanged']} unchanged, "
            f"{counts['removed']} removed, {counts['failed']} failed), {counts['windows']} windows, "
            f"version {counts['version']} -> {counts['index']}"
        ),
        file=sys.stderr,
    )
    kept = f" ({counts['kept_states']} videos keep fp16 states)" if counts["kept_states"] else ""
    print(f"index layout: {describe_layout(counts['layout'])}; states {counts['states']}{kept}", file=sys.stderr)
    return 1 if counts["failed"] else 0


def search_main(args: argparse.Namespace) -> int:
    from .library import LibraryIndex
    from .names import hms

    index = LibraryIndex.open(args.index, device=args.device or "cpu", window_cache_bytes=0)  # one search: nothing to reuse
    results = index.search(args.query, k=args.k, candidates=args.candidates)  # candidates None: the library's default
    for r in results:
        if args.json:
            print(json.dumps(r))
        elif "error" in r:
            print(printable(f"  -  {r['video']}  error: {r['error']}"))
        else:
            print(printable(f"{r['rank']:>3}. {r['video']}  {hms(r['start'])}–{hms(r['end'])}  {r['score']:.4f}"))
    return 1 if any("error" in r for r in results) else 0


def serve_main(args: argparse.Namespace) -> int:
    import os

    from .serve import serve

    return serve(
        args.index,
        host=args.host,
        port=args.port,
        token=args.token or os.environ.get("VTG_TOKEN"),
        no_token=args.no_token,
        device=args.device or "cpu",
        show_paths=args.show_paths,
        window_cache_bytes=None if args.window_cache is None else args.window_cache << 20,
        workers=args.workers,
    )


def ensure_writable(path: str, is_folder: bool) -> None:
    """Fail at once, with one line naming ``path``, when that file (or folder) cannot be written; creates the folder."""
    from pathlib import Path

    from .extract import ExtractError, output_folder

    if not is_folder and Path(path).is_dir():
        raise ValueError(f"{path}: is a folder; give a file name")
    if is_folder:
        folder = output_folder(path)
    else:
        try:
            folder = output_folder(Path(path).parent)
        except ExtractError as e:
            raise ValueError(f"{path}: cannot be written ({e})") from None
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ValueError(f"{path}: cannot be written ({e.strerror})") from None


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (configs/*.yaml); every key has a default")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last (optimizer, schedule, RNG, step)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.root=demo/data optim.epochs=5")


def add_ground_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="*", metavar="VIDEO_OR_DIR", help="video files, or folders searched recursively")
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a trained checkpoint: a folder (a run's best/) or a Hugging Face Hub repo id org/name[@revision], read through the Hub cache",
    )
    parser.add_argument("--query", action="append", default=[], help="a query to ground in every video (repeatable)")
    parser.add_argument(
        "--queries", help='jsonl of {"video", "query"[, "qid"]} or a CSV with those columns; relative paths from its folder'
    )
    parser.add_argument("--out", required=True, help="predictions jsonl (QVHighlights submission records plus video, clip times, h:mm:ss)")
    parser.add_argument("--features", help="feature store to reuse and fill (default: a temporary folder)")
    parser.add_argument("--report", help="write a static HTML report into this folder")
    parser.add_argument(
        "--report-media",
        choices=("absolute", "copy", "link"),
        default=None,
        help="how the report's players reach the videos: absolute (default): file:// URLs, the report works from "
        "anywhere on this machine; copy: copies in REPORT/media/, the folder travels to other machines; "
        "link: symlinks there, for a web server or an archiver that follows links (tar -h)",
    )
    parser.add_argument(
        "--gt",
        help="ground truth, QVHighlights annotations jsonl: the report draws each query's true moments "
        "(matched by qid, else by video and query)",
    )
    parser.add_argument("--device", default=None, help="torch device (default cpu)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_ray_argument(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vtg", description="Video temporal grounding from raw videos.")
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser(
        "synth",
        help="write a synthetic grounding dataset (videos + QVHighlights jsonl)",
        description="Write a synthetic grounding dataset: OUT/videos/*.mp4, OUT/train.jsonl and OUT/val.jsonl "
        "(QVHighlights format, the last quarter of the videos is val) and OUT/val_queries.jsonl for `vtg ground --queries`. "
        "Videos show coloured discs in four looks doing one of seven actions, one event at a time over a moving background; "
        "queries name the colour, look and action. Default: 30-180 s videos, every event a query. --long: 20-60 min videos "
        "at 1 frame/s and 64-128 px (cheap to render and decode) with an event every 30-60 s, for window retrieval + "
        "grounding (RGNet): 5-10 target events (4-30 s, unique in their video) are the queries, all other events are "
        "distractors sharing one or two attributes with a target. The same seed gives the same dataset.",
    )
    synth.add_argument("--out", required=True, help="output folder: OUT/videos/*.mp4, OUT/train.jsonl, OUT/val.jsonl")
    synth.add_argument("--videos", type=int, default=None, help="number of videos (default 40, or 60 with --long)")
    synth.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same dataset")
    synth.add_argument("--long", action="store_true", help="long videos (20-60 min) with 5-10 target queries among distractors")
    synth.set_defaults(func=synth_main)

    extract = sub.add_parser(
        "extract",
        help="decode videos and cache frozen open_clip per-layer states",
        description="Decode the videos under each VIDEO_DIR at --fps and write OUT/<video id>.safetensors (frozen open_clip "
        "per-layer states and/or resized frames) and OUT/manifest.jsonl. Videos already up to date are skipped; a video "
        "that cannot be read is recorded as failed and the others go on; the failures and the counts are printed last. "
        "Several processes: `accelerate launch --multi_gpu --num_processes N extract ...` (without a GPU, prefix "
        "ACCELERATE_USE_CPU=1); each takes every N-th video. Exit status: 0 when every video is done or up to date, 1 when "
        "some failed, 2 for bad input or an output disk fault; under `accelerate launch` failed videos give 0 as well "
        "(a rank's non-zero status makes the launcher stop the others and print a traceback), so read the summary or the "
        "manifest there.",
    )
    add_extract_arguments(extract)
    extract.set_defaults(func=extract_main)

    train = sub.add_parser("train", help="train the grounding model (same as `accelerate launch train ...`)")
    add_train_arguments(train)
    train.set_defaults(func=train_main)

    evaluation = sub.add_parser("eval", help="score predictions with the official metrics (JSON)")
    evaluation.add_argument(
        "--pred",
        required=True,
        help="predictions, QVHighlights submission jsonl; records with pred_windows "
        "(retrieved long-video windows [start, end, score], best first) add window-retrieval WR-overlap/contain-R1/5/10",
    )
    evaluation.add_argument(
        "--gt",
        required=True,
        help="ground truth: annotations jsonl (QVHighlights records), or for other datasets "
        "their own file (Ego4D NLQ json, TACoS json, MAD json, Charades-STA txt)",
    )
    evaluation.add_argument(
        "--dataset",
        default="qvhighlights",
        choices=("qvhighlights", "charades", "tacos", "ego4d", "mad"),
        help="which metrics: qvhighlights mAP/R1/HD; charades, tacos R1/R5@0.3/0.5/0.7; "
        "ego4d R1..R100@0.3/0.5/0.7; mad R1..R100@0.1/0.3/0.5; all with mIoU",
    )
    evaluation.add_argument(
        "--iou-compare",
        choices=("gt", "ge"),
        default=None,
        help="when a window passes an IoU threshold in R@k: gt is IoU > θ (official RGNet and Ego4D NLQ code), "
        "ge is IoU >= θ (official MAD and moment_detr code); default gt for ego4d, ge for mad, charades, tacos; "
        "qvhighlights is always ge",
    )
    evaluation.add_argument("--allow-missing", action="store_true", help="score only the query ids present in both files")
    evaluation.add_argument("--full", action="store_true", help="print every block, not only 'brief'")
    evaluation.set_defaults(func=eval_main)

    ground = sub.add_parser("ground", help="find the moments of queries in raw videos with a trained checkpoint")
    add_ground_arguments(ground)
    ground.set_defaults(func=ground_main)

    index = sub.add_parser(
        "index",
        help="index a video library for text search (vtg search)",
        description="Decode and encode every video under the VIDEO_DIRs once (as extract: resumable, a bad video "
        "is listed in the index with its error and skipped), embed each window with the checkpoint's retrieval head "
        "and write a faiss index into DIR. A rerun adds new and changed videos and drops deleted ones; the rest is "
        "kept. Exit status 1 when some video failed.",
    )
    index.add_argument("video_dirs", nargs="+", metavar="VIDEO_DIR", help="folders searched recursively for videos (or video files)")
    index.add_argument("--checkpoint", required=True, help="a trained checkpoint folder (a run's best/); the index only answers with it")
    index.add_argument("--index", required=True, metavar="DIR", help="index folder (created; its feature store is DIR/features)")
    index.add_argument(
        "--rebuild", action="store_true", help="start afresh: another checkpoint, or a damaged index (stored features are reused)"
    )
    index.add_argument(
        "--states",
        choices=("fp16", "fp8", "on-demand"),
        default="fp16",
        help="how the feature store keeps the states search grounds in: fp16 (default), fp8 for half the disk "
        "(docs/BENCHMARKS.md: within the seed spread in the learning check), or on-demand: none (the CLS states alone, "
        "for embedding), each searched window is re-encoded from its video, recent ones cached (vtg serve "
        "--window-cache); a change re-extracts",
    )
    index.add_argument(
        "--keep-states",
        metavar="FILE",
        help="with --states on-demand: the videos FILE lists (video ids or fnmatch patterns such as news/2026-12-*, one a "
        "line, # comments) keep fp16 states and frames, searched at the stored speed: recent or popular videos; the rest "
        "on demand. A video entering or leaving the list is re-extracted on the next run",
    )
    index.add_argument("--device", default=None, help="torch device (default cpu)")
    index.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_ray_argument(index)
    index.set_defaults(func=index_main)

    search = sub.add_parser(
        "search",
        help="find moments in an indexed video library by text",
        description="Stage 1 finds the --candidates windows of the library nearest the query (faiss); stage 2 "
        "grounds the query in those windows with the index's checkpoint and ranks the moments. Prints rank, video, "
        "start-end (h:mm:ss.s) and score, best first; --json: one JSON object per moment. A chosen video whose stored states "
        "cannot be read (removed or changed since vtg index) gets an error line after the moments, and the exit "
        "status is 1.",
    )
    search.add_argument("query", help='what to look for, e.g. "the chef cuts the pizza"')
    search.add_argument("--index", required=True, metavar="DIR", help="an index folder written by vtg index")
    search.add_argument("-k", type=positive_int, default=10, help="moments to print (default 10)")
    search.add_argument("--candidates", type=positive_int, default=None, help="windows stage 1 passes to the grounding model (default 20)")
    search.add_argument(
        "--json",
        action="store_true",
        help='one JSON object per moment: {"rank", "query", "video", "vid", "start", "end", "score", ...} (seconds)',
    )
    search.add_argument("--device", default=None, help="torch device (default cpu)")
    search.set_defaults(func=search_main)

    serve = sub.add_parser(
        "serve",
        help="a web page and JSON API to search an indexed library (vtg index)",
        description="Serve the index in DIR: the search page at /, GET /api/search?q=...&k=... (the records of "
        "vtg search --json), GET /api/videos, the videos at /media/<vid> (with range requests, for seeking) and "
        "thumbnails from the stored frames. A vtg index run on DIR meanwhile is picked up without a restart. "
        "Binds to 127.0.0.1; another address needs --token (or --no-token).",
    )
    serve.add_argument("--index", required=True, metavar="DIR", help="an index folder written by vtg index")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument(
        "--token",
        default=None,
        help="require Authorization: Bearer TOKEN on every request (default: $VTG_TOKEN, which "
        "ps does not show); in a browser open /?token=TOKEN once, a cookie keeps it",
    )
    serve.add_argument(
        "--no-token",
        action="store_true",
        help="allow a non-local --host without a token: anyone who reaches it can search and watch the library",
    )
    serve.add_argument("--device", default=None, help="torch device (default cpu)")
    serve.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="processes answering on the port, each with its own copy of the index, model and window cache (memory x N): up to one "
        "per core when many clients search at once (default 1; docs/BENCHMARKS.md)",
    )
    serve.add_argument(
        "--window-cache",
        type=non_negative_int,
        default=None,
        metavar="MB",
        help="an index built with --states on-demand: memory for the most recently re-encoded windows (default 1024; 0: none)",
    )
    serve.add_argument(
        "--show-paths",
        action="store_true",
        help="include the videos' absolute paths on this machine in API records (default: their id, file name and media URL only)",
    )
    serve.set_defaults(func=serve_main)

    inspect = sub.add_parser("inspect", help="summarise a feature folder written by extract (JSON)")
    inspect.add_argument("features", help="the --out folder of extract")
    inspect.set_defaults(func=inspect_main)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"vtg {args.command}: error: {printable(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vtg {args.command}: interrupted; finished outputs are kept, partial ones removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
