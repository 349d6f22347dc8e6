"""Load official R2-Tuning weights (yeliudev/R2-Tuning ``.pth``) into ``R2Grounder``.

The official checkpoint is ``{'state_dict': ..., 'meta': ...}`` with 83
entries and no CLIP weights. Names are mapped one by one (``official_to_ours``);
an unknown or missing name is an error, never silently skipped, except our
library search head (``retrieval.``), which the official model does not have:
it keeps its initialisation until trained (``loss.library``).
"""

from __future__ import annotations

import re

import torch

from .grounding import ModelConfig, R2Grounder

# (official pattern, our replacement); the first match wins.
_RENAMES = [
    (r"^adapter\.tem\.(cross|self)_att\.m\.", r"r2.temporal.\1_attn.out."),
    (r"^adapter\.tem\.(cross|self)_att\.([qkv])\.", r"r2.temporal.\1_attn.\2."),
    (r"^adapter\.tem\.cross_att_norm\.", "r2.temporal.cross_norm."),
    (r"^adapter\.tem\.self_att_norm\.", "r2.temporal.self_norm."),
    (r"^adapter\.tem\.ffn_norm\.", "r2.temporal.ffn_norm."),
    (r"^adapter\.tem\.ffn\.mapping\.([02])\.", r"r2.temporal.ffn.\1."),
    (r"^adapter\.(video_map|query_map)\.([0246])\.", r"r2.\1.\2."),
    (r"^adapter\.(v_map|q_map)\.", r"r2.\1."),
    (r"^adapter\.(gate|scale)$", r"r2.\1"),
    (r"^pooling\.att\.weight$", "query_pool.score.weight"),
    (r"^class_head\.module\.1\.", "cls_head.hidden."),
    (r"^class_head\.module\.3\.", "cls_head.out."),
    (r"^coord_head\.module\.1\.", "reg_head.hidden."),
    (r"^coord_head\.module\.3\.", "reg_head.out."),
    (r"^coef$", "reg_scale"),
]
_PYRAMID = re.compile(r"^pyramid\.blocks\.(\d+)\.(\d+)\.(weight|bias)$")
_CONSTANT_BUFFERS = {"loss._loss_sal.scale"}  # log(1/0.07), a fixed temperature we hold as a constant


def official_to_ours(name: str) -> str | None:
    """Our parameter name for an official one; None for constant buffers we do not keep."""
    if name in _CONSTANT_BUFFERS:
        return None
    match = _PYRAMID.match(name)
    if match:  # each downsampling unit is [Permute, Conv1d, Permute, LayerNorm, ReLU]
        level, index, kind = int(match[1]), int(match[2]), match[3]
        unit, position = divmod(index, 5)
        part = {1: "conv", 3: "norm"}.get(position)
        if part is None:
            raise KeyError(f"unexpected pyramid parameter {name}")
        return f"pyramid.levels.{level}.{unit}.{part}.{kind}"
    for pattern, replacement in _RENAMES:
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name)
    raise KeyError(f"unknown parameter {name!r} in the official checkpoint")


def config_from_official(state_dict: dict[str, torch.Tensor]) -> ModelConfig:
    """Widths and K read off the tensors; the rest are the paper's defaults."""
    levels = {int(m[1]) for m in map(_PYRAMID.match, state_dict) if m}
    return ModelConfig(
        vision_width=state_dict["adapter.video_map.0.weight"].numel() - 2,
        text_width=state_dict["adapter.query_map.0.weight"].numel(),
        dims=state_dict["adapter.v_map.weight"].shape[0],
        layers=state_dict["adapter.scale"].numel(),
        strides=tuple(2**i for i in range(max(levels, default=0) + 1)),
    )


def load_official_r2(path: str) -> R2Grounder:
    """Build an ``R2Grounder`` from an official checkpoint file (tensors only, no pickle objects)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    official = checkpoint.get("state_dict", checkpoint)
    model = R2Grounder(config_from_official(official))
    ours = {}
    for name, tensor in official.items():
        target = official_to_ours(name)
        if target is not None:
            ours[target] = tensor
    missing, unexpected = model.load_state_dict(ours, strict=False)
    missing = [name for name in missing if not name.startswith("retrieval.")]
    if missing or unexpected:
        raise KeyError(f"{path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model
