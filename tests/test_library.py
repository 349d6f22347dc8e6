"""Library search (`vtg index`, `vtg search`): the retrieval head and its loss, incremental indexing equal to a fresh
build, stage 2 equal to `vtg ground` on the same windows, refusals in one line."""

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from bad_input import assert_one_line_error
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import vtg_pipeline.library as library_module
from vtg_pipeline.cli import main
from vtg_pipeline.config import config_from_dict, load_config
from vtg_pipeline.extract import VISION_CLS, VISION_FP8, find_videos
from vtg_pipeline.grounder import Grounder
from vtg_pipeline.inference import window_starts
from vtg_pipeline.library import LibraryError, LibraryIndex, ReencodedWindows, build_index
from vtg_pipeline.losses import library_loss, moment_window
from vtg_pipeline.models import create_model
from vtg_pipeline.names import hms
from vtg_pipeline.training import batch_losses, build_run, train

ROOT = Path(__file__).resolve().parents[1]
# Windows of 40 s every 20 s: the 30-180 s synthetic videos get 1 to 8 windows each.
SMALL = ["optim.batch_size=4", "model.dims=32", "model.heads=4", "optim.epochs=1", "decode.window=40.0", "decode.window_stride=20.0"]
QUERY = "a red disc rises"


@pytest.fixture(scope="module")
def checkpoint(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("library_run") / "run"
    train(load_config(ROOT / "configs" / "synthetic.yaml", [f"data.root={synth_root}", f"output_dir={out}", *SMALL]))
    return out / "best"


@pytest.fixture(scope="module")
def grounder(checkpoint):
    return Grounder.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def library(synth_root, checkpoint, grounder, tmp_path_factory):
    """The four synthetic videos indexed once: (folder, counts)."""
    folder = tmp_path_factory.mktemp("library") / "index"
    return folder, build_index(find_videos([str(synth_root / "videos")]), grounder, folder, str(checkpoint), progress=False)


def copy_videos(synth_root: Path, folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True)
    return [Path(shutil.copy2(v, folder / v.name)) for v in sorted((synth_root / "videos").glob("*.mp4"))[:count]]


def index_contents(folder: Path) -> tuple[list[dict], dict]:
    """What a fresh build must reproduce: the video records and every tensor of the current version."""
    current = json.loads((folder / "index.json").read_text())["folder"]
    info = json.loads((folder / current / "library.json").read_text())
    return info["videos"], load_file(str(folder / current / "vectors.safetensors"))


def test_moment_window_centres_on_the_moment_inside_the_video():
    cls = torch.arange(20.0)[None, :, None].expand(3, 20, 2)
    mask = torch.arange(20)[None] < torch.tensor([20, 20, 6])[:, None]
    windows = [torch.tensor([[10.0, 14.0]]), torch.tensor([[36.0, 40.0], [0.0, 2.0]]), torch.tensor([[4.0, 6.0]])]
    states, window_mask, starts = moment_window(cls, mask, windows, fps=0.5, window=8)  # moments at frames 5-7, 18-20, 2-3
    assert starts.tolist() == [2, 12, 0], "centred, clamped to the video's end, a short video from its start"
    assert states[0, :, 0].tolist() == list(range(2, 10)) and window_mask[:2].all()
    assert window_mask[2].tolist() == [True] * 6 + [False] * 2


def test_library_loss_leaves_out_pairs_that_may_match():
    torch.manual_seed(0)
    window, query = torch.nn.functional.normalize(torch.randn(2, 3, 8), dim=-1)
    starts, lengths = torch.tensor([0, 10, 20]), torch.tensor([10, 10, 10])
    apart = library_loss(window, query, ["a", "a", "b"], ["x", "y", "z"], starts, lengths)
    assert apart > 0, "windows of one video that do not overlap are negatives"
    alone = library_loss(window, query, ["a", "a", "a"], ["x", "x", "x"], starts, lengths)
    assert alone == 0, "the same query text: no negatives left, nothing to learn"
    overlapping = library_loss(window, query, ["a", "a", "a"], ["x", "y", "z"], torch.tensor([0, 5, 9]), lengths)
    assert overlapping == 0


def test_library_loss_own_negatives_join_only_their_querys_row():
    torch.manual_seed(0)
    window, query = torch.nn.functional.normalize(torch.randn(2, 3, 8), dim=-1)
    own = torch.nn.functional.normalize(torch.randn(3, 2, 8), dim=-1)  # two windows of each query's own video
    mask = torch.tensor([[True, True], [True, False], [False, False]])
    starts, lengths, vids, texts = torch.tensor([0, 10, 20]), torch.tensor([10, 10, 10]), ["a", "b", "c"], ["x", "y", "z"]
    got = library_loss(window, query, vids, texts, starts, lengths, 0.05, own, mask)
    batch = query @ window.T / 0.05
    rows = torch.cat((batch, torch.einsum("be,bne->bn", query, own).masked_fill(~mask, float("-inf")) / 0.05), dim=1)
    target = torch.arange(3)
    expected = (torch.nn.functional.cross_entropy(rows, target) + torch.nn.functional.cross_entropy(batch.T, target)) / 2
    torch.testing.assert_close(got, expected)
    assert got > library_loss(window, query, vids, texts, starts, lengths, 0.05)  # more negatives, a harder task


@pytest.mark.parametrize(
    "model_name, on_windows, own, layout",
    [("r2", False, False, 0), ("rgnet", True, False, 0), ("rgnet", True, True, 0), ("rgnet", True, True, 2), ("r2", True, True, 2)],
    ids=["r2", "rgnet", "rgnet+own", "rgnet+own+layout", "r2 on windows+own+layout"],
)
def test_library_loss_trains_the_retrieval_head_only(model_name, on_windows, own, layout, synth_root, tmp_path):
    """The loss term is in every batch (whole-video items, RGNet's window items, with their own negative windows too,
    and R² on window items, which have no negative window to add: the two-stage baseline's grounder under the long
    recipe); its gradient reaches the head (its patch layout too, ``model.retrieval_layout``) and nothing else, and
    steps on the head lower it."""
    cfg = load_config(
        ROOT / "configs" / "synthetic.yaml",
        [
            f"data.root={synth_root}",
            f"output_dir={tmp_path / 'run'}",
            *SMALL,
            f"model.name={model_name}",
            f"loss.library_own_negatives={own}",
            f"model.retrieval_layout={layout}",
            *(["data.sampling=windows"] if on_windows and model_name == "r2" else []),
        ],
    )
    run = build_run(cfg)
    batch = next(iter(run.train_loader))
    model = run.accelerator.unwrap_model(run.model)
    library = lambda: batch_losses(run.model, batch, run.backbone, run.text_cache, cfg, run.accelerator)[0]["library"]  # noqa: E731
    first = library()
    names, params = zip(*model.named_parameters())
    grads = torch.autograd.grad(first, params, allow_unused=True)
    reached = {n for n, g in zip(names, grads) if g is not None and g.abs().sum() > 0}
    assert reached and all(n.startswith("retrieval.") for n in reached)
    assert any(n.startswith("retrieval.layout.") for n in reached) == bool(layout)
    if on_windows:
        return  # the same head and loss: one training check is enough
    optimizer = torch.optim.Adam(model.retrieval.parameters(), lr=1e-3)
    for _ in range(15):
        loss = library()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first.item()


def test_index_embeds_every_window_of_every_video(library, grounder, synth_root):
    folder, counts = library
    index = LibraryIndex.open(folder, grounder)
    videos = index.videos()
    assert [v["vid"] for v in videos] == sorted(p.stem for p in (synth_root / "videos").glob("*.mp4"))
    assert counts["new"] == 4 and counts["failed"] == 0 and counts["kind"] == "flat"
    assert [v["windows"] for v in videos] == [len(window_starts(v["frames"], 20, 10)) for v in videos]
    assert counts["windows"] == sum(v["windows"] for v in videos) > len(videos)
    vectors = index_contents(folder)[1]["vectors"]
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(len(vectors)))


