"""RGNet: retrieval attention mask, sparsifier gate, window losses, training items, windowed inference."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vtg_pipeline.data import DataError, WindowDataset, collate_windows, load_split
from vtg_pipeline.inference import (
    DecodeConfig,
    VideoWindows,
    across_videos,
    forward_groups,
    ground_in_windows,
    merge_windows,
    retrieval_scores,
    windows_in_videos,
    windows_of,
)
from vtg_pipeline.losses import gate_loss, intra_window_loss, window_retrieval_loss
from vtg_pipeline.models import ModelConfig, create_model
from vtg_pipeline.models.layers import AttentionLayer
from vtg_pipeline.models.rgnet import gumbel_sigmoid_gate, retrieval_attention_mask

ROOT = Path(__file__).resolve().parents[1]


def tiny_rgnet(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(
        **{
            "name": "rgnet",
            "vision_width": 16,
            "text_width": 16,
            "dims": 32,
            "heads": 4,
            "rg_ffn_dims": 64,
            "dropout": 0.0,
            "droppath": 0.0,
            **overrides,
        }
    )
    return create_model(cfg).eval()


def test_retrieval_mask_token_sees_all_kept_frames_see_kept_dropped_frames_see_themselves():
    keep = torch.tensor([[True, False, True, True]])
    valid = torch.tensor([[True, True, True, False]])  # frame 3 is padding
    mask = retrieval_attention_mask(keep, valid)[0].int()
    # rows/cols: token, f0, f1, f2, f3
    assert mask.tolist() == [
        [1, 1, 1, 1, 0],  # token: itself and every valid frame, dropped or not
        [1, 1, 0, 1, 0],  # kept f0: token and kept frames
        [0, 0, 1, 0, 0],  # dropped f1: itself only
        [1, 1, 0, 1, 0],  # kept f2
        [0, 0, 0, 0, 1],  # padding: itself only (no empty softmax row)
    ]


def test_masked_attention_is_really_sparse():
    """A dropped frame's output depends on nothing else; kept outputs ignore dropped inputs (the official float mask leaked)."""
    torch.manual_seed(0)
    layer = AttentionLayer(8, 2, 16, dropout=0.0).eval()
    x = torch.randn(1, 5, 8)
    mask = retrieval_attention_mask(torch.tensor([[True, False, True, True]]), torch.ones(1, 4, dtype=torch.bool))
    changed = x.clone()
    changed[0, 2] += 5.0  # dropped frame f1 (position 2 after the token)
    a, b = layer(x, mask=mask), layer(changed, mask=mask)
    assert torch.allclose(a[0, [1, 3, 4]], b[0, [1, 3, 4]], atol=1e-6)  # kept frames unaffected
    assert not torch.allclose(a[0, 0], b[0, 0])  # the token reads every frame
    alone = layer(x[:, 2:3], mask=torch.ones(1, 1, 1, dtype=torch.bool))
    assert torch.allclose(a[0, 2], alone[0, 0], atol=1e-6)


def test_gumbel_gate_is_binary_with_straight_through_gradient_and_deterministic_at_eval():
    logits = torch.tensor([-3.0, -0.1, 0.0, 0.1, 3.0], requires_grad=True)
    assert gumbel_sigmoid_gate(logits, 0.3, training=False).tolist() == [0, 0, 1, 1, 1]
    torch.manual_seed(0)
    gate = gumbel_sigmoid_gate(logits, 0.3, training=True)
    assert torch.allclose(gate.detach(), gate.detach().round(), atol=1e-6)  # binary up to the straight-through rounding
    gate.sum().backward()
    assert (logits.grad > 0).all()  # the soft sigmoid's gradient passes through the threshold
    torch.manual_seed(1)
    draws = torch.stack([gumbel_sigmoid_gate(torch.zeros(2000), 0.3, True) for _ in range(2)])
    assert 0.4 < draws.mean() < 0.6  # logistic noise: a zero logit is kept half of the time


def test_rgnet_outputs_and_the_sparsifier_ablation():
    video, mask = torch.randn(3, 12, 4, 5, 16), torch.ones(3, 12, dtype=torch.bool)
    query, query_mask = torch.randn(3, 6, 4, 16), torch.ones(3, 6, dtype=torch.bool)
    mask[2, 9:] = False
    model = tiny_rgnet()
    out = model(video, mask, query, query_mask)
    assert out["window_logit"].shape == (3,) and out["gate"].shape == (3, 12) and out["attention"].shape == (3, 12)
    assert not out["gate"][2, 9:].any()  # padding is never kept
    rows = model(video, mask, query, query_mask, heads_rows=torch.tensor([0, 2]))
    assert rows["cls"].shape[0] == 2 and rows["window_logit"].shape == (3,)
    assert torch.allclose(rows["cls"], out["cls"][[0, 2]], atol=1e-5)
    dense = tiny_rgnet(sparsifier=False)(video, mask, query, query_mask)
    assert dense["gate"].tolist() == mask.float().tolist()


