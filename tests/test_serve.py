"""`vtg serve`: the JSON API in-process (search records as `vtg search --json`, the video list, range requests, paths
outside the index refused, the token, bad queries, a new index version picked up, no traceback to clients), its
refusals at startup in one line, and the search page in headless Chromium over a live uvicorn server."""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest
import uvicorn
from bad_input import assert_one_line_error
from fastapi.testclient import TestClient
from fuzzing import fuzzed
from hypothesis import given
from hypothesis import strategies as st
from test_library import checkpoint, copy_videos  # noqa: F401  (checkpoint: a fixture, 1 epoch with 40 s windows)
from test_report import browser  # noqa: F401  (a fixture: headless Chromium, skipped where it is absent)

from vtg_pipeline import serve
from vtg_pipeline.cli import main
from vtg_pipeline.extract import find_videos
from vtg_pipeline.grounder import Grounder
from vtg_pipeline.library import LibraryIndex, build_index
from vtg_pipeline.names import hms
from vtg_pipeline.serve import MAX_QUERY_CHARS, create_app

TOKEN = "s3cret-token"


def index_videos(videos: Path, trained: Path, folder: Path, **options) -> None:
    """``build_index`` of every video under ``videos`` into ``folder`` with checkpoint ``trained`` (``options``: its
    keywords)."""
    build_index(find_videos([str(videos)]), Grounder.from_pretrained(trained), folder, str(trained), progress=False, **options)


@pytest.fixture(scope="module")
def library(synth_root, checkpoint, tmp_path_factory):  # noqa: F811
    """An index of three copied synthetic videos and one symlink to a fourth outside the folder: (folder, videos)."""
    root = tmp_path_factory.mktemp("served")
    *videos, outside = copy_videos(synth_root, root / "videos", 4)
    moved = Path(shutil.move(outside, root / "elsewhere.mp4"))
    (root / "videos" / "linked.mp4").symlink_to(moved)
    index_videos(root / "videos", checkpoint, root / "index")
    return root / "index", videos


@pytest.fixture(scope="module")
def index(library):
    return LibraryIndex.open(library[0])


@pytest.fixture(scope="module")
def client(index):
    return TestClient(create_app(index))


def queries(synth_root: Path) -> list[str]:
    return [json.loads(line)["query"] for line in (synth_root / "val.jsonl").read_text().splitlines()]


