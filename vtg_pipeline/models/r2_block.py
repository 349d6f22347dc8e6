"""The R²-Tuning side block: query-modulated spatial pooling and reversed
recurrent temporal refinement over the last K CLIP layers (papers/001, REFERENCE.md).

Shapes: B batch, T frames, P tokens per frame (CLS first), L query tokens,
K tapped layers (oldest first), Dv / Dt CLIP widths, C hidden width.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from .layers import TemporalLayer, mapper, masked_max, sine_positions


def temporal_endpoints(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """TEF (B, max_len, 2): [j / n, (j + 1) / n] for frame j of a video with n frames (true length)."""
    j = torch.arange(max_len, device=lengths.device, dtype=torch.float32)[None]
    n = lengths[:, None].float()
    return torch.stack((j / n, (j + 1) / n), dim=-1)


def keep_matmul_outputs(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Selective checkpoint policy: store what matrix products give, recompute the cheap element-wise rest."""
    return CheckpointPolicy.MUST_SAVE if op in MATMULS else CheckpointPolicy.PREFER_RECOMPUTE


MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}
SAVE_MATMULS_ONLY = partial(create_selective_checkpoint_contexts, keep_matmul_outputs)


class R2Block(nn.Module):
    """Refines frame features with the query, from the last tapped layer to the first.

    Shared across the K steps: the video/query mappers, the pooling projections
    and one temporal layer; per step: ``scale`` (K,) and ``gate`` (K - 1,),
    both zero-initialised. ``memory_saving``: in training, recompute the video
    mapping's element-wise activations in backward instead of storing them
    (0.7-0.8x the peak memory, 1.2-1.3x the step time at dropout 0.5; the
    same numbers).
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
        self.memory_saving = False  # optim.memory_saving: training switches it on
        self.video_map = mapper(vision_width + 2, dims, dropout)
        self.query_map = mapper(text_width, dims, dropout)
        self.v_map = nn.Linear(dims, dims)
        self.q_map = nn.Linear(dims, dims)
        self.scale = nn.Parameter(torch.zeros(layers))
        self.gate = nn.Parameter(torch.zeros(layers - 1))
        self.temporal = TemporalLayer(dims, heads, ffn_ratio, droppath, dummies)

    def hidden_tokens(self, layer: torch.Tensor, tef: torch.Tensor) -> torch.Tensor:
        """One tapped layer's tokens (Bv, T, P, Dv), any float dtype, and their TEF (Bv, T, P, 2) -> the video mapper's
        input to its last Linear (Bv, T, P, C): the mapped tokens are ``video_map[-1]`` of it. Query-independent: a
        video shared by several queries (Bv = 1) is mapped once. With ``memory_saving`` (training only) only the
        matrix products' outputs are stored for backward; the element-wise rest is recomputed there."""
        if self.memory_saving and self.training and torch.is_grad_enabled():
            return checkpoint(self.map_hidden, layer, tef, use_reentrant=False, context_fn=SAVE_MATMULS_ONLY)
        return self.map_hidden(layer, tef)

    def map_hidden(self, layer: torch.Tensor, tef: torch.Tensor) -> torch.Tensor:
        return self.video_map[:-1](torch.cat((layer.to(tef.dtype), tef), dim=-1))

    def pool_frames(self, hidden: torch.Tensor, cls: torch.Tensor, query: torch.Tensor, query_mask: torch.Tensor, step: int) -> torch.Tensor:
        """Query-modulated spatial pooling.

        hidden (Bv, T, P, C) hidden video tokens (``hidden_tokens``), cls (Bv, T, C) the mapped CLS tokens, query
        (B, L, C) mapped tokens -> (B, T, C):
        CLS + tanh(scale) * max over valid query tokens of (softmax(q_map(q) . v_map(v) / sqrt(C)) @ v + q), with
        v = W h + b the mapped tokens (W, b: the video mapper's last Linear). Computed without v or v_map(v) for
        every token: q_map(q) . v_map(v_p) = (q_map(q) W_v W) . h_p + q_map(q) . v_map(b), and softmax @ v =
        (softmax @ h) W^T + b because each softmax row sums to 1.
        """
        last, mapped_query = self.video_map[-1], self.q_map(query)
        keys = mapped_query @ self.v_map.weight @ last.weight  # (B, L, C)
        offset = (mapped_query * self.v_map(last.bias)).sum(-1)  # (B, L): the same for every token (the softmax cancels it)
        logits = (torch.einsum("blc,btpc->btlp", keys, hidden) + offset[:, None, :, None]) / self.dims**0.5
        attended = last(torch.einsum("btlp,btpc->btlc", logits.softmax(-1), hidden)) + query[:, None]
        pooled = masked_max(attended, query_mask[:, None, :, None], dim=2)
        return cls + pooled * self.scale[step].tanh()

    def forward(self, video: torch.Tensor, video_mask: torch.Tensor, query: torch.Tensor, query_mask: torch.Tensor,
                hidden: list[torch.Tensor] | None = None) -> dict:
        """video (Bv, T, K, P, Dv) with Bv = B, or Bv = 1 for one video shared by B queries; video_mask (B, T), query
        (B, L, K, Dt), query_mask (B, L). ``hidden``: the ``hidden`` of an earlier call on the same videos, to refine
        them for another query without mapping them again.

        Returns ``frames`` (B, T, C) refined features, ``query`` (B, L, C) mapped tokens of the first tapped layer,
        and per step (last layer first) ``cls`` (Bv, T, C) mapped CLS tokens, ``queries`` (B, L, C) and ``hidden``
        (Bv, T, P, C) the video mapping's hidden tokens (``hidden_tokens``).
        """
        bv, t, k, p, _ = video.shape
        tef = temporal_endpoints(video_mask.sum(1)[:bv], t)[:, :, None, :].expand(bv, t, p, 2)
        positions = sine_positions(video_mask.sum(1), t, self.dims)
        frames, cls_per_step, query_per_step, hidden_per_step = None, [], [], []
        for i, step in enumerate(range(k - 1, -1, -1)):
            h = hidden[i] if hidden is not None else self.hidden_tokens(video[:, :, step], tef)
            q, cls = self.query_map(query[:, :, step]), self.video_map[-1](h[:, :, 0])
            cls_per_step.append(cls)
            query_per_step.append(q)
            hidden_per_step.append(h)
            pooled = self.pool_frames(h, cls, q, query_mask, step)
            if frames is not None:
                gate = self.gate[step].sigmoid()
                pooled = gate * pooled + (1 - gate) * frames
            frames = self.temporal(pooled, q, positions, video_mask, query_mask)
        return {"frames": frames, "query": q, "cls": cls_per_step, "queries": query_per_step, "hidden": hidden_per_step}
