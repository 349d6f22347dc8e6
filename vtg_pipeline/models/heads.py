"""Temporal pyramid, shared prediction heads, query pooling and anchor points.

Shapes: B batch, T frames, C channels, N points over all pyramid levels.
Units: frames (one frame = one clip = 1/fps seconds).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Downsample(nn.Module):
    """Conv1d(C, C, 2, stride 2) -> LN -> ReLU: (B, T, C) -> (B, T // 2, C)."""

    def __init__(self, dims: int):
        super().__init__()
        self.conv = nn.Conv1d(dims, dims, 2, stride=2)
        self.norm = nn.LayerNorm(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x.transpose(1, 2)).transpose(1, 2)))


class TemporalPyramid(nn.Module):
    """Independent branches from the frame features, one per stride (powers of two).

    Stride 1 is the input itself; stride 2^p applies p ``Downsample`` blocks.
    A level whose stride exceeds the (padded) length is skipped.
    x (B, T, C), mask (B, T) -> lists of (B, T_s, C) features and (B, T_s) masks.
    """

    def __init__(self, dims: int, strides: tuple[int, ...] = (1, 2, 4, 8)):
        super().__init__()
        for s in strides:
            if s < 1 or s & (s - 1):
                raise ValueError(f"pyramid strides must be powers of two, got {s}")
        self.strides = tuple(strides)
        self.levels = nn.ModuleList(nn.Sequential(*[Downsample(dims) for _ in range(int(math.log2(s)))]) for s in strides)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        features, masks = [], []
        for stride, level in zip(self.strides, self.levels):
            if x.size(1) < stride:
                continue
            features.append(level(x))
            masks.append(F.max_pool1d(mask.float()[:, None], stride, stride)[:, 0].bool() if stride > 1 else mask)
        return features, masks


class ConvHead(nn.Module):
    """Conv1d(C, C, 3) -> ReLU -> Conv1d(C, out, 3), 'same' padding: (B, T, C), mask (B, T) -> (B, T, out).

    Positions outside ``mask`` are zeroed before each conv, as zero padding would
    be for a sequence that ends there.
    """

    def __init__(self, dims: int, out_dims: int, kernel_size: int = 3):
        super().__init__()
        self.hidden = nn.Conv1d(dims, dims, kernel_size, padding=kernel_size // 2)
        self.out = nn.Conv1d(dims, out_dims, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask[:, None, :].to(x.dtype)
        hidden = F.relu(self.hidden(x.transpose(1, 2) * keep))
        return self.out(hidden * keep).transpose(1, 2)


class ScoreRefinement(nn.Module):
    """FlashVTG's adaptive score refinement: moment confidences from each level and from all levels.

    within: Conv1d(C, C, k) -> MLP -> 1 on each pyramid level alone; cross: the same (own
    weights) on all levels concatenated along time, so a point sees neighbours of other
    scales. logit = x * within + (1 - x) * cross with x = sigmoid(mix) in [0, 1] (0.5 at init).
    levels: list of (B, T_s, C), masks: list of (B, T_s) -> (B, N) logits, N = sum of T_s.
    """

    def __init__(self, dims: int, kernel_size: int = 5):
        super().__init__()
        self.within = nn.ModuleList(
            (
                nn.Conv1d(dims, dims, kernel_size, padding=kernel_size // 2),
                nn.Sequential(nn.ReLU(), nn.Linear(dims, dims), nn.ReLU(), nn.Linear(dims, 1)),
            )
        )
        self.cross = nn.ModuleList(
            (
                nn.Conv1d(dims, dims, kernel_size, padding=kernel_size // 2),
                nn.Sequential(nn.ReLU(), nn.Linear(dims, dims), nn.ReLU(), nn.Linear(dims, 1)),
            )
        )
        self.mix = nn.Parameter(torch.zeros(()))

    @staticmethod
    def score(scorer: nn.ModuleList, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        conv, mlp = scorer
        hidden = conv((x * mask[..., None].to(x.dtype)).transpose(1, 2)).transpose(1, 2)
        return mlp(hidden)[..., 0]

    @property
    def weight(self) -> torch.Tensor:
        """x in [0, 1]: the share of the within-level score."""
        return self.mix.sigmoid()

    def forward(self, levels: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
        within = torch.cat([self.score(self.within, x, m) for x, m in zip(levels, masks)], dim=1)
        cross = self.score(self.cross, torch.cat(levels, dim=1), torch.cat(masks, dim=1))
        return self.weight * within + (1 - self.weight) * cross


class FrameQueryMatcher(nn.Module):
    """BM-DETR's probabilistic frame-query matcher and frame re-weighting.

    PFM(f) = sigmoid(tanh(f W1) W2), W1: C -> C/2, W2: C/2 -> 1. With a negative query the
    frame probability is p = PFM(f+) (1 - PFM(f-)), else PFM(f+) (inference). Frames are
    re-weighted by o = softmax(p) over the valid frames, times their number, so that equal
    probabilities leave the features unchanged.
    frames (B, T, C), mask (B, T), negative_frames (B, T, C) or None -> ``frames`` (B, T, C), ``prob`` (B, T).
    """

    def __init__(self, dims: int):
        super().__init__()
        self.pfm = nn.Sequential(nn.Linear(dims, dims // 2, bias=False), nn.Tanh(), nn.Linear(dims // 2, 1, bias=False), nn.Sigmoid())

    def forward(self, frames: torch.Tensor, mask: torch.Tensor, negative_frames: torch.Tensor | None = None) -> dict:
        prob = self.pfm(frames)[..., 0]
        if negative_frames is not None:
            prob = prob * (1 - self.pfm(negative_frames)[..., 0])
        attention = prob.masked_fill(~mask, float("-inf")).softmax(-1) * mask.sum(1, keepdim=True)
        return {"frames": frames * attention[..., None], "prob": prob}


class AttentionPooling(nn.Module):
    """Softmax-weighted sum of valid tokens, weights from Linear(C, 1): (B, L, C), (B, L) -> (B, C)."""

    def __init__(self, dims: int):
        super().__init__()
        self.score = nn.Linear(dims, 1, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = self.score(x)[..., 0].masked_fill(~mask, float("-inf")).softmax(-1)
        return torch.einsum("bl,blc->bc", weights, x)


def pyramid_points(lengths: list[int], strides: tuple[int, ...], device=None) -> torch.Tensor:
    """Anchor points (N, 4): [t, range_low, range_high, stride] for every position of every level.

    t = 0, s, 2s, ... in frames; level i regresses distances (in strides) in
    (strides[i], strides[i + 1]], the first from 0 and the last to infinity.
    """
    bounds = [0.0, *[float(s) for s in strides[1:]], float("inf")]
    rows = []
    for i, (length, stride) in enumerate(zip(lengths, strides)):
        t = torch.arange(length, device=device, dtype=torch.float32) * stride
        rows.append(torch.stack((t, torch.full_like(t, bounds[i]), torch.full_like(t, bounds[i + 1]), torch.full_like(t, stride)), 1))
    return torch.cat(rows)