def test_stage_one_ranks_windows_by_inner_product(library, grounder):
    folder, counts = library
    index = LibraryIndex.open(folder, grounder)
    hits = index.windows(QUERY, n=counts["windows"])
    vectors = index_contents(folder)[1]["vectors"]
    with torch.no_grad():
        query = grounder.model.retrieval.embed_queries(*grounder.text_cache([QUERY], "cpu"))[0]
    expected = (vectors @ query).tolist()
    assert sorted(h["row"] for h in hits) == list(range(counts["windows"]))
    np.testing.assert_allclose([h["similarity"] for h in hits], [expected[h["row"]] for h in hits], atol=1e-5)
    assert [h["similarity"] for h in hits] == sorted((h["similarity"] for h in hits), reverse=True)
    assert len(index.windows(QUERY, n=3)) == 3


def test_search_returns_ranked_moments_with_the_documented_fields(library, grounder):
    folder, _ = library
    results = LibraryIndex.open(folder, grounder).search(QUERY, k=7, candidates=4)
    assert [r["rank"] for r in results] == list(range(1, 8))
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    chosen = {(h["vid"], h["start"]) for h in LibraryIndex.open(folder, grounder).windows(QUERY, n=4)}
    for r in results:
        assert {"rank", "query", "video", "vid", "start", "end", "score", "window", "clip_times", "saliency"} <= set(r)
        assert r["query"] == QUERY and Path(r["video"]).stem == r["vid"] and Path(r["video"]).is_absolute()
        assert 0 <= r["start"] <= r["end"] <= r["duration"]
        assert (r["vid"], r["window"][0]) in chosen, "stage 2 grounds only in the windows stage 1 chose"
        assert r["window"][0] <= r["end"] and r["start"] <= r["window"][1]
        assert len(r["clip_times"]) == len(r["saliency"]) > 0 and r["clip_times"][0] == r["window"][0]