def test_window_losses_on_hand_made_inputs():
    logits = torch.tensor([[0.1, 0.05, 9.0]])
    expected = -math.log(math.exp(0.1 / 0.07) / (math.exp(0.1 / 0.07) + math.exp(0.05 / 0.07)))  # the masked window is left out
    assert window_retrieval_loss(logits, torch.tensor([[True, True, False]]), 0.07).item() == pytest.approx(expected, rel=1e-5)
    scores = torch.tensor([[0.5, 0.45, 0.0], [1.0, 0.0, 0.0]])
    in_moment = torch.tensor([[True, False, False], [True, True, True]])  # row 1: no frame outside: left out
    valid = torch.tensor([[True, True, False], [True, True, True]])
    assert intra_window_loss(scores, in_moment, valid, 0.2).item() == pytest.approx(0.2 - 0.5 + 0.45)
    assert intra_window_loss(scores, in_moment.new_ones(2, 3), valid, 0.2).item() == 0.0
    gate_logits = torch.tensor([[0.0, 0.0, 9.0]])
    assert gate_loss(gate_logits, torch.tensor([[True, False, True]]), torch.tensor([[True, True, False]])).item() == pytest.approx(
        math.log(2)
    )
    # the kept-fraction prior (loss.gate_keep): frames outside moments have target 0.3, so the loss is least (its
    # gradient 0) where the gate keeps them with probability 0.3, and in-moment frames keep target 1
    logits = torch.tensor([[math.log(0.3 / 0.7), math.log(0.3 / 0.7), 2.0]], requires_grad=True)
    loss = gate_loss(logits, torch.tensor([[False, False, True]]), torch.tensor([[True, True, True]]), keep=0.3)
    loss.backward()
    assert logits.grad[0, :2].abs().max().item() < 1e-7 and logits.grad[0, 2].item() == pytest.approx(
        (torch.sigmoid(torch.tensor(2.0)).item() - 1) / 3
    )
    entropy = -(0.3 * math.log(0.3) + 0.7 * math.log(0.7))
    assert loss.item() == pytest.approx((2 * entropy + math.log1p(math.exp(-2.0))) / 3, rel=1e-6)


def test_the_window_term_has_its_own_temperature():
    """loss.window_temperature divides the retrieval token's logits; loss.temperature (saliency, calibration) does not."""
    from vtg_pipeline.losses import LossConfig, window_losses

    logits, frames = torch.tensor([2.0, 1.0, 0.5, 0.0]), torch.ones(4, 3, dtype=torch.bool)  # 2 queries x 2 windows
    out = {"window_logit": logits, "attention": torch.zeros(4, 3), "gate_logits": torch.zeros(4, 3)}
    mask, in_moment = torch.ones(2, 2, dtype=torch.bool), torch.tensor([[True, False, False]] * 4)
    for window_temperature in (1.0, 0.07):
        terms = window_losses(out, mask, in_moment, frames, LossConfig(temperature=0.5, window_temperature=window_temperature))
        expected = window_retrieval_loss(logits.view(2, 2), mask, window_temperature)
        assert terms["retrieval"].item() == pytest.approx(expected.item())
    assert window_losses(out, mask, in_moment, frames, LossConfig(window_temperature=1.0))["retrieval"].item() == pytest.approx(
        (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(-0.5))) / 2
    )


def test_the_negative_query_on_the_positive_window_is_one_more_negative_when_asked():
    """loss.negative_query_window adds the negative query's logit on each positive window to that query's InfoNCE."""
    from vtg_pipeline.losses import LossConfig, window_losses

    logits, frames = torch.tensor([2.0, 1.0, 0.5, 0.0]), torch.ones(4, 3, dtype=torch.bool)  # 2 queries x 2 windows
    out = {"window_logit": logits, "attention": torch.zeros(4, 3), "gate_logits": torch.zeros(4, 3)}
    out["negative_window_logit"] = torch.tensor([3.0, -1.0])  # query 0's window under another query scores above it
    mask, in_moment = torch.tensor([[True, True], [True, False]]), torch.tensor([[True, False, False]] * 4)
    off = window_losses(out, mask, in_moment, frames, LossConfig(window_temperature=1.0))["retrieval"]
    on = window_losses(out, mask, in_moment, frames, LossConfig(window_temperature=1.0, negative_query_window=True))["retrieval"]
    assert off.item() == pytest.approx(math.log(1 + math.exp(-1.0)) / 2)  # query 1 has no real negative window: loss 0
    assert on.item() == pytest.approx((math.log(1 + math.exp(-1.0) + math.exp(1.0)) + math.log(1 + math.exp(-1.5))) / 2)


