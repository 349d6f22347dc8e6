"""``ExtractConfig``, the settings of one ``extract`` run, in a module of its own that imports nothing heavy:
``vtg extract``'s flags are built from its fields (``cli.add_config_arguments``), so ``vtg --help`` stays fast.

Each field that is a flag carries its help text (and choices, a parse function, or ``positional``) in its metadata;
its default is the flag's default. ``extract.py`` re-exports the class.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

STORE_CHOICES = ("features", "frames", "both")


def positive_float(text: str) -> float:
    """A command-line number > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """A command-line integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def positive_int(text: str) -> int:
    """A command-line integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


@dataclass
class ExtractConfig:
    """Settings of one ``extract`` run; ``vtg extract``'s flags are these fields (``--batch-size`` for ``batch_size``)."""

    video_dirs: list[str] = field(
        metadata={
            "positional": True,
            "metavar": "VIDEO_DIR",
            "help": "folders searched recursively for mp4/mkv/webm/mov/avi/m4v (or video files)",
        }
    )
    out: str = field(metadata={"help": "output folder: OUT/<video id>.safetensors and OUT/manifest.jsonl"})
    fps: float = field(default=0.5, metadata={"type": positive_float, "help": "samples per second; sample k is the frame shown at k/fps s"})
    model: str = field(default="ViT-B-32-quickgelu", metadata={"help": "open_clip model name, e.g. ViT-B-32-quickgelu or vtg-tiny"})
    pretrained: str | None = field(
        default=None,
        metadata={"help": "open_clip tag (openai), a checkpoint file, or random:SEED (default: openai, or random:0 for vtg-tiny)"},
    )
    layers: int = field(default=4, metadata={"type": positive_int, "help": "tap the last K transformer blocks"})
    store: str = field(
        default="features", metadata={"choices": STORE_CHOICES, "help": "what to keep: per-layer states, resized uint8 frames, or both"}
    )
    decoder: str = field(default="auto", metadata={"help": "auto, pyav, decord or torchcodec (auto: CUDA decoder on GPU, else PyAV)"})
    batch_size: int = field(default=32, metadata={"type": positive_int, "help": "frames per backbone forward pass"})
    workers: int = field(default=2, metadata={"type": positive_int, "help": "videos decoded in parallel threads"})
    chunk: int = 16  # frames per decoded chunk (not a flag)
    precision: str = field(default="fp32", metadata={"choices": ("fp32", "fp16", "bf16"), "help": "backbone autocast precision"})
    states: str = field(
        default="fp16",
        metadata={"choices": ("fp16", "fp8", "cls"), "help": "how the per-layer states are stored: fp16, fp8 (e4m3 with a scale per "
                  "token: half the disk and reading; docs/BENCHMARKS.md), or cls (the last layer's CLS state alone, fp16: what "
                  "library search embeds windows from; `vtg index --states on-demand` re-encodes the rest when searched)"},
    )  # fmt: skip
    device: str | None = field(
        default=None, metadata={"help": "torch device (default: cuda when present, else cpu; per process under accelerate)"}
    )
    progress: bool = field(default=True, metadata={"flag": "--no-progress", "help": "hide the progress bar"})

    def __post_init__(self):
        if self.pretrained is None:  # the weights users mean: OpenAI's, or the seeded random ones of the tiny test model
            self.pretrained = "random:0" if self.model == "vtg-tiny" else "openai"
