"""Annotation readers: every dataset normalised to the QVHighlights record.

The normalised record (one dict per query; times in seconds)::

    {"qid": int | str, "query": str, "vid": str, "duration": float,
     "relevant_windows": [[start, end], ...],
     "relevant_clip_ids": [int, ...],          # optional, 2 s clips (QVHighlights)
     "saliency_scores": [[a, b, c], ...]}      # optional, 3 annotators 0-4, one row per clip id

Formats read:

* ``qvhighlights``: JSON lines already in this form. The test split has no
  ``relevant_windows`` (nor clip ids and saliency); it loads with ``require_windows=False``.
* ``charades``: Charades-STA text lines ``VIDEOID START END##sentence``; qid is
  the 0-based line index. Durations come from a mapping vid -> seconds or from
  the Charades CSV (``Charades_v1_{train,test}.csv``, columns ``id`` and ``length``).
* ``ego4d``: the official nested NLQ json (``videos`` -> ``clips`` ->
  ``annotations`` -> ``language_queries``). Grounding is per clip: vid is the
  ``clip_uid``, duration ``clip_end_sec - clip_start_sec`` of the clip, the window
  the query's ``[clip_start_sec, clip_end_sec]``; qid is ``{annotation_uid}_{i}``
  with ``i`` the query's position in ``language_queries`` (as the official evaluator
  indexes it). Queries whose text is missing, None or blank are left out and
  counted in ``ReadReport.missing_queries``; they are not errors.
* ``tacos``: the 2D-TAN json ``{"s13-d21.avi": {"num_frames", "fps",
  "timestamps": [[start_frame, end_frame], ...], "sentences": [...]}}``; frames are
  divided by fps, duration is ``num_frames / fps``, vid drops ``.avi`` and qid
  is ``{vid}_{i}`` with ``i`` the sentence index.
* ``mad``: the MAD json ``{annotation id: {"movie", "sentence", "timestamps":
  [start, end] (seconds), "movie_duration"}}`` (``duration`` is accepted for
  ``movie_duration``); vid is the movie, query the sentence, qid the annotation
  id (a string, as JSON keys are).

Every record passes one validation (``_validate``). A window must start at or
after 0 and before the duration, end after it starts, and end no later than the
duration plus a per-dataset slack; ends inside the slack are clamped to the
duration and counted in ``ReadReport.clamped``. The slack and whether
zero-length windows are accepted were set from the released files:

=============  =========  ===========  ========================================================
dataset        end slack  zero length  measured
=============  =========  ===========  ========================================================
qvhighlights   0.001 s    rejected     train 7218 / val 1550 records: no window past the
                                       duration, none shorter than 2 s, integer seconds
charades       2 s        rejected     1805 of 12408 train and 562 of 3720 test windows end
                                       past the CSV length, by at most 1.54 s (the Charades
                                       authors say to clip them); 4 train lines
                                       (8252, 8440, 9623, 9624) end before they start
tacos          1 s        rejected     48 of 18227 windows end past num_frames, by at most
                                       15 frames (0.51 s)
ego4d          1 s        accepted     not measured here (licence-gated); about 8.6 % of
                                       train+val windows have zero length (EGO4D/episodic-
                                       memory#14) and the official evaluator keeps them
mad            1 s        rejected     not measured here (licence-gated); the official loader
                                       (VLG-Net ``mad.py``) clamps windows to [0, duration]
                                       and cannot represent end <= start
=============  =========  ===========  ========================================================

Every ``vid`` must be a safe relative video id (``names.check_video_id``), and
no two records of a file may share a qid (the error names both places).

Problems are one line naming the file and the line (jsonl, text) or the record
(json: its key or path), e.g. ``train.jsonl:17: window [40, 20] ends before it starts``. By default
the first malformed record raises ``AnnotationError``; with ``skip_bad=True`` it is
left out and counted in the ``ReadReport`` (of two records sharing a qid, the
later one). Problems with the file as a whole (missing, a folder, not JSON,
wrong nesting, an unreadable durations CSV) always raise.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import UserError
from .names import UnsafeNameError, check_video_id

DATASETS = ("qvhighlights", "charades", "ego4d", "tacos", "mad")
QVH_CLIP_SECONDS = 2.0  # length of the clips that relevant_clip_ids and saliency_scores refer to
MAX_SALIENCY = 12.0  # 3 annotators x score 4
MAX_REASONS = 5  # reasons kept in a ReadReport
_TOLERANCE = 1e-3  # seconds: rounding allowed below 0 (clamped) and in the QVHighlights end slack
_OVERLAP_EPS = 1e-6  # seconds: frame / fps rounding that does not count as overlapping a clip


class AnnotationError(UserError):
    """A malformed annotation: one line, ``file:line: problem`` or ``file:record: problem``."""


class _Malformed(ValueError):
    """A record-level problem; the reader adds where it is."""


@dataclass
class ReadReport:
    """What a reader left out or changed."""

    skipped: int = 0  # malformed records left out (skip_bad=True)
    reasons: list[str] = field(default_factory=list)  # the first MAX_REASONS, each "file:line: problem"
    clamped: int = 0  # window ends past the duration, within the dataset's slack, set to the duration
    missing_queries: int = 0  # Ego4D queries without text, left out by design

    def add_skip(self, reason: str) -> None:
        """Count one skipped record and keep its reason if there is room."""
        self.skipped += 1
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(reason)

    def summary(self) -> str:
        """One line for a CLI, e.g. ``skipped 3 malformed records (first: a.jsonl:4: ...)``."""
        parts = []
        if self.skipped:
            parts.append(f"skipped {self.skipped} malformed records (first: {self.reasons[0]})")
        if self.clamped:
            parts.append(f"clamped {self.clamped} window ends to the video duration")
        if self.missing_queries:
            parts.append(f"left out {self.missing_queries} queries without text")
        return "; ".join(parts) or "all records read"


@dataclass(frozen=True)
class _Rules:
    """Per-dataset validation rules (module docstring: how they were chosen)."""

    end_slack: float  # seconds a window may end past the duration; such ends are clamped
    zero_length_ok: bool  # accept windows with end == start
    require_windows: bool = True


_RULES = {
    "qvhighlights": _Rules(end_slack=_TOLERANCE, zero_length_ok=False),
    "charades": _Rules(end_slack=2.0, zero_length_ok=False),
    "tacos": _Rules(end_slack=1.0, zero_length_ok=False),
    "ego4d": _Rules(end_slack=1.0, zero_length_ok=True),
    "mad": _Rules(end_slack=1.0, zero_length_ok=False),
}

_Candidate = tuple[str, Callable[[], dict]]  # (where, build the raw record)


# ---------------------------------------------------------------- validation


def _fmt(value: float) -> str:
    """A number as short text for messages (40, 24.3)."""
    return f"{value:g}"


def _field(obj: Mapping[str, Any], key: str) -> Any:
    """``obj[key]``, or a problem naming the missing field."""
    if key not in obj:
        raise _Malformed(f"missing field {key!r}")
    return obj[key]


def _number(value: Any, name: str) -> float:
    """A finite int or float as float, or a problem naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Malformed(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _text(value: Any, name: str) -> str:
    """A string with something besides whitespace, stripped."""
    if not isinstance(value, str) or not value.strip():
        raise _Malformed(f"{name} is empty or not a string: {value!r}")
    return value.strip()


def _window(value: Any, duration: float, rules: _Rules) -> tuple[list[float], bool]:
    """A checked [start, end] in seconds within [0, duration] and whether its end was clamped."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise _Malformed(f"window {value!r} is not a [start, end] pair")
    start, end = _number(value[0], "window start"), _number(value[1], "window end")
    shown = f"[{_fmt(start)}, {_fmt(end)}]"
    if end < start:
        raise _Malformed(f"window {shown} ends before it starts")
    if start < -_TOLERANCE:
        raise _Malformed(f"window {shown} starts before 0")
    if end > duration + rules.end_slack:
        raise _Malformed(f"window {shown} ends {_fmt(end - duration)} s after the video end ({_fmt(duration)} s)")
    inside = [max(start, 0.0), min(end, duration)]
    if inside[1] < inside[0]:
        raise _Malformed(f"window {shown} starts after the video end ({_fmt(duration)} s)")
    if inside[1] == inside[0] and not rules.zero_length_ok:
        raise _Malformed(
            f"window {shown} has zero length" if end == start else f"window {shown} has no length inside the {_fmt(duration)} s video"
        )
    return inside, end > duration


def _clip_ids(value: Any, duration: float) -> list[int]:
    """Checked 2 s clip ids, each starting inside the video."""
    if not isinstance(value, list):
        raise _Malformed(f"relevant_clip_ids must be a list, got {value!r}")
    for clip_id in value:
        if isinstance(clip_id, bool) or not isinstance(clip_id, int) or not 0 <= clip_id * QVH_CLIP_SECONDS < duration:
            raise _Malformed(f"clip id {clip_id!r} is not a 2 s clip of a {_fmt(duration)} s video")
    return list(value)


def _saliency_rows(value: Any, clip_ids: list[int]) -> list[list[float]]:
    """Checked saliency rows: one per clip id, 3 annotator scores in [0, 4]."""
    if not isinstance(value, list) or len(value) != len(clip_ids):
        count = len(value) if isinstance(value, list) else repr(value)
        raise _Malformed(f"saliency_scores has {count} rows for {len(clip_ids)} relevant_clip_ids")
    for row in value:
        if not isinstance(row, list) or len(row) != 3 or not all(0 <= _number(x, "saliency score") <= 4 for x in row):
            raise _Malformed(f"saliency row {row!r} is not 3 scores in [0, 4]")
    return [[float(x) for x in row] for row in value]


def check_qid(qid: Any) -> int | str:
    """``qid`` if it is an int or a non-empty string, else a ValueError naming the problem (callers add where)."""
    if isinstance(qid, bool) or not isinstance(qid, (int, str)) or qid == "":
        raise _Malformed(f"qid must be an int or a non-empty string, got {qid!r}")
    return qid


def repeated_qid(qid: int | str, where: str, seen: dict[int | str, str]) -> str | None:
    """The problem if ``qid`` was read before (``seen``: qid -> where), else None after noting ``where`` for it."""
    first = seen.setdefault(qid, where)
    return None if first == where else f"duplicate qid {qid!r} (first at {first})"


def _validate(raw: Mapping[str, Any], rules: _Rules) -> tuple[dict, int]:
    """The normalised record built from a raw one, and how many window ends were clamped."""
    qid = check_qid(_field(raw, "qid"))
    duration = _number(_field(raw, "duration"), "duration")
    if duration <= 0:
        raise _Malformed(f"duration {_fmt(duration)} s is not positive")
    record = {"qid": qid, "query": _text(_field(raw, "query"), "query"), "vid": _text(_field(raw, "vid"), "vid"), "duration": duration}
    clamped = 0
    if rules.require_windows or "relevant_windows" in raw:
        windows = _field(raw, "relevant_windows")
        if not isinstance(windows, list) or not windows:
            raise _Malformed(f"relevant_windows must be a non-empty list, got {windows!r}")
        checked = [_window(w, duration, rules) for w in windows]
        record["relevant_windows"] = [w for w, _ in checked]
        clamped = sum(was_clamped for _, was_clamped in checked)
    if "relevant_clip_ids" in raw:
        record["relevant_clip_ids"] = _clip_ids(raw["relevant_clip_ids"], duration)
    if "saliency_scores" in raw:
        record["saliency_scores"] = _saliency_rows(raw["saliency_scores"], record.get("relevant_clip_ids", []))
    return record, clamped


def _gather(candidates: Iterable[_Candidate], rules: _Rules, skip_bad: bool) -> tuple[list[dict], ReadReport]:
    """Build and validate each candidate (safe vid, qid not seen before); raise on the first problem or skip and count it."""
    records, report, seen = [], ReadReport(), {}
    for where, build in candidates:
        try:
            record, clamped = _validate(build(), rules)
            check_video_id(record["vid"], where)
            repeated = repeated_qid(record["qid"], where, seen)
            if repeated:
                raise _Malformed(repeated)
        except (_Malformed, UnsafeNameError) as problem:  # an UnsafeNameError names where already
            error = AnnotationError(str(problem) if isinstance(problem, UnsafeNameError) else f"{where}: {problem}")
            if not skip_bad:
                raise error from None
            report.add_skip(str(error))
            continue
        records.append(record)
        report.clamped += clamped
    return records, report


# ---------------------------------------------------------------- file helpers


def open_text(path: str | Path, newline: str | None = None) -> IO[str]:
    """``path``'s text as UTF-8 (a BOM skipped), read whole, ``newline`` as ``open``'s; a missing file, a folder or
    bytes that are not UTF-8 are an AnnotationError naming it (and the line)."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: {'is a folder, not a file' if path.is_dir() else 'file not found'}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise AnnotationError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None
    return io.StringIO(text, newline=newline)


def text_lines(path: str | Path) -> Iterable[tuple[int, str]]:
    """(1-based line number, stripped text) of each non-blank line."""
    with open_text(path) as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                yield number, line.strip()


def _load_json(path: Path) -> Any:
    """The parsed json file; invalid JSON names the line."""
    with open_text(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as exc:
            raise AnnotationError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
        except RecursionError:
            raise AnnotationError(f"{path}: not valid JSON (nested too deeply)") from None


def _shown(text: str, limit: int = 60) -> str:
    """A line quoted for an error message, cut to ``limit`` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


# ---------------------------------------------------------------- QVHighlights


def json_object(line: str) -> dict:
    """One JSON line that must hold an object; a ValueError names the problem (callers add where)."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _Malformed(f"not valid JSON ({exc.msg}, column {exc.colno})") from None
    except RecursionError:
        raise _Malformed("not valid JSON (nested too deeply)") from None
    if not isinstance(raw, dict):
        raise _Malformed(f"expected a JSON object, got {_shown(line)}")
    return raw


def read_qvhighlights(
    path: str | Path, skip_bad: bool = False, require_windows: bool = True, dataset: str = "qvhighlights"
) -> tuple[list[dict], ReadReport]:
    """QVHighlights jsonl; ``require_windows=False`` accepts records without windows (the test split).

    ``dataset`` (one of DATASETS) picks the window rules, for another dataset's records in this format.
    """
    path = Path(path)
    rules = replace(_RULES[dataset], require_windows=require_windows)
    candidates = ((f"{path}:{number}", partial(json_object, line)) for number, line in text_lines(path))
    return _gather(candidates, rules, skip_bad)


# ---------------------------------------------------------------- Charades-STA


def _charades_fields(line: str) -> tuple[str, float, float, str]:
    """``VIDEOID START END##sentence`` -> (vid, start s, end s, sentence)."""
    head, separator, sentence = line.partition("##")
    parts = head.split()
    if not separator or len(parts) != 3:
        raise _Malformed(f"expected 'VIDEOID START END##sentence', got {_shown(line)}")
    vid, start, end = parts
    try:
        return vid, float(start), float(end), sentence
    except ValueError:
        raise _Malformed(f"start or end is not a number in {_shown(line)}") from None


def _charades_raw(index: int, line: str, durations: Mapping[str, float]) -> dict:
    """One Charades-STA line as a raw record; qid is the 0-based line index."""
    vid, start, end, sentence = _charades_fields(line)
    if vid not in durations:
        raise _Malformed(f"no duration for video {vid!r}")
    return {"qid": index, "query": sentence, "vid": vid, "duration": durations[vid], "relevant_windows": [[start, end]]}


def read_charades_durations(path: str | Path) -> dict[str, float]:
    """vid -> seconds from a Charades CSV (``Charades_v1_test.csv``: columns ``id`` and ``length``)."""
    path = Path(path)
    with open_text(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"id", "length"} <= set(reader.fieldnames or ()):
            raise AnnotationError(f"{path}:1: a durations CSV needs columns 'id' and 'length', got {reader.fieldnames}")
        durations = {}
        for row in reader:
            try:
                durations[row["id"]] = float(row["length"])
            except (TypeError, ValueError):
                raise AnnotationError(f"{path}:{reader.line_num}: length {row['length']!r} is not a number") from None
    return durations


def _latest_ends(lines: list[tuple[int, str]]) -> dict[str, float]:
    """vid -> latest window end (s) over the lines that parse: the durations=None fallback."""
    ends: dict[str, float] = {}
    for _, line in lines:
        try:
            vid, _, end, _ = _charades_fields(line)
        except _Malformed:
            continue  # reported when the line itself is read
        ends[vid] = max(end, ends.get(vid, end))
    return ends


def read_charades_sta(
    path: str | Path, durations: Mapping[str, float] | str | Path | None, skip_bad: bool = False
) -> tuple[list[dict], ReadReport]:
    """Charades-STA lines; ``durations`` is vid -> seconds, a Charades CSV path, or None.

    None is a fallback for when the CSV is not at hand: each video's duration
    becomes its latest window end in this file, so nothing after the last
    moment exists and no window is ever clamped.
    """
    path = Path(path)
    lines = list(text_lines(path))
    if durations is None:
        durations = _latest_ends(lines)
    elif isinstance(durations, (str, Path)):
        durations = read_charades_durations(durations)
    candidates = ((f"{path}:{number}", partial(_charades_raw, number - 1, line, durations)) for number, line in lines)
    return _gather(candidates, _RULES["charades"], skip_bad)


# ---------------------------------------------------------------- Ego4D NLQ


def _list_at(obj: Any, key: str, where: str) -> list:
    """``obj[key]`` when it is a list; otherwise the file is not the expected nesting."""
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, list):
        raise AnnotationError(f"{where}: expected a list at {key!r} (Ego4D NLQ nesting videos/clips/annotations/language_queries)")
    return value


def _ego4d_raw(clip: dict, annotation: dict, index: int, query: dict) -> dict:
    """One language query of one clip as a raw record (times relative to the clip, seconds)."""
    if not isinstance(query, dict):
        raise _Malformed(f"language query {query!r} is not an object")
    clip_start = _number(_field(clip, "clip_start_sec"), "clip_start_sec")
    clip_end = _number(_field(clip, "clip_end_sec"), "clip_end_sec")
    return {
        "qid": f"{_text(_field(annotation, 'annotation_uid'), 'annotation_uid')}_{index}",
        "query": query["query"],
        "vid": _field(clip, "clip_uid"),
        "duration": clip_end - clip_start,
        "relevant_windows": [[_field(query, "clip_start_sec"), _field(query, "clip_end_sec")]],
    }


def _has_text(query: Any) -> bool:
    """Whether a language query carries text (the official files have some without); non-objects are reported later."""
    if not isinstance(query, dict):
        return True
    text = query.get("query")
    return not (text is None or (isinstance(text, str) and not text.strip()))


def _ego4d_candidates(data: Any, path: Path) -> tuple[list[_Candidate], int]:
    """One candidate per language query with text, and how many had none."""
    candidates, missing = [], 0
    for v, video in enumerate(_list_at(data, "videos", f"{path}")):
        for c, clip in enumerate(_list_at(video, "clips", f"{path}:videos[{v}]")):
            for a, annotation in enumerate(_list_at(clip, "annotations", f"{path}:videos[{v}].clips[{c}]")):
                where = f"{path}:videos[{v}].clips[{c}].annotations[{a}]"
                for q, query in enumerate(_list_at(annotation, "language_queries", where)):
                    if not _has_text(query):
                        missing += 1
                        continue
                    candidates.append((f"{where}.language_queries[{q}]", partial(_ego4d_raw, clip, annotation, q, query)))
    return candidates, missing


def read_ego4d_nlq(path: str | Path, skip_bad: bool = False) -> tuple[list[dict], ReadReport]:
    """Ego4D NLQ json (v1/v2); one record per language query, grounded in its clip."""
    path = Path(path)
    candidates, missing = _ego4d_candidates(_load_json(path), path)
    records, report = _gather(candidates, _RULES["ego4d"], skip_bad)
    report.missing_queries = missing
    return records, report


# ---------------------------------------------------------------- TACoS


def _tacos_raw(key: str, video: dict, index: int) -> dict:
    """Sentence ``index`` of one TACoS video as a raw record (frames converted to seconds)."""
    fps = _number(_field(video, "fps"), "fps")
    if fps <= 0:
        raise _Malformed(f"fps {_fmt(fps)} is not positive")
    timestamps, sentences = _field(video, "timestamps"), _field(video, "sentences")
    if not isinstance(timestamps, list) or not isinstance(sentences, list) or len(timestamps) != len(sentences):
        raise _Malformed("timestamps and sentences must be lists of the same length")
    frames = timestamps[index]
    if not isinstance(frames, list) or len(frames) != 2:
        raise _Malformed(f"timestamp {frames!r} is not a [start_frame, end_frame] pair")
    vid = key.removesuffix(".avi")
    return {
        "qid": f"{vid}_{index}",
        "query": sentences[index],
        "vid": vid,
        "duration": _number(_field(video, "num_frames"), "num_frames") / fps,
        "relevant_windows": [[_number(frames[0], "start frame") / fps, _number(frames[1], "end frame") / fps]],
    }


def _tacos_count(video: dict) -> int:
    """Sentences to read from one video: the longer list, or 1 so that a broken entry is reported."""
    return max((len(v) for v in (video.get("timestamps"), video.get("sentences")) if isinstance(v, list)), default=1)


def read_tacos(path: str | Path, skip_bad: bool = False) -> tuple[list[dict], ReadReport]:
    """TACoS json in the 2D-TAN layout; windows and duration from frames and fps."""
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict) or not all(isinstance(video, dict) for video in data.values()):
        raise AnnotationError(f"{path}: expected a mapping video name -> {{num_frames, fps, timestamps, sentences}}")
    candidates = (
        (f"{path}:{key}[{i}]", partial(_tacos_raw, key, video, i)) for key, video in data.items() for i in range(_tacos_count(video))
    )
    return _gather(candidates, _RULES["tacos"], skip_bad)


