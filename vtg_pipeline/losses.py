"""Point targets and the R²-Tuning losses (REFERENCE.md, "Targets and losses").

Units: points and windows in frames (seconds x fps); distances in strides.
Shapes: B batch, N anchor points, T frames, K layers, C channels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from .models.detr import generalized_iou, hungarian_match, span_to_window, window_to_span


@dataclass
class LossConfig:
    cls: float = 1.0
    reg: float = 0.2
    saliency: float = 0.1  # 0.01 Charades-STA, 0.05 TACoS
    video_cal: float = 0.1
    layer_cal: float = 0.1
    sample_radius: float = 1.5  # centre sampling, in strides
    temperature: float = 0.07
    # RGNet (model.name=rgnet): inter-window contrastive, intra-window attention hinge, gate supervision
    retrieval: float = 1.0  # MAD: 10
    window_temperature: float = 0.07  # of the inter-window InfoNCE over the retrieval token's logits (the paper's 0.07)
    negative_query_window: bool = False  # the positive window under the BM-DETR negative query (another query of the
    # video, model.background_matching) joins that InfoNCE as one more negative: the token must read the query, not the window
    intra: float = 1.0
    intra_margin: float = 0.2
    gate: float = 0.5  # BCE of the sparsifier's logits against in-moment frames: keeps the gate from collapsing
    gate_keep: float = 0.0  # a kept-fraction prior: the gate's target outside moments (0: drop them, the paper's labels)
    background_windows: float = 0.0  # focal loss of the heads' anchor scores against 0 in the negative windows, so that
    # a window's best moment score is evidence for it (decode.window_evidence); 0: heads on positive windows only (paper)
    clip_aware: float = 0.0  # FlashVTG clip-aware score loss (theirs: 4 beside focal 5; the ablation configs keep that ratio: 0.8)
    saliency_hinge: float = 0.0  # FlashVTG's saliency hinge (one salient vs one other clip, margin 0.2)
    saliency_rank: float = 0.0  # FlashVTG's rank-contrastive saliency loss
    # BM-DETR (model.background_matching): frame margin (hinge, margin 0.2), frame probability, semantic alignment
    frame_margin: float = 0.0
    frame_prob: float = 0.0
    semantic: float = 0.0
    frame_margin_delta: float = 0.2
    # Anchor decoder (model.head=decoder): Hungarian-matched L1 / gIoU / 2-way CE, on every decoder layer
    span_l1: float = 10.0
    span_giou: float = 1.0
    span_cls: float = 4.0
    background_weight: float = 0.1
    # Stage 1 of library search (models/retrieval.py): InfoNCE of queries and their windows across the batch
    library: float = 1.0
    library_temperature: float = 0.05
    library_own_negatives: bool = False  # window items: each query's negative windows are also its stage-1 negatives

    def to_dict(self) -> dict:
        return asdict(self)


def point_targets(points: torch.Tensor, windows: torch.Tensor, sample_radius: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Classification and regression targets of one video.

    points (N, 4) [t, range_low, range_high, stride]; windows (G, 2) [start, end] in frames.
    A point is positive for a window when t lies in [max(a, c - r s), min(b, c + r s)]
    (c the centre, r the sample radius) and max(t - a, b - t) is inside the level's
    range (inclusive). Among several windows the shortest wins.
    Returns cls (N,) in {0, 1} and reg (N, 2) = (t - a, b - t) / stride of the chosen window.
    """
    t, low, high, stride = points[:, :1], points[:, 1:2], points[:, 2:3], points[:, 3:4]
    start, end = windows[None, :, 0], windows[None, :, 1]
    to_start, to_end = t - start, end - t  # (N, G)
    centre = (start + end) / 2
    inside_centre = (t >= torch.maximum(centre - stride * sample_radius, start)) & (
        t <= torch.minimum(centre + stride * sample_radius, end)
    )
    farthest = torch.maximum(to_start, to_end)
    in_range = (farthest >= low) & (farthest <= high)
    lengths = (end - start).expand_as(to_start).masked_fill(~(inside_centre & in_range), float("inf"))
    shortest, chosen = lengths.min(dim=1)
    rows = torch.arange(len(points), device=points.device)
    reg = torch.stack((to_start[rows, chosen], to_end[rows, chosen]), dim=-1) / stride
    return torch.isfinite(shortest).to(points.dtype), reg


