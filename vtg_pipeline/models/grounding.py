"""The grounding model: R² block -> temporal pyramid -> shared heads, plus saliency.

``ModelConfig`` holds every hyper-parameter (defaults are the paper's);
``create_model(cfg)`` is the one factory, dispatching on ``cfg.name`` through
the ``MODELS`` registry of model classes. A class says what training must give it
(``retrieves_windows``, ``window_arguments``); the loss terms it adds follow from
the outputs it returns (see ``training.batch_losses``).

Shapes: B batch, T frames, K tapped layers, P tokens per frame, L query tokens,
N anchor points over all pyramid levels. Units: frames unless stated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from .detr import AnchorDecoder
from .heads import AttentionPooling, ConvHead, FrameQueryMatcher, ScoreRefinement, TemporalPyramid, pyramid_points
from .layers import sine_positions
from .r2_block import R2Block
from .retrieval import RetrievalHead


@dataclass
class ModelConfig:
    name: str = "r2"
    vision_width: int = 768
    text_width: int = 512
    layers: int = 4  # K tapped CLIP layers used, the last ones
    dims: int = 256
    strides: tuple[int, ...] = (1, 2, 4, 8)
    dropout: float = 0.5
    heads: int = 8
    ffn_ratio: int = 4
    droppath: float = 0.1
    spatial_pooling: bool = True  # False: the CLS token only (ablation)
    max_moments: int = 50
    fusion: str = "standard"  # R² text cross-attention: standard | dummy (FlashVTG adaptive cross-attention)
    dummies: int = 40  # dummy tokens of the adaptive cross-attention (FlashVTG: 40 QVHighlights/Charades, 35 TACoS)
    background_matching: bool = False  # BM-DETR probabilistic frame-query matcher re-weighting the frames before the heads
    score_refinement: bool = False  # FlashVTG adaptive score refinement replaces the cls head's confidences (pyramid head)
    refinement_kernel: int = 5
    head: str = "pyramid"  # pyramid: R² stride pyramid + conv heads | decoder: anchor-query (DAB-DETR style) decoder
    decoder_layers: int = 6
    decoder_queries: int = 5
    decoder_ffn_dims: int = 1024
    # RGNet encoder (name: rgnet): retrieval token, sparsifier, retrieval attention
    rg_cross_layers: int = 2
    rg_self_layers: int = 2
    rg_ffn_dims: int = 2048
    rg_dropout: float = 0.1
    sparsifier: bool = True  # False: every frame is kept (ablation)
    gumbel_temperature: float = 0.3
    retrieval_dims: int = 256  # stage-1 library search embedding (models/retrieval.py), in every model
    retrieval_motion: bool = False  # not in any paper: a temporal convolution in the stage-1 window embedding
    retrieval_layout: int = 0  # not in any paper: G > 0 adds each frame's patch layout (G x G cells) to the stage-1 window embedding

    def to_dict(self) -> dict:
        return asdict(self)


MODELS: dict[str, type[nn.Module]] = {}


def register_model(name: str):
    """Class decorator: ``create_model`` builds ``cls(cfg)`` for ``cfg.name == name``."""

    def decorator(cls):
        MODELS[name] = cls
        return cls

    return decorator


def model_class(name: str) -> type[nn.Module]:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {sorted(MODELS)}")
    return MODELS[name]


def create_model(cfg: ModelConfig) -> nn.Module:
    return model_class(cfg.name)(cfg)


@register_model("r2")
class R2Grounder(nn.Module):
    """R²-Tuning: frame features from the R² block, pyramid heads (or the anchor decoder) for moments, cosine saliency;
    plus ``retrieval``, the stage-1 library search head (``RetrievalHead``, trained by its own loss, not in ``forward``)."""

    # Whether the model scores (query, window) pairs itself: training then gives it negative windows,
    # and a video is grounded window by window (``data.sampling=auto``).
    retrieves_windows: ClassVar[bool] = False

    @staticmethod
    def window_arguments(positive_rows: torch.Tensor, background_rows: torch.Tensor | None) -> dict:
        """Keyword arguments of ``forward`` for a batch of (query, window) pairs: rows (R,) of the positive
        windows and (R',) of negative windows to train the heads on (None: none). R² runs its heads on every pair."""
        return {}

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.fusion not in ("standard", "dummy"):
            raise ValueError(f"model.fusion must be standard or dummy, got {cfg.fusion!r}")
        if cfg.retrieval_layout and not cfg.spatial_pooling:
            raise ValueError("model.retrieval_layout reads the patch tokens: it needs model.spatial_pooling=true")
        self.r2 = R2Block(
            cfg.vision_width,
            cfg.text_width,
            cfg.dims,
            cfg.layers,
            cfg.dropout,
            cfg.heads,
            cfg.ffn_ratio,
            cfg.droppath,
            cfg.dummies if cfg.fusion == "dummy" else 0,
        )
        if cfg.head not in ("pyramid", "decoder"):
            raise ValueError(f"model.head must be pyramid or decoder, got {cfg.head!r}")
        if cfg.score_refinement and cfg.head != "pyramid":
            raise ValueError("model.score_refinement refines the pyramid heads' scores: it needs model.head=pyramid")
        if cfg.head == "pyramid":  # built in this order so that a seed gives the same weights as before the decoder existed
            self.pyramid = TemporalPyramid(cfg.dims, cfg.strides)
        self.query_pool = AttentionPooling(cfg.dims)
        if cfg.head == "pyramid":
            if not cfg.score_refinement:
                self.cls_head = ConvHead(cfg.dims, 1)
            self.reg_head = ConvHead(cfg.dims, 2)
            self.reg_scale = nn.Parameter(torch.ones(len(cfg.strides)))
            if cfg.score_refinement:
                self.score_refinement = ScoreRefinement(cfg.dims, cfg.refinement_kernel)
        else:
            self.decoder = AnchorDecoder(cfg.dims, cfg.heads, cfg.decoder_layers, cfg.decoder_queries, cfg.decoder_ffn_dims, cfg.dropout)
        if cfg.background_matching:
            self.frame_matcher = FrameQueryMatcher(cfg.dims)
            self.frame_score = nn.Linear(cfg.dims, 1)  # BM-DETR's frame margin scores
            self.video_pool = AttentionPooling(cfg.dims)  # BM-DETR's semantic alignment
        # Built last: the grounding modules above get the weights a seed gave them before the head existed.
        self.retrieval = RetrievalHead(
            cfg.vision_width, cfg.text_width, cfg.retrieval_dims, cfg.dropout, cfg.retrieval_motion, cfg.retrieval_layout
        )

    def forward(
        self,
        video: torch.Tensor,
        video_mask: torch.Tensor,
        query: torch.Tensor,
        query_mask: torch.Tensor,
        negative_query: torch.Tensor | None = None,
        negative_mask: torch.Tensor | None = None,
        video_index: torch.Tensor | None = None,
    ) -> dict:
        """video (Bv, T, K', P, Dv) with K' >= K (the last K are used), video_mask (B, T) bool,
        query (B, L, K', Dt), query_mask (B, L) bool; ``video_index`` (B,) each query's video row (None: Bv = B,
        or Bv = 1 for one video shared by all queries; see ``QueryVideos``); with ``background_matching``,
        optionally a negative query (B, L', K', Dt) and its mask (training only).

        Returns: ``cls`` (B, N) logits; ``reg`` (B, N, 2) distances to start/end in
        strides; ``points`` (N, 4); ``level_masks`` list of (B, T_s) (any valid frame:
        the loss mask); ``complete_points`` (B, N) points whose frames are all valid
        (the ones inference uses, as a video alone would have); ``frames``
        (B, T, C); ``query`` (B, C) pooled; ``saliency`` (B, T) cosine; ``cls_tokens``
        and ``queries`` per step (last layer first), each (B, T, C) / (B, C). With
        ``background_matching`` also ``frame_prob`` (B, T) p(f|Q+)(1 - p(f|Q-)),
        ``frame_score`` (B, T) and ``video_embedding`` (B, C).
        """
        r2 = self.refine(video, video_mask, query, query_mask, video_index=video_index)
        negative = None
        if self.cfg.background_matching and negative_query is not None:  # the videos mapped once
            negative = self.refine(video, video_mask, negative_query, negative_mask, r2["hidden"], video_index)["frames"]
        return self.heads(r2["frames"], video_mask, query_mask, r2, negative)

    def heads(
        self,
        frames: torch.Tensor,
        video_mask: torch.Tensor,
        query_mask: torch.Tensor,
        r2: dict,
        negative_frames: torch.Tensor | None = None,
    ) -> dict:
        """``predict`` on frames (B, T, C); with ``background_matching`` first re-weighted by the
        frame-query matcher (p+ (1 - p-) with ``negative_frames`` (B, T, C), the negative query's
        frames, in training; p+ alone without), adding ``frame_prob``, ``frame_score`` and ``video_embedding``."""
        if not self.cfg.background_matching:
            return self.predict(frames, video_mask, query_mask, r2)
        matched = self.frame_matcher(frames, video_mask, negative_frames)
        out = self.predict(matched["frames"], video_mask, query_mask, r2)
        return {
            **out,
            "frame_prob": matched["prob"],
            "frame_score": self.frame_score(matched["frames"])[..., 0],
            "video_embedding": self.video_pool(matched["frames"], video_mask),
        }

    def refine(
        self,
        video: torch.Tensor,
        video_mask: torch.Tensor,
        query: torch.Tensor,
        query_mask: torch.Tensor,
        hidden: list[torch.Tensor] | None = None,
        video_index: torch.Tensor | None = None,
    ) -> dict:
        """The R² block's outputs (see ``R2Block.forward``; ``hidden`` from an earlier call on the same videos), ``frames``
        (B, T, C) after the stride-1 ReLU."""
        k = self.cfg.layers
        video, query = video[:, :, -k:], query[:, :, -k:]
        if not self.cfg.spatial_pooling:
            video = video[:, :, :, :1]
        r2 = self.r2(video, video_mask, query, query_mask, hidden, video_index)
        # The official stride-1 level is an in-place ReLU, so every later use sees ReLU(h).
        # Padding is zeroed so that a video in a batch gives what it gives alone.
        return {**r2, "frames": F.relu(r2["frames"]) * video_mask[..., None]}

    def predict(self, frames: torch.Tensor, video_mask: torch.Tensor, query_mask: torch.Tensor, r2: dict) -> dict:
        """Moment heads and saliency on frame features (B, T, C); ``r2`` supplies the mapped query tokens.

        With ``head=decoder`` the moment outputs are ``spans`` (N, B, Q, 2) (centre, width) in
        units of each video's length, ``span_logits`` (N, B, Q, 2) and ``lengths`` (B,) frames,
        instead of the pyramid's ``cls`` / ``reg`` / ``points``.
        """
        pooled = self.query_pool(r2["query"], query_mask)
        common = {
            "frames": frames,
            "query": pooled,
            "saliency": F.cosine_similarity(frames, pooled[:, None], dim=-1),
            "cls_tokens": r2["cls"],
            "queries": [self.query_pool(q, query_mask) for q in r2["queries"]],
        }
        if self.cfg.head == "decoder":
            lengths = video_mask.sum(1)
            decoded = self.decoder(frames, video_mask, sine_positions(lengths, frames.size(1), self.cfg.dims))
            return {"spans": decoded["spans"], "span_logits": decoded["logits"], "lengths": lengths, **common}
        levels, level_masks = self.pyramid(frames, video_mask)
        lengths = video_mask.sum(1)
        complete = [torch.arange(x.size(1), device=x.device)[None] < (lengths // s)[:, None] for x, s in zip(levels, self.cfg.strides)]
        if self.cfg.score_refinement:
            cls = self.score_refinement(levels, complete)
        else:
            cls = torch.cat([self.cls_head(x, m)[..., 0] for x, m in zip(levels, complete)], dim=1)
        reg = torch.cat([self.reg_head(x, m).exp() * self.reg_scale[i] for i, (x, m) in enumerate(zip(levels, complete))], dim=1)
        return {
            "cls": cls,
            "reg": reg,
            "points": pyramid_points([x.size(1) for x in levels], self.cfg.strides, device=cls.device),
            "level_lengths": [x.size(1) for x in levels],
            "level_masks": level_masks,
            "complete_points": torch.cat(complete, dim=1),
            **common,
        }
