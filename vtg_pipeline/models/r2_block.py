"""The R²-Tuning side block: query-modulated spatial pooling and reversed
recurrent temporal refinement over the last K CLIP layers (papers/001, REFERENCE.md).

Shapes: B batch, T frames, P tokens per frame (CLS first), L query tokens,
K tapped layers (oldest first), Dv / Dt CLIP widths, C hidden width.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .layers import TemporalLayer, mapper, masked_max, sine_positions


def temporal_endpoints(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """TEF (B, max_len, 2): [j / n, (j + 1) / n] for frame j of a video with n frames (true length)."""
    j = torch.arange(max_len, device=lengths.device, dtype=torch.float32)[None]
    n = lengths[:, None].float()
    return torch.stack((j / n, (j + 1) / n), dim=-1)


class R2Block(nn.Module):
    """Refines frame features with the query, from the last tapped layer to the first.

    Shared across the K steps: the video/query mappers, the pooling projections
    and one temporal layer; per step: ``scale`` (K,) and ``gate`` (K - 1,),
    both zero-initialised.
    """

    def __init__(
        self,
        vision_width: int = 768,
        text_width: int = 512,
        dims: int = 256,
        layers: int = 4,
        dropout: float = 0.5,
        heads: int = 8,
        ffn_ratio: int = 4,
        droppath: float = 0.1,
        dummies: int = 0,
    ):
        super().__init__()
        self.dims, self.layers = dims, layers
        self.video_map = mapper(vision_width + 2, dims, dropout)
        self.query_map = mapper(text_width, dims, dropout)
        self.v_map = nn.Linear(dims, dims)
        self.q_map = nn.Linear(dims, dims)
        self.scale = nn.Parameter(torch.zeros(layers))
        self.gate = nn.Parameter(torch.zeros(layers - 1))
        self.temporal = TemporalLayer(dims, heads, ffn_ratio, droppath, dummies)

    def pool_frames(self, video: torch.Tensor, query: torch.Tensor, query_mask: torch.Tensor, step: int) -> torch.Tensor:
        """Query-modulated spatial pooling.

        video (B, T, P, C) mapped tokens, query (B, L, C) mapped tokens -> (B, T, C):
        CLS + tanh(scale) * max over valid query tokens of (softmax(q_map(q) . v_map(v) / sqrt(C)) @ v + q).
        """
        logits = torch.einsum("blc,btpc->btlp", self.q_map(query), self.v_map(video)) / self.dims**0.5
        attended = torch.einsum("btlp,btpc->btlc", logits.softmax(-1), video) + query[:, None]
        pooled = masked_max(attended, query_mask[:, None, :, None], dim=2)
        return video[:, :, 0] + pooled * self.scale[step].tanh()

    def forward(self, video: torch.Tensor, video_mask: torch.Tensor, query: torch.Tensor, query_mask: torch.Tensor) -> dict:
        """video (B, T, K, P, Dv), video_mask (B, T), query (B, L, K, Dt), query_mask (B, L).

        ``video`` may also be (1, T, K, P, Dv): one video shared by B queries, whose
        query-independent mapping then runs once instead of B times.

        Returns ``frames`` (B, T, C) refined features, ``query`` (B, L, C) mapped
        tokens of the first tapped layer, and per step (last layer first)
        ``cls`` (B, T, C) mapped CLS tokens and ``queries`` (B, L, C).
        """
        b, t, k, p, _ = video.shape
        lengths = video_mask.sum(1)
        tef = temporal_endpoints(lengths[:b], t)[:, :, None, :].expand(b, t, p, 2)
        positions = sine_positions(lengths, t, self.dims)
        frames, cls_per_step, query_per_step = None, [], []
        for step in range(k - 1, -1, -1):
            v = self.video_map(torch.cat((video[:, :, step], tef), dim=-1))
            q = self.query_map(query[:, :, step])
            cls_per_step.append(v[:, :, 0])
            query_per_step.append(q)
            pooled = self.pool_frames(v, q, query_mask, step)
            if frames is not None:
                gate = self.gate[step].sigmoid()
                pooled = gate * pooled + (1 - gate) * frames
            frames = self.temporal(pooled, q, positions, video_mask, query_mask)
        return {"frames": frames, "query": q, "cls": cls_per_step, "queries": query_per_step}
