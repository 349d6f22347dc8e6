"""RGNet's unified retrieval and grounding (papers/000, REFERENCE.md "RGNet") on the R² features.

A long video is cut into windows. For each (query, window) the R² block gives
query-conditioned frame features; the RG-Encoder adds a learnable retrieval
token, attends the frames to the text, keeps a sparse set of frames (a binary
Gumbel-sigmoid gate) and lets the token read the kept frames. The token gives
the window's retrieval score; the fused frames P = F_c + G * R feed the R²
pyramid heads that predict moments inside the window.

Shapes: B (query, window) pairs, T frames of a window, L query tokens, C channels.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .grounding import ModelConfig, R2Grounder, register_model
from .layers import AttentionLayer, sine_positions


def gumbel_sigmoid_gate(logits: torch.Tensor, temperature: float, training: bool) -> torch.Tensor:
    """Binary frame gate (same shape as ``logits``), 1 = keep.

    Training: sigmoid((logit + logistic noise) / temperature) thresholded at 0.5,
    with the straight-through gradient of the soft value. Eval: logit >= 0, no noise.
    """
    if not training:
        return (logits >= 0).to(logits.dtype)
    uniform = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
    soft = torch.sigmoid((logits + uniform.log() - (-uniform).log1p()) / temperature)
    hard = (soft >= 0.5).to(logits.dtype)
    return hard + soft - soft.detach()


def retrieval_attention_mask(keep: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Boolean self-attention mask (B, 1 + T, 1 + T) over [token; frames], True = may attend.

    The token attends to itself and every valid frame; a kept frame to the token
    and the kept frames; a dropped (or padded) frame only to itself.
    keep (B, T) bool, frame_mask (B, T) bool.
    """
    b, t = keep.shape
    kept = keep & frame_mask
    keys = torch.cat((torch.ones(b, 1, dtype=torch.bool, device=keep.device), kept), dim=1)  # (B, 1 + T)
    mask = kept[:, :, None] & keys[:, None, :]  # kept frames -> token and kept frames
    token_row = torch.cat((torch.ones(b, 1, dtype=torch.bool, device=keep.device), frame_mask), dim=1)
    mask = torch.cat((token_row[:, None], mask), dim=1)  # (B, 1 + T, 1 + T)
    return mask | torch.eye(1 + t, dtype=torch.bool, device=keep.device)[None]


class RGEncoder(nn.Module):
    """Retrieval token, frame-to-text cross-attention, sparsifier and retrieval attention.

    frames (B, T, C), frame_mask (B, T), query (B, L, C) mapped tokens, query_mask (B, L) ->
    ``window_logit`` (B,), ``fused`` (B, T, C) = F_c + G * R, ``gate`` (B, T) in {0, 1},
    ``gate_logits`` (B, T), ``token`` (B, C), ``attention`` (B, T) intra-window scores
    <Linear(P_j), Linear(R)> / sqrt(C).
    """

    def __init__(
        self,
        dims: int = 256,
        heads: int = 8,
        ffn_dims: int = 2048,
        cross_layers: int = 2,
        self_layers: int = 2,
        dropout: float = 0.1,
        temperature: float = 0.3,
        sparsifier: bool = True,
    ):
        super().__init__()
        self.temperature, self.use_sparsifier, self.dims = temperature, sparsifier, dims
        self.token = nn.Parameter(torch.randn(1, 1, dims) * 0.02)
        self.token_position = nn.Parameter(torch.randn(1, 1, dims) * 0.02)
        self.cross = nn.ModuleList(AttentionLayer(dims, heads, ffn_dims, dropout) for _ in range(cross_layers))
        self.retrieval = nn.ModuleList(AttentionLayer(dims, heads, ffn_dims, dropout) for _ in range(self_layers))
        self.sparsifier = nn.Linear(dims, 1)
        self.window_head = nn.Linear(dims, 1)
        nn.init.zeros_(self.window_head.weight)  # windows start equal: the InfoNCE at tau 0.07 begins at log(W), not overconfident
        nn.init.zeros_(self.window_head.bias)
        self.frame_key = nn.Linear(dims, dims)
        self.token_key = nn.Linear(dims, dims)

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor, query: torch.Tensor, query_mask: torch.Tensor) -> dict:
        b, t, _ = frames.shape
        positions = sine_positions(frame_mask.sum(1), t, self.dims)
        x = frames
        for layer in self.cross:
            x = layer(x, positions, query, None, query_mask)
        fc = x * frame_mask[..., None]
        gate_logits = self.sparsifier(fc)[..., 0]
        if self.use_sparsifier:
            gate = gumbel_sigmoid_gate(gate_logits, self.temperature, self.training) * frame_mask
        else:
            gate = frame_mask.to(fc.dtype)
        sequence = torch.cat((self.token.expand(b, 1, -1), fc), dim=1)
        sequence_pos = torch.cat((self.token_position.expand(b, 1, -1), positions), dim=1)
        mask = retrieval_attention_mask(gate > 0.5, frame_mask)
        for layer in self.retrieval:
            sequence = layer(sequence, sequence_pos, mask=mask)
        token = sequence[:, 0]
        fused = (fc + gate[..., None] * token[:, None]) * frame_mask[..., None]
        attention = torch.einsum("btc,bc->bt", self.frame_key(fused), self.token_key(token)) / self.dims**0.5
        return {
            "window_logit": self.window_head(token)[:, 0],
            "fused": fused,
            "gate": gate,
            "gate_logits": gate_logits,
            "token": token,
            "attention": attention,
        }


