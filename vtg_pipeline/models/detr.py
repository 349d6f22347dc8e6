"""Anchor-query moment decoder (DAB-DETR style, as RGNet's and BM-DETR's grounding head).

Q learnable anchors (centre, width), in units of the clip's length (0..1), are
refined layer by layer: each layer's queries attend to each other and to the
frame features, with a positional query made from the current anchor; an MLP
predicts an offset in logit space, and the refined anchor (detached) feeds the
next layer. Every layer predicts spans and a 2-way class (foreground,
background), so auxiliary losses can supervise all of them.

Shapes: B batch, T frames, Q anchor queries, N decoder layers, C channels.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from scipy.optimize import linear_sum_assignment

from .layers import AttentionLayer, MultiHeadAttention


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


def sine_embedding(values: torch.Tensor, dims: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sine embedding (..., dims) of values in [0, 1] (..., ) : interleaved sin / cos of 2 pi x / temperature^(2i/dims)."""
    channel = torch.arange(dims, device=values.device)
    frequency = temperature ** (torch.div(channel, 2, rounding_mode="floor") * 2 / dims)
    angles = values[..., None] * 2 * math.pi / frequency
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


def span_to_window(spans: torch.Tensor) -> torch.Tensor:
    """(centre, width) -> (start, end), same units."""
    return torch.stack((spans[..., 0] - spans[..., 1] / 2, spans[..., 0] + spans[..., 1] / 2), dim=-1)


def window_to_span(windows: torch.Tensor) -> torch.Tensor:
    """(start, end) -> (centre, width), same units."""
    return torch.stack(((windows[..., 0] + windows[..., 1]) / 2, windows[..., 1] - windows[..., 0]), dim=-1)


def generalized_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise generalised IoU (A, B) of 1-D windows a (A, 2) and b (B, 2) [start, end]."""
    inter = (torch.minimum(a[:, None, 1], b[None, :, 1]) - torch.maximum(a[:, None, 0], b[None, :, 0])).clamp(min=0)
    union = (a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0])[None] - inter
    hull = torch.maximum(a[:, None, 1], b[None, :, 1]) - torch.minimum(a[:, None, 0], b[None, :, 0])
    iou = inter / union.clamp(min=1e-6)
    return iou - (hull - union) / hull.clamp(min=1e-6)


class DecoderLayer(nn.Module):
    """Self-attention among the anchor queries, cross-attention to the frames, FFN (post-norm)."""

    def __init__(self, dims: int, heads: int, ffn_dims: int, dropout: float):
        super().__init__()
        self.self_attn = AttentionLayer(dims, heads, ffn_dims, dropout)
        self.cross_attn = MultiHeadAttention(dims, heads)
        self.cross_norm = nn.LayerNorm(dims)
        self.ffn = nn.Sequential(nn.Linear(dims, ffn_dims), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dims, dims))
        self.ffn_norm = nn.LayerNorm(dims)

    def forward(self, x, query_pos, memory, memory_pos, memory_mask):
        x = self.self_attn(x, query_pos)
        x = self.cross_norm(x + self.cross_attn(x + query_pos, memory + memory_pos, memory, memory_mask))
        return self.ffn_norm(x + self.ffn(x))


class AnchorDecoder(nn.Module):
    """frames (B, T, C), frame_mask (B, T), positions (B, T, C) -> ``spans`` (N, B, Q, 2) (centre, width) in [0, 1]
    of the valid length and ``logits`` (N, B, Q, 2) (foreground, background), one row per decoder layer."""

    def __init__(self, dims: int = 256, heads: int = 8, layers: int = 6, queries: int = 5, ffn_dims: int = 1024, dropout: float = 0.1):
        super().__init__()
        self.dims = dims
        self.anchors = nn.Parameter(inverse_sigmoid(torch.stack((torch.linspace(0.1, 0.9, queries), torch.full((queries,), 0.2)), 1)))
        self.content = nn.Parameter(torch.zeros(queries, dims))
        self.layers = nn.ModuleList(DecoderLayer(dims, heads, ffn_dims, dropout) for _ in range(layers))
        self.position_mlp = nn.Sequential(nn.Linear(dims, dims), nn.ReLU(), nn.Linear(dims, dims))
        self.offset_mlp = nn.Sequential(nn.Linear(dims, dims), nn.ReLU(), nn.Linear(dims, 2))
        nn.init.zeros_(self.offset_mlp[-1].weight)
        nn.init.zeros_(self.offset_mlp[-1].bias)
        self.class_head = nn.Linear(dims, 2)

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor, positions: torch.Tensor) -> dict:
        b = frames.size(0)
        x = self.content.expand(b, -1, -1)
        anchor_logits = self.anchors.expand(b, -1, -1)
        spans, logits = [], []
        for layer in self.layers:
            anchor = anchor_logits.sigmoid()
            query_pos = self.position_mlp(
                torch.cat((sine_embedding(anchor[..., 0], self.dims // 2), sine_embedding(anchor[..., 1], self.dims // 2)), dim=-1)
            )
            x = layer(x, query_pos, frames, positions, frame_mask)
            refined = anchor_logits + self.offset_mlp(x)
            spans.append(refined.sigmoid())
            logits.append(self.class_head(x))
            anchor_logits = refined.detach()
        return {"spans": torch.stack(spans), "logits": torch.stack(logits)}


@torch.no_grad()
def hungarian_match(
    spans: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, l1: float = 10.0, giou: float = 1.0, cls: float = 4.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Match Q predictions of one sample to its G ground-truth spans with scipy's linear_sum_assignment.

    spans (Q, 2) and targets (G, 2) (centre, width); cost = l1 * L1 - giou * gIoU - cls * p(foreground).
    Returns prediction and target indices (min(Q, G),).
    """
    cost = (
        l1 * torch.cdist(spans, targets, p=1)
        - giou * generalized_iou(span_to_window(spans), span_to_window(targets))
        - cls * logits.softmax(-1)[:, :1]
    )
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)
