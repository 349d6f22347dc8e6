"""The frozen open_clip backbone: per-layer vision and text states.

One factory, ``load_backbone(name, pretrained, layers)``, builds any open_clip
model. ``pretrained`` is an open_clip tag (``openai``), a local checkpoint file,
or ``random:SEED``: a randomly initialised backbone created once from the seed
and saved under the cache directory, so every later step loads identical
weights. ``backbone_sha256`` (a hash of the weights) identifies them.

Taps are the outputs of the last K transformer blocks, before the final
LayerNorm: vision (B, K, 1+P, D) with token 0 = CLS, text (N, L, K, Dt) with a
valid-token mask (N, L).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import open_clip
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from . import MODEL_CONFIGS
from .errors import UserError
from .features import partial_path, save_tensors
from .names import first_line

log = logging.getLogger(__name__)

open_clip.add_model_config(MODEL_CONFIGS)  # `vtg-tiny` and the package's other configs, known to open_clip by name
RANDOM_PREFIX = "random:"
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class BackboneError(UserError):
    """A backbone that cannot be built or loaded; the message is one line."""


def cache_dir() -> Path:
    """Where random-init backbones are kept: ``$VTG_CACHE`` or ``~/.cache/vtg_pipeline``."""
    return Path(os.environ.get("VTG_CACHE", Path.home() / ".cache" / "vtg_pipeline"))


def random_checkpoint(model_name: str, seed: int) -> Path:
    """Create (once) and return a local checkpoint of ``model_name`` with weights drawn from ``seed``."""
    path = cache_dir() / "backbones" / f"{model_name}-random{seed}.safetensors"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = open_clip.create_model(model_name, pretrained=None)
    finally:
        torch.random.set_rng_state(generator_state)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tmp = partial_path(path)
    save_tensors(state, tmp, metadata={"model": model_name, "seed": str(seed)})
    os.replace(tmp, path)
    log.info("created random backbone %s (seed %d) at %s", model_name, seed, path)
    return path


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over every state_dict tensor (name, dtype, shape, bytes) in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class BackboneSpec:
    """What identifies a backbone's features; stored in feature files and checkpoints."""

    backbone: str
    pretrained: str
    backbone_sha256: str
    layers: tuple[int, ...]
    text_layers: tuple[int, ...]
    image_size: int
    vision_width: int
    text_width: int

    def to_dict(self) -> dict:
        return asdict(self)


class Preprocess:
    """open_clip's eval transform, batched in torch on any device.

    ``resize_crop``: uint8 (n, H, W, 3) -> uint8 (n, 3, S, S): bicubic resize of
    the short side to S (antialiased, as PIL) and centre crop, or a squash to
    S x S, as the model's ``preprocess_cfg`` says. ``normalize``: uint8 -> float
    (x / 255 - mean) / std.
    """

    def __init__(self, cfg: dict):
        size = cfg["size"]
        self.size = size if isinstance(size, int) else size[0]
        self.resize_mode = cfg.get("resize_mode", "shortest")
        if self.resize_mode not in ("shortest", "squash"):
            raise BackboneError(f"resize_mode {self.resize_mode!r} is not supported")
        self.interpolation = InterpolationMode(cfg.get("interpolation", "bicubic"))
        self.mean = tuple(cfg["mean"])
        self.std = tuple(cfg["std"])

    def resize_crop(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2)
        if self.resize_mode == "squash":
            return TF.resize(x, [self.size, self.size], self.interpolation, antialias=True).contiguous()
        x = TF.resize(x, self.size, self.interpolation, antialias=True)
        return TF.center_crop(x, [self.size, self.size]).contiguous()

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        return TF.normalize(frames.float() / 255.0, self.mean, self.std)


class FrozenBackbone:
    """A frozen open_clip model that returns per-layer states (no grad, eval, inference mode)."""

    def __init__(self, model: open_clip.CLIP, spec: BackboneSpec, device: torch.device, precision: str = "fp32"):
        self.model = model.to(device).eval().requires_grad_(False)
        self.spec = spec
        self.device = device
        self.precision = precision
        self.preprocess = Preprocess(model.visual.preprocess_cfg)
        self.tokenizer = open_clip.get_tokenizer(spec.backbone)

    def row_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of one frame's row in a feature file: ``vision`` (K, 1+P, D) states, ``frames`` (3, S, S) pixels."""
        size = self.spec.image_size
        tokens = (size // self.model.visual.patch_size[0]) ** 2 + 1
        return {"vision": (len(self.spec.layers), tokens, self.spec.vision_width), "frames": (3, size, size)}

    def _autocast(self):
        dtype = PRECISIONS[self.precision]
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32)

    @torch.inference_mode()
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S) resized frames -> vision states (B, K, 1+P, D) float32."""
        pixels = self.preprocess.normalize(frames.to(self.device, non_blocking=True))
        with self._autocast():
            out = self.model.forward_intermediates(
                image=pixels,
                image_indices=list(self.spec.layers),
                image_output_fmt="NLC",
                image_output_extra_tokens=True,
                intermediates_only=True,
            )
        taps = [torch.cat([cls, patches], dim=1) for cls, patches in zip(out["image_intermediates_prefix"], out["image_intermediates"])]
        return torch.stack(taps, dim=1).float()

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids (N, context_length); 0 is padding."""
        return self.tokenizer(texts)

    def truncates(self, query: str) -> bool:
        """Whether ``query`` has more tokens than the text tower's context (the tokenizer cuts it)."""
        if hasattr(self.tokenizer, "encode"):  # open_clip's BPE tokenizer: + start and end tokens
            return len(self.tokenizer.encode(query)) + 2 > self.tokenizer.context_length
        return bool(self.tokenize([query])[0, -1] != 0)

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> token states (N, L, K, Dt) float32 and valid-token mask (N, L) bool.

        L is the longest valid length in the batch (SOT, words, EOT).
        """
        tokens = self.tokenize(texts).to(self.device)
        mask = tokens != 0
        length = int(mask.sum(1).max())
        with self._autocast():
            out = self.model.forward_intermediates(text=tokens, text_indices=list(self.spec.text_layers), intermediates_only=True)
        states = torch.stack(out["text_intermediates"], dim=2)[:, :length].float()
        return states, mask[:, :length]

    @torch.inference_mode()
    def embed_text(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Texts -> CLIP sentence embeddings (N, E), L2-normalised (for text-to-text similarity)."""
        chunks = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenize(texts[start : start + batch_size]).to(self.device)
            with self._autocast():
                chunks.append(self.model.encode_text(tokens, normalize=True).float())
        return torch.cat(chunks).cpu()


