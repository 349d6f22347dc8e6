"""BM-DETR options: negative queries, the probabilistic frame-query matcher reaching the spans, its losses, temporal shifting."""

import math

import pytest
import torch

from vtg_pipeline.data import near_miss_queries, negative_query_candidates, shift_moment
from vtg_pipeline.losses import LossConfig, background_losses, frame_probability_loss, semantic_alignment_loss
from vtg_pipeline.models import ModelConfig, create_model
from vtg_pipeline.models.heads import FrameQueryMatcher


def bm_model(**overrides):
    torch.manual_seed(0)
    return create_model(
        ModelConfig(vision_width=16, text_width=16, dims=32, heads=4, dropout=0.0, droppath=0.0, background_matching=True, **overrides)
    ).eval()


def inputs():
    torch.manual_seed(1)
    video, mask = torch.randn(2, 16, 4, 5, 16), torch.ones(2, 16, dtype=torch.bool)
    mask[1, 12:] = False
    return video, mask, torch.randn(2, 6, 4, 16), torch.ones(2, 6, dtype=torch.bool)


def test_negative_queries_follow_the_iou_and_similarity_rules_and_count_fallbacks():
    records = [
        {"vid": "a", "query": "red", "relevant_windows": [[0, 10]]},
        {"vid": "a", "query": "blue", "relevant_windows": [[20, 30]]},  # disjoint: a negative of "red"
        {"vid": "a", "query": "crimson", "relevant_windows": [[40, 50]]},  # disjoint but too similar to "red"
        {"vid": "a", "query": "overlap", "relevant_windows": [[2, 10]]},  # IoU 0.8 with "red"
        {"vid": "b", "query": "alone", "relevant_windows": [[0, 5]]},  # no other query in its video
    ]
    e = {"red": [1.0, 0.0], "crimson": [0.95, math.sqrt(1 - 0.95**2)], "blue": [0.0, 1.0], "overlap": [0.0, 1.0], "alone": [0.0, 1.0]}
    candidates, fallbacks = negative_query_candidates(records, {k: torch.tensor(v) for k, v in e.items()}, max_similarity=0.9)
    assert candidates[0] == ["blue"]
    assert "red" not in candidates[3]  # overlaps red's moment
    assert candidates[4] == sorted({"red", "blue", "crimson", "overlap"}) and fallbacks == 1


def test_near_miss_queries_share_the_most_content_words_and_skip_overlapping_moments():
    records = [
        {"vid": "a", "query": "a green ring blinks", "relevant_windows": [[0, 10]]},
        {"vid": "b", "query": "a green ring grows", "relevant_windows": [[0, 10]]},  # 2 words, another video
        {"vid": "a", "query": "a red ring blinks", "relevant_windows": [[1, 10]]},  # 2 words, but on the same moment
        {"vid": "a", "query": "the blue disc blinks", "relevant_windows": [[30, 40]]},  # 1 word
        {"vid": "c", "query": "a green ring grows", "relevant_windows": [[5, 9]]},  # the same text again: listed once
        {"vid": "c", "query": "nothing alike", "relevant_windows": [[20, 30]]},
    ]
    near = near_miss_queries(records)
    assert near[0] == ["a green ring grows"]
    assert near[1] == ["a green ring blinks"]  # "a red ring blinks" shares one word only
    assert near[2] == ["a green ring grows", "the blue disc blinks"]  # 1 word each; "a green ring blinks" (2) overlaps
    assert near[5] == []


def test_near_miss_negative_queries_replace_bm_detrs_in_the_train_split(synth_root, tiny_backbone):
    from vtg_pipeline.data import DataConfig, load_split

    cfg = DataConfig(root=str(synth_root), negative_queries=True, negative_similarity=0.99)
    own = load_split(cfg, "train", tiny_backbone)
    near = load_split(DataConfig(**{**cfg.to_dict(), "negative_query_source": "near"}), "train", tiny_backbone)
    expected = near_miss_queries(own.records)
    assert any(expected) and near.negatives == [n or o for n, o in zip(expected, own.negatives)]
    assert load_split(DataConfig(**{**cfg.to_dict(), "negative_query_source": "near"}), "val", tiny_backbone).negatives is None