def test_the_model_scores_the_positive_windows_under_the_negative_query():
    model = tiny_rgnet(background_matching=True).eval()
    video, mask = torch.randn(4, 10, 4, 5, 16), torch.ones(4, 10, dtype=torch.bool)
    query, query_mask = torch.randn(4, 6, 4, 16), torch.ones(4, 6, dtype=torch.bool)
    negative, negative_mask = torch.randn(2, 5, 4, 16), torch.ones(2, 5, dtype=torch.bool)
    rows = torch.tensor([0, 2])
    out = model(video, mask, query, query_mask, negative, negative_mask, heads_rows=rows)
    _, alone = model.retrieve(video[rows], mask[rows], negative, negative_mask)
    torch.testing.assert_close(out["negative_window_logit"], alone["window_logit"])


def test_window_items_hold_the_moment_and_negatives_from_the_same_video(synth_root, tiny_backbone):
    from vtg_pipeline.data import DataConfig

    val = load_split(DataConfig(root=str(synth_root)), "train", tiny_backbone)
    data = WindowDataset(val.records, val.feature_dir, tiny_backbone, 0.5, window=10, stride=5, negatives=2)
    for index, record in enumerate(data.records):
        item = data[index]
        start = int(item["starts"][0]) / 0.5
        moments = np.asarray(record["relevant_windows"])
        assert item["video"].shape[:2] == (3, 10)
        assert len(item["windows"]) >= 1 and (item["windows"] >= 0).all() and (item["windows"] <= 20).all()
        held = [(a >= start and b <= start + 20) or (b - a > 20) for a, b in moments]
        assert any(held)  # a moment that fits is inside the positive window
        assert item["saliency"][item["positive"]] > 0 and item["in_moment"][0].any()
        for row in range(1, 3):
            if item["window_mask"][row]:
                s = int(item["starts"][row]) / 0.5
                assert not ((moments[:, 0] < s + 20) & (moments[:, 1] > s)).any()  # no overlap with any moment
                assert not item["in_moment"][row].any()
    batch = collate_windows([data[0], data[1]], fps=0.5)
    assert batch["video"].shape[:3] == (2, 3, 10) and batch["window_mask"].shape == (2, 3)


def test_windowed_inference_grounds_only_in_the_top_windows():
    model = tiny_rgnet()
    video = torch.randn(40, 4, 5, 16)
    query, query_mask = torch.randn(2, 6, 4, 16), torch.ones(2, 6, dtype=torch.bool)
    calls = []

    def read(start, stop):
        calls.append((start, stop))
        return video[start:stop]

    cfg = DecodeConfig(window=20.0, window_stride=10.0, retrieval_topk=1, max_moments=100, nms="hard", nms_threshold=0.5)
    results = ground_in_windows(model, read, 40, 80.0, query, query_mask, 0.5, (1, 2, 4, 8), cfg)
    for r in results:
        best_start, best_end = r["windows"][0, :2]
        assert len(r["windows"]) == 7  # windows of 10 frames every 5 frames over 40 frames
        assert ((r["moments"][:, 0] >= best_start - 1e-6) & (r["moments"][:, 1] <= best_end + 1e-6)).all()
        assert (r["saliency"][: int(best_start * 0.5)] == 0).all() or best_start == 0
    assert sorted(calls) == sorted(set(calls)) and len(calls) == 7  # every window read once, for both queries


def test_window_score_combines_retrieval_and_the_heads_best_moment_as_documented():
    """s = sigmoid(logit)^(1 - e) * best^e; moments scale by s; grounded windows rank by s, then the rest by logit."""
    spans = np.array([[0.0, 20.0], [10.0, 30.0], [20.0, 40.0]])
    logits = np.array([2.0, 1.0, 0.5])  # window 0 is the retriever's first choice
    found = {0: np.array([[2.0, 6.0, 0.2]]), 1: np.array([[14.0, 18.0, 0.9], [22.0, 26.0, 0.3]])}  # window 2: not grounded
    sigmoid = 1 / (1 + np.exp(-logits))
    cfg = DecodeConfig(nms="none", max_moments=10)

    plain = merge_windows(found, logits, spans, 40.0, cfg)  # e = 0: the retrieval score alone (the paper's product)
    assert plain["windows"][:, 0].tolist() == [0.0, 10.0, 20.0]
    np.testing.assert_allclose(plain["windows"][:, 2], sigmoid)
    np.testing.assert_allclose(plain["moments"][:, 2], sorted([0.2 * sigmoid[0], 0.9 * sigmoid[1], 0.3 * sigmoid[1]], reverse=True))

    e = 0.5
    mixed = merge_windows(found, logits, spans, 40.0, DecodeConfig(nms="none", max_moments=10, window_evidence=e))
    s = sigmoid[:2] ** (1 - e) * np.array([0.2, 0.9]) ** e
    assert s[1] > s[0]  # the heads' confidence overturns the retriever's order
    assert mixed["windows"][:, 0].tolist() == [10.0, 0.0, 20.0]  # the ungrounded window last, with score 0
    np.testing.assert_allclose(mixed["windows"][:, 2], [s[1], s[0], 0.0])
    np.testing.assert_allclose(mixed["moments"][:, 2], [0.9 * s[1], 0.3 * s[1], 0.2 * s[0]])
    alone = merge_windows(found, logits, spans, 40.0, DecodeConfig(nms="none", max_moments=10, window_evidence=e, window_score="moment"))
    np.testing.assert_allclose(alone["moments"][:, 2], [0.9, 0.3, 0.2])


