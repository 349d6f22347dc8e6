"""Hostile inputs for every parser of user input, and the invariant each must keep (tests/test_fuzz.py runs a
bounded, derandomised number of examples in `make test`; bench/fuzz.py runs each for minutes).

A case is one file a user or another tool could hand us: a valid record whose fields are swapped for hostile
values (wrong types, NaN and inf, huge and negative numbers, empty, duplicated and traversing ids, unicode and
control characters, deep nesting), then maybe truncated or given bytes that are not UTF-8. The reader must accept
it or refuse it with a user error (``cli.USER_ERRORS``: one line on the terminal and exit status 2) whose
message names the file; nothing else may escape.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from vtg_pipeline.cli import USER_ERRORS

# ---------------------------------------------------------------- how many

EXAMPLES = int(os.environ.get("VTG_FUZZ_EXAMPLES", 60))  # per property: `make test`'s budget; bench/fuzz.py raises it
fuzzed = settings(
    max_examples=EXAMPLES,
    derandomize=not os.environ.get("VTG_FUZZ_RANDOM"),  # the suite sees the same cases every run; the long run new ones
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------- values

SPECIAL_TEXT = ["", " ", "\x00", "\n", "\r\n", "\t", "../x", "/etc/passwd", "a/../../b", "\u202e", "\ufeff", "NaN", "-0", "1e999",
                "𝓋𝓉𝑔", "ééé", "qid", "null"]  # fmt: skip
SPECIAL_NUMBERS = [0, -1, 1, 2**31, -(2**63), 2**64, 10**30, 0.5, -0.0, 1e308, -1e308, 5e-324, math.nan, math.inf, -math.inf]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(SPECIAL_NUMBERS),
    st.text(max_size=12),
    st.sampled_from(SPECIAL_TEXT),
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12
)


def hostile(valid) -> st.SearchStrategy:
    """Mostly the valid value, else anything."""
    return st.one_of(st.just(valid), st.just(valid), values)


@st.composite
def record(draw, valid: dict, extra_keys: bool = True) -> dict:
    """``valid`` with some fields hostile, some dropped, maybe an unknown one added."""
    out = {}
    for key, value in valid.items():
        if draw(st.integers(0, 9)) == 0:
            continue  # dropped
        out[key] = draw(hostile(value))
    if extra_keys and draw(st.booleans()):
        out[draw(st.text(max_size=6))] = draw(values)
    return out


def key(valid: str) -> st.SearchStrategy:
    """A JSON object key: mostly the valid one, else any text."""
    return st.one_of(st.just(valid), st.just(valid), st.text(max_size=8), st.sampled_from(SPECIAL_TEXT))


def dumps(value) -> str:
    """JSON as another tool might write it: NaN and Infinity allowed."""
    return json.dumps(value, allow_nan=True)


@st.composite
def damaged(draw, text: str) -> bytes:
    """The file's bytes, maybe truncated, maybe with bytes that are not UTF-8 or a deep nesting appended."""
    data = text.encode("utf-8", "surrogatepass")
    damage = draw(st.sampled_from(["none", "none", "truncate", "bytes", "nesting", "bom"]))
    if damage == "truncate" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif damage == "bytes":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\x00", b"\xed\xa0\x80"])) + data[at:]
    elif damage == "nesting":
        data += b"\n" + b"[" * 100_000 + b"\n"
    elif damage == "bom":
        data = b"\xef\xbb\xbf" + data
    return data


@st.composite
def jsonl(draw, valid: dict, duplicate_key: str | None = "qid") -> bytes:
    """A jsonl file of 1-4 hostile records, maybe one line not JSON, maybe a record repeated (duplicate ids)."""
    lines = [dumps(draw(record(valid))) for _ in range(draw(st.integers(1, 4)))]
    if draw(st.integers(0, 4)) == 0:
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(["{", "[]", "1", '"x"', "{}", "null", "{'a': 1}"])))
    if duplicate_key and draw(st.integers(0, 4)) == 0:
        lines.append(lines[0])
    return draw(damaged("\n".join(lines) + "\n"))


# ---------------------------------------------------------------- valid shapes of each format

QVH_RECORD = {"qid": 1, "query": "a red disc rises", "vid": "v1", "duration": 30, "relevant_windows": [[2, 8]],
              "relevant_clip_ids": [1, 2, 3], "saliency_scores": [[1, 2, 3], [4, 4, 4], [0, 1, 2]]}  # fmt: skip
PREDICTION = {"qid": 1, "query": "a red disc rises", "vid": "v1", "pred_relevant_windows": [[2, 8, 0.9], [10, 14, 0.5]],
              "pred_saliency_scores": [0.1] * 15}  # fmt: skip
REQUEST = {"video": "a.mp4", "query": "a red disc rises", "qid": 3}
MANIFEST_RECORD = {"id": "v1", "path": "/videos/v1.mp4", "frames": 3, "duration": 6.0, "fps": 0.5}


@st.composite
def ego4d_file(draw) -> bytes:
    query = draw(record({"query": "where is the cup", "clip_start_sec": 1.0, "clip_end_sec": 4.0}))
    annotation = draw(record({"annotation_uid": "a1", "language_queries": [query]}))
    clip = draw(record({"clip_uid": "c1", "clip_duration": draw(hostile(30.0)), "annotations": [annotation]}))
    data = draw(record({"videos": [{"video_uid": "u1", "clips": [clip]}], "version": "v1"}))
    return draw(damaged(dumps(data)))