def _tap_indices(depth: int, layers: int) -> tuple[int, ...]:
    if not 1 <= layers <= depth:
        raise BackboneError(f"layers={layers} but the model has {depth} blocks")
    return tuple(range(depth - layers, depth))


def load_backbone(
    name: str,
    pretrained: str | None,
    layers: int = 4,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> FrozenBackbone:
    """Build a frozen open_clip backbone tapping its last ``layers`` blocks.

    ``pretrained``: an open_clip tag, a checkpoint path, ``random:SEED`` or None (unseeded random).
    """
    if name not in open_clip.list_models():
        raise BackboneError(f"unknown open_clip model {name!r} (see open_clip.list_models())")
    if precision not in PRECISIONS:
        raise BackboneError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    source = pretrained
    if pretrained and pretrained.startswith(RANDOM_PREFIX):
        try:
            seed = int(pretrained[len(RANDOM_PREFIX) :])
        except ValueError:
            raise BackboneError(f"pretrained {pretrained!r}: expected random:SEED with an integer seed") from None
        source = str(random_checkpoint(name, seed))
    elif pretrained and os.path.sep in pretrained and not os.path.isfile(pretrained):
        raise BackboneError(f"pretrained checkpoint {pretrained} does not exist")
    elif pretrained and not os.path.isfile(pretrained):
        check_weights_reachable(name, pretrained)
    try:
        model = open_clip.create_model(name, pretrained=source)
    except RuntimeError as e:
        raise BackboneError(f"cannot load {name} with pretrained={pretrained!r}: {first_line(e)}") from None
    except Exception as e:  # a file that is not a checkpoint: torch.load, safetensors and state-dict errors of every kind
        if not (source and os.path.isfile(source)):
            raise
        why = "not a weights-only PyTorch file" if isinstance(e, pickle.UnpicklingError) else f"{type(e).__name__}: {first_line(e)}"
        raise BackboneError(f"{pretrained}: not an open_clip checkpoint of {name} ({why})") from None
    spec = BackboneSpec(
        backbone=name,
        pretrained=pretrained or "none",
        backbone_sha256=weights_sha256(model),
        layers=_tap_indices(len(model.visual.transformer.resblocks), layers),
        text_layers=_tap_indices(len(model.transformer.resblocks), layers),
        image_size=Preprocess(model.visual.preprocess_cfg).size,
        vision_width=model.visual.transformer.width,
        text_width=model.transformer.width,
    )
    return FrozenBackbone(model, spec, torch.device(device), precision)


def weights_cached(cfg: dict) -> bool:
    """Whether open_clip's pretrained ``cfg`` (from ``get_pretrained_cfg``) is already in the Hugging Face or URL cache."""
    from huggingface_hub import try_to_load_from_cache
    from open_clip.pretrained import _get_safe_alternatives

    if cfg.get("hf_hub"):
        model_id, filename = os.path.split(cfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        return any(isinstance(try_to_load_from_cache(model_id, f), str) for f in [*_get_safe_alternatives(filename), filename])
    return bool(cfg.get("url")) and os.path.isfile(os.path.expanduser(f"~/.cache/clip/{os.path.basename(cfg['url'])}"))


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host``:443 opens within ``timeout`` seconds."""
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def check_weights_reachable(name: str, tag: str) -> None:
    """Fail in seconds, not after minutes of Hub retries, when weights ``tag`` of ``name`` are neither cached nor downloadable."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise BackboneError(f"{name} has no pretrained weights {tag!r} (open_clip knows: {tags}; or give a checkpoint file)")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if weights_cached(cfg) or (not offline and hub_reachable()):
        return
    raise BackboneError(
        f"{name} {tag} weights are not in the local cache and the Hugging Face Hub "
        f"{'is off (HF_HUB_OFFLINE)' if offline else 'cannot be reached'}: download them once on a connected machine, "
        f"give a local checkpoint file (--pretrained PATH), or try the offline model (--model vtg-tiny)"
    )


def spec_metadata(spec: BackboneSpec) -> dict[str, str]:
    """The backbone part of a feature file's string metadata."""
    return {
        "backbone": spec.backbone,
        "pretrained": spec.pretrained,
        "backbone_sha256": spec.backbone_sha256,
        "layers": json.dumps(list(spec.layers)),
        "image_size": str(spec.image_size),
    }