def test_window_temperature_scores_windows_by_their_softmax_relative_to_the_best():
    """T > 0: r = exp((logit - max logit) / T), so a small logit gap outweighs the heads' score; T = 0: sigmoid."""
    spans = np.array([[0.0, 20.0], [10.0, 30.0], [20.0, 40.0]])
    logits = np.array([1.6, 1.5, 0.2])  # gaps as small as the trained token's: the sigmoid hardly tells them apart
    found = {0: np.array([[2.0, 6.0, 0.4]]), 1: np.array([[14.0, 18.0, 0.6]])}
    sigmoid = merge_windows(found, logits, spans, 40.0, DecodeConfig(nms="none", max_moments=10))
    assert sigmoid["moments"][0, :2].tolist() == [14.0, 18.0]  # 0.6 x 0.82 beats 0.4 x 0.83: the second window wins

    tempered = merge_windows(found, logits, spans, 40.0, DecodeConfig(nms="none", max_moments=10, window_temperature=0.1))
    r = np.exp((logits - 1.6) / 0.1)
    np.testing.assert_allclose(tempered["windows"][:, 2], [1.0, r[1], r[2]])  # the best window scores 1
    np.testing.assert_allclose(tempered["moments"][:, 2], [0.4, 0.6 * r[1]])  # the retriever's first window first
    assert tempered["windows"][:, 0].tolist() == [0.0, 10.0, 20.0]
    np.testing.assert_allclose(retrieval_scores(logits + 7.0, 0.1), r)  # the logits' level does not matter
    assert retrieval_scores(np.array([]), 0.1).shape == (0,)


@pytest.mark.parametrize("layout", [0, 2], ids=["cls", "patch layout"])
def test_window_prior_adds_the_dual_encoders_cosine_to_each_window_logit(layout):
    model = tiny_rgnet(retrieval_layout=layout)
    if layout:  # a layout that counts (it starts at zero)
        torch.nn.init.normal_(model.retrieval.layout.out.weight, std=0.5)
    video = torch.randn(40, 4, 5, 16)
    query, query_mask = torch.randn(2, 6, 4, 16), torch.ones(2, 6, dtype=torch.bool)

    def read(start, stop):
        return video[start:stop]

    starts = [0, 10, 20, 30]
    plain, primed = (
        windows_of(
            model, read, 40, 80.0, query, query_mask, 0.5, (1, 2, 4, 8), DecodeConfig(window=20.0, window_stride=20.0, window_prior=p)
        )
        for p in (0.0, 5.0)
    )
    with torch.no_grad():
        embedded = model.retrieval.embed_queries(query, query_mask)
        windows = torch.stack(
            [
                model.retrieval.embed_windows(
                    video[s : s + 10, -1, model.retrieval.tokens_read][None], torch.ones(1, 10, dtype=torch.bool)
                )[0]
                for s in starts
            ]
        )
        alone = [model.retrieve(video[s : s + 10][None], torch.ones(2, 10, dtype=torch.bool), query, query_mask)[1] for s in starts]
    assert plain.logits.shape == (2, 4)
    np.testing.assert_allclose(plain.logits, torch.stack([r["window_logit"] for r in alone], dim=1).numpy(), atol=1e-5)
    np.testing.assert_allclose(primed.logits, plain.logits + 5.0 * (embedded @ windows.T).numpy(), atol=1e-5)