@st.composite
def tacos_file(draw) -> bytes:
    video = draw(record({"num_frames": 900, "fps": 30, "timestamps": [[0, 90], [300, 600]], "sentences": ["one", "two"]}))
    return draw(damaged(dumps({draw(key("s13-d21.avi")): video} if draw(st.booleans()) else draw(values))))


@st.composite
def mad_file(draw) -> bytes:
    entry = draw(record({"movie": "m1", "sentence": "he opens the door", "timestamps": [3.0, 7.5], "movie_duration": 5000.0}))
    return draw(damaged(dumps({draw(key("q1")): entry})))


@st.composite
def charades_file(draw) -> bytes:
    def line() -> str:
        vid, start, end, text = (draw(hostile(v)) for v in ("3MSZA", 0.5, 6.1, "a person opens a door"))
        sep = draw(st.sampled_from(["##", "#", " ", ""]))
        return f"{vid} {start} {end}{sep}{text}"

    return draw(damaged("\n".join(line() for _ in range(draw(st.integers(1, 3)))) + "\n"))


@st.composite
def csv_requests(draw) -> bytes:
    header = draw(st.sampled_from(["video,query,qid", "video,query", "query,video,qid,extra", "vid,text", ""]))
    rows = []
    for _ in range(draw(st.integers(0, 4))):
        cells = [draw(st.one_of(st.text(max_size=10), st.sampled_from(SPECIAL_TEXT + ['"', '""', ",", "7", "07", "-1"])))
                 for _ in range(draw(st.integers(0, 4)))]  # fmt: skip
        rows.append(",".join(cells))
    return draw(damaged("\n".join([header, *rows]) + "\n"))


@st.composite
def yaml_config(draw) -> tuple[bytes, list[str]]:
    """A YAML config (hostile values under real keys, unknown keys, YAML features) and key=value overrides."""
    keys = ["optim.epochs", "optim.lr", "optim.batch_size", "model.layers", "model.dims", "data.fps", "decode.window",
            "decode.window_stride", "decode.nms", "seed", "output_dir", "model.strides", "nope.key", "optim", ""]  # fmt: skip
    content = {}
    for _ in range(draw(st.integers(0, 4))):
        section, _, leaf = draw(st.sampled_from(keys)).partition(".")
        value = draw(values)
        content[section] = {leaf: value} if leaf else value
    text = draw(st.one_of(st.just(dumps(content)), st.sampled_from(["{", "a: [", "- 1\n- 2", "!!python/object:os.system x", "&a [*a]",
                                                                    "optim: {epochs: .inf}", "x: \x00", "~"])))  # fmt: skip
    overrides = [f"{draw(st.sampled_from(keys))}={draw(st.one_of(st.text(max_size=8), st.sampled_from(['.nan', '-1', '[1,', '{}', '1e999'])))}"
                 for _ in range(draw(st.integers(0, 3)))]  # fmt: skip
    if draw(st.integers(0, 5)) == 0:
        overrides.append(draw(st.sampled_from(["noequals", "=1", "a.b.c.d=1"])))
    return draw(damaged(text)), overrides


@st.composite
def safetensors_file(draw) -> bytes:
    """A feature file: a header (tensors' dtype, shape, offsets and the metadata strings) hostile in parts."""
    frames = 3
    tensors = {"timestamps": ("F64", [frames], 8 * frames), "vision": ("F16", [frames, 4, 17, 64], 2 * frames * 4 * 17 * 64)}
    header, offset = {}, 0
    for name, (dtype, shape, size) in tensors.items():
        header[name] = draw(record({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}, extra_keys=False))
        offset += size
    metadata = {"duration": "6.0", "fps": "0.5", "video_id": "v1", "source_mtime": "1", "layers": "[8, 9, 10, 11]"}
    header["__metadata__"] = draw(st.one_of(st.just(metadata), record(metadata), values))
    blob = dumps(header).encode()
    payload = draw(
        st.one_of(st.just(bytes(offset)), st.binary(max_size=64), st.just(struct.pack("<3d", math.nan, 2.0, 4.0) + bytes(offset)))
    )
    declared = draw(st.sampled_from([len(blob), len(blob) + 7, 2**40, 0]))
    return draw(damaged_bytes(struct.pack("<Q", declared) + blob + payload))


@st.composite
def damaged_bytes(draw, data: bytes) -> bytes:
    if data and draw(st.integers(0, 3)) == 0:
        return data[: draw(st.integers(0, len(data) - 1))]
    return data


@st.composite
def library_files(draw) -> tuple[bytes, bytes]:
    """index.json and its version's library.json."""
    pointer = draw(record({"format_version": "1", "version": 1, "folder": "v1"}))
    video = {"vid": "v1", "path": "/videos/v1.mp4", "size": 10, "mtime": "1", "duration": 6.0, "frames": 3, "rows": [0, 1]}
    info = draw(record({"format_version": "1", "checkpoint": {"path": "ckpt", "sha256": "ab" * 32}, "videos": [draw(record(video))],
                        "failed": [], "faiss": {"kind": "flat"}, "folders": ["/videos"], "fps": 0.5}))  # fmt: skip
    return draw(damaged(dumps(pointer))), draw(damaged(dumps(info)))


# ---------------------------------------------------------------- the invariant


@dataclass
class Refused:
    message: str


def read_or_refuse(read: Callable[[], object], named: Path) -> object:
    """Run a reader: its result, or ``Refused`` when it raised a user error naming ``named``. Anything else fails."""
    try:
        return read()
    except USER_ERRORS as e:
        message = str(e)
        assert str(named) in message or named.name in message, f"the error does not name {named}: {message!r}"
        return Refused(message)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