@register_model("rgnet")
class RGNetGrounder(R2Grounder):
    """R² block -> RG-Encoder -> R² pyramid heads on the fused frames, per (query, window) pair.

    ``forward`` returns the R² outputs (computed on the fused frames) plus the
    encoder's ``window_logit``, ``gate``, ``gate_logits`` and ``attention``.
    ``retrieve`` stops before the heads (window scoring at inference); ``predict``
    then runs the heads on the windows that were kept.
    """

    retrieves_windows = True

    @staticmethod
    def window_arguments(positive_rows: torch.Tensor, background_rows: torch.Tensor | None) -> dict:
        """The heads run on the positive windows, and on ``background_rows`` as all-background (``loss.background_windows``)."""
        return {"heads_rows": positive_rows, "background_rows": background_rows}

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.rg = RGEncoder(
            cfg.dims,
            cfg.heads,
            cfg.rg_ffn_dims,
            cfg.rg_cross_layers,
            cfg.rg_self_layers,
            cfg.rg_dropout,
            cfg.gumbel_temperature,
            cfg.sparsifier,
        )

    def retrieve(
        self,
        video: torch.Tensor,
        video_mask: torch.Tensor,
        query: torch.Tensor,
        query_mask: torch.Tensor,
        hidden: list[torch.Tensor] | None = None,
        video_index: torch.Tensor | None = None,
    ) -> tuple[dict, dict]:
        """The R² outputs and the RG-Encoder outputs of (query, window) pairs (no heads; ``hidden`` and ``video_index``:
        see ``refine``)."""
        r2 = self.refine(video, video_mask, query, query_mask, hidden, video_index)
        return r2, self.rg(r2["frames"], video_mask, r2["query"], query_mask)

    def forward(
        self,
        video: torch.Tensor,
        video_mask: torch.Tensor,
        query: torch.Tensor,
        query_mask: torch.Tensor,
        negative_query: torch.Tensor | None = None,
        negative_mask: torch.Tensor | None = None,
        heads_rows: torch.Tensor | None = None,
        background_rows: torch.Tensor | None = None,
        video_index: torch.Tensor | None = None,
    ) -> dict:
        """As ``R2Grounder.forward``, plus ``window_logit`` (B,), ``gate``, ``gate_logits`` and ``attention`` (B, T).
        ``video_index`` (B,): each pair's window row (None: a window per pair, or one shared by all; inference batches
        several windows' pairs so; training gives every pair its own window).

        ``heads_rows`` (R,) restricts the heads to those pairs (training: the positive
        windows); the head outputs then have R rows, the encoder outputs keep B. With
        ``background_matching`` a negative query (R, L', K', Dt) is encoded on the same
        R windows (R² block, reusing their video mapping, and RG-Encoder), and its fused frames give p-.
        The negative query's retrieval-token logit on those windows is ``negative_window_logit`` (R,).
        ``background_rows`` (R',): pairs whose window holds no moment of the query (training: the negative windows);
        the heads also run on them and add ``background_cls`` (R', N) and ``background_valid`` (R', N) anchor points.
        """
        r2, rg = self.retrieve(video, video_mask, query, query_mask, video_index=video_index)
        rows = slice(None) if heads_rows is None else heads_rows
        negative = None
        if self.cfg.background_matching and negative_query is not None:
            if video_index is not None:
                raise ValueError("a negative query needs a window per pair (video_index=None)")
            hidden = [h[rows] for h in r2["hidden"]]  # the windows mapped once, for both queries
            negative = self.retrieve(video[rows], video_mask[rows], negative_query, negative_mask, hidden)[1]
        out = self.heads(
            rg["fused"][rows], video_mask[rows], query_mask[rows], select_rows(r2, rows), None if negative is None else negative["fused"]
        )
        out.update({k: rg[k] for k in ("window_logit", "gate", "gate_logits", "attention")})
        if negative is not None:
            out["negative_window_logit"] = negative["window_logit"]
        if background_rows is not None:
            background = self.heads(
                rg["fused"][background_rows], video_mask[background_rows], query_mask[background_rows], select_rows(r2, background_rows)
            )
            out.update(background_cls=background["cls"], background_valid=torch.cat(background["level_masks"], dim=1))
        return out


def select_rows(r2: dict, rows: torch.Tensor | slice) -> dict:
    """The R² outputs the heads read (``query``, per-layer ``cls`` and ``queries``) for some (query, window) pairs."""
    return {"query": r2["query"][rows], "cls": [c[rows] for c in r2["cls"]], "queries": [q[rows] for q in r2["queries"]]}