def test_batched_searches_give_each_query_its_results_alone(library, grounder, synth_root):
    """``search_many``: one text-encoder call, one faiss search, each video read once for the queries that hit it."""
    index = LibraryIndex.open(library[0], grounder)
    texts = [json.loads(line)["query"] for line in (synth_root / "val.jsonl").read_text().splitlines()][:3]
    texts += [QUERY, texts[0]]  # a query twice in one batch
    alone = [index.search(text, k=5, candidates=3) for text in texts]
    together = index.search_many(texts, k=5, candidates=3)
    assert len({(h["vid"], h["start"]) for text in texts for h in index.windows(text, n=3)}) > 3, "queries hit different windows"
    for mine, expected in zip(together, alone):
        assert [(r["rank"], r["vid"], r["query"], r["window"]) for r in mine] == [
            (r["rank"], r["vid"], r["query"], r["window"]) for r in expected
        ]
        for got, want in zip(mine, expected):
            assert [got["start"], got["end"], got["score"]] == pytest.approx([want["start"], want["end"], want["score"]], abs=2e-4)
    assert [len(r) for r in index.search_many(texts[:2], k=[1, 4], candidates=3)] == [1, 4]
    assert index.search(texts[0], k=2, candidates=3) == alone[0][:2], "each video's moments cut to k: the same top k"
    with pytest.raises(ValueError, match="k must be at least 1"):
        index.search_many(texts[:2], k=[1, 0])


def test_a_video_whose_states_went_missing_gets_an_error_record_and_the_others_stand(library, grounder, tmp_path, capsys):
    folder = Path(shutil.copytree(library[0], tmp_path / "index"))
    index = LibraryIndex.open(folder, grounder)
    everything = index.search(QUERY, k=10_000, candidates=library[1]["windows"])
    lost = everything[0]["vid"]
    (folder / "features" / f"{lost}.safetensors").unlink()
    results = index.search(QUERY, k=10_000, candidates=library[1]["windows"])
    moments, errors = [r for r in results if "error" not in r], [r for r in results if "error" in r]
    assert moments == [{**r, "rank": i} for i, r in enumerate((r for r in everything if r["vid"] != lost), 1)]
    assert results[-len(errors) :] == errors and len(errors) == 1
    assert errors[0]["vid"] == lost and errors[0]["query"] == QUERY and "vtg index again" in errors[0]["error"]
    capsys.readouterr()
    assert main(["search", "--index", str(folder), QUERY, "-k", "3", "--candidates", str(library[1]["windows"])]) == 1
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 4 and "error: its stored states cannot be read" in printed[-1]


def test_stage_two_equals_vtg_ground_when_every_window_is_a_candidate(library, grounder, synth_root):
    folder, counts = library
    results = LibraryIndex.open(folder, grounder).search(QUERY, k=10_000, candidates=counts["windows"])
    for video in sorted((synth_root / "videos").glob("*.mp4")):
        [expected] = grounder.ground(video, QUERY, features_dir=folder / "features")
        got = [[r["start"], r["end"], r["score"]] for r in results if r["vid"] == video.stem]
        assert got == expected["pred_relevant_windows"], video.stem


def rgnet_checkpoint(checkpoint: Path, folder: Path, temperature: float) -> Path:
    """``checkpoint`` (R²) as an RGNet one: its weights, an RG encoder drawn at random (a window head that is not zero,
    so windows differ) and ``decode.window_temperature``."""
    shutil.copytree(checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model"]["name"] = "rgnet"
    config["decode"]["window_temperature"] = temperature
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = create_model(config_from_dict(config).model)
    torch.nn.init.normal_(model.rg.window_head.weight)
    save_file(model.state_dict() | load_file(str(folder / "model.safetensors")), str(folder / "model.safetensors"))
    return folder


def test_rgnet_search_scores_each_window_against_the_querys_best_over_the_library(synth_root, checkpoint, tmp_path):
    """With a window temperature, a moment's search score is its score in its video alone (best window: 1) times
    exp((that video's best logit - the best over the videos searched) / T), so videos compare on one scale."""
    folder = rgnet_checkpoint(checkpoint, tmp_path / "rgnet", 0.3)
    grounder = Grounder.from_pretrained(folder)
    counts = build_index(find_videos([str(synth_root / "videos")]), grounder, tmp_path / "index", str(folder), progress=False)
    results = LibraryIndex.open(tmp_path / "index", grounder).search(QUERY, k=10_000, candidates=counts["windows"])
    alone = {}
    for video in sorted((synth_root / "videos").glob("*.mp4")):
        with grounder.open_stored(tmp_path / "index" / "features" / f"{video.stem}.safetensors") as stored:
            [alone[video.stem]] = grounder.ground_opened(stored, [QUERY])
    best = max(result["reference"] for result in alone.values())
    assert len({round(result["reference"], 3) for result in alone.values()}) == len(alone), "the videos' best windows differ"
    expected = {
        (vid, round(start, 4), round(end, 4)): score * np.exp((result["reference"] - best) / 0.3)
        for vid, result in alone.items()
        for start, end, score in result["moments"].tolist()
    }
    assert len(results) == len(expected)
    assert [r["score"] for r in results] == pytest.approx([expected[r["vid"], r["start"], r["end"]] for r in results], abs=2e-4)
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True) and results[0]["score"] <= 1


