"""The library's window index layouts (window_index.py): the choice by size, the compressed index's exact re-ranking
from memory-mapped vectors, and reusing its training on a rebuild."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vtg_pipeline.window_index import WindowIndex, build_faiss, choose_layout, describe_layout, mapped_tensor, reusable_training


def unit_vectors(count: int, dims: int = 64, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors (count, dims) float32, like window embeddings: 50 centres plus noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dims)).astype(np.float32)
    vectors = centres[rng.integers(0, 50, count)] + 0.3 * rng.standard_normal((count, dims)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def exact_top(vectors: np.ndarray, queries: np.ndarray, n: int) -> np.ndarray:
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :n]


def test_the_layout_follows_the_number_of_windows():
    assert choose_layout(100_000, 256)["kind"] == "flat"
    ivf = choose_layout(1_000_000, 256)
    assert ivf == {"kind": "ivf", "factory": "IVF1024,Flat", "lists": 1024, "nprobe": 64}
    compressed = choose_layout(10_000_000, 256)
    assert compressed["factory"] == "IVF4096,PQ64x8" and compressed["nprobe"] == 128 and compressed["rerank"] == 20
    assert choose_layout(5_000, 64, flat_up_to=0, compress_above=0)["factory"] == "IVF64,PQ64x7", "few windows: fewer bits"
    assert choose_layout(5_000, 48, flat_up_to=0, compress_above=0)["factory"] == "IVF64,PQ16x7", "m divides the dims"
    assert "shortlist 20x" in describe_layout({**compressed, "trained_on": 10_000_000})


def test_mapped_tensor_reads_the_safetensors_rows(tmp_path):
    vectors = torch.randn(7, 5)
    save_file({"start": torch.arange(7.0, dtype=torch.float64), "vectors": vectors}, str(tmp_path / "v.safetensors"))
    mapped = mapped_tensor(tmp_path / "v.safetensors", "vectors")
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, vectors.numpy())
    assert np.array_equal(mapped[[1, 4]], vectors.numpy()[[1, 4]])


def test_the_compressed_index_equals_the_exact_one_when_its_shortlist_covers_the_library():
    vectors = unit_vectors(1_000)
    queries = unit_vectors(20, seed=1)
    layout = choose_layout(len(vectors), vectors.shape[1], flat_up_to=0, compress_above=0)
    index = WindowIndex(build_faiss(vectors, layout), layout, vectors)
    similarities, rows = index.search(queries, 10, nprobe=layout["lists"], rerank=len(vectors) // 10)  # every window
    assert np.array_equal(rows, exact_top(vectors, queries, 10))
    assert np.allclose(similarities, np.take_along_axis(queries @ vectors.T, rows, axis=1), atol=1e-5), "re-ranked: exact scores"


def test_the_compressed_index_with_its_own_parameters_finds_most_of_the_exact_top():
    vectors, queries = unit_vectors(2_000), unit_vectors(50, seed=1)
    layout = choose_layout(len(vectors), vectors.shape[1], flat_up_to=0, compress_above=0)
    _, rows = WindowIndex(build_faiss(vectors, layout), layout, vectors).search(queries, 20)
    exact = exact_top(vectors, queries, 20)
    assert np.mean([len(set(r) & set(e)) / 20 for r, e in zip(rows, exact)]) > 0.9


def test_a_rebuild_reuses_the_training_while_the_library_at_most_doubles():
    vectors = unit_vectors(1_000)
    layout = {**choose_layout(len(vectors), 64, flat_up_to=0, compress_above=0), "trained_on": 1_000}
    first = build_faiss(vectors, layout)
    grown = choose_layout(1_200, 64, flat_up_to=0, compress_above=0)
    reused = reusable_training(layout, first, grown, 1_200)
    assert reused is first
    again = build_faiss(unit_vectors(1_200, seed=2), grown, reused)
    assert again.ntotal == 1_200 and first.ntotal == 1_000, "the previous index is left as it was"
    assert reusable_training(layout, first, grown, 2_001) is None, "more than twice the windows: train again"
    assert reusable_training(layout, first, choose_layout(1_000, 64, flat_up_to=0), 1_000) is None, "another layout"


def test_a_compressed_index_without_its_vectors_is_refused():
    layout = choose_layout(300, 64, flat_up_to=0, compress_above=0)
    with pytest.raises(ValueError, match="full vectors"):
        WindowIndex(build_faiss(unit_vectors(300), layout), layout)
