"""Stage 1 of library search: a dual encoder on the frozen CLIP states (``vtg index`` / ``vtg search``).

Query-independent on the video side, so every window of a library can be embedded once and indexed:
- window: the CLS state of the last tapped vision layer of each frame -> mapper -> max over the window's valid
  frames (a window "holds" an event if some frame shows it; on synthetic data max pooling retrieved 2x better than
  mean or attention pooling) -> Linear -> L2 norm; with ``motion`` (``model.retrieval_motion``, not in any paper) a
  temporal convolution over the window's mapped frames (kernel 3, zero-initialised) is added before the max, so a
  frame also says how it differs from its neighbours; with ``layout`` G (``model.retrieval_layout``, not in any paper)
  each frame's patch tokens, pooled to a G x G grid (``PatchLayout``, zero-initialised), are added to its mapped CLS
  state, so where the shape is in the frame (and so how it moves) reaches the window embedding;
- query: the last tapped text layer's state at the last valid token (CLIP's EOT) -> mapper -> L2 norm.
Their inner product is a cosine in [-1, 1]. The inputs are frozen states, so training this head (InfoNCE,
``losses.library_loss``) sends no gradient into the grounding model.

Shapes: B windows or queries, T frames, K tapped layers, P tokens per frame (CLS first), L query tokens,
E = ``ModelConfig.retrieval_dims``. The window side reads the last tapped layer's ``tokens_read`` (..., T, P, Dv).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import PatchLayout, mapper, masked_max


class RetrievalHead(nn.Module):
    """Window and query embeddings (B, E), unit length, for inner-product search."""

    def __init__(self, vision_width: int, text_width: int, dims: int, dropout: float, motion: bool = False, layout: int = 0):
        super().__init__()
        self.frame_map = mapper(vision_width, dims, dropout)
        self.window_out = nn.Linear(dims, dims)
        self.query_map = mapper(text_width, dims, dropout)
        # Each option's random draws are put back: a seed gives every other weight as without it.
        with torch.random.fork_rng(devices=[]):
            self.motion = nn.Conv1d(dims, dims, kernel_size=3, padding=1) if motion else None
        if self.motion is not None:
            nn.init.zeros_(self.motion.weight)
            nn.init.zeros_(self.motion.bias)
        with torch.random.fork_rng(devices=[]):
            self.layout = PatchLayout(vision_width, dims, layout) if layout else None

    @property
    def reads_patches(self) -> bool:
        """Whether the window side reads each frame's patch tokens (``layout``), not only its CLS state."""
        return self.layout is not None

    @property
    def tokens_read(self) -> slice:
        """The last-layer tokens of a frame the window side reads: all of them with ``layout``, else the CLS state."""
        return slice(None) if self.reads_patches else slice(0, 1)

    def map_frames(self, states: torch.Tensor) -> torch.Tensor:
        """states (..., T, P, Dv), any float dtype: each frame's last-layer tokens, CLS first (P = 1, the CLS state
        alone, unless ``layout``) -> (..., T, E)."""
        frames = self.frame_map(states[..., 0, :].float())
        return frames if self.layout is None else frames + self.layout(states.float())

    def embed_windows(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """states (B, T, P, Dv): each frame's last-layer tokens (``video[:, :, -1, head.tokens_read]``), mask (B, T) valid frames -> (B, E)."""
        return self.pool_windows(self.map_frames(states), mask)

    def pool_windows(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """frames (B, T, E) mapped frames, mask (B, T) valid ones -> (B, E) unit window embeddings."""
        if self.motion is not None:
            frames = frames * mask[..., None]
            frames = frames + self.motion(frames.transpose(1, 2)).transpose(1, 2)
        return F.normalize(self.window_out(masked_max(frames, mask[..., None], dim=1)), dim=-1)

    def embed_grid(self, states: torch.Tensor, starts: list[int], window: int) -> torch.Tensor:
        """One video's windows: states (T, P, Dv) every frame's last-layer tokens, ``starts`` first frames of windows of
        ``window`` frames (cut at T) -> (W, E). Each frame is mapped once; the same numbers as ``embed_windows``."""
        frames = self.map_frames(states)  # (T, E)
        if self.motion is None:  # the max alone: no (W, window, E) copy
            return F.normalize(self.window_out(torch.stack([frames[s : s + window].amax(0) for s in starts])), dim=-1)
        cut = [frames[s : s + window] for s in starts]
        stacked = torch.nn.utils.rnn.pad_sequence(cut, batch_first=True)  # (W, window, E), zeros after a cut window's end
        mask = (
            torch.arange(stacked.size(1), device=frames.device)[None] < torch.tensor([len(c) for c in cut], device=frames.device)[:, None]
        )
        return self.pool_windows(stacked, mask)

    def embed_queries(self, query: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
        """query (B, L, K, Dt) text states, query_mask (B, L) valid tokens (SOT ... EOT) -> (B, E)."""
        rows = torch.arange(len(query), device=query.device)
        eot = query[rows, query_mask.sum(1) - 1, -1]  # (B, Dt)
        return F.normalize(self.query_map(eot), dim=-1)