def test_a_rerun_adds_changes_and_drops_videos_and_equals_a_fresh_build(synth_root, checkpoint, grounder, tmp_path):
    videos = copy_videos(synth_root, tmp_path / "videos", 4)
    added = videos[3].rename(tmp_path / "added.mp4")
    folder = tmp_path / "index"
    build_index(find_videos([str(tmp_path / "videos")]), grounder, folder, str(checkpoint), progress=False)
    index = LibraryIndex.open(folder, grounder)
    kept_file = folder / "features" / f"{videos[2].stem}.safetensors"
    kept_stat = kept_file.stat().st_mtime_ns

    shutil.move(added, videos[3])  # a new video
    shutil.copy(videos[0], videos[1])  # a changed one: other content, size and mtime
    videos[0].unlink()  # a deleted one
    counts = build_index(find_videos([str(tmp_path / "videos")]), grounder, folder, str(checkpoint), progress=False)
    assert (counts["new"], counts["changed"], counts["unchanged"], counts["removed"], counts["version"]) == (1, 1, 1, 1, 2)
    assert kept_file.stat().st_mtime_ns == kept_stat, "an unchanged video is not extracted again"
    assert not (folder / "features" / f"{videos[0].stem}.safetensors").exists(), "a deleted video's states go too"

    fresh = tmp_path / "fresh"
    build_index(find_videos([str(tmp_path / "videos")]), grounder, fresh, str(checkpoint), progress=False)
    (videos_after, tensors_after), (videos_fresh, tensors_fresh) = index_contents(folder), index_contents(fresh)
    assert videos_after == videos_fresh
    assert tensors_after.keys() == tensors_fresh.keys()
    for name in tensors_fresh:
        torch.testing.assert_close(tensors_after[name], tensors_fresh[name], msg=name)

    assert index.version == 1 and index.changed() and index.reload() and index.version == 2
    assert not index.changed() and not index.reload()
    assert [v["vid"] for v in index.videos()] == [v.stem for v in videos[1:]]
    assert {r["vid"] for r in index.search(QUERY, k=50, candidates=50)} == {v.stem for v in videos[1:]}


def other_checkpoint(checkpoint: Path, folder: Path) -> Path:
    """A copy of ``checkpoint`` with other retrieval-head weights."""
    shutil.copytree(checkpoint, folder)
    weights = load_file(str(folder / "model.safetensors"))
    weights["retrieval.window_out.bias"] += 1.0
    save_file(weights, str(folder / "model.safetensors"))
    return folder