def test_matcher_probabilities_and_reweighting():
    matcher = FrameQueryMatcher(8)
    frames, mask = torch.randn(1, 5, 8), torch.tensor([[True, True, True, True, False]])
    out = matcher(frames, mask)
    p_pos = matcher.pfm(frames)[..., 0]
    assert torch.allclose(out["prob"], p_pos)  # inference: p(f|Q+) alone
    negative = torch.randn(1, 5, 8)
    joint = matcher(frames, mask, negative)["prob"]
    assert torch.allclose(joint, p_pos * (1 - matcher.pfm(negative)[..., 0]))
    weights = joint.masked_fill(~mask, float("-inf")).softmax(-1) * 4
    assert torch.allclose(matcher(frames, mask, negative)["frames"], frames * weights[..., None])
    assert (matcher(frames, mask, negative)["frames"][0, 4] == 0).all()  # padding gets no weight


def test_the_negative_query_changes_the_predicted_spans():
    """Unlike the official code, the re-weighted features reach the moment heads."""
    model = bm_model()
    video, mask, query, query_mask = inputs()
    with torch.no_grad():
        model.frame_matcher.pfm[2].weight.mul_(30)  # make the matcher decisive
        alone = model(video, mask, query, query_mask)
        with_negative = model(video, mask, query, query_mask, torch.randn(2, 4, 4, 16), torch.ones(2, 4, dtype=torch.bool))
    assert not torch.allclose(alone["reg"], with_negative["reg"]) and not torch.allclose(alone["cls"], with_negative["cls"])
    decoder = bm_model(head="decoder", decoder_layers=2, decoder_ffn_dims=64)
    with torch.no_grad():
        decoder.frame_matcher.pfm[2].weight.mul_(30)
        a = decoder(video, mask, query, query_mask)["span_logits"]
        b = decoder(video, mask, query, query_mask, torch.randn(2, 4, 4, 16), torch.ones(2, 4, dtype=torch.bool))["span_logits"]
    assert not torch.allclose(a, b)


def test_background_losses_on_hand_made_inputs():
    prob = torch.tensor([[0.9, 0.8, 0.1, 0.3]])
    in_moment = torch.tensor([[True, True, False, False]])
    mask = torch.tensor([[True, True, True, False]])
    assert frame_probability_loss(prob, in_moment, mask).item() == pytest.approx(1 - 0.85 + 0.1)
    video, query = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = -math.log(math.exp(1 / 0.5) / (math.exp(1 / 0.5) + 1))  # cosines 1 (own query) and 0 (the other)
    assert semantic_alignment_loss(video, query, 0.5).item() == pytest.approx(expected, rel=1e-5)
    out = {"frame_score": torch.tensor([[0.5, 0.5, 0.4, 9.0]]), "frame_prob": prob, "video_embedding": video[:1], "query": query[:1]}
    losses = background_losses(out, in_moment, mask, LossConfig(frame_margin=1.0, frame_prob=1.0, semantic=1.0))
    assert losses["frame_margin"].item() == pytest.approx(0.2 - 0.5 + 0.4)  # the only background frame is 2


@pytest.mark.parametrize("fps", [0.5, 1.0, 2.0])
def test_temporal_shift_moves_the_moment_in_seconds_at_any_fps(fps):
    t = int(40 * fps)
    video = torch.arange(t, dtype=torch.float32)[:, None]  # each frame holds its index
    saliency = torch.zeros(t)
    first, stop = int(10 * fps), int(16 * fps)
    saliency[first:stop] = 1.0
    generator = torch.Generator().manual_seed(3)
    order, window = shift_moment(t, [10.0, 16.0], fps, generator)
    shifted, shifted_saliency = video[order], saliency[order]
    start = int(round(window[0] * fps))
    assert window[1] - window[0] == pytest.approx(6.0)
    assert shifted[start : start + stop - first, 0].tolist() == list(range(first, stop))  # the moment's frames, in order
    assert (shifted_saliency[start : start + stop - first] == 1).all() and shifted_saliency.sum() == stop - first
    assert sorted(shifted[:, 0].tolist()) == list(range(t))  # nothing lost or duplicated


@pytest.mark.slow
def test_training_with_negative_queries(synth_root, tmp_path):
    import csv

    from test_training import tiny_config

    from vtg_pipeline.training import train

    train(
        tiny_config(
            synth_root,
            tmp_path,
            "optim.epochs=1",
            "model.background_matching=true",
            "data.negative_queries=true",
            "data.temporal_shift_below=1000",
            "loss.frame_margin=1",
            "loss.frame_prob=1",
            "loss.semantic=1",
        )
    )
    row = next(csv.DictReader(open(tmp_path / "log.csv")))
    assert float(row["frame_prob"]) > 0 and float(row["semantic"]) > 0
    with pytest.raises(ValueError, match="go together"):
        train(tiny_config(synth_root, tmp_path / "b", "model.background_matching=true"))