# ---------------------------------------------------------------- MAD


def _mad_raw(key: str, entry: Any) -> dict:
    """One MAD annotation as a raw record; ``duration`` stands in for a missing ``movie_duration``."""
    if not isinstance(entry, dict):
        raise _Malformed(f"expected an object with movie, sentence, timestamps, movie_duration, got {type(entry).__name__}")
    if "movie_duration" not in entry and "duration" not in entry:
        raise _Malformed("missing field 'movie_duration' (or 'duration')")
    return {
        "qid": key,
        "query": _field(entry, "sentence"),
        "vid": _field(entry, "movie"),
        "duration": entry.get("movie_duration", entry.get("duration")),
        "relevant_windows": [_field(entry, "timestamps")],
    }


def read_mad(path: str | Path, skip_bad: bool = False) -> tuple[list[dict], ReadReport]:
    """MAD json (annotation id -> movie, sentence, timestamps in seconds, movie_duration); one record per id."""
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a mapping annotation id -> {{movie, sentence, timestamps, movie_duration}}")
    candidates = ((f"{path}:{key}", partial(_mad_raw, key, entry)) for key, entry in data.items())
    return _gather(candidates, _RULES["mad"], skip_bad)


# ---------------------------------------------------------------- dispatch and targets


_READERS = {"qvhighlights": read_qvhighlights, "charades": read_charades_sta, "ego4d": read_ego4d_nlq, "tacos": read_tacos, "mad": read_mad}