def test_an_index_refuses_another_checkpoint_until_rebuilt(synth_root, checkpoint, tmp_path, capsys):
    video_dir = tmp_path / "videos"
    copy_videos(synth_root, video_dir, 1)
    mine = tmp_path / "mine"
    shutil.copytree(checkpoint, mine)
    folder = tmp_path / "index"
    assert main(["index", str(video_dir), "--checkpoint", str(mine), "--index", str(folder), "--no-progress"]) == 0
    assert "index layout: flat, Flat" in capsys.readouterr().err, "vtg index prints the layout it chose"
    other = other_checkpoint(checkpoint, tmp_path / "other")
    with pytest.raises(LibraryError, match="built with checkpoint .*--rebuild"):
        LibraryIndex.open(folder, Grounder.from_pretrained(other))
    assert_one_line_error(
        ["index", str(video_dir), "--checkpoint", str(other), "--index", str(folder), "--no-progress"], capsys, str(folder), "--rebuild"
    )
    shutil.rmtree(mine)
    shutil.copytree(other, mine)  # the checkpoint the index names has been retrained
    assert_one_line_error(["search", "--index", str(folder), QUERY], capsys, "library.json", "built with checkpoint", "--rebuild")
    assert main(["index", str(video_dir), "--checkpoint", str(mine), "--index", str(folder), "--rebuild", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(folder), QUERY, "-k", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_a_model_setting_added_later_leaves_every_index_valid_while_at_its_default(checkpoint):
    """The checkpoint identity an index is tied to holds today's model settings whatever their values, and a setting
    added later only when it is not at its default: adding one to ModelConfig must not force every index's rebuild."""
    from dataclasses import dataclass, fields

    from vtg_pipeline.models import ModelConfig

    @dataclass
    class Later(ModelConfig):
        later_setting: bool = False

    assert library_module.ALWAYS_HASHED_MODEL_SETTINGS <= {f.name for f in fields(ModelConfig)}
    grounder = Grounder.from_pretrained(checkpoint)
    before = library_module.checkpoint_sha256(grounder)
    grounder.cfg.model = Later(**grounder.cfg.model.to_dict())
    assert library_module.checkpoint_sha256(grounder) == before
    grounder.cfg.model.later_setting = True
    assert library_module.checkpoint_sha256(grounder) != before
    grounder.cfg.model.later_setting, grounder.cfg.model.max_moments = False, ModelConfig.max_moments + 1
    assert library_module.checkpoint_sha256(grounder) != before


def current(folder: Path) -> Path:
    return folder / json.loads((folder / "index.json").read_text())["folder"]


SPOILED = {
    "index.json missing": (lambda f: (f / "index.json").unlink(), "index.json", "vtg index"),
    "index.json not JSON": (lambda f: (f / "index.json").write_text("{"), "index.json", "--rebuild"),
    "library.json cut short": (lambda f: (current(f) / "library.json").write_text('{"videos": ['), "library.json", "--rebuild"),
    "vectors truncated": (
        lambda f: (current(f) / "vectors.safetensors").write_bytes(b"\x08" + b"\x00" * 20),
        "vectors.safetensors",
        "--rebuild",
    ),
    "faiss index missing": (lambda f: (current(f) / "windows.faiss").unlink(), "windows.faiss", "--rebuild"),
    "faiss index garbage": (lambda f: (current(f) / "windows.faiss").write_bytes(b"garbage" * 50), "windows.faiss", "--rebuild"),
}


@pytest.mark.parametrize("case", SPOILED)
def test_a_damaged_index_is_one_line_naming_the_file_and_rebuild(case, library, tmp_path, capsys):
    folder = tmp_path / "index"
    shutil.copytree(library[0], folder)
    spoil, named, hint = SPOILED[case]
    spoil(folder)
    assert_one_line_error(["search", "--index", str(folder), QUERY], capsys, named, hint)


def test_rebuild_repairs_a_damaged_index(library, checkpoint, synth_root, tmp_path, capsys):
    folder = tmp_path / "index"
    shutil.copytree(library[0], folder)
    (current(folder) / "windows.faiss").write_bytes(b"garbage")
    args = ["index", str(synth_root / "videos"), "--checkpoint", str(checkpoint), "--index", str(folder), "--no-progress"]
    assert_one_line_error(args, capsys, "windows.faiss", "--rebuild")
    assert main([*args, "--rebuild"]) == 0
    assert "4 videos (4 new, 0 changed, 0 unchanged" in capsys.readouterr().err
    assert main(["search", "--index", str(folder), QUERY]) == 0


def test_vtg_index_lists_a_bad_video_and_vtg_search_prints_moments(synth_root, checkpoint, tmp_path, capsys):
    video_dir = tmp_path / "videos"
    [video] = copy_videos(synth_root, video_dir, 1)
    (video_dir / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    folder = tmp_path / "index"
    assert main(["index", str(video_dir), "--checkpoint", str(checkpoint), "--index", str(folder), "--no-progress"]) == 1
    assert "1 videos (1 new, 0 changed, 0 unchanged, 0 removed, 1 failed)" in capsys.readouterr().err
    info = json.loads((current(folder) / "library.json").read_text())
    assert [v["vid"] for v in info["videos"]] == [video.stem]
    assert [f["vid"] for f in info["failed"]] == ["broken"] and info["failed"][0]["error"]

    assert main(["search", "--index", str(folder), QUERY, "-k", "3", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["rank"] for r in lines] == [1, 2, 3]
    assert all(r["video"] == str(video.resolve()) and r["vid"] == video.stem and r["query"] == QUERY for r in lines)
    assert [r["score"] for r in lines] == sorted((r["score"] for r in lines), reverse=True)
    assert main(["search", "--index", str(folder), QUERY, "-k", "3"]) == 0
    plain = capsys.readouterr().out.splitlines()
    best = lines[0]
    assert plain[0].split() == ["1.", str(video.resolve()), f"{hms(best['start'])}–{hms(best['end'])}", f"{best['score']:.4f}"]


@pytest.mark.parametrize("query, words", [("", "empty query"), ("   ", "empty query"), (" ".join(["red"] * 100), "too long")])
def test_an_empty_or_over_long_query_is_refused(query, words, library, grounder, capsys):
    with pytest.raises(ValueError, match=words):
        LibraryIndex.open(library[0], grounder).search(query)
    assert_one_line_error(["search", "--index", str(library[0]), query], capsys, words)


def test_a_large_library_gets_an_approximate_index(library, grounder, checkpoint, synth_root, tmp_path):
    """Above ``approximate_above`` windows the index is an inverted file; on a small library it finds what the exact one finds."""
    folder = tmp_path / "index"
    shutil.copytree(library[0] / "features", folder / "features")
    counts = build_index(find_videos([str(synth_root / "videos")]), grounder, folder, str(checkpoint), progress=False, approximate_above=0)
    assert counts["kind"] == "ivf" and counts["layout"]["nprobe"] == counts["layout"]["lists"] == 4, "25 windows: 4 lists, all scanned"
    exact = LibraryIndex.open(library[0], grounder).windows(QUERY, n=5)
    approximate = LibraryIndex.open(folder, grounder).windows(QUERY, n=5)
    assert [(h["vid"], h["start"]) for h in approximate] == [(h["vid"], h["start"]) for h in exact]


def test_a_compressed_index_finds_what_the_exact_one_finds_and_records_its_layout(library, grounder, checkpoint, synth_root, tmp_path):
    """Above ``compress_above`` windows: product-quantised codes, the shortlist re-ranked from the mapped vectors (on a
    library this small the shortlist covers it, so the result is exact)."""
    folder = tmp_path / "index"
    shutil.copytree(library[0] / "features", folder / "features")
    counts = build_index(
        find_videos([str(synth_root / "videos")]), grounder, folder, str(checkpoint), progress=False, approximate_above=0, compress_above=0
    )
    assert counts["kind"] == "ivfpq" and counts["layout"]["trained_on"] == counts["windows"]
    recorded = json.loads((folder / json.loads((folder / "index.json").read_text())["folder"] / "library.json").read_text())["faiss"]
    assert recorded == counts["layout"]
    exact, compressed = LibraryIndex.open(library[0], grounder), LibraryIndex.open(folder, grounder)
    found, expected = compressed.windows(QUERY, n=5), exact.windows(QUERY, n=5)
    assert [(h["vid"], h["start"]) for h in found] == [(h["vid"], h["start"]) for h in expected]
    assert [h["similarity"] for h in found] == pytest.approx([h["similarity"] for h in expected], abs=1e-6), "re-ranked exactly"
    assert compressed.search(QUERY, k=3) == exact.search(QUERY, k=3)
    again = build_index(
        find_videos([str(synth_root / "videos")]), grounder, folder, str(checkpoint), progress=False, approximate_above=0, compress_above=0
    )
    assert again["unchanged"] == 4 and again["layout"] == counts["layout"], "a rebuild reuses the training"


def test_safetensors_outputs_get_the_mode_every_other_output_gets(library, checkpoint):
    """safetensors' save_file makes 0600 files; the index's vectors and the checkpoint's weights are 0644 like the
    JSON beside them (under the usual umask 022)."""
    version = library[0] / json.loads((library[0] / "index.json").read_text())["folder"]
    modes = {path.name: path.stat().st_mode & 0o777 for path in [*version.iterdir(), *checkpoint.iterdir()] if path.is_file()}
    assert modes["vectors.safetensors"] == modes["library.json"] == modes["model.safetensors"] == modes["config.json"] == 0o644


def test_an_index_can_keep_its_states_in_fp8(synth_root, checkpoint, grounder, library, tmp_path):
    """``states="fp8"`` (``vtg index --states fp8``): half the bytes per stored state; search grounds in them."""
    videos = copy_videos(synth_root, tmp_path / "videos", 2)
    folder = tmp_path / "index"
    build_index(find_videos([str(tmp_path / "videos")]), grounder, folder, str(checkpoint), progress=False, states="fp8")
    small, full = folder / "features" / f"{videos[0].stem}.safetensors", library[0] / "features" / f"{videos[0].stem}.safetensors"
    with safe_open(str(small), framework="pt") as f, safe_open(str(full), framework="pt") as g:
        assert f.metadata()["vision_format"] == VISION_FP8
        assert (f.get_slice("vision").get_dtype(), g.get_slice("vision").get_dtype()) == ("F8_E4M3", "F16")
        assert f.get_slice("vision").get_shape() == g.get_slice("vision").get_shape()
    results = LibraryIndex.open(folder, grounder).search(QUERY, k=3)
    assert len(results) == 3 and all(r["vid"] in {v.stem for v in videos} for r in results)


def search_every_window_as_the_stored_index(folder: Path, library, grounder) -> tuple[LibraryIndex, list[dict]]:
    """Search the index in ``folder`` over all its windows; assert it finds the moments the fp16 ``library`` finds
    (scores within 2e-4). Returns the index and its results."""
    windows = library[1]["windows"]
    expected = LibraryIndex.open(library[0], grounder).search(QUERY, k=10_000, candidates=windows)
    index = LibraryIndex.open(folder, grounder)
    got = index.search(QUERY, k=10_000, candidates=windows)
    assert [(r["vid"], r["window"]) for r in got] == [(r["vid"], r["window"]) for r in expected]
    for mine, want in zip(got, expected):
        assert [mine["start"], mine["end"], mine["score"]] == pytest.approx([want["start"], want["end"], want["score"]], abs=2e-4)
    return index, got


def test_an_on_demand_index_keeps_no_states_and_finds_what_the_stored_one_finds(
    synth_root, checkpoint, grounder, library, tmp_path, capsys
):
    """``vtg index --states on-demand``: the store keeps the last layer's CLS states alone (the same window vectors);
    stage 2 re-encodes its windows from the videos, with the stored states' moments, and a second search re-encodes
    nothing (the cache)."""
    folder = tmp_path / "index"
    argv = ["index", str(synth_root / "videos"), "--checkpoint", str(checkpoint), "--index", str(folder), "--no-progress"]
    assert main([*argv, "--states", "on-demand"]) == 0
    assert capsys.readouterr().err.splitlines()[-1].endswith("; states on-demand")
    for file in sorted((library[0] / "features").glob("*.safetensors")):
        with safe_open(str(folder / "features" / file.name), framework="pt") as f, safe_open(str(file), framework="pt") as g:
            assert f.metadata()["vision_format"] == VISION_CLS and "frames" not in f.keys()  # thumbnails: vtg serve decodes them
            frames, layers, tokens, dims = g.get_slice("vision").get_shape()
            assert f.get_slice("vision").get_shape() == [frames, 1, 1, dims] and layers * tokens > 1
            assert torch.equal(f.get_tensor("vision")[:, 0, 0], g.get_tensor("vision")[:, -1, 0])
    assert torch.equal(index_contents(folder)[1]["vectors"], index_contents(library[0])[1]["vectors"])

    windows = library[1]["windows"]
    index, got = search_every_window_as_the_stored_index(folder, library, grounder)
    assert (index.reencoded.misses, index.reencoded.hits) == (windows, 0), "each window encoded once"
    assert index.search(QUERY, k=10_000, candidates=windows) == got
    assert (index.reencoded.misses, index.reencoded.hits) == (windows, windows), "then found in the cache"


def layout_checkpoint(checkpoint: Path, folder: Path) -> Path:
    """``checkpoint`` with ``model.retrieval_layout`` 2 and a layout that counts (random, not zero)."""
    shutil.copytree(checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model"]["retrieval_layout"] = 2
    (folder / "config.json").write_text(json.dumps(config))
    weights = load_file(str(folder / "model.safetensors"))
    torch.manual_seed(0)
    weights |= {
        f"retrieval.layout.{k}": torch.randn_like(v)
        for k, v in Grounder.from_pretrained(folder).model.retrieval.layout.state_dict().items()
    }
    save_file(weights, str(folder / "model.safetensors"))
    return folder


def test_a_window_embedding_that_reads_the_patch_layout_is_indexed_from_every_token(synth_root, checkpoint, library, tmp_path):
    """``model.retrieval_layout``: ``vtg index`` embeds each window from its frames' every last-layer token (the vectors
    are ``embed_grid`` of them, not the CLS-only head's), and refuses ``states on-demand``, which keeps the CLS
    states alone, in one line."""
    folder = layout_checkpoint(checkpoint, tmp_path / "layout")
    grounder = Grounder.from_pretrained(folder)
    videos = find_videos([str(synth_root / "videos")])
    with pytest.raises(LibraryError, match="retrieval_layout.*fp16 or fp8"):
        build_index(videos, grounder, tmp_path / "on_demand", str(folder), progress=False, states="on-demand")
    build_index(videos, grounder, tmp_path / "index", str(folder), progress=False)
    records, tensors = index_contents(tmp_path / "index")
    window, stride = grounder.cfg.decode.window_frames(grounder.fps)
    expected = []
    for record in records:
        with safe_open(str(tmp_path / "index" / "features" / f"{record['vid']}.safetensors"), framework="pt") as f:
            last = f.get_tensor("vision")[:, -1]  # (T, P, D): every token of the last layer
        with torch.no_grad():
            expected.append(grounder.model.retrieval.embed_grid(last, window_starts(len(last), window, stride), window))
    torch.testing.assert_close(tensors["vectors"], torch.cat(expected), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(tensors["vectors"], index_contents(library[0])[1]["vectors"], atol=1e-3)


def test_an_on_demand_index_keeps_the_states_of_the_videos_a_list_names(
    synth_root, checkpoint, grounder, library, tmp_path, capsys, caplog
):
    """``vtg index --states on-demand --keep-states FILE`` ("both"): the videos FILE names (ids or patterns) keep fp16
    states and frames, the rest the CLS states alone; search re-encodes only the others' windows and finds what the
    stored index finds. A video entering or leaving the list is re-extracted; its window vectors are reused."""
    ids = sorted(v.stem for v in (synth_root / "videos").glob("*.mp4"))
    folder, keep = tmp_path / "index", tmp_path / "keep.txt"
    keep.write_text(f"# popular this week\n{ids[0]}\n\n{ids[1][:-1]}[{ids[1][-1]}]\nnot/a/video\n")  # an id, a pattern, a miss
    argv = ["index", str(synth_root / "videos"), "--checkpoint", str(checkpoint), "--index", str(folder), "--no-progress"]
    with caplog.at_level("WARNING"):
        assert main([*argv, "--states", "on-demand", "--keep-states", str(keep)]) == 0
    assert "keep-states: 1 pattern(s) match no video, first 'not/a/video'" in caplog.text
    assert capsys.readouterr().err.splitlines()[-1].endswith("; states on-demand (2 videos keep fp16 states)")

    def layouts() -> dict[str, str]:
        found = {}
        for vid in ids:
            with safe_open(str(folder / "features" / f"{vid}.safetensors"), framework="pt") as f:
                found[vid] = f.metadata()["vision_format"] if "frames" not in f.keys() else "full"
        return found

    assert layouts() == {ids[0]: "full", ids[1]: "full", ids[2]: VISION_CLS, ids[3]: VISION_CLS}
    assert torch.equal(index_contents(folder)[1]["vectors"], index_contents(library[0])[1]["vectors"])
    windows = library[1]["windows"]
    index, got = search_every_window_as_the_stored_index(folder, library, grounder)
    on_demand = sum(v["windows"] for v in index.videos() if v["vid"] in ids[2:])
    assert index.reencoded.misses == on_demand, "only the videos without stored states are re-encoded"

    keep.write_text(f"{ids[3]}\n")
    assert main([*argv, "--states", "on-demand", "--keep-states", str(keep)]) == 0
    assert "0 new, 0 changed, 4 unchanged" in capsys.readouterr().err
    assert layouts() == {ids[0]: VISION_CLS, ids[1]: VISION_CLS, ids[2]: VISION_CLS, ids[3]: "full"}
    again = LibraryIndex.open(folder, grounder).search(QUERY, k=10_000, candidates=windows)
    assert [(r["vid"], r["window"]) for r in again] == [(r["vid"], r["window"]) for r in got]

    assert_one_line_error([*argv, "--keep-states", str(keep)], capsys, "--keep-states", "--states on-demand")
    assert_one_line_error([*argv, "--states", "on-demand", "--keep-states", str(tmp_path / "nope.txt")], capsys, "nope.txt")


def test_the_window_cache_keeps_the_most_recently_used_windows_within_its_bytes(monkeypatch):
    encoded = []

    def encode_samples(backbone, path, times):
        encoded.append((path, len(times)))
        return torch.zeros(len(times), 2, dtype=torch.float16)  # 4 bytes a frame

    monkeypatch.setattr(library_module, "encode_samples", encode_samples)
    cache, grounder, times = ReencodedWindows(max_bytes=40), SimpleNamespace(backbone=None), np.arange(100.0)
    video = {"path": "a.mp4", "size": "1", "mtime": "2"}
    assert len(cache.rows(grounder, video, times, 0, 4)) == 4
    cache.rows(grounder, video, times, 4, 8)
    cache.rows(grounder, video, times, 0, 4)  # found: now the most recent
    cache.rows(grounder, video, times, 8, 12)  # 48 bytes: the least recent (4-8) goes
    assert cache.bytes == 32 and (cache.hits, cache.misses) == (1, 3)
    cache.rows(grounder, video, times, 0, 4)
    cache.rows(grounder, video, times, 4, 8)
    assert (cache.hits, cache.misses) == (2, 4) and cache.bytes <= 40
    cache.rows(grounder, video, times, 20, 40)  # 80 bytes: given, never kept
    cache.rows(grounder, {**video, "mtime": "3"}, times, 4, 8)  # the video changed: its windows are new ones
    assert (cache.hits, cache.misses) == (2, 6) and cache.bytes <= 40
    assert encoded == [("a.mp4", 4)] * 4 + [("a.mp4", 20), ("a.mp4", 4)]
    nothing = ReencodedWindows(max_bytes=0)
    nothing.rows(grounder, video, times, 0, 4)
    nothing.rows(grounder, video, times, 0, 4)
    assert (nothing.hits, nothing.misses, nothing.bytes) == (0, 2, 0)


def test_an_on_demand_index_gives_an_error_record_for_a_video_gone_or_changed(synth_root, checkpoint, grounder, tmp_path):
    """Neither stored states nor the video (or the video rewritten since): that video's error record; the others stand."""
    videos = copy_videos(synth_root, tmp_path / "videos", 3)
    folder = tmp_path / "index"
    counts = build_index(find_videos([str(tmp_path / "videos")]), grounder, folder, str(checkpoint), progress=False, states="on-demand")
    index = LibraryIndex.open(folder, grounder, window_cache_bytes=0)
    everything = index.search(QUERY, k=10_000, candidates=counts["windows"])
    gone, changed = videos[0], videos[1]
    gone.unlink()
    os.utime(changed, (changed.stat().st_atime, changed.stat().st_mtime + 10))
    results = index.search(QUERY, k=10_000, candidates=counts["windows"])
    moments, errors = [r for r in results if "error" not in r], [r for r in results if "error" in r]
    assert moments == [{**r, "rank": i} for i, r in enumerate((r for r in everything if r["vid"] == videos[2].stem), 1)]
    assert {e["vid"]: e["error"].split(" (")[0] for e in errors} == {v.stem: "its video cannot be re-encoded" for v in (gone, changed)}
    assert "changed since the index was written" in next(e for e in errors if e["vid"] == changed.stem)["error"]
    assert all("vtg index again" in e["error"] for e in errors)


def test_a_checkpoint_older_than_the_search_head_grounds_but_is_not_indexed(checkpoint, synth_root, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(checkpoint, old)
    weights = {k: v for k, v in load_file(str(old / "model.safetensors")).items() if not k.startswith("retrieval.")}
    save_file(weights, str(old / "model.safetensors"))
    grounder = Grounder.from_pretrained(old)
    video = sorted((synth_root / "videos").glob("*.mp4"))[0]
    assert grounder.ground(video, "a red disc rises")[0]["pred_relevant_windows"]
    with pytest.raises(LibraryError, match="train it again"):
        build_index(find_videos([str(video)]), grounder, tmp_path / "index", str(old), progress=False)
