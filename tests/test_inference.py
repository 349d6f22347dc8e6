"""Decoding moments: clamping, the official rounding rule, hard and linear NMS, saliency upsampling."""

import numpy as np
import pytest
import torch

from vtg_pipeline.inference import DecodeConfig, postprocess, saliency_curve


def test_clamp_then_round_only_windows_that_end_inside():
    moments = np.array([[-3.0, 9.2, 0.9], [141.0, 151.3, 0.5]])
    out = postprocess(moments, duration=150.0, cfg=DecodeConfig(unit=2.0, nms="none"))
    assert out.tolist() == [[0.0, 10.0, 0.9], [141.0, 150.0, 0.5]]  # the second ended past 150: clamped, not rounded


def test_hard_nms_zeroes_overlaps_and_keeps_them_listed():
    moments = np.array([[0.0, 10.0, 0.8], [0.0, 9.0, 0.9], [20.0, 30.0, 0.7]])
    out = postprocess(moments, duration=60.0, cfg=DecodeConfig(nms="hard", nms_threshold=0.7))
    assert out.tolist() == [[0.0, 9.0, 0.9], [20.0, 30.0, 0.7], [0.0, 10.0, 0.0]]


def test_hard_nms_can_drop_what_it_suppressed_but_not_a_low_score():
    """User-facing outputs drop suppressed windows; a window whose own score is 0 is not a suppressed one."""
    moments = np.array([[0.0, 10.0, 0.8], [0.0, 9.0, 0.9], [20.0, 30.0, 0.0], [40.0, 50.0, 0.7], [40.0, 49.0, 0.6]])
    out = postprocess(moments, duration=60.0, cfg=DecodeConfig(nms="hard", nms_threshold=0.7, keep_suppressed=False))
    assert out.tolist() == [[0.0, 9.0, 0.9], [40.0, 50.0, 0.7], [20.0, 30.0, 0.0]]


@pytest.mark.parametrize("seed", range(5))
def test_hard_nms_keeps_exactly_the_greedy_set_and_lists_the_rest_at_zero(seed):
    """On many overlapping moments (the search stops once only suppressed ones are left): the kept moments are
    those the textbook greedy rule keeps (best first; kept unless IoU >= threshold with one kept before), the others
    follow at score 0 or are dropped."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, 40, 60).astype(float)
    moments = np.stack([starts, starts + rng.integers(1, 20, 60), rng.permutation(60) / 60 + 0.01], axis=1)
    kept = []
    for m in moments[np.argsort(-moments[:, 2])]:
        inter = np.clip(np.minimum(m[1], [k[1] for k in kept]) - np.maximum(m[0], [k[0] for k in kept]), 0, None)
        union = (m[1] - m[0]) + np.array([k[1] - k[0] for k in kept]) - inter
        if not (inter / np.where(union > 0, union, 1) >= 0.5).any():
            kept.append(m)
    listed = postprocess(moments, duration=60.0, cfg=DecodeConfig(nms="hard", nms_threshold=0.5))
    assert len(listed) == 60 and listed[: len(kept)].tolist() == np.array(kept).tolist()
    assert (listed[len(kept) :, 2] == 0).all() and len(kept) < 30
    dropped = postprocess(moments, duration=60.0, cfg=DecodeConfig(nms="hard", nms_threshold=0.5, keep_suppressed=False))
    assert dropped.tolist() == listed[: len(kept)].tolist()


def test_linear_nms_scales_by_one_minus_iou():
    moments = np.array([[0.0, 10.0, 1.0], [5.0, 15.0, 0.9]])
    out = postprocess(moments, duration=60.0, cfg=DecodeConfig(nms="linear"))
    assert out[1].tolist() == pytest.approx([5.0, 15.0, 0.9 * (1 - 5 / 15)])


def test_saliency_upsamples_each_level_and_takes_the_max():
    # 5 frames, strides (1, 2): level lengths 5 and 2; logits 0 -> 0.5 except one coarse point
    cls = torch.zeros(1, 7)
    cls[0, 5] = 10.0  # stride-2 position 0 covers frames 0, 1 (repeat 5 // 2 = 2), padded with the last value
    out = {"cls": cls, "level_lengths": [5, 2], "saliency": torch.ones(1, 5)}
    curve = saliency_curve(out, 0, 5, (1, 2))
    assert curve.tolist() == pytest.approx([torch.sigmoid(torch.tensor(10.0)).item()] * 2 + [0.5] * 3)
