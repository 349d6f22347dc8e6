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


@pytest.mark.parametrize(
    "seconds, num_frames, frames",
    [
        ([10.0, 10.5], 50, [4.625, 5.625]),  # shorter than a clip in the middle: [9.25, 11.25] s around its centre
        ([-4.0, 200.0], 50, [0.0, 50.0]),  # clamped to the video
        ([0.0, 0.0], 74, [0.0, 1.0]),  # at 0: the first clip, not [0, 0.5]
        ([148.0, 150.0], 74, [73.0, 74.0]),  # past the end of a 148 s video: its last clip, not the empty [74, 74]
        ([147.0, 150.0], 74, [73.0, 74.0]),  # clamped to [147, 148] s first, then widened inside the video
        ([0.2, 0.8], 1, [0.0, 1.0]),  # a video shorter than one clip (its one frame): the whole clip
        ([4.0, 10.0], 74, [2.0, 5.0]),  # long enough: unchanged
    ],
)
def test_frame_windows_clamp_then_widen_inside_the_video(seconds, num_frames, frames):
    """Hand-computed at 0.5 fps: the official R2-Tuning rule (clamp, then widen to one clip, centre kept inside the video)."""
    assert frame_windows(torch.tensor([seconds]), fps=0.5, num_frames=num_frames).tolist() == [frames]


def test_a_window_past_the_end_still_has_a_positive_point():
    points = pyramid_points([74, 37, 19, 10], (1, 2, 4, 8))
    cls, _ = point_targets(points, frame_windows(torch.tensor([[148.0, 150.0]]), fps=0.5, num_frames=74))
    assert cls.sum() >= 1


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
