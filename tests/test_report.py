"""The HTML report of `vtg ground`: media URLs and copies, legend, time axis, ground truth; and in headless Chromium
(selenium): moment buttons seek a loaded player that stays in view, a video that cannot load says so."""

import html
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from bad_input import assert_one_line_error
from test_bad_inputs_train_ground import checkpoint  # noqa: F401  (a fixture: a checkpoint trained on synth_root)

from vtg_pipeline.cli import main
from vtg_pipeline.features import feature_path, load_features, read_metadata
from vtg_pipeline.names import hms
from vtg_pipeline.report import axis_ticks, true_windows, write_report

ROOT = Path(__file__).resolve().parents[1]
START = 4.0  # every query's best moment starts here


def copied_videos(synth_root: Path, folder: Path, count: int = 2) -> list[Path]:
    """Copies of the first ``count`` synthetic videos in ``folder`` (same stems: the store's thumbnails still serve)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(v, folder / v.name)) for v in sorted((synth_root / "videos").glob("*.mp4"))[:count]]


def results_for(videos: list[Path], store: Path, queries: int = 1) -> list[dict]:
    """``Grounder.ground_many``-shaped results for ``videos`` (ids: their stems in ``store``): qids STEM-0, STEM-1, ...;
    each query's best moment starts at START."""
    results = []
    for video in videos:
        times = load_features(feature_path(store, video.stem), ["timestamps"])["timestamps"]
        duration = float(read_metadata(feature_path(store, video.stem))["duration"])
        for q in range(queries):
            windows = [[START, START + 6.0 + q, 0.91], [20.0, 24.0, 0.37]]
            results.append(
                {
                    "qid": f"{video.stem}-{q}",
                    "query": f"query {q}",
                    "vid": video.stem,
                    "video": str(video),
                    "duration": duration,
                    "pred_relevant_windows": windows,
                    "pred_relevant_windows_hms": [[hms(s), hms(e)] for s, e, _ in windows],
                    "pred_saliency_scores": np.sin(times / 5).round(4).tolist(),
                    "clip_times": times.tolist(),
                }
            )
    return results


def test_axis_ticks_are_round_and_cover_the_video():
    assert axis_ticks(95) == [0, 15, 30, 45, 60, 75, 90]
    assert axis_ticks(3725) == [0, 600, 1200, 1800, 2400, 3000, 3600]
    assert axis_ticks(0.5) == [0]


def test_report_has_a_legend_a_time_axis_and_absolute_file_urls(synth_root, tmp_path):
    [video] = copied_videos(synth_root, tmp_path / "my videos #1", count=1)
    results = results_for([video], synth_root / "features") + [
        {"qid": 9, "query": "x", "video": str(tmp_path / "gone.mp4"), "error": "no such video file"}
    ]
    page = write_report(results, tmp_path / "report", synth_root / "features").read_text()
    url = video.resolve().as_uri()
    assert url.startswith("file:///") and "%20" in url and "%23" in url
    assert f'src="{html.escape(url)}"' in page and f'src="{(tmp_path / "gone.mp4").resolve().as_uri()}"' in page
    assert "saliency" in page and "min-max scaled" in page and "top 5 predicted moments" in page and "its score" in page
    assert "true moments" not in page, "no ground truth given: no legend entry for it"
    assert 'class="truth"' not in page and page.count('class="moment"') == 2
    duration = results[0]["duration"]
    labels = [hms(t).removesuffix(".0") for t in axis_ticks(duration)]
    assert all(f">{label}</text>" in page for label in labels) and ">0:00:30</text>" in page
    assert page.count('onerror="unplayable(this)"') == 2 and "cannot load" in page and " hidden>" in page
    assert f"onclick=\"seek('v0', {START})\"" in page and "position:sticky" in page