def read_annotations(path: str | Path, dataset: str, skip_bad: bool = False, **kwargs: Any) -> tuple[list[dict], ReadReport]:
    """Read ``path`` with the reader of ``dataset`` (one of DATASETS); kwargs go to that reader."""
    if dataset not in _READERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    if dataset == "charades" and "durations" not in kwargs:
        raise ValueError(
            "charades needs durations=: a vid -> seconds mapping or the Charades_v1_*.csv path "
            "(durations=None uses each video's latest window end instead)"
        )
    return _READERS[dataset](path, skip_bad=skip_bad, **kwargs)


def _annotated_saliency(record: dict, num_clips: int, clip_seconds: float) -> np.ndarray:
    """Sum of the 3 scores / 12 of the 2 s clip holding each clip's centre; 0 on clips without scores."""
    by_id = {cid: sum(row) / MAX_SALIENCY for cid, row in zip(record["relevant_clip_ids"], record["saliency_scores"])}
    annotated = np.floor((np.arange(num_clips) + 0.5) * clip_seconds / QVH_CLIP_SECONDS).astype(int)
    return np.array([by_id.get(int(i), 0.0) for i in annotated], dtype=np.float64)


def window_saliency(windows: list[list[float]], num_clips: int, clip_seconds: float) -> np.ndarray:
    """1 on clips overlapping a window (a zero-length window: the clip holding it), 0 elsewhere."""
    targets = np.zeros(num_clips, dtype=np.float64)
    for start, end in windows:
        first = math.floor((start + _OVERLAP_EPS) / clip_seconds)
        stop = max(math.ceil((end - _OVERLAP_EPS) / clip_seconds), first + 1)
        targets[max(first, 0) : min(stop, num_clips)] = 1.0
    return targets


def saliency_targets(record: dict, num_clips: int, clip_seconds: float = 2.0) -> np.ndarray:
    """Per-clip saliency targets (num_clips,) for clips of ``clip_seconds`` starting at 0 s.

    Records with ``saliency_scores`` (QVHighlights) use the sum of the 3
    annotator scores / 12 on their relevant 2 s clips (for other clip lengths,
    the 2 s clip holding the clip's centre) and 0 elsewhere; others get 1 on
    clips overlapping a window and 0 elsewhere (the R2-Tuning rule). Clips past
    ``num_clips`` are dropped.
    """
    if "saliency_scores" in record:
        return _annotated_saliency(record, num_clips, clip_seconds)
    if "relevant_windows" not in record:
        raise ValueError(f"record {record.get('qid')!r} has neither saliency_scores nor relevant_windows")
    return window_saliency(record["relevant_windows"], num_clips, clip_seconds)