def frame_windows(windows: torch.Tensor, fps: float, num_frames: float) -> torch.Tensor:
    """Windows (G, 2) in seconds -> frames (G, 2), as the official R2-Tuning targets.

    First clamped to [0, num_frames]; then a window shorter than one frame is
    widened to one frame around its centre, the centre moved into
    [0.5, num_frames - 0.5] so the frame stays inside the video (num_frames >= 1:
    a video shorter than one period still has its first frame).
    """
    frames = (windows * fps).clamp(0, num_frames)
    centre = frames.mean(1, keepdim=True).clamp(0.5, num_frames - 0.5)
    widened = torch.cat((centre - 0.5, centre + 0.5), dim=1)
    return torch.where(frames[:, 1:] - frames[:, :1] < 1, widened, frames)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Sigmoid focal loss (gamma 2, no alpha) summed over valid points / number of valid points."""
    loss = sigmoid_focal_loss(logits, targets, alpha=-1, gamma=2.0, reduction="none")
    return (loss * valid).sum() / valid.sum().clamp(min=1)


def regression_loss(reg: torch.Tensor, targets: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """L1 on positive points, divided by 2 x #positives. reg, targets (B, N, 2); positive (B, N)."""
    weight = positive[..., None].expand_as(reg)
    return (F.l1_loss(reg, targets, reduction="none") * weight).sum() / weight.sum().clamp(min=1)


def sampled_nce_loss(
    frames: torch.Tensor,
    query: torch.Tensor,
    frame_mask: torch.Tensor,
    saliency: torch.Tensor,
    positive: torch.Tensor,
    temperature: float = 0.07,
) -> torch.Tensor:
    """SampledNCE on cosine(frame, query) / temperature.

    frames (B, T, C), query (B, C), frame_mask (B, T), saliency (B, T) targets, positive (B,) one
    frame per sample with saliency > 0. Candidates are valid frames no more salient than the
    positive. 'row': -log softmax over frames at the positive; 'col': the same across the batch
    at each sample's positive frame. Returns row + col, each averaged over the batch.
    """
    rows = torch.arange(len(frames), device=frames.device)
    candidates = (saliency <= saliency[rows, positive][:, None]) & frame_mask
    logits = F.cosine_similarity(frames, query[:, None], dim=-1) / temperature
    logits = logits.masked_fill(~candidates, float("-inf"))
    row = -F.log_softmax(logits, dim=1)[rows, positive].mean()
    col = -F.log_softmax(logits, dim=0)[rows, positive].mean()  # softmax across samples at frame positive[b]
    return row + col