def test_window_config_refusals_and_the_short_window_warning(caplog):
    from vtg_pipeline.config import ConfigError, load_config
    from vtg_pipeline.training import warn_if_windows_too_short

    with pytest.raises(ConfigError, match=r"decode.window_stride=80 s must be <= decode.window=64 s"):
        load_config(None, ["decode.window=64", "decode.window_stride=80"])
    with pytest.raises(ConfigError, match="decode.window_evidence"):
        load_config(None, ["decode.window_evidence=1.5"])
    with pytest.raises(ConfigError, match="decode.window_temperature"):
        load_config(None, ["decode.window_temperature=-0.1"])
    cfg = load_config(None, ["decode.window=64", "decode.window_stride=32"])
    records = [{"relevant_windows": [[0, 30], [100, 190]]}, {"relevant_windows": [[10, 90]]}]
    with caplog.at_level("WARNING"):
        warn_if_windows_too_short(records, cfg)
    [line] = [r.getMessage() for r in caplog.records]
    assert "decode.window=64 s is shorter than 2 of the 3 training moments (longest 90.0 s)" in line
    caplog.clear()
    warn_if_windows_too_short([{"relevant_windows": [[0, 30]]}], cfg)
    assert not caplog.records
    trained_longer = load_config(None, ["model.name=rgnet", "decode.window=100", "decode.window_stride=50", "data.window=100"])
    warn_if_windows_too_short(records, trained_longer)  # 100-s windows in training and inference hold every moment
    assert not caplog.records
    grounds_shorter = load_config(None, ["model.name=rgnet", "decode.window=48", "decode.window_stride=24", "data.window=100"])
    warn_if_windows_too_short(records, grounds_shorter)  # trained on 100 s, but inference cannot find a 90-s moment whole
    assert "decode.window=48 s is shorter than 2 of the 3 training moments (longest 90.0 s)" in caplog.records[0].getMessage()
    caplog.clear()
    warn_if_windows_too_short(records, load_config(None, ["model.name=rgnet", "data.window=40"]))
    assert "data.window=40 s is shorter than 2 of the 3 training moments" in caplog.records[0].getMessage()
    for key in ("window", "window_stride"):
        with pytest.raises(ConfigError, match=f"data.{key} sets the training windows: it needs window sampling"):
            load_config(None, [f"data.{key}=32"])
    with pytest.raises(ConfigError, match=r"data.window_stride=40 s must be <= data.window=32 s"):
        load_config(None, ["model.name=rgnet", "data.window=32", "data.window_stride=40"])
    with pytest.raises(ConfigError, match=r"data.window_stride=200 s must be <= decode.window=150 s"):
        load_config(None, ["model.name=rgnet", "data.window_stride=200"])


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0.0, 0.3], ids=["sigmoid", "softmax"])
def test_a_single_window_is_scored_like_one_of_many(temperature):
    """Library search ranks moments of many videos, some with one candidate window and some with several: a moment's
    score must not depend on how many windows were searched with it (moment x window score in both cases; with a
    window temperature once ``across_videos`` puts both on the scale of the best window searched)."""
    torch.manual_seed(0)
    model = tiny_rgnet()
    torch.nn.init.normal_(model.rg.window_head.weight)  # windows that differ (the head starts at zero)
    video = torch.randn(40, 4, 5, 16)
    query, query_mask = torch.randn(1, 6, 4, 16), torch.ones(1, 6, dtype=torch.bool)
    cfg = DecodeConfig(window=20.0, window_stride=10.0, retrieval_topk=2, max_moments=100, nms="none", window_temperature=temperature)

    def read(start, stop):
        return video[start:stop]

    [alone] = ground_in_windows(model, read, 40, 80.0, query, query_mask, 0.5, (1, 2, 4, 8), cfg, starts=[10])
    [together] = ground_in_windows(model, read, 40, 80.0, query, query_mask, 0.5, (1, 2, 4, 8), cfg, starts=[10, 20])
    assert len(alone["windows"]) == 1 and (0 < alone["windows"][0, 2] < 1 if temperature == 0 else alone["windows"][0, 2] == 1)
    if temperature:  # the other window is the better one: the lone one's scores drop
        assert together["reference"] > alone["reference"] + 0.1
    alone["moments"][:, 2] *= across_videos([alone["reference"], together["reference"]], cfg)[0]
    inside = (together["moments"][:, 0] >= 20.0 - 1e-6) & (together["moments"][:, 1] <= 40.0 + 1e-6)  # frames 10-19: 20-40 s
    shared = {tuple(m) for m in together["moments"][inside].round(4).tolist()} & {tuple(m) for m in alone["moments"].round(4).tolist()}
    assert len(shared) == len(alone["moments"])  # every moment of the lone window, with the same score, among the pair's


@pytest.mark.parametrize("name", ["rgnet", "r2"])
def test_queries_with_their_own_windows_get_what_each_gets_alone(name):
    """Batched library search: per-query windows in one pass give each query its result alone (each window read once)."""
    model = tiny_rgnet() if name == "rgnet" else tiny_rgnet(name="r2")
    video = torch.randn(40, 4, 5, 16)
    query, query_mask = torch.randn(3, 6, 4, 16), torch.ones(3, 6, dtype=torch.bool)
    cfg = DecodeConfig(window=20.0, window_stride=10.0, retrieval_topk=2, max_moments=100, nms="hard", nms_threshold=0.5)
    own = [[0, 10, 20], [20, 30], [5]]
    reads = []

    def read(start, stop):
        reads.append(start)
        return video[start:stop]

    together = ground_in_windows(model, read, 40, 80.0, query, query_mask, 0.5, (1, 2, 4, 8), cfg, starts=own)
    union = [0, 5, 10, 20, 30]
    assert reads == union  # each window read once, for every query that asks about it
    for i, starts in enumerate(own):
        [alone] = ground_in_windows(
            model, lambda a, b: video[a:b], 40, 80.0, query[i : i + 1], query_mask[i : i + 1], 0.5, (1, 2, 4, 8), cfg, starts=starts
        )
        assert np.allclose(together[i]["moments"], alone["moments"], atol=1e-5)
        assert np.allclose(together[i]["saliency"], alone["saliency"], atol=1e-5)
        if name == "rgnet":
            assert np.allclose(together[i]["windows"], alone["windows"], atol=1e-5)