def test_ground_truth_is_matched_by_qid_then_by_video_and_query(synth_root, tmp_path):
    videos = copied_videos(synth_root, tmp_path / "videos")
    a, b = videos[0].stem, videos[1].stem
    results = results_for(videos, synth_root / "features")
    records = [
        {"qid": f"{a}-0", "vid": a, "query": "renamed", "relevant_windows": [[2.0, 8.0], [30.0, 34.0]]},
        {"qid": f"{b}-0", "vid": "another video", "query": "query 0", "relevant_windows": [[1.0, 2.0]]},  # qid of another video
        {"qid": 77, "vid": b, "query": "query 0", "relevant_windows": [[10.0, 12.0]]},
    ]
    assert true_windows(results, records) == [[[2.0, 8.0], [30.0, 34.0]], [[10.0, 12.0]]]
    assert true_windows(results, records[1:2]) == [None, None]
    page = write_report(results, tmp_path / "report", None, ground_truth=records[:1]).read_text()
    assert page.count('class="truth"') == 2 and "found for 1 of 2 queries" in page and 'class="swatch truth"' in page


@pytest.mark.parametrize("mode", ["copy", "link"])
def test_report_media_copy_and_link_put_the_videos_in_the_report_folder(mode, synth_root, tmp_path):
    videos = copied_videos(synth_root, tmp_path / "a") + copied_videos(synth_root, tmp_path / "b", count=1)  # two share a stem
    results = results_for(videos, synth_root / "features")
    for _ in range(2):  # a second run keeps what is there
        page = write_report(results, tmp_path / "report", synth_root / "features", media=mode).read_text()
    media = tmp_path / "report" / "media"
    names = sorted(p.name for p in media.iterdir())
    assert names == sorted([videos[0].name, videos[1].name, f"{videos[2].stem}-2.mp4"])
    assert all(f'src="media/{name}"' in page for name in names) and "file://" not in page
    for name, video in zip([videos[0].name, videos[1].name, f"{videos[2].stem}-2.mp4"], videos):
        assert (media / name).read_bytes() == video.read_bytes()
        assert (media / name).is_symlink() == (mode == "link")
    with pytest.raises(ValueError, match="expected one of absolute, copy, link"):
        write_report(results, tmp_path / "report", None, media="zip")


def test_vtg_ground_draws_the_ground_truth_and_copies_the_media(checkpoint, synth_root, tmp_path):  # noqa: F811
    report = tmp_path / "report"
    code = main(
        [
            "ground",
            "--checkpoint",
            str(checkpoint),
            "--queries",
            str(synth_root / "val_queries.jsonl"),
            "--out",
            str(tmp_path / "p.jsonl"),
            "--report",
            str(report),
            "--gt",
            str(synth_root / "val.jsonl"),
            "--report-media",
            "copy",
            "--no-progress",
        ]
    )
    assert code == 0
    truth = [json.loads(line) for line in (synth_root / "val.jsonl").read_text().splitlines()]
    page = (report / "index.html").read_text()
    assert page.count('class="truth"') == sum(len(r["relevant_windows"]) for r in truth)
    assert f"found for {len(truth)} of {len(truth)} queries" in page
    assert sorted(p.name for p in (report / "media").iterdir()) == sorted({f"{r['vid']}.mp4" for r in truth})


@pytest.mark.parametrize("case", ["missing", "malformed", "no report", "media without report"])
def test_vtg_ground_refuses_a_bad_gt_before_any_work(case, synth_root, tmp_path, capsys, monkeypatch):
    import vtg_pipeline.grounder as grounder

    monkeypatch.setattr(grounder.Grounder, "from_pretrained", lambda *a, **k: pytest.fail("work started before --gt was checked"))
    gt = tmp_path / "gt.jsonl"
    if case == "malformed":
        gt.write_text('{"qid": 1, "query": "x", "vid": "v", "duration": 10, "relevant_windows": [[0, 2]]}\n{"qid": 2, "query": \n')
    elif case == "no report":
        shutil.copy(synth_root / "val.jsonl", gt)
    argv = ["ground", "--checkpoint", "unused", str(synth_root / "videos"), "--query", "x", "--out", str(tmp_path / "p.jsonl")]
    if case == "media without report":
        assert_one_line_error([*argv, "--report-media", "copy"], capsys, "--report-media copy", "--report DIR")
        return
    if case != "no report":
        argv += ["--report", str(tmp_path / "report")]
    names = {"missing": [gt, "file not found"], "malformed": [f"{gt}:2", "not valid JSON"], "no report": [gt, "--report DIR"]}[case]
    assert_one_line_error([*argv, "--gt", str(gt)], capsys, *names)