def info_nce_loss(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Symmetric InfoNCE between L2-normalised a and b (..., M, C): item i of a matches item i of b."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(-1, -2) / temperature
    target = torch.arange(a.size(-2), device=a.device).expand(logits.shape[:-1])
    return (
        F.cross_entropy(logits.flatten(0, -2), target.flatten())
        + F.cross_entropy(logits.transpose(-1, -2).flatten(0, -2), target.flatten())
    ) / 2


def pyramid_losses(out: dict, windows: list[torch.Tensor], cfg: LossConfig) -> dict[str, torch.Tensor]:
    """Focal loss over the valid anchor points and L1 on the positive ones; windows per sample (G, 2) in frames."""
    targets = [point_targets(out["points"], w, cfg.sample_radius) for w in windows]
    cls_target = torch.stack([c for c, _ in targets])
    reg_target = torch.stack([r for _, r in targets])
    valid = torch.cat(out["level_masks"], dim=1).float()
    return {
        "cls": cfg.cls * focal_loss(out["cls"], cls_target, valid),
        "reg": cfg.reg * regression_loss(out["reg"], reg_target, cls_target * valid),
    }


def decoder_losses(out: dict, windows: list[torch.Tensor], cfg: LossConfig) -> dict[str, torch.Tensor]:
    """DETR set losses summed over decoder layers (the last and the auxiliary ones).

    Per layer and sample the Q predicted spans are matched one-to-one to the ground-truth
    spans (``hungarian_match``); matched pairs get L1 and 1 - gIoU on (centre, width) in units
    of the video's length, every query a 2-way cross-entropy (foreground if matched,
    background otherwise, background weighted ``cfg.background_weight``). Windows (G, 2) in frames.
    """
    spans, logits, lengths = out["spans"], out["span_logits"], out["lengths"].float()
    targets = [window_to_span(w / n) for w, n in zip(windows, lengths)]
    class_weight = torch.tensor([1.0, cfg.background_weight], device=logits.device)
    total_gt = max(1, sum(len(t) for t in targets))
    l1 = giou = cls = logits.sum() * 0.0
    for layer_spans, layer_logits in zip(spans, logits):
        labels = torch.ones(layer_logits.shape[:2], dtype=torch.long, device=logits.device)  # 1 = background
        for b, target in enumerate(targets):
            pred, gt = hungarian_match(layer_spans[b], layer_logits[b], target, cfg.span_l1, cfg.span_giou, cfg.span_cls)
            pred, gt = pred.to(logits.device), gt.to(logits.device)
            labels[b, pred] = 0
            l1 = l1 + F.l1_loss(layer_spans[b, pred], target[gt], reduction="sum")
            giou = giou + (1 - generalized_iou(span_to_window(layer_spans[b, pred]), span_to_window(target[gt])).diagonal()).sum()
        cls = cls + F.cross_entropy(layer_logits.flatten(0, 1), labels.flatten(), weight=class_weight)
    return {"span_l1": cfg.span_l1 * l1 / total_gt, "span_giou": cfg.span_giou * giou / total_gt, "span_cls": cfg.span_cls * cls}


def clip_aware_score_loss(
    stride1_logits: torch.Tensor, saliency: torch.Tensor, frame_mask: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """FlashVTG's clip-aware score loss: MSE between the min-max-normalised stride-1 confidences
    and the min-max-normalised saliency labels, per sample over its valid clips, averaged over samples.

    stride1_logits, saliency (B, T); frame_mask (B, T) bool.
    """

    def normalise(x: torch.Tensor) -> torch.Tensor:
        low = x.masked_fill(~frame_mask, float("inf")).amin(1, keepdim=True)
        high = x.masked_fill(~frame_mask, float("-inf")).amax(1, keepdim=True)
        return (x - low) / (high - low + eps)

    error = (normalise(stride1_logits) - normalise(saliency)).pow(2) * frame_mask
    return (error.sum(1) / frame_mask.sum(1).clamp(min=1)).mean()


def rank_contrastive_loss(
    scores: torch.Tensor, saliency: torch.Tensor, frame_mask: torch.Tensor, temperature: float = 0.07, max_levels: int = 12
) -> torch.Tensor:
    """Rank-contrastive saliency loss: for each saliency level r of the batch, clips with label >= r
    should outrank all others: mean over them of -log softmax(scores / temperature) over the
    valid clips, averaged over the samples that have such clips and over the levels.

    scores, saliency (B, T); frame_mask (B, T) bool.
    """
    levels = torch.unique(saliency[(saliency > 0) & frame_mask])[:max_levels]
    log_prob = (scores / temperature).masked_fill(~frame_mask, float("-inf")).log_softmax(1).masked_fill(~frame_mask, 0.0)
    terms = []
    for level in levels:
        positive = (saliency >= level) & frame_mask
        has = positive.any(1)
        per_sample = -(log_prob * positive).sum(1) / positive.sum(1).clamp(min=1)
        terms.append(per_sample[has].mean())
    return torch.stack(terms).mean() if terms else scores.sum() * 0.0


def grounding_losses(
    out: dict,
    windows: list[torch.Tensor],
    fps: torch.Tensor,
    saliency: torch.Tensor,
    frame_mask: torch.Tensor,
    positive: torch.Tensor,
    cfg: LossConfig,
) -> dict[str, torch.Tensor]:
    """Every weighted loss term of a batch, by name (sum them for the total).

    out: the model's outputs; windows: per sample (G, 2) seconds; fps (B,); saliency (B, T)
    targets; frame_mask (B, T); positive (B,) a positive frame per sample.
    """
    lengths = frame_mask.sum(1).float()
    frame_targets = [frame_windows(w, float(f), float(n)) for w, f, n in zip(windows, fps, lengths)]
    terms = decoder_losses(out, frame_targets, cfg) if "spans" in out else pyramid_losses(out, frame_targets, cfg)
    if cfg.saliency_hinge:
        terms["saliency_hinge"] = cfg.saliency_hinge * intra_window_loss(out["saliency"], saliency > 0, frame_mask, 0.2)
    if cfg.saliency_rank:
        terms["saliency_rank"] = cfg.saliency_rank * rank_contrastive_loss(out["saliency"], saliency, frame_mask, cfg.temperature)
    if cfg.clip_aware:
        if "cls" not in out:
            raise ValueError("loss.clip_aware needs the pyramid head's stride-1 scores (model.head=pyramid)")
        t = frame_mask.size(1)  # the stride-1 level: the first T points
        if out["level_lengths"][0] != t:
            raise ValueError("loss.clip_aware needs a stride-1 pyramid level first (model.strides)")
        terms["clip_aware"] = cfg.clip_aware * clip_aware_score_loss(out["cls"][:, :t], saliency, frame_mask)
    rows = torch.arange(len(positive), device=positive.device)
    cls_at_positive = torch.stack([c[rows, positive] for c in out["cls_tokens"]])  # (K, B, C)
    queries = torch.stack(out["queries"])  # (K, B, C)
    return {
        **terms,
        "saliency": cfg.saliency * sampled_nce_loss(out["frames"], out["query"], frame_mask, saliency, positive, cfg.temperature),
        "video_cal": cfg.video_cal * info_nce_loss(cls_at_positive, queries, cfg.temperature),
        "layer_cal": cfg.layer_cal * info_nce_loss(cls_at_positive.transpose(0, 1), queries.transpose(0, 1), cfg.temperature),
    }


def window_retrieval_loss(window_logits: torch.Tensor, window_mask: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """InfoNCE of each query over its windows: logits (B, W) with the positive window first; window_mask (B, W)."""
    logits = (window_logits / temperature).masked_fill(~window_mask, float("-inf"))
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


def intra_window_loss(scores: torch.Tensor, in_moment: torch.Tensor, frame_mask: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """Hinge max(0, margin - S_in + S_out) on one random in-moment and one random out-of-moment frame per window.

    scores (B, T) token-frame attention scores, in_moment / frame_mask (B, T) bool. Windows
    without frames of both kinds are left out; 0 if none is left.
    """
    inside, outside = in_moment & frame_mask, ~in_moment & frame_mask
    usable = inside.any(1) & outside.any(1)
    if not usable.any():
        return scores.sum() * 0.0
    rows = torch.nonzero(usable)[:, 0]
    pick_in = torch.multinomial(inside[rows].float(), 1)[:, 0]
    pick_out = torch.multinomial(outside[rows].float(), 1)[:, 0]
    return F.relu(margin - scores[rows, pick_in] + scores[rows, pick_out]).mean()


def gate_loss(gate_logits: torch.Tensor, in_moment: torch.Tensor, frame_mask: torch.Tensor, keep: float = 0.0) -> torch.Tensor:
    """Binary cross-entropy of the sparsifier's logits (B, T) against in-moment frames (target 1) and the others (target
    ``keep``: the fraction of them the gate keeps in expectation), over valid frames."""
    targets = in_moment.to(gate_logits.dtype).clamp(min=keep)
    loss = F.binary_cross_entropy_with_logits(gate_logits, targets, reduction="none")
    return (loss * frame_mask).sum() / frame_mask.sum().clamp(min=1)


def window_losses(
    out: dict, window_mask: torch.Tensor, in_moment: torch.Tensor, frame_mask: torch.Tensor, cfg: LossConfig
) -> dict[str, torch.Tensor]:
    """RGNet's terms for B queries x W windows (positive first), flattened to B * W rows in ``out``.

    window_mask (B, W); in_moment, frame_mask (B * W, T). The intra-window hinge uses the
    positive windows; the gate loss every real window. With ``cfg.negative_query_window`` the negative query's logit
    on each positive window (``negative_window_logit``, (B,)) is one more negative of the retrieval InfoNCE.
    """
    b, w = window_mask.shape
    real = window_mask.flatten()
    positive = torch.arange(b, device=real.device) * w
    logits = out["window_logit"].view(b, w)
    if cfg.negative_query_window and "negative_window_logit" in out:
        logits = torch.cat((logits, out["negative_window_logit"][:, None]), dim=1)
        window_mask = torch.cat((window_mask, torch.ones_like(window_mask[:, :1])), dim=1)
    terms = {
        "retrieval": cfg.retrieval * window_retrieval_loss(logits, window_mask, cfg.window_temperature),
        "intra": cfg.intra * intra_window_loss(out["attention"][positive], in_moment[positive], frame_mask[positive], cfg.intra_margin),
        "gate": cfg.gate * gate_loss(out["gate_logits"][real], in_moment[real], frame_mask[real], cfg.gate_keep),
    }
    if "background_cls" in out:  # the heads on the negative windows (``background_rows``): every anchor is background
        cls = out["background_cls"]
        terms["background_windows"] = cfg.background_windows * focal_loss(cls, torch.zeros_like(cls), out["background_valid"].float())
    return terms


def frame_probability_loss(prob: torch.Tensor, in_moment: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """1 - mean p over in-moment frames + mean p over the other valid frames, per sample, averaged.

    prob (B, T) in [0, 1]; in_moment, frame_mask (B, T) bool. Samples without frames of both kinds
    count only the side they have.
    """
    inside, outside = (in_moment & frame_mask).float(), (~in_moment & frame_mask).float()
    mean_in = (prob * inside).sum(1) / inside.sum(1).clamp(min=1)
    mean_out = (prob * outside).sum(1) / outside.sum(1).clamp(min=1)  # 0 without background frames
    foreground_term = torch.where(inside.sum(1) > 0, 1 - mean_in, torch.zeros_like(mean_in))
    return (foreground_term + mean_out).mean()


def semantic_alignment_loss(video: torch.Tensor, query: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """InfoNCE over the batch of cosine(video_i, query_j) / temperature, video i matching query i. video, query (B, C)."""
    logits = F.normalize(video, dim=-1) @ F.normalize(query, dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(video), device=video.device))


def background_losses(out: dict, in_moment: torch.Tensor, frame_mask: torch.Tensor, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """BM-DETR's terms: frame margin hinge (one in-moment vs one background frame), frame probability, semantic alignment."""
    return {
        "frame_margin": cfg.frame_margin * intra_window_loss(out["frame_score"], in_moment, frame_mask, cfg.frame_margin_delta),
        "frame_prob": cfg.frame_prob * frame_probability_loss(out["frame_prob"], in_moment, frame_mask),
        "semantic": cfg.semantic * semantic_alignment_loss(out["video_embedding"], out["query"], cfg.temperature),
    }


def moment_window(
    states: torch.Tensor, frame_mask: torch.Tensor, windows: list[torch.Tensor], fps: float, window: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each sample's library-search window: ``window`` frames centred on its first moment, kept inside its video.

    states (B, T, ...) per-frame states, frame_mask (B, T), windows per sample (G, 2) seconds. Returns the window's
    states (B, w, ...) and mask (B, w), w = min(window, T) (a shorter video: all of it), and its first frame (B,).
    """
    window = min(window, states.size(1))
    centre = torch.stack([w[0].mean() for w in windows]).to(states.device) * fps
    last = (frame_mask.sum(1) - window).clamp(min=0)
    starts = torch.minimum((centre - window / 2).round().long().clamp(min=0), last)
    frames = starts[:, None] + torch.arange(window, device=states.device)  # (B, w)
    rows = torch.arange(len(states), device=states.device)[:, None]
    return states[rows, frames], frame_mask.gather(1, frames), starts


def library_loss(
    window: torch.Tensor,
    query: torch.Tensor,
    vids: list[str],
    queries: list[str],
    starts: torch.Tensor,
    lengths: torch.Tensor,
    temperature: float = 0.05,
    own_negatives: torch.Tensor | None = None,
    own_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE of unit query and window embeddings (B, E), query i matching window i, the other windows of
    the batch its negatives. A pair that may be a true match is left out: the same query text, or windows of the same
    video that overlap. starts, lengths (B,): each window's first frame and length (frames). ``own_negatives``
    (B, N, E) with ``own_mask`` (B, N): more negatives of each query alone (windows of its video that hold none of
    its moments), in the query-to-window term."""
    ends = starts + lengths
    same_video = torch.tensor([[a == b for b in vids] for a in vids], device=window.device)
    same_text = torch.tensor([[a == b for b in queries] for a in queries], device=window.device)
    overlap = (starts[:, None] < ends[None]) & (starts[None] < ends[:, None])
    ignored = (same_text | same_video & overlap) & ~torch.eye(len(vids), dtype=torch.bool, device=window.device)
    logits = (query @ window.T / temperature).masked_fill(ignored, float("-inf"))
    target = torch.arange(len(vids), device=window.device)
    rows = logits
    if own_negatives is not None:
        own = (torch.einsum("be,bne->bn", query, own_negatives) / temperature).masked_fill(~own_mask, float("-inf"))
        rows = torch.cat((logits, own), dim=1)
    return (F.cross_entropy(rows, target) + F.cross_entropy(logits.T, target)) / 2
