"""``vtg serve``: a web page and a JSON API over a library index (``library.LibraryIndex``), served by uvicorn.

Routes (``create_app``):

- ``GET /``: the search page (self-contained HTML/CSS/JS, no network): a search box, the top moments with a
  thumbnail, video name, time range and score; a click plays the video from the moment's start, its saliency curve
  below (``report.saliency_svg``).
- ``GET /api/search?q=…&k=…``: ``{"query", "results", "views", "errors"}``; ``results`` are the moment records
  ``vtg search --json`` prints (``LibraryIndex.search``) with the video's file name and media URL in place of its
  absolute path on this machine (``"video"``, given only with ``show_paths``: ``vtg serve --show-paths``),
  ``errors`` its error records (a chosen video whose states cannot be read), ``views`` one per result, what the
  page shows: name, media and thumbnail URLs, time range (h:mm:ss.s) and the saliency SVG. An empty query, one
  over ``MAX_QUERY_CHARS`` characters or the text tower's context, and ``k`` outside 1..``MAX_K`` get a 422
  ``{"error": …}``. Searches that arrive together are answered as one batch, one batch at a time, first come first
  served (``SearchBatches``); with ``SEARCHES_QUEUED`` already waiting a request gets a 503 with ``Retry-After``.
- ``GET /api/videos``: ``{"videos": [{"vid", "name", "duration", "frames", "windows", "media"}, …]}`` (and ``"path"``
  with ``show_paths``).
- ``GET /media/<vid>``: the indexed video, with HTTP range requests (Starlette's FileResponse: 206, Content-Range).
  Only the videos of the current index version are served, only from inside the folders ``vtg index`` was given
  (recorded in the index, real paths), and only while the file is still the real path that was indexed and lies
  where its id says (a video swapped for a symlink out, or indexed through one, is refused).
- ``GET /thumbs/<vid>?t=SECONDS``: the stored frame (PNG) shown at that time, from the index's feature store; an
  index built with ``--states on-demand`` stores no frames, so the frame is decoded from the video (served media only).

With a token every route needs ``Authorization: Bearer TOKEN``, or the ``vtg_token`` cookie that opening
``/?token=TOKEN`` once sets (HttpOnly, SameSite=Strict; the redirect drops the token from the address bar), so
``<video>`` and ``<img>`` requests carry it too. Each request checks with one stat whether ``vtg index`` wrote a new
version and switches to it (``LibraryIndex.reload``); a search in flight keeps the version it started with, and a
new version that cannot be read leaves the old one serving. An unexpected error is a 500 ``{"error": …}``, its
traceback only in the server's log.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from safetensors import SafetensorError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .backbone import FrozenBackbone
from .extract import decode_samples
from .features import load_features
from .library import WINDOW_CACHE_BYTES, LibraryError, LibraryIndex, check_query
from .names import hms, printable
from .report import STYLE, best_frames, legend, png_bytes, saliency_svg, thumbnails
from .video import VideoError

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 2000  # refused before tokenizing; the text tower's context (77 tokens for CLIP) is checked after
MAX_K = 100
PAGE_K = 10  # moments the page asks for (the legend names this number)
COOKIE = "vtg_token"
RETRY_SECONDS = 5.0  # a new index version that could not be read is tried again after this long
SEARCHES_QUEUED = 64  # searches that may wait for their batch; one more is refused with 503 and Retry-After
SEARCH_BATCH = 32  # searches answered together at most (one text-encoder call, one faiss search)
WORKER_SETTINGS = "VTG_SERVE_WORKER"  # environment variable: what each of `vtg serve --workers N`'s processes serves

PAGE_STYLE = """
form{display:flex;gap:.5rem;margin:1rem 0} #q{flex:1;font-size:1.1rem;padding:.4rem}
.layout{display:flex;gap:1.5rem;align-items:flex-start} #results{list-style:none;padding:0;margin:0;width:400px;flex:none}
.player,#player{width:560px}
button.result{display:flex;gap:.6rem;align-items:center;width:100%;text-align:left;margin:0 0 .4rem}
button.result.playing{border-color:#1565c0;background:#eef4ff}
.result img{width:72px;height:72px;image-rendering:pixelated;border:1px solid #aaa;flex:none}
.result .name{display:block;font-weight:600;overflow-wrap:anywhere} .result .span{display:block;font-size:.9rem;color:#444}
#status{min-height:1.2rem;color:#444} #status.error{color:#b00020} #now{margin:.4rem 0;font-weight:600}
"""

PAGE_SCRIPT = """
window.addEventListener('error', e => { document.body.dataset.errors = (document.body.dataset.errors || '') + e.message + ';'; });
function say(text, failed) { const s = document.getElementById('status'); s.textContent = text; s.className = failed ? 'error' : ''; }
async function api(path) {
  const response = await fetch(path, {credentials: 'same-origin'});
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}
function element(tag, cls, text) { const e = document.createElement(tag); e.className = cls; if (text) e.textContent = text; return e; }
function play(result, view, item) {
  const player = document.getElementById('player');
  const seek = () => { player.currentTime = result.start; const p = player.play(); if (p) p.catch(() => {}); };
  document.querySelectorAll('.result.playing').forEach(e => e.classList.remove('playing'));
  item.classList.add('playing');
  document.querySelector('.player .error').hidden = true;
  if (player.dataset.media !== view.media) {
    player.dataset.media = view.media;
    player.addEventListener('loadedmetadata', seek, {once: true});
    player.src = view.media;
  } else seek();
  document.getElementById('now').textContent = view.name + ' · ' + view.span;
  document.getElementById('curve').innerHTML = view.saliency;  // made by the server from numbers and times only
}
function show(body) {
  const list = document.getElementById('results');
  list.replaceChildren();
  body.results.forEach((result, i) => {
    const view = body.views[i], item = element('button', 'result');
    item.type = 'button';
    item.dataset.rank = result.rank;
    if (view.thumbnail) { const img = element('img', ''); img.src = view.thumbnail; img.alt = ''; img.loading = 'lazy'; item.append(img); }
    const text = element('span', '');
    text.append(element('span', 'name', view.name), element('span', 'span', view.span + ' · ' + result.score.toFixed(2)));
    item.append(text);
    item.addEventListener('click', () => play(result, view, item));
    const entry = document.createElement('li');
    entry.append(item);
    list.append(entry);
  });
  say(body.results.length ? body.results.length + ' moments for “' + body.query + '”' : 'no moments for “' + body.query + '”');
}
async function search(event) {
  event.preventDefault();
  const q = document.getElementById('q').value;
  say('searching…');
  try { show(await api('/api/search?k=PAGE_K&q=' + encodeURIComponent(q))); } catch (e) { say(e.message, true); }
}
async function start() {
  document.getElementById('search').addEventListener('submit', search);
  try { const body = await api('/api/videos'); say(body.videos.length + ' videos in the library'); } catch (e) { say(e.message, true); }
  document.body.dataset.rendered = 'ok';
}
document.addEventListener('DOMContentLoaded', start);
"""


def page() -> str:
    """The search page."""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>vtg search</title><link rel="icon" href="data:,">'
        f"<style>{STYLE}{PAGE_STYLE}</style><script>{PAGE_SCRIPT.replace('PAGE_K', str(PAGE_K))}</script></head><body>"
        f'<h1>Search the video library</h1><form id="search" role="search"><input id="q" type="search" autofocus '
        f'maxlength="{MAX_QUERY_CHARS}" placeholder="describe a moment, e.g. a red disc rises" aria-label="query">'
        f'<button type="submit">Search</button></form><p id="status" role="status"></p><div class="layout">'
        f'<ol id="results"></ol><div class="player"><video id="player" controls preload="metadata" '
        f"onerror=\"this.parentElement.querySelector('.error').hidden = false\"></video>"
        f'<p class="error" hidden>this video cannot be played: it was moved or deleted since it was indexed, or this '
        f'browser cannot decode it</p><div id="now"></div><div id="curve"></div>{legend(PAGE_K, None)}</div></div>'
        f"</body></html>"
    )


class LiveIndex:
    """A LibraryIndex that follows new versions: ``current()`` switches to the newest readable one (one stat when there
    is none); ``catalog``: its videos by id."""

    def __init__(self, index: LibraryIndex):
        self.index, self.lock, self.retry_at = index, threading.Lock(), 0.0
        self.catalog, self.folders = {v["vid"]: v for v in index.videos()}, index.folders()

    def current(self) -> LibraryIndex:
        if self.index.changed() and time.monotonic() >= self.retry_at:
            with self.lock:
                try:
                    if self.index.reload():
                        self.catalog, self.folders = {v["vid"]: v for v in self.index.videos()}, self.index.folders()
                        print(printable(f"serve: {len(self.catalog)} videos, the new version of {self.index.folder}"), file=sys.stderr)
                except LibraryError as e:  # a damaged new version: keep serving the last good one
                    self.retry_at = time.monotonic() + RETRY_SECONDS
                    log.error("%s (still serving the previous version)", printable(e))
        return self.index


class SearchJob:
    """One request's search: the index version it asked, its query and ``k``; once ``done`` is set, its results or
    the error its batch raised."""

    def __init__(self, index: LibraryIndex, query: str, k: int):
        self.index, self.query, self.k = index, query, k
        self.done, self.results, self.error = threading.Event(), None, None


class SearchBatches:
    """Concurrent searches answered in batches by one search thread of their own: the requests that arrive while a
    batch runs wait and run together as the next one (``LibraryIndex.search_many``: one text-encoder call, one faiss
    search, each video read once for all its queries), at most ``batch`` of them on one index version, first come
    first served. With ``queued`` requests already waiting, a new one is refused at once (HTTPException 503 with
    Retry-After).

    One thread, with ``torch_threads`` intra-op threads (1): a search is thousands of small ops, so more threads
    spend more time waking each other than computing; measured on 2 cores, one search took 0.8 s with 2 threads in
    a thread other than the main one and 0.3 s with 1 (docs/BENCHMARKS.md). Batches in the request threads would
    also take memory from a new malloc arena in each of them."""

    def __init__(self, queued: int, batch: int, torch_threads: int = 1):
        self.queued, self.batch, self.torch_threads = queued, batch, torch_threads
        self.waiting: list[SearchJob] = []
        self.running = False
        self.changed = threading.Condition()
        self.worker: threading.Thread | None = None

    def search(self, index: LibraryIndex, query: str, k: int) -> list[dict]:
        """``index.search(query, k)``, answered in a batch with the requests waiting beside it."""
        job = SearchJob(index, query, k)
        with self.changed:
            if len(self.waiting) >= self.queued:
                raise HTTPException(
                    503, f"busy: {len(self.waiting)} searches are waiting; try again in a moment", headers={"Retry-After": "1"}
                )
            self.waiting.append(job)
            if self.worker is None:  # started with the first search: an app that never searches has no thread
                self.worker = threading.Thread(target=self.serve, name="vtg-search", daemon=True)
                self.worker.start()
            self.changed.notify()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.results

    def serve(self) -> None:
        """The search thread: forever, the next batch (the oldest waiting search and those after it on its index)."""
        torch.set_num_threads(self.torch_threads)
        while True:
            with self.changed:
                while not self.waiting:
                    self.running = False
                    self.changed.wait()
                first = self.waiting[0].index
                batch = [job for job in self.waiting if job.index is first][: self.batch]
                self.waiting = [job for job in self.waiting if job not in batch]
                self.running = True
            self.run(batch)

    @staticmethod
    def run(batch: list[SearchJob]) -> None:
        try:
            answers = batch[0].index.search_many([job.query for job in batch], [job.k for job in batch])
        except Exception as e:  # every request of the batch answers with it (a 500, logged once)
            log.exception("search batch of %d failed", len(batch))
            answers = [e] * len(batch)
        for job, answer in zip(batch, answers):
            job.results, job.error = (None, answer) if isinstance(answer, Exception) else (answer, None)
            job.done.set()


def media_url(vid: str) -> str:
    return "/media/" + quote(vid)


def shown_name(vid: str, path: str) -> str:
    """The name clients see for a video: its id with its file's extension (not a link target's name)."""
    return vid + Path(path).suffix


def public(record: dict, path_key: str, show_paths: bool) -> dict:
    """A search result or video record as clients get it: the file's name and media URL, and its absolute path on
    this machine (``path_key``) only with ``show_paths``."""
    shown = {key: value for key, value in record.items() if key != path_key or show_paths}
    return shown | {"name": shown_name(record["vid"], record[path_key]), "media": media_url(record["vid"])}


def views(results: list[dict]) -> list[dict]:
    """What the page shows of each search result: name, media and thumbnail URLs, h:mm:ss.s span, saliency SVG with
    the moments of its video among ``results`` shaded."""
    shown = []
    for r in results:
        moments = [[m["start"], m["end"], m["score"]] for m in results if m["vid"] == r["vid"]]
        [best] = best_frames({"clip_times": r["clip_times"], "pred_saliency_scores": r["saliency"]}, [[r["start"], r["end"], r["score"]]])
        thumb = f"/thumbs/{quote(r['vid'])}?t={r['clip_times'][best]}" if r["clip_times"] else None
        shown.append(
            {
                "name": shown_name(r["vid"], r["video"]),
                "media": media_url(r["vid"]),
                "thumbnail": thumb,
                "span": f"{hms(r['start'])}–{hms(r['end'])}",
                "saliency": saliency_svg(r["clip_times"], r["saliency"], moments, r["duration"]),
            }
        )
    return shown


def inside(path: str, folders: list[str]) -> bool:
    """Whether ``path`` is one of ``folders`` (real paths) or lies under one."""
    return any(path == folder or path.startswith(folder.rstrip(os.sep) + os.sep) for folder in folders)


def servable(video: dict, folders: list[str] | None) -> Path:
    """An indexed video's file if it may be served, else HTTPException 403: it must lie inside the folders the index
    was built from, still be the real path that was indexed (no symlink swapped in since) and lie where its id says
    (``.../<vid>.<ext>``, not a link's target)."""
    path = Path(video["path"])
    if folders is None:
        raise HTTPException(
            403, f"{video['vid']}: not served, this index does not record the folders it was built from: run vtg index again"
        )
    real = os.path.realpath(path)
    if (
        real != str(path)
        or not inside(real, folders)
        or not path.with_suffix("").as_posix().endswith("/" + video["vid"])
        or not path.is_file()
    ):
        raise HTTPException(
            403,
            f"{video['vid']}: not served, its file is not where the index found it inside the indexed folders "
            f"(a symlink, or changed since): run vtg index again",
        )
    return path


def nearest_sample(feature_file: str, seconds: float) -> tuple[int, float] | None:
    """The row and time (s) of the stored sample nearest ``seconds``; None without a readable file."""
    try:
        times = load_features(feature_file, ["timestamps"])["timestamps"]
    except (OSError, KeyError, SafetensorError):  # removed or rewritten by a build since this version was written
        return None
    row = int(np.abs(times - seconds).argmin())
    return row, float(times[row])


def frame_png(feature_file: str, seconds: float) -> bytes | None:
    """The stored frame nearest ``seconds`` as PNG bytes, None when the store holds no frames for it (or no file)."""
    found = nearest_sample(feature_file, seconds)
    uris = thumbnails(Path(feature_file), [found[0]]) if found else []
    return base64.b64decode(uris[0].partition(",")[2]) if uris else None


def decoded_frame_png(feature_file: str, path: Path, seconds: float, backbone: FrozenBackbone) -> bytes | None:
    """``frame_png`` for a store that keeps no frames: the sample nearest ``seconds`` decoded from the video at ``path``
    as extraction decodes it (``extract.decode_samples``: the same pixels); None when it cannot be decoded."""
    found = nearest_sample(feature_file, seconds)
    if found is None:
        return None
    try:
        frames = decode_samples(str(path), np.array([found[1]]), backbone.preprocess, backbone.device)
    except VideoError:
        return None
    return png_bytes(frames[0].cpu().numpy())


def authorized(request: Request, token: str) -> bool:
    given = request.headers.get("authorization", "")
    given = given[7:] if given.lower().startswith("bearer ") else request.cookies.get(COOKIE, "")
    return hmac.compare_digest(given.encode(), token.encode())


def create_app(index: LibraryIndex, token: str | None = None, show_paths: bool = False) -> FastAPI:
    """The ASGI app serving ``index`` (see the module docstring); ``token``: required from every client when given;
    ``show_paths``: API records include the videos' absolute paths on this machine."""
    live, batches = LiveIndex(index), SearchBatches(SEARCHES_QUEUED, SEARCH_BATCH)
    app = FastAPI(title="vtg serve", docs_url=None, redoc_url=None, openapi_url=None)  # the docs pages load from a CDN
    app.state.batches = batches

    def lookup(vid: str) -> dict:
        live.current()
        if vid not in live.catalog:
            raise HTTPException(404, "no such video in the index")
        return live.catalog[vid]

    @app.middleware("http")
    async def check_token(request: Request, call_next):
        if token is None or authorized(request, token):
            return await call_next(request)
        given = request.query_params.get("token")
        if request.url.path == "/" and given is not None and hmac.compare_digest(given.encode(), token.encode()):
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return response
        return JSONResponse(
            {"error": "this server needs its token: send Authorization: Bearer TOKEN, or open /?token=TOKEN once in the browser"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    @app.exception_handler(StarletteHTTPException)  # ours and the router's (404 for an unknown path, 405)
    async def client_error(request: Request, e: StarletteHTTPException):
        return JSONResponse({"error": e.detail}, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, e: RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, err['loc'][1:]))}: {err['msg']}" for err in e.errors())
        return JSONResponse({"error": problems}, status_code=422)

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception):  # the traceback goes to the log only
        return JSONResponse({"error": "internal server error (the server's log has the details)"}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    def search_page():
        return page()

    @app.get("/api/search")
    def search(q: str = Query("", max_length=MAX_QUERY_CHARS), k: int = Query(10, ge=1, le=MAX_K)):
        current = live.current()
        try:
            check_query(q, current.grounder)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        found = batches.search(current, q, k)
        results, errors = [r for r in found if "error" not in r], [r for r in found if "error" in r]
        body = {
            "query": q,
            "results": [public(r, "video", show_paths) for r in results],
            "views": views(results),
            "errors": [public(r, "video", show_paths) for r in errors],
        }
        return JSONResponse(body)  # plain JSON already: FastAPI's encoder would walk every number again

    @app.get("/api/videos")
    def videos():
        live.current()
        keys = ("vid", "path", "duration", "frames", "windows")
        return {"videos": [public({key: v[key] for key in keys}, "path", show_paths) for v in live.catalog.values()]}

    @app.api_route("/media/{vid:path}", methods=["GET", "HEAD"])
    def media(vid: str):
        return FileResponse(servable(lookup(vid), live.folders))

    @app.get("/thumbs/{vid:path}")
    def thumb(vid: str, t: float = Query(0.0, ge=0)):
        video, index = lookup(vid), live.index  # lookup switched to the current version
        png = frame_png(video["feature_file"], t)
        if png is None and index.states == "on-demand":  # no frames stored: the one shown then, from the video
            png = decoded_frame_png(video["feature_file"], servable(video, live.folders), t, index.grounder.backbone)
        if png is None:
            raise HTTPException(404, "the feature store holds no frames of this video")
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    return app


def is_local(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address (a name that does not resolve is not)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


def serve(
    index_dir: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    no_token: bool = False,
    device: str = "cpu",
    show_paths: bool = False,
    window_cache_bytes: int | None = None,
    workers: int = 1,
) -> int:
    """Check the address and the index, then serve until interrupted. ValueError (one line): a port out of range, a
    non-local host without a token (unless ``no_token``), an index that cannot be read (LibraryError: the file, the
    rebuild). ``window_cache_bytes``: re-encoded windows kept (default ``library.WINDOW_CACHE_BYTES``). ``workers``:
    processes answering on the one port (uvicorn's workers), each with its own index, model and search thread: one
    core each (a search thread is bound by the GIL), so several share the load of many clients."""
    import uvicorn

    if not 0 <= port <= 65535:
        raise ValueError(f"--port {port}: expected 0 to 65535")
    if not is_local(host) and not token:
        if not no_token:
            raise ValueError(
                f"--host {host} is not a loopback address: anyone who reaches it could search and watch the library; "
                f"give --token TOKEN (or set VTG_TOKEN), or --no-token to serve it to everyone"
            )
        log.warning("serving %s without a token: anyone who reaches it can search and watch the library", host)
    cache = WINDOW_CACHE_BYTES if window_cache_bytes is None else window_cache_bytes
    index = LibraryIndex.open(index_dir, device=device, window_cache_bytes=cache)
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/"
    print(
        printable(f"serve: {len(index.videos())} videos from {index_dir} at {url}" + (f" (open {url}?token=TOKEN once)" if token else "")),
        file=sys.stderr,
    )
    if workers == 1:
        uvicorn.run(create_app(index, token, show_paths), host=host, port=port, log_level="info")
        return 0
    del index  # checked; each worker opens its own
    os.environ[WORKER_SETTINGS] = json.dumps(
        {"index": index_dir, "device": device, "window_cache_bytes": cache, "token": token, "show_paths": show_paths}
    )
    uvicorn.run(f"{__name__}:worker_app", factory=True, workers=workers, host=host, port=port, log_level="info")
    return 0


def worker_app() -> FastAPI:
    """The app of one of ``serve``'s worker processes, which uvicorn starts and which import it by name: the index and
    settings ``serve`` left in the environment (``WORKER_SETTINGS``; children only inherit it)."""
    settings = json.loads(os.environ[WORKER_SETTINGS])
    index = LibraryIndex.open(settings["index"], device=settings["device"], window_cache_bytes=settings["window_cache_bytes"])
    return create_app(index, settings["token"], settings["show_paths"])