def test_rgnet_training_logs_kept_fraction_and_window_retrieval(synth_root, tmp_path, monkeypatch):
    from vtg_pipeline import training
    from vtg_pipeline.config import load_config
    from vtg_pipeline.training import train

    lengths = []  # the training grid (frames): data.window's and data.window_stride's; evaluation grounds on decode's

    class Recorded(WindowDataset):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            lengths.append((self.window, self.stride))

    monkeypatch.setattr(training, "WindowDataset", Recorded)

    cfg = load_config(
        ROOT / "configs" / "synthetic_long.yaml",
        [
            f"data.root={synth_root}",
            f"output_dir={tmp_path}",
            "optim.epochs=1",
            "optim.batch_size=4",
            "model.dims=32",
            "model.heads=4",
            "model.rg_ffn_dims=64",
            "decode.window=20",
            "decode.window_stride=10",
            "data.window=24",
            "data.window_stride=12",
            "optim.warmup_steps=2",
        ],
    )
    train(cfg)
    assert lengths == [(12, 6)]  # data.window's 24 s every data.window_stride's 12 s at 0.5 fps
    metrics = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"R1@0.3", "R5@0.3", "WR-overlap-R1", "WR-contain-R5"} <= set(metrics)
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert {"retrieval", "intra", "gate", "kept_fraction"} <= set(rows[0])
    assert all(0.0 <= float(r["kept_fraction"]) <= 1.0 for r in rows)
    predictions = [json.loads(line) for line in (tmp_path / "val_predictions.jsonl").read_text().splitlines()]
    assert all(len(p["pred_relevant_windows"]) <= 100 for p in predictions)
    assert any("pred_windows" in p for p in predictions)
    from vtg_pipeline.grounder import Grounder

    grounder = Grounder.from_pretrained(tmp_path / "best")  # vtg ground's path on a stored video longer than one window
    feature_file = sorted((synth_root / "features").glob("*.safetensors"))[0]
    results = grounder.ground_features(feature_file, ["a red disc rises", "a blue ring grows"])
    assert all(len(r["pred_windows"]) > 1 and len(r["pred_relevant_windows"]) <= 100 for r in results)
    assert results[0]["pred_windows"] != results[1]["pred_windows"]  # each query ranks the windows itself


def test_window_sampling_choice():
    from vtg_pipeline.config import load_config, uses_windows

    assert uses_windows(load_config(None, ["model.name=rgnet"]))
    assert not uses_windows(load_config(None, ["model.name=r2"]))
    assert uses_windows(load_config(None, ["model.name=r2", "data.sampling=windows"]))  # a grounder on oracle windows
    with pytest.raises(ValueError, match="rgnet trains on windows"):
        load_config(None, ["model.name=rgnet", "data.sampling=video"])
    with pytest.raises(ValueError, match="data.sampling"):
        load_config(None, ["data.sampling=clips"])
    with pytest.raises(ValueError, match="model.name='rgnett': must be one of r2, rgnet"):
        load_config(None, ["model.name=rgnett"])


def test_a_registered_model_says_what_training_gives_it(monkeypatch):
    """Window sampling, negative windows and the heads' rows follow the model class, not its name."""
    from vtg_pipeline.config import load_config, retrieves_windows, uses_windows
    from vtg_pipeline.models import MODELS, R2Grounder, RGNetGrounder

    class Retriever(RGNetGrounder):
        pass

    monkeypatch.setitem(MODELS, "my_retriever", Retriever)
    cfg = load_config(None, ["model.name=my_retriever"])
    assert retrieves_windows(cfg) and uses_windows(cfg)
    rows, background = torch.tensor([0, 4]), torch.tensor([1, 2])
    assert Retriever.window_arguments(rows, background) == {"heads_rows": rows, "background_rows": background}
    assert R2Grounder.window_arguments(rows, background) == {}  # R² runs its heads on every (query, window) pair
    assert not retrieves_windows(load_config(None, ["model.name=r2"]))


def test_cross_video_negatives_come_from_other_videos(synth_root, tiny_backbone):
    from safetensors.torch import load_file

    from vtg_pipeline.data import DataConfig

    train = load_split(DataConfig(root=str(synth_root)), "train", tiny_backbone)
    data = WindowDataset(train.records, train.feature_dir, tiny_backbone, 0.5, window=10, stride=5, negatives=1, cross_video=1)
    item = data[0]
    assert item["video"].shape[0] == 3 and item["window_mask"][2] and not item["in_moment"][2].any()
    own = load_file(str(data.path(data.records[0]["vid"])))["vision"]
    others = [load_file(str(data.path(v)))["vision"] for v in data._frames if v != data.records[0]["vid"]]
    row = item["video"][2]
    assert not any(torch.equal(row, own[s : s + 10]) for s in range(len(own) - 9))
    assert any(torch.equal(row, o[s : s + 10]) for o in others for s in range(len(o) - 9))