def test_search_returns_the_records_of_vtg_search_json(client, library, synth_root, capsys):
    query = queries(synth_root)[0]
    response = client.get("/api/search", params={"q": query, "k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    capsys.readouterr()
    assert main(["search", query, "--index", str(library[0]), "-k", "3", "--json"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for record in printed:  # the API gives the file's name and media URL, not its path on the server
        record["name"], record["media"] = record["vid"] + Path(record.pop("video")).suffix, f"/media/{record['vid']}"
    assert body["query"] == query and body["results"] == printed and [r["rank"] for r in printed] == [1, 2, 3]
    for result, view in zip(body["results"], body["views"]):
        assert {"rank", "query", "vid", "name", "media", "start", "end", "score"} <= result.keys() and "video" not in result
        assert view["media"] == f"/media/{result['vid']}" and view["name"] == result["vid"] + ".mp4"
        assert view["span"] == f"{hms(result['start'])}–{hms(result['end'])}" and view["saliency"].startswith("<svg")
        thumb = client.get(view["thumbnail"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png" and thumb.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_videos_lists_the_library(client, library):
    listed = client.get("/api/videos").json()["videos"]
    assert [v["vid"] for v in listed] == sorted([v.stem for v in library[1]] + ["linked"])
    for v in listed:
        assert v["media"] == f"/media/{v['vid']}" and v["duration"] > 0 and v["windows"] >= 1 and v["name"] == v["vid"] + ".mp4"
        assert "path" not in v


def test_no_response_holds_a_server_path_unless_asked(index, library, synth_root):
    folder = str(library[0].parent)
    plain, shown = TestClient(create_app(index)), TestClient(create_app(index, show_paths=True))
    query = queries(synth_root)[0]
    for target in ("/", "/api/videos", f"/api/search?q={query}&k=20", "/api/search?q=", "/media/nothing", "/nowhere"):
        assert folder not in plain.get(target).text, target
    assert all(Path(v["path"]).is_file() for v in shown.get("/api/videos").json()["videos"])
    assert all(Path(r["video"]).is_file() for r in shown.get("/api/search", params={"q": query}).json()["results"])


def test_a_video_whose_states_went_missing_is_an_error_record_beside_the_results(library, synth_root, tmp_path):
    folder = Path(shutil.copytree(library[0], tmp_path / "index"))
    client = TestClient(create_app(LibraryIndex.open(folder)))
    query = queries(synth_root)[0]
    before = client.get("/api/search", params={"q": query, "k": 100}).json()
    lost = before["results"][0]["vid"]
    (folder / "features" / f"{lost}.safetensors").unlink()
    body = client.get("/api/search", params={"q": query, "k": 100}).json()
    assert body["errors"] == [
        {"query": query, "vid": lost, "error": body["errors"][0]["error"], "name": lost + ".mp4", "media": f"/media/{lost}"}
    ]
    assert body["results"] and lost not in {r["vid"] for r in body["results"]}, "the other videos' moments stand"
    assert len(body["views"]) == len(body["results"]) and before["errors"] == []


def test_media_comes_only_from_the_recorded_folders(checkpoint, synth_root, tmp_path):  # noqa: F811
    """A symlink in the indexed folder to a file of the same name elsewhere is indexed at its real path, outside the
    folder: refused. So is every video of an index that does not record its folders (written before they were)."""
    inside, outside = copy_videos(synth_root, tmp_path / "videos", 2)
    moved = Path(shutil.move(outside, tmp_path / outside.name))
    outside.symlink_to(moved)  # videos/<name>.mp4 -> ../<name>.mp4: same name, same id
    folder = tmp_path / "index"
    index_videos(tmp_path / "videos", checkpoint, folder, folders=[str(tmp_path / "videos")])
    client = TestClient(create_app(LibraryIndex.open(folder)))
    assert client.get(f"/media/{inside.stem}", headers={"Range": "bytes=0-9"}).status_code == 206
    refused = client.get(f"/media/{outside.stem}")
    assert refused.status_code == 403 and "indexed folders" in refused.json()["error"]
    info_file = folder / json.loads((folder / "index.json").read_text())["folder"] / "library.json"
    info = json.loads(info_file.read_text())
    assert info["folders"] == [str((tmp_path / "videos").resolve())]
    del info["folders"]
    info_file.write_text(json.dumps(info))
    old = TestClient(create_app(LibraryIndex.open(folder))).get(f"/media/{inside.stem}")
    assert old.status_code == 403 and "run vtg index again" in old.json()["error"]


def test_an_on_demand_index_serves_the_stored_frame_decoded_from_the_video(library, checkpoint, synth_root, tmp_path):  # noqa: F811
    """``--states on-demand`` keeps no frames: a thumbnail is the sample decoded from the video, the same pixels the
    fp16 store keeps; a video gone is refused with the reason, as its media is."""
    videos = copy_videos(synth_root, tmp_path / "videos", 2)
    folder = tmp_path / "index"
    index_videos(tmp_path / "videos", checkpoint, folder, states="on-demand")
    stored, on_demand = TestClient(create_app(LibraryIndex.open(library[0]))), TestClient(create_app(LibraryIndex.open(folder)))
    for t in (0, 7.3, 1e6):
        want, got = stored.get(f"/thumbs/{videos[0].stem}", params={"t": t}), on_demand.get(f"/thumbs/{videos[0].stem}", params={"t": t})
        assert got.status_code == want.status_code == 200 and got.headers["content-type"] == "image/png"
        assert got.content == want.content, t
    videos[1].unlink()
    gone, media = on_demand.get(f"/thumbs/{videos[1].stem}", params={"t": 1}), on_demand.get(f"/media/{videos[1].stem}")
    assert gone.status_code == media.status_code == 403 and gone.json() == media.json()  # refused as its media is
    assert "run vtg index again" in gone.json()["error"]


def test_media_answers_range_requests(client, library):
    video = library[1][0]
    data, url = video.read_bytes(), f"/media/{video.stem}"
    size = len(data)
    whole = client.get(url)
    assert whole.status_code == 200 and whole.content == data and whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-type"] == "video/mp4"
    for header, first, last in (
        ("bytes=100-1099", 100, 1099),
        ("bytes=-500", size - 500, size - 1),
        (f"bytes={size - 10}-", size - 10, size - 1),
    ):
        part = client.get(url, headers={"Range": header})
        assert part.status_code == 206, header
        assert part.content == data[first : last + 1]
        assert part.headers["content-range"] == f"bytes {first}-{last}/{size}"
        assert part.headers["content-length"] == str(last - first + 1)
    assert client.get(url, headers={"Range": f"bytes={size}-"}).status_code == 416
    head = client.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == str(size) and head.content == b""


@pytest.fixture(scope="module")
def live(index):
    """The app on a real uvicorn server on a free local port: its port."""
    server = uvicorn.Server(uvicorn.Config(create_app(index), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        threading.Event().wait(0.05)
    yield server.servers[0].sockets[0].getsockname()[1]
    server.should_exit = True
    thread.join(10)


def raw_get(port: int, target: str, headers: dict | None = None) -> tuple[int, bytes]:
    """GET ``target`` exactly as written (no client-side normalisation of ``..`` or escapes)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", target, headers=headers or {})
    response = connection.getresponse()
    return response.status, response.read()


def test_paths_outside_the_indexed_folder_are_refused(live, library, tmp_path):
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"SECRET" * 100)
    video = library[1][0]
    targets = [
        "/media/../../../../../../etc/passwd",
        "/media/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/media/..%2f..%2f..%2fetc%2fpasswd",
        "/media//etc/passwd",
        "/media/%2Fetc%2Fpasswd",
        f"/media/{secret}",
        f"/media/{video.with_suffix('')}",
        f"/media/{video.stem}/../{video.stem}",
        "/thumbs/%2e%2e/%2e%2e/etc/passwd?t=0",
    ]
    for target in targets:
        status, body = raw_get(live, target)
        assert status in (403, 404), (target, status)
        assert b"root:" not in body and b"SECRET" not in body, target
    assert raw_get(live, f"/media/{video.stem}")[0] == 200
    assert raw_get(live, "/media/linked")[0] == 403, "indexed through a symlink whose target lies outside the folder"
    original = video.with_name(".original.mp4")
    os.rename(video, original)
    try:
        video.symlink_to(secret)  # swapped after indexing
        status, body = raw_get(live, f"/media/{video.stem}")
        assert status == 403 and b"SECRET" not in body
    finally:
        video.unlink()
        os.rename(original, video)


def test_a_token_is_required_when_set(index, library):
    client = TestClient(create_app(index, token=TOKEN))
    media = f"/media/{library[1][0].stem}"
    for path in ("/", "/api/videos", media, "/api/search?q=a+red+disc"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            refused = client.get(path, headers=headers)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer" and "token" in refused.json()["error"]
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/api/videos", headers=bearer).status_code == 200
    assert client.get(media, headers={**bearer, "Range": "bytes=0-9"}).status_code == 206
    assert client.get("/?token=wrong", follow_redirects=False).status_code == 401
    opened = client.get(f"/?token={TOKEN}", follow_redirects=False)
    assert opened.status_code == 303 and opened.headers["location"] == "/"
    cookie = opened.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    for path in ("/", "/api/videos", media):  # the cookie the page got carries the token now
        assert client.get(path).status_code == 200, path


@pytest.mark.parametrize(
    "params, message",
    [
        ({"q": ""}, "empty query"),
        ({"q": "   "}, "empty query"),
        ({}, "empty query"),
        ({"q": "a red disc rises " * 30}, "more than 77 tokens"),
        ({"q": "x" * (MAX_QUERY_CHARS + 1)}, f"at most {MAX_QUERY_CHARS} characters"),
        ({"q": "a red disc", "k": 0}, "k: "),
        ({"q": "a red disc", "k": 101}, "k: "),
        ({"q": "a red disc", "k": "ten"}, "k: "),
    ],
)
def test_bad_queries_get_a_4xx_with_a_message(client, params, message):
    response = client.get("/api/search", params=params)
    assert response.status_code == 422 and message in response.json()["error"], response.text


def test_a_server_error_leaks_no_traceback(index, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internals /home/user/private")

    monkeypatch.setattr(LibraryIndex, "search_many", broken)
    response = TestClient(create_app(index), raise_server_exceptions=False).get("/api/search", params={"q": "a red disc rises"})
    assert response.status_code == 500 and "internal server error" in response.json()["error"]
    assert "secret" not in response.text and "Traceback" not in response.text and "RuntimeError" not in response.text


def wait_until(condition, seconds: float = 30) -> None:
    for _ in range(int(seconds * 100)):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("timed out")


def test_searches_that_arrive_together_run_as_one_batch_and_a_full_queue_gets_503(index, monkeypatch):
    """Batches never run side by side (they would share the cores); the searches that arrive while one runs form the
    next, in the order they came; past SEARCHES_QUEUED waiting a request is refused at once with Retry-After."""
    monkeypatch.setattr(serve, "SEARCHES_QUEUED", 2)
    batches, release, running, overlap = [], threading.Event(), [0], []

    def slow_search_many(self, queries, k=10, candidates=None):
        running[0] += 1
        overlap.append(running[0])
        batches.append(list(zip(queries, k)))
        release.wait(30)
        running[0] -= 1
        return [[] for _ in queries]

    monkeypatch.setattr(LibraryIndex, "search_many", slow_search_many)
    app = create_app(index)
    client, answers = TestClient(app), {}

    def ask(query, k=10):
        answers[query] = client.get("/api/search", params={"q": query, "k": k})

    threads = [threading.Thread(target=ask, args=("first",))]
    threads[0].start()
    wait_until(lambda: app.state.batches.running)
    for query, k in (("second", 2), ("third", 3)):  # wait together while the first runs: the queue is full
        threads.append(threading.Thread(target=ask, args=(query, k)))
        threads[-1].start()
        wait_until(lambda query=query: query in [job.query for job in app.state.batches.waiting])
    refused = client.get("/api/search", params={"q": "fourth"})
    assert refused.status_code == 503 and "busy" in refused.json()["error"] and refused.headers["retry-after"] == "1"
    release.set()
    for t in threads:
        t.join(30)
    assert batches == [[("first", 10)], [("second", 2), ("third", 3)]] and max(overlap) == 1, "each with its own k"
    assert all(answers[q].status_code == 200 for q in ("first", "second", "third"))
    assert client.get("/api/search", params={"q": "fifth"}).status_code == 200  # the queue drained


def test_a_new_index_version_is_picked_up_while_serving(synth_root, checkpoint, tmp_path):  # noqa: F811
    """`vtg index` in another process adds a video; searches meanwhile all succeed on a whole version, old or new; a
    damaged version is ignored while the last good one serves."""
    videos = copy_videos(synth_root, tmp_path / "videos", 3)
    hidden = Path(shutil.move(videos[2], tmp_path / "later.mp4"))
    folder = tmp_path / "index"
    index_videos(tmp_path / "videos", checkpoint, folder)
    client = TestClient(create_app(LibraryIndex.open(folder)))
    assert len(client.get("/api/videos").json()["videos"]) == 2
    shutil.move(hidden, videos[2])
    build = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vtg_pipeline",
            "index",
            str(tmp_path / "videos"),
            "--checkpoint",
            str(checkpoint),
            "--index",
            str(folder),
            "--no-progress",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    query, seen, answered = queries(synth_root)[0], set(), 0
    while build.poll() is None or answered == 0:
        response = client.get("/api/search", params={"q": query, "k": 20})
        assert response.status_code == 200, response.text
        seen |= {r["vid"] for r in response.json()["results"]}
        answered += 1
    assert build.returncode == 0, build.stderr.read()
    assert seen <= {v.stem for v in videos}
    assert sorted(v["vid"] for v in client.get("/api/videos").json()["videos"]) == sorted(v.stem for v in videos)
    assert client.get(f"/media/{videos[2].stem}", headers={"Range": "bytes=0-9"}).status_code == 206
    (folder / "index.json").write_text('{"format_version": "1", "version": 99, "folder": "v99"}')  # a version that is not there
    assert len(client.get("/api/videos").json()["videos"]) == 3
    assert client.get("/api/search", params={"q": query}).status_code == 200


def test_serve_refuses_bad_startups_in_one_line(library, tmp_path, capsys):
    missing = tmp_path / "nothing"
    assert_one_line_error(["serve", "--index", str(missing)], capsys, missing / "index.json", "vtg index")
    damaged = Path(shutil.copytree(library[0], tmp_path / "damaged"))
    version = json.loads((damaged / "index.json").read_text())["folder"]
    (damaged / version / "windows.faiss").write_bytes(b"not a faiss index")
    assert_one_line_error(["serve", "--index", str(damaged)], capsys, damaged / version / "windows.faiss", "--rebuild")
    assert_one_line_error(["serve", "--index", str(library[0]), "--host", "0.0.0.0"], capsys, "0.0.0.0", "--token", "--no-token")
    assert_one_line_error(["serve", "--index", str(library[0]), "--port", "70000"], capsys, "70000")


@pytest.mark.parametrize("workers", [1, 2])
def test_vtg_serve_answers_on_its_port_with_the_token_from_the_environment(library, synth_root, workers):
    """``--workers 2``: two processes answer on the one port, each searching its own copy of the index."""
    with socket.socket() as probe:  # a port free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "vtg_pipeline", "serve", "--index", str(library[0]), "--port", str(port), "--workers", str(workers)],
        env={**os.environ, "VTG_TOKEN": TOKEN},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stderr.readline()
        assert line.startswith(f"serve: 4 videos from {library[0]} at http://127.0.0.1:{port}/"), line
        status = None
        for _ in range(300):  # uvicorn binds right after that line
            try:
                status = raw_get(port, "/api/videos")[0]
                break
            except ConnectionRefusedError:
                threading.Event().wait(0.1)
        assert status == 401, "VTG_TOKEN is the token"
        status, body = raw_get(port, "/api/videos", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and len(json.loads(body)["videos"]) == 4
        status, body = raw_get(port, f"/api/search?q={quote(queries(synth_root)[0])}", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and json.loads(body)["results"]
        spawned = [p for p in psutil.Process(server.pid).children() if "spawn_main" in " ".join(p.cmdline())]
        assert len(spawned) == (workers if workers > 1 else 0), [p.cmdline() for p in spawned]
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(30) == 0


def test_the_page_is_self_contained(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text, "no CDN: the page works offline"
    assert 'id="q"' in page.text and 'id="player"' in page.text and "Legend" in page.text


def test_the_page_plays_the_first_result_from_its_start_in_chromium(browser, live, client, synth_root):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    def first_result(query: str) -> dict:
        return client.get("/api/search", params={"q": query, "k": 10}).json()["results"][0]

    # a moment that starts after 0 s, in a video that may be served (not the one indexed through a symlink)
    query = next(q for q in queries(synth_root) if first_result(q)["start"] >= 2 and first_result(q)["vid"] != "linked")
    first = first_result(query)
    browser.get(f"http://127.0.0.1:{live}/")
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.body.dataset.rendered === 'ok'"))
    assert "videos in the library" in browser.find_element(By.ID, "status").text
    box = browser.find_element(By.ID, "q")
    box.send_keys(query, Keys.ENTER)
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "button.result"))
    item = browser.find_elements(By.CSS_SELECTOR, "button.result")[0]
    assert first["vid"] in item.text and hms(first["start"]) in item.text
    item.click()
    player = "document.getElementById('player')"
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script(f"const v = {player}; return v.readyState >= 1 && !v.seeking && v.currentTime > 0")
    )
    now = browser.execute_script(f"return {player}.currentTime")
    assert abs(now - first["start"]) < 1, f"the player is at {now} s, the moment starts at {first['start']} s"
    assert browser.execute_script(
        "return document.querySelector('#curve svg') !== null && document.querySelector('button.result img').naturalWidth > 0"
    )
    assert browser.execute_script("return document.body.dataset.errors || ''") == "", "JavaScript errors on the page"
    assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


HOSTILE_TEXT = st.one_of(st.text(max_size=30), st.sampled_from(["", " ", "\x00", "%00", "../../etc/passwd", "a" * 5000, "1e999", "-1", "NaN",
                                                               "0x10", "🎞️", "\u202e", "Bearer", "bytes=", "%", "%%", "%zz"]))  # fmt: skip
HEADER_TEXT = HOSTILE_TEXT.map(lambda text: "".join(c for c in text if " " <= c <= "~"))  # what an HTTP client can send
RANGES = st.one_of(
    st.sampled_from(
        [
            "bytes=0-9",
            "bytes=5-2",
            "bytes=-0",
            "bytes=0-",
            "bytes=99999999999999999999-",
            "bytes=a-b",
            "items=0-1",
            "bytes=0-1,3-4",
            "bytes=0-1,,",
            "bytes=--1",
            "bytes= 1 - 2 ",
            "bytes=-99999999999999999999",
        ]
    ),  # fmt: skip
    HEADER_TEXT,
)


@fuzzed
@given(
    q=HOSTILE_TEXT,
    k=HOSTILE_TEXT | st.integers(-(2**70), 2**70).map(str),
    t=HOSTILE_TEXT,
    vid=HOSTILE_TEXT,
    span=RANGES,
    token=HEADER_TEXT,
)
def test_hostile_parameters_ranges_and_tokens_get_a_4xx_with_a_message_and_the_server_answers_on(client, index, q, k, t, vid, span, token):
    """Fuzzed: query parameters, Range headers, paths and tokens. Nothing is a 5xx; a 4xx
    says why in JSON (a 416 is Starlette's range refusal); the server answers the next request."""
    real = sorted(v["vid"] for v in client.get("/api/videos").json()["videos"])[0]
    secured = TestClient(create_app(index, token=TOKEN))
    answers = [
        client.get("/api/search", params={"q": q[:50] if q.strip() else q, "k": k}),
        client.get(f"/media/{real}", headers={"Range": span}),
        client.get(f"/media/{quote(vid, safe='/')}", headers={"Range": span}),  # the server gets it decoded
        client.get(f"/thumbs/{real}", params={"t": t}),
        secured.get("/api/videos", headers={"Authorization": f"Bearer {token}"}),
        secured.get("/", params={"token": token}, follow_redirects=False),
    ]
    for answer in answers:
        assert answer.status_code < 500, (answer.request.url, answer.status_code, answer.text[:200])
        if 400 <= answer.status_code < 500 and answer.status_code != 416:
            assert answer.json()["error"], answer.text
    assert client.get("/api/videos").status_code == 200