def test_the_negative_query_window_term_needs_rgnet_with_negative_queries():
    from vtg_pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="loss.negative_query_window .* needs model.name=rgnet and model.background_matching=true"):
        load_config(None, ["loss.negative_query_window=true", "model.name=rgnet"])
    with pytest.raises(ConfigError, match="loss.negative_query_window"):
        load_config(None, ["loss.negative_query_window=true", "model.background_matching=true", "data.negative_queries=true"])
    cfg = load_config(
        None, ["loss.negative_query_window=true", "model.name=rgnet", "model.background_matching=true", "data.negative_queries=true"]
    )
    assert cfg.loss.negative_query_window


def test_with_rgnet_the_negative_query_changes_the_spans_of_the_head_rows():
    from test_rgnet import tiny_rgnet

    model = tiny_rgnet(background_matching=True)
    video, mask, query, query_mask = inputs()
    rows = torch.tensor([1])  # heads on the second (query, window) pair only
    negative, negative_mask = torch.randn(1, 4, 4, 16), torch.ones(1, 4, dtype=torch.bool)
    with torch.no_grad():
        model.frame_matcher.pfm[2].weight.mul_(30)
        alone = model(video, mask, query, query_mask, heads_rows=rows)
        with_negative = model(video, mask, query, query_mask, negative, negative_mask, heads_rows=rows)
    assert alone["reg"].shape[0] == 1 and alone["window_logit"].shape == (2,) and with_negative["frame_prob"].shape == (1, 16)
    assert (with_negative["frame_prob"][0, 12:] >= 0).all()  # padding frames still get a probability; the softmax drops them
    assert not torch.allclose(alone["reg"], with_negative["reg"]) and not torch.allclose(alone["cls"], with_negative["cls"])
    assert torch.allclose(alone["window_logit"], with_negative["window_logit"])  # retrieval does not see the negative


def test_window_items_carry_negative_queries(synth_root, tiny_backbone):
    from vtg_pipeline.data import DataConfig, WindowDataset, collate_windows, load_split

    train = load_split(DataConfig(root=str(synth_root), negative_queries=True, negative_similarity=0.99), "train", tiny_backbone)
    assert train.negatives is not None
    data = WindowDataset(
        train.records, train.feature_dir, tiny_backbone, 0.5, window=10, stride=5, negatives=1, negative_queries=train.negatives
    )
    items = [data[i] for i in range(3)]
    batch = collate_windows(items, 0.5)
    assert len(batch["negative_queries"]) == 3
    for item, negative in zip(items, batch["negative_queries"]):
        assert negative != item["record"]["query"] and negative in data.negatives[data.records.index(item["record"])]


@pytest.mark.slow
def test_rgnet_training_with_negative_queries(synth_root, tmp_path):
    import csv

    from test_rgnet import ROOT

    from vtg_pipeline.config import load_config
    from vtg_pipeline.training import train

    overrides = [
        f"data.root={synth_root}",
        "optim.epochs=1",
        "optim.batch_size=4",
        "model.dims=32",
        "model.heads=4",
        "model.rg_ffn_dims=64",
        "decode.window=20",
        "decode.window_stride=10",
        "data.window=20",
        "data.window_stride=10",
        "optim.warmup_steps=2",
        "model.background_matching=true",
        "data.negative_queries=true",
        "loss.frame_margin=1",
        "loss.frame_prob=1",
        "loss.semantic=1",
    ]
    train(load_config(ROOT / "configs" / "synthetic_long.yaml", [*overrides, f"output_dir={tmp_path}"]))
    row = next(csv.DictReader(open(tmp_path / "log.csv")))
    assert float(row["frame_prob"]) > 0 and float(row["semantic"]) > 0 and float(row["retrieval"]) > 0
    assert (tmp_path / "best" / "model.safetensors").exists()
    with pytest.raises(ValueError, match="temporal_shift_below"):
        train(
            load_config(
                ROOT / "configs" / "synthetic_long.yaml", [*overrides, f"output_dir={tmp_path / 'b'}", "data.temporal_shift_below=60"]
            )
        )