def test_hard_negatives_are_the_dual_encoders_top_negative_windows_and_are_drawn_first(synth_root, tiny_backbone):
    from vtg_pipeline.data import DataConfig, StoredVideo, TextCache
    from vtg_pipeline.inference import window_starts
    from vtg_pipeline.training import mine_hard_windows

    train = load_split(DataConfig(root=str(synth_root)), "train", tiny_backbone)
    data = WindowDataset(train.records, train.feature_dir, tiny_backbone, 0.5, window=6, stride=3, negatives=2, hard_negatives=1)
    model = tiny_rgnet(vision_width=tiny_backbone.spec.vision_width, text_width=tiny_backbone.spec.text_width)
    text_cache = TextCache(tiny_backbone)
    hard = mine_hard_windows(model, data, text_cache, 3, "cpu")
    assert sorted(hard) == list(range(len(data.records)))
    head = model.retrieval.eval()
    for index, record in enumerate(data.records):  # the pool: negative windows only, best first by the dual encoder
        with StoredVideo.open(data.path(record["vid"])) as video:
            cls = video.rows(0, video.frames)[:, -1, :1].float()
        starts = window_starts(len(cls), 6, 3)
        windows = torch.stack([cls[s : s + 6] for s in starts])
        embedded = head.embed_windows(windows, torch.ones(windows.shape[:2], dtype=torch.bool))
        torch.testing.assert_close(head.embed_grid(cls, starts, 6), embedded)  # the per-frame shortcut, same numbers
        query, query_mask = text_cache([record["query"]], "cpu")
        scores = (head.embed_queries(query, query_mask) @ embedded.T)[0]
        negative = data.negative_starts(index)
        expected = [starts[w] for w in scores.argsort(descending=True).tolist() if starts[w] in negative][:3]
        assert hard[index] == expected
    plain = [data.draw_negatives(i, torch.Generator().manual_seed(i)) for i in range(len(data.records))]
    data.set_hard(hard)
    for index in range(len(data.records)):
        negatives = data.draw_negatives(index, torch.Generator().manual_seed(index))
        assert len(negatives) == len(set(negatives)) == min(2, len(data.negative_starts(index)))
        assert set(negatives) <= set(data.negative_starts(index))
        if hard[index]:
            assert negatives[0] in hard[index]  # one from the pool, then the rest at random
    data.hard_negatives = 0  # off: the plain draw, whatever the pool
    assert [data.draw_negatives(i, torch.Generator().manual_seed(i)) for i in range(len(data.records))] == plain


def test_word_sharing_pool_holds_the_windows_of_queries_sharing_most_words_first(synth_root, tiny_backbone):
    from vtg_pipeline.data import DataConfig, content_words

    assert content_words("A red ring moves to the left") == {"red", "ring", "moves", "left"}
    train = load_split(DataConfig(root=str(synth_root)), "train", tiny_backbone)
    data = WindowDataset(train.records, train.feature_dir, tiny_backbone, 0.5, window=4, stride=4, negatives=2, hard_negatives=1)
    vid = max(data._frames, key=data._frames.get)
    assert data._frames[vid] >= 32  # frames at 0.5 fps: windows start every 8 s
    queries = {  # query: its moment (s); windows of 4 frames = 8 s
        "a red ring blinks": [0, 6],
        "a red disc falls": [17, 20],  # one word shared with the first: windows 16-24
        "a red ring grows": [40, 50],  # two words: windows 40-48 and 48-56
        "a blue square spins": [56, 60],  # none
    }
    data.records = [
        {"qid": i, "vid": vid, "query": q, "duration": data._frames[vid] * 2, "relevant_windows": [m]}
        for i, (q, m) in enumerate(queries.items())
    ]
    pool = data.word_sharing_pool(pool=8)
    assert pool[0] == [20, 24, 8]  # first frames: "red ring" (two shared words) before "red" (one)
    assert pool[1] == [0, 20, 24]  # "red" with both; the annotation order breaks the tie
    assert pool[2] == [0, 8]  # "red ring" before "red"
    assert 3 not in pool  # shares no content word
    assert data.word_sharing_pool(pool=1)[0] == [20]
    for index, windows in pool.items():
        assert set(windows) <= set(data.negative_starts(index))  # never a window holding the query's own moment


