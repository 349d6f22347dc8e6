"""Small reusable layers: sine positions, masked attention, the post-norm temporal layer.

Shapes: B batch, T frames (clips), L query tokens, C channels.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath


def sine_positions(lengths: torch.Tensor, max_len: int, dims: int, temperature: float = 10000.0) -> torch.Tensor:
    """Normalised sine positions (B, max_len, dims): position j of a sequence of
    length n is (j + 1) / n * 2 pi, channels interleave sin (even) and cos (odd).

    ``lengths`` (B,) true lengths; positions past a sequence's end are padding.
    """
    position = torch.arange(1, max_len + 1, device=lengths.device, dtype=torch.float32)
    position = position[None] / (lengths[:, None].float() + 1e-6) * (2 * math.pi)
    channel = torch.arange(dims, device=lengths.device)
    frequency = temperature ** (torch.div(channel, 2, rounding_mode="floor") * 2 / dims)
    angles = position[..., None] / frequency
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=3).flatten(2)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections and a key mask.

    q (B, Tq, C), k (B, Tk, C), v (B, Tk, C), mask (B, Tk) per key or (B, Tq, Tk) per
    query and key, bool (True = attend) -> (B, Tq, C). Uses ``F.scaled_dot_product_attention``.
    """

    def __init__(self, dims: int, heads: int = 8):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dims, dims)
        self.k = nn.Linear(dims, dims)
        self.v = nn.Linear(dims, dims)
        self.out = nn.Linear(dims, dims)
        for layer in (self.q, self.k, self.v, self.out):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        return x.view(b, t, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            mask = mask[:, None, None, :] if mask.dim() == 2 else mask[:, None]
        out = F.scaled_dot_product_attention(self._split(self.q(q)), self._split(self.k(k)), self._split(self.v(v)), attn_mask=mask)
        b, _, t, _ = out.shape
        return self.out(out.transpose(1, 2).reshape(b, t, -1))


class DummyCrossAttention(nn.Module):
    """FlashVTG's adaptive cross-attention: frames attend to the words and L_d dummy tokens, but only
    word values are summed, so attention a frame gives the dummies is discarded (a frame unrelated
    to the query can attend to nothing). The dummies are made query-aware by one self-attention
    layer over [words; dummies].

    Same call as ``MultiHeadAttention``: q (B, T, C), k = v = words (B, L, C), mask (B, L) -> (B, T, C).
    """

    def __init__(self, dims: int, heads: int = 8, dummies: int = 40):
        super().__init__()
        self.heads = heads
        self.dummies = nn.Parameter(torch.randn(dummies, dims) * 0.02)
        self.dummy_encoder = AttentionLayer(dims, heads, dims * 2, dropout=0.0)
        self.attn = MultiHeadAttention(dims, heads)  # its projections; values of the dummies are zero

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, length, _ = k.shape
        if mask is None:
            mask = torch.ones(b, length, dtype=torch.bool, device=k.device)
        keep = torch.cat((mask, mask.new_ones(b, len(self.dummies))), dim=1)
        encoded = self.dummy_encoder(torch.cat((k, self.dummies.expand(b, -1, -1)), dim=1), mask=keep)
        keys = torch.cat((k, encoded[:, length:]), dim=1)
        attn = self.attn
        words = attn._split(attn.v(v))  # (B, H, L, C / H)
        values = torch.cat((words, words.new_zeros(b, self.heads, len(self.dummies), words.size(-1))), dim=2)  # dummies add nothing
        out = F.scaled_dot_product_attention(attn._split(attn.q(q)), attn._split(attn.k(keys)), values, attn_mask=keep[:, None, None, :])
        return attn.out(out.transpose(1, 2).flatten(2))


class TemporalLayer(nn.Module):
    """One post-norm layer: cross-attention to the query, self-attention over frames, FFN.

    Each sub-layer is x = LN(x + DropPath(sublayer(x))). Positions are added to
    the attention queries (and self-attention keys), never to values. ``dummies`` > 0
    uses FlashVTG's adaptive cross-attention (``DummyCrossAttention``).
    x (B, T, C), memory (B, L, C), positions (B, T, C), frame_mask (B, T), memory_mask (B, L) -> (B, T, C).
    """

    def __init__(self, dims: int = 256, heads: int = 8, ffn_ratio: int = 4, droppath: float = 0.1, dummies: int = 0):
        super().__init__()
        self.cross_attn = DummyCrossAttention(dims, heads, dummies) if dummies else MultiHeadAttention(dims, heads)
        self.self_attn = MultiHeadAttention(dims, heads)
        self.ffn = nn.Sequential(nn.Linear(dims, dims * ffn_ratio), nn.ReLU(), nn.Linear(dims * ffn_ratio, dims))
        for layer in (self.ffn[0], self.ffn[2]):
            nn.init.kaiming_normal_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.cross_norm = nn.LayerNorm(dims)
        self.self_norm = nn.LayerNorm(dims)
        self.ffn_norm = nn.LayerNorm(dims)
        self.droppath = DropPath(droppath) if droppath > 0 else nn.Identity()

    def forward(self, x, memory, positions, frame_mask, memory_mask):
        x = self.cross_norm(x + self.droppath(self.cross_attn(x + positions, memory, memory, memory_mask)))
        q = x + positions
        x = self.self_norm(x + self.droppath(self.self_attn(q, q, x, frame_mask)))
        return self.ffn_norm(x + self.droppath(self.ffn(x)))


class AttentionLayer(nn.Module):
    """One post-norm transformer layer: x = LN(x + attn(x + pos, memory + memory_pos, memory)); x = LN(x + FFN(x)).

    Self-attention when ``memory`` is None (memory = x, memory_pos = pos).
    x (B, T, C), pos (B, T, C) or None, memory (B, M, C), mask (B, M) or (B, T, M) bool (True = attend) -> (B, T, C).
    """

    def __init__(self, dims: int = 256, heads: int = 8, ffn_dims: int = 1024, dropout: float = 0.1):
        super().__init__()
        self.attn = MultiHeadAttention(dims, heads)
        self.ffn = nn.Sequential(nn.Linear(dims, ffn_dims), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dims, dims))
        self.attn_norm = nn.LayerNorm(dims)
        self.ffn_norm = nn.LayerNorm(dims)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, pos=None, memory=None, memory_pos=None, mask=None):
        if memory is None:
            memory, memory_pos = x, pos
        q = x if pos is None else x + pos
        k = memory if memory_pos is None else memory + memory_pos
        x = self.attn_norm(x + self.dropout(self.attn(q, k, memory, mask)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class PatchLayout(nn.Module):
    """Where things are in each frame: tokens (..., P, Din), CLS first, then a square grid of patches in raster order
    (CLIP's ViT) -> (..., Dout). Each patch is projected to ``cell_dims`` (then GELU), the grid is average-pooled to ``grid`` x
    ``grid`` cells, and the flattened cells go through a Linear that starts at zero, so a model with the layer starts
    as the one without it. Motion on the frame (left, right, up, down), size and presence show in it."""

    def __init__(self, in_dims: int, out_dims: int, grid: int, cell_dims: int = 8):
        super().__init__()
        self.grid = grid
        self.cell = nn.Linear(in_dims, cell_dims)
        self.out = nn.Linear(cell_dims * grid * grid, out_dims)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        *lead, p, _ = tokens.shape
        side = math.isqrt(p - 1)
        if p < 2 or side * side != p - 1:
            raise ValueError(f"PatchLayout needs a square grid of patch tokens after CLS, got {p} tokens a frame")
        n = math.prod(lead)  # explicit sizes: no frames at all (an empty batch) is a valid input
        cells = F.gelu(self.cell(tokens[..., 1:, :])).reshape(n, side, side, self.cell.out_features).permute(0, 3, 1, 2)
        pooled = F.adaptive_avg_pool2d(cells, self.grid)  # (N, cell_dims, grid, grid)
        return self.out(pooled.flatten(1)).view(*lead, self.out.out_features)


class TokenDropout(nn.Module):
    """``nn.Dropout`` for large token tensors, with a cheaper mask: an element is kept when a random 16-bit number
    falls below round((1 - p) 65536), so the keep probability is 1 - p to within 1/65536 and kept values are scaled
    by its exact inverse. Four mask entries come from each random 64-bit word: on a CPU about 5x faster than the
    Bernoulli sampling of ``nn.Dropout``, which took 40 % of a paper-sized training step. The mask is kept for
    backward as bool (1 byte per element, not a float mask). x (...) -> (...); the identity in eval mode or at p = 0
    (no random numbers drawn)."""

    def __init__(self, p: float):
        super().__init__()
        self.p, self.levels = p, round((1 - p) * 65536)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.levels == 0:
            return x * 0
        words = torch.randint(-(2**63), 2**63 - 1, ((x.numel() + 3) // 4,), dtype=torch.int64, device=x.device)
        keep = (words.view(torch.int16)[: x.numel()] < self.levels - 32768).view(x.shape)
        return (x * keep).mul_(65536 / self.levels)  # in place: the product is not saved for backward

    def extra_repr(self) -> str:
        return f"p={self.p}"


def mapper(in_dims: int, dims: int, dropout: float) -> nn.Sequential:
    """LN -> Dropout -> Linear -> ReLU -> LN -> Dropout -> Linear: (..., in_dims) -> (..., dims), its dropout a
    ``TokenDropout`` (it runs on every token of every frame)."""
    return nn.Sequential(
        nn.LayerNorm(in_dims),
        TokenDropout(dropout),
        nn.Linear(in_dims, dims),
        nn.ReLU(),
        nn.LayerNorm(dims),
        TokenDropout(dropout),
        nn.Linear(dims, dims),
    )


def masked_max(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Max over ``dim`` of the entries where ``mask`` (broadcastable to x, True = valid) holds."""
    return x.masked_fill(~mask, float("-inf")).amax(dim=dim)