# ---------------------------------------------------------------- in headless Chromium


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium driven by selenium (skipped when Chromium, chromedriver or selenium is missing)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("Chromium and chromedriver are not installed (apt install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--mute-audio",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=1100,700",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    yield session
    session.quit()


def open_page(browser, page: Path) -> None:
    """Load ``page`` and wait until every player has loaded its metadata or failed."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(page.as_uri())
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script(
            "return document.body.dataset.rendered === 'ok' && [...document.querySelectorAll('video')].every(v => v.readyState >= 1 || v.error)"
        )
    )
    assert browser.execute_script("return document.body.dataset.errors || ''") == "", "JavaScript errors on the page"


def players(browser) -> list[dict]:
    """Per player: readyState, whether it failed, and whether its message shows."""
    return browser.execute_script(
        "return [...document.querySelectorAll('video')].map(v => ({ready: v.readyState, "
        "failed: v.error !== null, message: !v.parentElement.querySelector('.error').hidden}))"
    )


def test_moved_report_in_chromium_seeks_a_loaded_player_that_stays_in_view(browser, synth_root, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    videos = copied_videos(synth_root, tmp_path / "videos")
    truth = [{"qid": f"{videos[0].stem}-{q}", "vid": videos[0].stem, "query": "", "relevant_windows": [[5.0, 12.0]]} for q in range(8)]
    written = write_report(
        results_for(videos, synth_root / "features", queries=8), tmp_path / "report", synth_root / "features", ground_truth=truth
    )
    moved = Path(shutil.move(written.parent, tmp_path / "elsewhere")) / "index.html"  # the old relative links broke here
    open_page(browser, moved)
    shown = players(browser)
    assert all(p["ready"] >= 1 and not p["failed"] and not p["message"] for p in shown), f"the videos load from the moved report: {shown}"
    assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    saved = ROOT / "bench" / "out"
    saved.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(saved / "report_screenshot.png"))  # the page as it opens, for docs
    browser.execute_script(
        "const v = document.getElementById('v0'); window.seekedTo = null;"  # clicked: just after the button's handler
        "document.addEventListener('click', () => { window.clickedTo = v.currentTime; }, {once: true});"
        "v.addEventListener('seeked', () => { window.seekedTo = v.currentTime; }, {once: true});"
    )
    browser.find_element(By.CSS_SELECTOR, f'div.query[data-qid="{videos[0].stem}-7"] button').click()  # the lowest query
    seeked_to = WebDriverWait(browser, 20).until(lambda d: d.execute_script("return window.seekedTo"))
    assert browser.execute_script("return window.clickedTo") == START
    assert seeked_to == pytest.approx(START, abs=0.1), "the seek completed (playback then moves on)"
    view = browser.execute_script(
        "const r = document.getElementById('v0').getBoundingClientRect();"
        "return {top: r.top, bottom: r.bottom, height: innerHeight, scrolled: scrollY}"
    )
    assert view["scrolled"] > 0, "the lowest query is below the first screen: the page had to scroll"
    assert 0 <= view["top"] and view["bottom"] <= view["height"], f"the player left the view: {view}"


@pytest.mark.parametrize("media", ["absolute", "copy"])
def test_a_video_that_cannot_load_says_so_in_chromium(media, browser, synth_root, tmp_path):
    """absolute: a deleted video shows its message, the other plays; copy: the moved report plays without the originals."""
    videos = copied_videos(synth_root, tmp_path / "videos")
    written = write_report(results_for(videos, synth_root / "features"), tmp_path / "report", synth_root / "features", media=media)
    moved = Path(shutil.move(written.parent, tmp_path / "elsewhere")) / "index.html"
    for video in videos if media == "copy" else videos[1:]:
        video.unlink()
    open_page(browser, moved)
    shown = players(browser)
    if media == "copy":
        assert all(p["ready"] >= 1 and not p["message"] for p in shown), shown
        return
    assert shown[0]["ready"] >= 1 and not shown[0]["message"] and shown[1]["failed"] and shown[1]["message"], shown
    from selenium.webdriver.common.by import By

    message = browser.find_elements(By.CSS_SELECTOR, ".player .error")[1]
    assert message.is_displayed() and message.text.startswith(f"cannot load {videos[1]}: it was moved or deleted")
