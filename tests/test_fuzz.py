"""Property-based fuzzing of every parser of user input (hostile cases from tests/fuzzing.py): each accepts a case or
refuses it with one line naming the file, exit status 2 at the command line, and writes nothing when it refuses.
Bounded and derandomised here; `python bench/fuzz.py` runs the same properties for minutes each."""

import tempfile
from pathlib import Path

import pytest
from fuzzing import (
    MANIFEST_RECORD,
    PREDICTION,
    QVH_RECORD,
    REQUEST,
    Refused,
    charades_file,
    csv_requests,
    ego4d_file,
    fuzzed,
    jsonl,
    library_files,
    mad_file,
    read_or_refuse,
    safetensors_file,
    tacos_file,
    write,
    yaml_config,
)
from hypothesis import given
from hypothesis import strategies as st

from vtg_pipeline.annotations import read_annotations
from vtg_pipeline.cli import main
from vtg_pipeline.config import load_config
from vtg_pipeline.data import StoredVideo
from vtg_pipeline.features import Manifest
from vtg_pipeline.grounder import read_requests
from vtg_pipeline.library import read_version


def folder() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="vtg-fuzz-")


def files_in(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


READERS = {
    "qvhighlights": (jsonl(QVH_RECORD), "gt.jsonl"),
    "ego4d": (ego4d_file(), "nlq_val.json"),
    "tacos": (tacos_file(), "test.json"),
    "mad": (mad_file(), "MAD_test.json"),
    "charades": (charades_file(), "charades_sta_test.txt"),
}


@pytest.mark.parametrize("dataset", sorted(READERS))
@fuzzed
@given(data=st.data())
def test_annotation_readers_accept_or_refuse_in_one_line(dataset, data):
    strategy, name = READERS[dataset]
    with folder() as tmp:
        path = write(Path(tmp) / name, data.draw(strategy, label="file"))
        extra = {"durations": None} if dataset == "charades" else {}
        for skip_bad in (False, True):
            read_or_refuse(lambda skip_bad=skip_bad: read_annotations(path, dataset, skip_bad=skip_bad, **extra), path)


@fuzzed
@given(
    predictions=jsonl(PREDICTION),
    truth=jsonl(QVH_RECORD),
    dataset=st.sampled_from(["qvhighlights", "charades", "ego4d"]),
    allow_missing=st.booleans(),
)
def test_vtg_eval_exits_2_with_one_line_naming_the_bad_file(predictions, truth, dataset, allow_missing, capsys):
    with folder() as tmp:
        pred, gt = write(Path(tmp) / "pred.jsonl", predictions), write(Path(tmp) / "gt.jsonl", truth)
        before = files_in(Path(tmp))
        status = main(["eval", "--pred", str(pred), "--gt", str(gt), "--dataset", dataset, *(["--allow-missing"] * allow_missing)])
        out, err = capsys.readouterr()
        assert status in (0, 2), err
        if status == 2:
            assert len(err.splitlines()) == 1 and "Traceback" not in err and ("pred.jsonl" in err or "gt.jsonl" in err), err
        assert files_in(Path(tmp)) == before, "eval writes nothing"


@fuzzed
@given(st.one_of(jsonl(REQUEST).map(lambda d: ("q.jsonl", d)), csv_requests().map(lambda d: ("q.csv", d))))
def test_ground_queries_jsonl_and_csv_accept_or_refuse_in_one_line(case):
    name, data = case
    with folder() as tmp:
        path = write(Path(tmp) / name, data)
        requests = read_or_refuse(lambda: read_requests(path), path)
        if not isinstance(requests, Refused):
            assert len({r.qid for r in requests}) == len(requests), "every request has its own qid"
            assert all(isinstance(r.video, str) and isinstance(r.query, str) for r in requests)


@fuzzed
@given(yaml_config())
def test_yaml_configs_and_overrides_accept_or_refuse_in_one_line(case):
    data, overrides = case
    with folder() as tmp:
        path = write(Path(tmp) / "config.yaml", data)
        try:
            load_config(path, overrides)
        except ValueError as e:  # ConfigError: names the file, or the override it could not apply
            assert str(path) in str(e) or any(o.split("=", 1)[0].split(".")[0].strip() in str(e) or repr(o) in str(e) for o in overrides), (
                str(e)
            )


@fuzzed
@given(jsonl(MANIFEST_RECORD, duplicate_key="id"))
def test_an_extract_manifest_is_read_or_refused_in_one_line(data):
    with folder() as tmp:
        path = write(Path(tmp) / "manifest.jsonl", data)
        records = read_or_refuse(lambda: Manifest(tmp).records(), path)
        if not isinstance(records, Refused):
            assert all(isinstance(r.get("path"), str) for r in records.values())


@fuzzed
@given(safetensors_file())
def test_a_feature_files_tensors_and_metadata_are_read_or_refused_in_one_line(data):
    with folder() as tmp:
        path = write(Path(tmp) / "v1.safetensors", data)

        def read():
            with StoredVideo.open(path, (4, 17, 64)) as video:
                return video.duration, video.rows(0, video.frames).shape, video.last_layer_states(slice(0, 1)).shape

        read_or_refuse(read, path)


@fuzzed
@given(library_files())
def test_a_library_index_version_is_read_or_refused_in_one_line(case):
    pointer, info = case
    with folder() as tmp:
        write(Path(tmp) / "index.json", pointer)
        write(Path(tmp) / "v1" / "library.json", info)
        read_or_refuse(lambda: read_version(Path(tmp)), Path(tmp))