@pytest.mark.parametrize("name", ["rgnet", "r2"])
def test_windows_batched_in_one_forward_give_what_one_window_a_forward_gives(name, monkeypatch):
    """``window_batches`` stacks several windows' states and runs their (query, window) pairs in one forward
    (``video_index``): each pair's logit, moments and saliency are those of its window run alone."""
    from vtg_pipeline import inference

    torch.manual_seed(1)
    model = (tiny_rgnet() if name == "rgnet" else tiny_rgnet(name="r2")).eval()
    video = torch.randn(40, 4, 5, 16)
    query, query_mask = torch.randn(3, 6, 4, 16), torch.ones(3, 6, dtype=torch.bool)
    query_mask[1, 4:] = False  # queries of different lengths share a forward
    cfg = DecodeConfig(window=20.0, window_stride=10.0, retrieval_topk=3, max_moments=100, nms="none", window_prior=2.0)
    own = [[0, 10, 20, 30], [10, 15], [5, 10, 30]]

    def run():
        return windows_of(model, lambda a, b: video[a:b], 40, 80.0, query, query_mask, 0.5, (1, 2, 4, 8), cfg, starts=own)

    batched = run()
    monkeypatch.setattr(inference, "WINDOWS_PER_FORWARD", 1)
    single = run()
    monkeypatch.setattr(inference, "PAIRS_PER_FORWARD", 1)  # a window's pairs are never split: still one window a forward
    assert np.array_equal(run().saliency, single.saliency)
    if name == "rgnet":
        np.testing.assert_allclose(batched.logits, single.logits, atol=1e-5)
        assert np.isneginf(batched.logits[1, [0, 1, 4, 5]]).all()  # union 0, 5, 10, 15, 20, 30: query 1 asks 10 and 15
    for mine, alone in zip(batched.found, single.found):
        assert mine.keys() == alone.keys()
        for w in mine:
            np.testing.assert_allclose(mine[w], alone[w], atol=1e-5)
    np.testing.assert_allclose(batched.saliency, single.saliency, atol=1e-5)


@pytest.mark.parametrize("name", ["rgnet", "r2", "decoder"])
def test_windows_of_several_videos_share_forwards_and_give_what_each_video_alone_gives(name):
    """``windows_in_videos``: windows of videos of different lengths run padded in shared forwards (longest first);
    each video's logits, moments and saliency are those of ``windows_of`` on it alone. A video whose reads raise one of
    ``errors`` gets the exception and the others are unaffected."""
    overrides = {"decoder": {"head": "decoder", "decoder_layers": 2, "decoder_ffn_dims": 64}, "r2": {"name": "r2"}}
    model = tiny_rgnet(**overrides.get(name, {}))
    torch.manual_seed(1)
    lengths = (40, 13, 20, 7)  # frames; windows of 10 frames every 5: the 7-frame video is one shorter window
    videos = [torch.randn(n, 4, 5, 16) for n in lengths]
    query, query_mask = torch.randn(4, 6, 4, 16), torch.ones(4, 6, dtype=torch.bool)
    query_mask[1, 3:] = False
    cfg = DecodeConfig(window=20.0, window_stride=10.0, retrieval_topk=2, max_moments=100, nms="none", window_prior=1.0)
    asked = [[0, 2], [1, 2, 3], [3], [0, 1, 2, 3]]  # per video, the rows of ``query`` asking about it
    starts = [[[0, 10, 20], [5, 10]], None, None, None]
    reads = []

    def reader(v):
        def read(start, stop):
            reads.append((v, start, stop))
            if v == 2 and failing:
                raise DataError(f"video {v}: not finite")
            return videos[v][start:stop]

        return read

    for failing in (False, True):
        reads.clear()
        together = windows_in_videos(
            model,
            [VideoWindows(reader(v), n, n * 2.0, asked[v], starts[v]) for v, n in enumerate(lengths)],
            query,
            query_mask,
            0.5,
            (1, 2, 4, 8),
            cfg,
            errors=(DataError,),
        )
        for v, (n, got) in enumerate(zip(lengths, together)):
            if failing and v == 2:
                assert isinstance(got, DataError) and "video 2" in str(got)
                continue
            alone = windows_of(
                model,
                lambda a, b, v=v: videos[v][a:b],
                n,
                n * 2.0,
                query[asked[v]],
                query_mask[asked[v]],
                0.5,
                (1, 2, 4, 8),
                cfg,
                starts[v],
            )
            assert got.own == alone.own
            np.testing.assert_allclose(got.spans, alone.spans)
            if alone.logits is not None:
                np.testing.assert_allclose(got.logits, alone.logits, atol=1e-5)
            for mine, theirs in zip(got.found, alone.found):
                assert mine.keys() == theirs.keys()
                for w in mine:
                    np.testing.assert_allclose(mine[w], theirs[w], atol=1e-5)
            np.testing.assert_allclose(got.saliency, alone.saliency, atol=1e-5)
        if not failing:
            assert sorted(reads) == sorted(set(reads)) and len(reads) == 10, "each window of each video read once"
    with pytest.raises(DataError):  # without ``errors`` a failing read propagates
        windows_in_videos(model, [VideoWindows(reader(2), 20, 40.0, [0])], query, query_mask, 0.5, (1, 2, 4, 8), cfg)


def test_forward_groups_respect_both_limits_and_never_split_a_window(monkeypatch):
    from vtg_pipeline import inference

    monkeypatch.setattr(inference, "WINDOWS_PER_FORWARD", 3)
    monkeypatch.setattr(inference, "PAIRS_PER_FORWARD", 5)
    assert forward_groups([1, 1, 1, 1, 2, 3, 9, 1]) == [[0, 1, 2], [3, 4], [5], [6], [7]]
    assert forward_groups([]) == []
