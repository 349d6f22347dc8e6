"""Run configuration: nested dataclasses, loaded from YAML, with ``key=value`` overrides.

Every key has a default; an unknown key (in the file or an override) is an
error naming it and the valid keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data import DataConfig
from .inference import DecodeConfig
from .losses import LossConfig
from .models import ModelConfig


class ConfigError(ValueError):
    """A bad config file, key or value; one line."""


@dataclass
class BackboneConfig:
    name: str = "ViT-B-32-quickgelu"
    pretrained: str = "openai"  # open_clip tag, checkpoint file, or random:SEED
    layers: int = 4  # tapped blocks; must match the feature store
    precision: str = "fp32"


@dataclass
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 500  # linear warmup from warmup_ratio x lr
    warmup_ratio: float = 0.001
    epochs: int = 30
    decay_epochs: tuple[int, ...] = (20,)  # multiply the lr by `decay` at these epochs
    decay: float = 0.1
    grad_clip: float = 35.0
    batch_size: int = 128  # per process
    grad_accum: int = 1
    repeat: int = 1  # passes over the training set per epoch (QVHighlights: 4)


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    output_dir: str = "runs/default"
    seed: int = 0
    mixed_precision: str = "no"  # no | fp16 | bf16 (autocast on the side network; CLIP stays frozen)
    eval_every: int = 1  # epochs
    main_metric: str = ""  # brief-block key that picks best/ (empty: the dataset's, e.g. MR-full-mAP for QVHighlights)
    fixed_query: str = ""  # control experiment: replace every query by this text

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(value: Any, current: Any, key: str) -> Any:
    """Match the type of the default (YAML gives lists for tuples, ints for floats)."""
    if isinstance(current, bool) or current is None:
        return value
    if isinstance(current, tuple):
        return tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if isinstance(current, float) and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)  # YAML reads 2e-3 (no dot) as a string
        except ValueError:
            raise ConfigError(f"{key}: expected float, got {value!r}") from None
    if type(value) is not type(current):
        raise ConfigError(f"{key}: expected {type(current).__name__}, got {value!r}")
    return value


def _set(cfg: Any, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    target = cfg
    for i, part in enumerate(parents):
        if not dataclasses.is_dataclass(target) or part not in {f.name for f in dataclasses.fields(target)}:
            raise ConfigError(f"unknown config key {'.'.join(parents[: i + 1])!r}")
        target = getattr(target, part)
    names = {f.name for f in dataclasses.fields(target)} if dataclasses.is_dataclass(target) else set()
    if last not in names:
        prefix = ".".join(parents)
        raise ConfigError(f"unknown config key {dotted!r}; {prefix or 'top level'} has {', '.join(sorted(names))}")
    current = getattr(target, last)
    if dataclasses.is_dataclass(current):
        if not isinstance(value, dict):
            raise ConfigError(f"{dotted}: expected a mapping")
        for key, sub in value.items():
            _set(cfg, f"{dotted}.{key}", sub)
        return
    setattr(target, last, _coerce(value, current, dotted))


def config_from_dict(values: dict) -> TrainConfig:
    """A TrainConfig from a checkpoint's config.json; keys that are not config keys are ignored."""
    cfg = TrainConfig()
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in values.items():
        if key in names:
            _set(cfg, key, value)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """A TrainConfig from a YAML file (optional) and ``key=value`` overrides, applied in order."""
    cfg = TrainConfig()
    if path is not None:
        try:
            content = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(content, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys")
        for key, value in content.items():
            _set(cfg, key, value)
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} is not key=value")
        key, text = override.split("=", 1)
        _set(cfg, key.strip(), yaml.safe_load(text) if text.strip() else "")
    return cfg
