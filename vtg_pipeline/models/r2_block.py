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
MAPPED_FRAMES = 8  # frames mapped at a time (batch 32 with memory_saving: 0.45 GB less peak memory than all at once)


class QueryVideos:
    """Which video each query of a batch is on: B queries on Bv videos, every video with at least one query.

    ``index`` (B,) the video row of each query; None: one video per query (Bv = B), or one video shared by all
    queries (Bv = 1). ``slot`` (B,) the query's place among its video's queries, of which there are at most
    ``per_video`` (G). ``group`` lays per-query tensors out per video, ``ungroup`` takes them back.
    """

    def __init__(self, index: torch.Tensor | None, videos: int, queries: int, device: torch.device):
        self.videos = videos
        if index is None:  # known without looking at the device
            shared = videos == 1
            self.index = torch.zeros(queries, dtype=torch.long, device=device) if shared else torch.arange(queries, device=device)
            self.slot = torch.arange(queries, device=device) if shared else torch.zeros(queries, dtype=torch.long, device=device)
            self.per_video = queries if shared else 1
        else:
            self.index = index
            self.slot = (index[:, None] == index[None]).tril(-1).sum(1)  # earlier queries on the same video
            self.per_video = int(self.slot.max()) + 1

    def group(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) -> (Bv, G, ...), zeros where a video has fewer than G queries."""
        grouped = x.new_zeros((self.videos, self.per_video, *x.shape[1:]))
        return grouped.index_put((self.index, self.slot), x)

    def ungroup(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """(Bv, ..., G at ``dim``, ...) -> (B, ...): each query's entry, with ``dim`` dropped."""
        return x.movedim(dim, 1)[self.index, self.slot]

    def per_query(self, x: torch.Tensor) -> torch.Tensor:
        """(Bv, ...) -> (B, ...): each query's video row."""
        return x[self.index]

    def video_lengths(self, video_mask: torch.Tensor) -> torch.Tensor:
        """video_mask (B, T) -> (Bv,) frames of each video."""
        lengths = video_mask.sum(1)
        return lengths.new_zeros(self.videos).scatter(0, self.index, lengths)


class R2Block(nn.Module):
    """Refines frame features with the query, from the last tapped layer to the first.

    Shared across the K steps: the video/query mappers, the pooling projections
    and one temporal layer; per step: ``scale`` (K,) and ``gate`` (K - 1,),
    both zero-initialised. ``memory_saving``: in training, recompute the video
    mapping's element-wise activations in backward instead of storing them
    (less peak memory, see docs/BENCHMARKS.md; the same numbers).
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
        video shared by several queries (Bv = 1) is mapped once, ``MAPPED_FRAMES`` frames at a time. With
        ``memory_saving`` (training only) only the matrix products' outputs are stored for backward; the element-wise
        rest is recomputed there, with the same dropout masks."""
        map_part = self.map_hidden
        if self.memory_saving and self.training and torch.is_grad_enabled():
            map_part = partial(checkpoint, self.map_hidden, use_reentrant=False, context_fn=SAVE_MATMULS_ONLY)
        parts = zip(layer.split(MAPPED_FRAMES, 1), tef.split(MAPPED_FRAMES, 1))  # a few frames at a time: small float copies
        return torch.cat([map_part(*part) for part in parts], 1)

    def map_hidden(self, layer: torch.Tensor, tef: torch.Tensor) -> torch.Tensor:
        return self.video_map[:-1](torch.cat((layer.to(tef.dtype), tef), dim=-1))

    def pool_frames(
        self, hidden: torch.Tensor, cls: torch.Tensor, query: torch.Tensor, query_mask: torch.Tensor, step: int, videos: QueryVideos
    ) -> torch.Tensor:
        """Query-modulated spatial pooling.

        hidden (Bv, T, P, C) hidden video tokens (``hidden_tokens``), cls (B, T, C) the mapped CLS tokens, query
        (B, L, C) mapped tokens, ``videos`` which row of ``hidden`` each query is on -> (B, T, C):
        CLS + tanh(scale) * max over valid query tokens of (softmax(q_map(q) . v_map(v) / sqrt(C)) @ v + q), with
        v = W h + b the mapped tokens (W, b: the video mapper's last Linear). Computed without v or v_map(v) for
        every token: q_map(q) . v_map(v_p) = (q_map(q) W_v W) . h_p + q_map(q) . v_map(b), and softmax @ v =
        (softmax @ h) W^T + b because each softmax row sums to 1. The queries of one video attend to its hidden
        tokens together (G queries per video: (Bv, T, G x L, P) attention), so those are stored once for backward.
        """
        last, mapped_query = self.video_map[-1], self.q_map(query)
        keys = mapped_query @ self.v_map.weight @ last.weight  # (B, L, C)
        offset = (mapped_query * self.v_map(last.bias)).sum(-1)  # (B, L): the same for every token (the softmax cancels it)
        logits = (torch.einsum("bglc,btpc->btglp", videos.group(keys), hidden) + videos.group(offset)[:, None, :, :, None]) / self.dims**0.5
        attended = videos.ungroup(torch.einsum("btglp,btpc->btglc", logits.softmax(-1), hidden), dim=2)  # (B, T, L, C)
        pooled = masked_max(last(attended) + query[:, None], query_mask[:, None, :, None], dim=2)
        return cls + pooled * self.scale[step].tanh()

    def forward(
        self,
        video: torch.Tensor,
        video_mask: torch.Tensor,
        query: torch.Tensor,
        query_mask: torch.Tensor,
        hidden: list[torch.Tensor] | None = None,
        video_index: torch.Tensor | None = None,
    ) -> dict:
        """video (Bv, T, K, P, Dv), video_mask (B, T), query (B, L, K, Dt), query_mask (B, L), ``video_index`` (B,)
        the video row of each query (None: Bv = B, a video per query, or Bv = 1, one video shared by all queries; see
        ``QueryVideos``). Each video is mapped once, however many queries it has. ``hidden``: the ``hidden`` of an
        earlier call on the same videos, to refine them for other queries without mapping them again.

        Returns ``frames`` (B, T, C) refined features, ``query`` (B, L, C) mapped tokens of the first tapped layer,
        and per step (last layer first) ``cls`` (B, T, C) mapped CLS tokens, ``queries`` (B, L, C) and ``hidden``
        (Bv, T, P, C) the video mapping's hidden tokens (``hidden_tokens``).
        """
        bv, t, k, p, _ = video.shape
        videos = QueryVideos(video_index, bv, len(query), video.device)
        tef = temporal_endpoints(videos.video_lengths(video_mask), t)[:, :, None, :].expand(bv, t, p, 2)
        positions = sine_positions(video_mask.sum(1), t, self.dims)
        frames, cls_per_step, query_per_step, hidden_per_step = None, [], [], []
        for i, step in enumerate(range(k - 1, -1, -1)):
            h = hidden[i] if hidden is not None else self.hidden_tokens(video[:, :, step], tef)
            q, cls = self.query_map(query[:, :, step]), videos.per_query(self.video_map[-1](h[:, :, 0]))
            cls_per_step.append(cls)
            query_per_step.append(q)
            hidden_per_step.append(h)
            pooled = self.pool_frames(h, cls, q, query_mask, step, videos)
            if frames is not None:
                gate = self.gate[step].sigmoid()
                pooled = gate * pooled + (1 - gate) * frames
            frames = self.temporal(pooled, q, positions, video_mask, query_mask)
        return {"frames": frames, "query": q, "cls": cls_per_step, "queries": query_per_step, "hidden": hidden_per_step}
