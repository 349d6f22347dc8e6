"""Targets (which points are positive at which level) and each loss on hand-made cases."""

import math

import pytest
import torch

from vtg_pipeline.losses import focal_loss, frame_windows, info_nce_loss, point_targets, regression_loss, sampled_nce_loss
from vtg_pipeline.models.heads import pyramid_points

POINTS = pyramid_points([8, 4, 2, 1], (1, 2, 4, 8))  # an 8-frame video


def test_one_window_positive_points_per_level():
    cls, reg = point_targets(POINTS, torch.tensor([[2.0, 5.0]]))
    #   stride 1: centre 3.5 +- 1.5 -> t in [2, 5]; farthest edge <= 2 only at t = 3, 4
    #   stride 2: t = 2, 4 with farthest edge 3 and 2, inside (2, 4]
    #   stride 4: t = 4 has farthest edge 2, outside (4, 8]; stride 8: t = 0 outside the centre region
    assert cls.tolist() == [0, 0, 0, 1, 1, 0, 0, 0] + [0, 1, 1, 0] + [0, 0] + [0]
    assert reg[9].tolist() == [0.0, 1.5]  # t = 2 at stride 2: (2 - 2, 5 - 2) / 2
    assert reg[3].tolist() == [1.0, 2.0]


def test_shortest_window_wins_where_two_claim_a_point():
    cls, reg = point_targets(POINTS, torch.tensor([[0.0, 8.0], [3.0, 5.0]]))
    assert cls[4] == 1 and reg[4].tolist() == [1.0, 1.0]  # t = 4 at stride 1 belongs to [3, 5]
    assert cls[14] == 1 and reg[14].tolist() == [0.0, 1.0]  # stride 8, t = 0: [0, 8], farthest edge 8 in [8, inf]


def test_long_window_reaches_the_coarsest_level():
    points = pyramid_points([32, 16, 8, 4], (1, 2, 4, 8))
    cls, reg = point_targets(points, torch.tensor([[0.0, 30.0]]))
    coarse = points[:, 3] == 8
    assert cls[coarse].tolist() == [0, 1, 1, 1]  # t = 8, 16, 24 lie in 15 +- 12; farthest edges 22, 16, 24 >= 8
    assert reg[coarse][1].tolist() == [1.0, 2.75] and reg[coarse][2].tolist() == [2.0, 1.75]


def test_frame_windows_widen_then_clamp():
    windows = frame_windows(torch.tensor([[10.0, 10.5], [-4.0, 200.0]]), fps=0.5, num_frames=50)
    assert windows.tolist() == [[4.625, 5.625], [0.0, 50.0]]  # 0.5 s widened to [9.25, 11.25] s


def test_focal_loss_value():
    logits = torch.tensor([[0.0, 0.0, 5.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0]])
    valid = torch.tensor([[1.0, 1.0, 0.0]])  # the third point is padding
    expected = 2 * math.log(2) * 0.25 / 2  # each: ce log 2, (1 - p_t)^2 = 1/4
    assert focal_loss(logits, targets, valid).item() == pytest.approx(expected)


def test_regression_loss_averages_over_both_coordinates_of_positives():
    reg = torch.tensor([[[1.0, 1.0], [5.0, 5.0]]])
    target = torch.tensor([[[2.0, 4.0], [0.0, 0.0]]])
    assert regression_loss(reg, target, torch.tensor([[1.0, 0.0]])).item() == pytest.approx((1 + 3) / 2)


def test_info_nce_is_log_of_size_for_indistinguishable_pairs_and_small_for_matched():
    same = torch.ones(3, 3)
    assert info_nce_loss(same, same).item() == pytest.approx(math.log(3))
    eye = torch.eye(3)
    expected = math.log(1 + 2 * math.exp(-1 / 0.5))
    assert info_nce_loss(eye, eye, temperature=0.5).item() == pytest.approx(expected, rel=1e-5)
    stacked = torch.stack([eye, same])  # batched over a leading dim: mean of both
    assert info_nce_loss(stacked, stacked, temperature=0.5).item() == pytest.approx((expected + math.log(3)) / 2, rel=1e-5)


def test_sampled_nce_uses_only_less_salient_valid_frames():
    query = torch.tensor([[1.0, 0.0]])
    frames = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    saliency = torch.tensor([[0.5, 0.2, 0.9, 0.0]])  # frame 2 is more salient than the positive: excluded
    mask = torch.tensor([[True, True, True, False]])  # frame 3 is padding: excluded
    loss = sampled_nce_loss(frames, query, mask, saliency, torch.tensor([0]), temperature=1.0)
    row = -(1.0 - math.log(math.exp(1.0) + 1.0))  # candidates: frame 0 (cos 1), frame 1 (cos 0)
    assert loss.item() == pytest.approx(row + 0.0, rel=1e-5)  # one sample: the column term is log 1 = 0
