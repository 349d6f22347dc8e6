"""Anchor-query decoder: gIoU, Hungarian matching, set losses, refinement, and its use as the moment head."""

import pytest
import torch

from vtg_pipeline.inference import DecodeConfig, decode_windows, ground_in_windows
from vtg_pipeline.losses import LossConfig, decoder_losses
from vtg_pipeline.models import ModelConfig, create_model
from vtg_pipeline.models.detr import generalized_iou, hungarian_match, span_to_window, window_to_span


def test_generalized_iou_hand_values():
    a = torch.tensor([[0.0, 2.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 3.0], [2.0, 3.0]])
    giou = generalized_iou(a, b)
    assert giou[0, 0].item() == pytest.approx(1 / 3)  # inter 1, union 3, hull 3
    assert giou[1, 1].item() == pytest.approx(-1 / 3)  # disjoint: 0 - (3 - 2) / 3
    assert generalized_iou(a, a).diagonal().tolist() == [1.0, 1.0]


def test_hungarian_match_finds_the_cheapest_one_to_one_assignment():
    targets = window_to_span(torch.tensor([[0.6, 0.9], [0.0, 0.2]]))
    spans = window_to_span(torch.tensor([[0.0, 0.25], [0.5, 0.55], [0.55, 0.9]]))
    logits = torch.zeros(3, 2)
    pred, gt = hungarian_match(spans, logits, targets)
    assert dict(zip(gt.tolist(), pred.tolist())) == {0: 2, 1: 0}  # the overlapping predictions, query 1 left as background


def test_decoder_losses_vanish_on_perfect_predictions_and_count_every_layer():
    windows = [torch.tensor([[2.0, 6.0]]), torch.tensor([[0.0, 5.0], [10.0, 20.0]])]  # frames
    lengths = torch.tensor([10, 20])
    spans = torch.full((2, 2, 3, 2), 0.5)
    for b, (w, n) in enumerate(zip(windows, lengths)):
        spans[:, b, : len(w)] = window_to_span(w / n)
    logits = torch.zeros(2, 2, 3, 2)
    logits[:, 0, :1, 0] = logits[:, 1, :2, 0] = 20.0  # matched queries say foreground
    logits[:, 0, 1:, 1] = logits[:, 1, 2:, 1] = 20.0  # the others background
    losses = decoder_losses({"spans": spans, "span_logits": logits, "lengths": lengths}, windows, LossConfig())
    assert losses["span_l1"].item() == pytest.approx(0.0, abs=1e-5)
    assert losses["span_giou"].item() == pytest.approx(0.0, abs=1e-5)
    assert losses["span_cls"].item() == pytest.approx(0.0, abs=1e-5)
    shifted = spans.clone()
    shifted[1, 0, 0, 0] += 0.1  # the last layer's centre of sample 0 off by 0.1 (1 frame)
    moved = decoder_losses({"spans": shifted, "span_logits": logits, "lengths": lengths}, windows, LossConfig())
    assert moved["span_l1"].item() == pytest.approx(10.0 * 0.1 / 3, rel=1e-4)  # weight 10, 3 ground-truth windows


@pytest.mark.parametrize("name", ["r2", "rgnet"])
def test_decoder_head_trains_and_decodes_windows_in_seconds(name):
    torch.manual_seed(0)
    cfg = ModelConfig(
        name=name,
        vision_width=16,
        text_width=16,
        dims=32,
        heads=4,
        rg_ffn_dims=64,
        head="decoder",
        decoder_layers=3,
        decoder_ffn_dims=64,
        dropout=0.0,
        droppath=0.0,
    )
    model = create_model(cfg)
    assert not hasattr(model, "pyramid") and hasattr(model, "decoder")
    video, mask = torch.randn(2, 20, 4, 5, 16), torch.ones(2, 20, dtype=torch.bool)
    mask[1, 10:] = False
    query, query_mask = torch.randn(2, 6, 4, 16), torch.ones(2, 6, dtype=torch.bool)
    out = model(video, mask, query, query_mask)
    assert out["spans"].shape == (3, 2, 5, 2) and out["span_logits"].shape == (3, 2, 5, 2)
    assert torch.equal(out["spans"][0], out["spans"][-1])  # offsets start at zero (DAB-DETR): every layer returns the anchors
    windows = [torch.tensor([[4.0, 12.0]]), torch.tensor([[2.0, 6.0]])]  # frames
    losses = decoder_losses(out, windows, LossConfig())
    sum(losses.values()).backward()
    assert model.decoder.anchors.grad is not None and model.decoder.anchors.grad.abs().sum() > 0
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    out = model(video, mask, query, query_mask)
    assert not torch.allclose(out["spans"][0], out["spans"][-1])  # now each layer refines the previous layer's anchors
    moments = decode_windows(out, 1, 0.5, 20.0, DecodeConfig(nms="none"))
    spans = span_to_window(out["spans"][-1, 1]).detach() * 10 / 0.5  # sample 1 has 10 valid frames = 20 s
    assert sorted(moments[:, 0].round(4).tolist()) == sorted(spans[:, 0].clamp(0, 20).double().round(decimals=4).tolist())


def test_rgnet_with_decoder_grounds_long_videos_in_its_top_windows():
    torch.manual_seed(0)
    model = create_model(
        ModelConfig(
            name="rgnet",
            vision_width=16,
            text_width=16,
            dims=32,
            heads=4,
            rg_ffn_dims=64,
            head="decoder",
            decoder_layers=2,
            decoder_ffn_dims=64,
        )
    ).eval()
    video = torch.randn(40, 4, 5, 16)
    cfg = DecodeConfig(window=20.0, window_stride=10.0, retrieval_topk=2, max_moments=100)
    results = ground_in_windows(
        model, lambda a, b: video[a:b], 40, 80.0, torch.randn(1, 6, 4, 16), torch.ones(1, 6, dtype=torch.bool), 0.5, (1, 2, 4, 8), cfg
    )
    kept = results[0]["windows"][:2, :2]
    inside = [any(s >= a - 1e-6 and e <= b + 1e-6 for a, b in kept) for s, e, _ in results[0]["moments"]]
    assert all(inside) and len(results[0]["moments"]) <= 2 * 5


@pytest.mark.slow
def test_training_with_the_decoder_head(synth_root, tmp_path):
    import json

    from test_training import tiny_config

    from vtg_pipeline.training import train

    train(tiny_config(synth_root, tmp_path, "optim.epochs=1", "model.head=decoder", "model.decoder_layers=2", "model.decoder_ffn_dims=64"))
    header = (tmp_path / "log.csv").read_text().splitlines()[0].split(",")
    assert {"span_l1", "span_giou", "span_cls"} <= set(header) and "cls" not in header
    predictions = [json.loads(line) for line in (tmp_path / "val_predictions.jsonl").read_text().splitlines()]
    assert all(1 <= len(p["pred_relevant_windows"]) <= 5 for p in predictions)  # one moment per anchor query at most
