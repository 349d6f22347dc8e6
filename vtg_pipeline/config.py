"""Run configuration: nested dataclasses, loaded from YAML, with ``key=value`` overrides.

Every key has a default; an unknown key (in the file or an override) is an
error naming it and the valid keys. Values take the type of their default
(tuple elements too), and every numeric or choice key is range-checked at load
(``RANGES``), so a bad value fails before any work starts.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data import DataConfig
from .errors import UserError
from .inference import DecodeConfig
from .losses import LossConfig
from .models import MODELS, ModelConfig, model_class
from .names import first_line


class ConfigError(UserError):
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
    decay_epochs: tuple[int, ...] = (20,)  # multiply the lr by `decay` from the first step after this many epochs
    decay: float = 0.1
    grad_clip: float = 35.0
    batch_size: int = 128  # per process
    grad_accum: int = 1
    repeat: int = 1  # passes over the training set per epoch (QVHighlights: 4)
    ema: float = 0.0  # decay of an exponential moving average of the weights, updated every step, which is evaluated and
    # saved in place of the trained weights (0.995: about the last 200 steps); 0 = off
    memory_saving: bool = True  # recompute the R² video mapping's element-wise activations in backward: same numbers; at the
    # paper's sizes (dims 256, batch 32) 45 % of the peak memory and a faster CPU step; 1.45x slower on the narrow
    # vtg-tiny configs, which switch it off (docs/BENCHMARKS.md, issue 15)


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


def _coerce(value: Any, current: Any, key: str, element: type | None = None) -> Any:
    """Match the type of the default (YAML gives lists for tuples, ints for floats); ``element``: a tuple's item type."""
    if isinstance(current, bool) or current is None:
        return value
    if isinstance(current, tuple):
        items = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        return tuple(_coerce(v, element(), f"{key}[{i}]") for i, v in enumerate(items)) if element else items
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
    hint = typing.get_type_hints(type(target))[last]
    element = typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else None
    setattr(target, last, _coerce(value, current, dotted, element))


def _between(low: float, high: float = float("inf"), low_open: bool = False) -> tuple[Callable[[Any], bool], str]:
    """A range rule: low <= v <= high (low < v with ``low_open``), and its description."""
    test = (lambda v: low < v <= high) if low_open else (lambda v: low <= v <= high)
    bound = f"> {low}" if low_open else f">= {low}"
    return test, bound if high == float("inf") else f"{bound} and <= {high}"


def _one_of(*choices: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices), f"one of {', '.join(choices)}"


POSITIVE, AT_LEAST_1, NON_NEGATIVE, FRACTION = _between(0, low_open=True), _between(1), _between(0), _between(0, 1)
# Every numeric and choice key a run depends on: (dotted key, rule). Tuples are checked element by element.
RANGES: list[tuple[str, tuple[Callable[[Any], bool], str]]] = [
    ("optim.lr", POSITIVE),
    ("optim.weight_decay", NON_NEGATIVE),
    ("optim.warmup_steps", NON_NEGATIVE),
    ("optim.warmup_ratio", FRACTION),
    ("optim.epochs", AT_LEAST_1),
    ("optim.decay_epochs", AT_LEAST_1),
    ("optim.decay", _between(0, 1, low_open=True)),
    ("optim.grad_clip", POSITIVE),
    ("optim.batch_size", AT_LEAST_1),
    ("optim.grad_accum", AT_LEAST_1),
    ("optim.repeat", AT_LEAST_1),
    ("optim.ema", ((lambda v: 0 <= v < 1), ">= 0 and < 1")),
    ("eval_every", AT_LEAST_1),
    ("mixed_precision", _one_of("no", "fp16", "bf16")),
    ("backbone.layers", AT_LEAST_1),
    ("backbone.precision", _one_of("fp32", "fp16", "bf16")),
    ("data.fps", POSITIVE),
    ("data.mode", _one_of("features", "frames")),
    ("data.num_workers", NON_NEGATIVE),
    ("data.sampling", _one_of("auto", "video", "windows")),
    ("data.window", NON_NEGATIVE),
    ("data.window_stride", NON_NEGATIVE),
    ("data.negatives", NON_NEGATIVE),
    ("data.cross_video_negatives", NON_NEGATIVE),
    ("data.hard_negatives", NON_NEGATIVE),
    ("data.hard_pool", AT_LEAST_1),
    ("data.hard_mining", _one_of("encoder", "words")),
    ("data.negative_similarity", _between(-1, 1)),
    ("data.negative_query_source", _one_of("video", "near")),
    ("data.temporal_shift_below", NON_NEGATIVE),
    ("model.layers", AT_LEAST_1),
    ("model.dims", AT_LEAST_1),
    ("model.heads", AT_LEAST_1),
    ("model.strides", AT_LEAST_1),
    ("model.dropout", _between(0, 1)),
    ("model.droppath", _between(0, 1)),
    ("model.ffn_ratio", AT_LEAST_1),
    ("model.max_moments", AT_LEAST_1),
    ("model.fusion", _one_of("standard", "dummy")),
    ("model.dummies", AT_LEAST_1),
    ("model.refinement_kernel", AT_LEAST_1),
    ("model.head", _one_of("pyramid", "decoder")),
    ("model.decoder_layers", AT_LEAST_1),
    ("model.decoder_queries", AT_LEAST_1),
    ("model.decoder_ffn_dims", AT_LEAST_1),
    ("model.rg_cross_layers", AT_LEAST_1),
    ("model.rg_self_layers", AT_LEAST_1),
    ("model.rg_ffn_dims", AT_LEAST_1),
    ("model.rg_dropout", _between(0, 1)),
    ("model.gumbel_temperature", POSITIVE),
    ("model.retrieval_dims", AT_LEAST_1),
    ("decode.max_moments", AT_LEAST_1),
    ("decode.unit", NON_NEGATIVE),
    ("decode.nms", _one_of("hard", "linear", "none")),
    ("decode.nms_threshold", FRACTION),
    ("decode.window", POSITIVE),
    ("decode.window_stride", POSITIVE),
    ("decode.retrieval_topk", AT_LEAST_1),
    ("decode.window_score", _one_of("product", "moment")),
    ("decode.window_evidence", FRACTION),
    ("decode.window_temperature", NON_NEGATIVE),
    ("decode.window_prior", NON_NEGATIVE),
    ("loss.sample_radius", POSITIVE),
    ("loss.temperature", POSITIVE),
    ("loss.library_temperature", POSITIVE),
    ("loss.window_temperature", POSITIVE),
    ("loss.gate_keep", FRACTION),
]


def check_config(cfg: TrainConfig) -> TrainConfig:
    """Range-check every key of ``RANGES``, loss weights (>= 0) and the keys that must agree; ConfigError names the key."""

    def get(dotted: str) -> Any:
        value = cfg
        for part in dotted.split("."):
            value = getattr(value, part)
        return value

    rules = RANGES + [
        (f"loss.{f.name}", NON_NEGATIVE) for f in dataclasses.fields(cfg.loss) if isinstance(getattr(cfg.loss, f.name), float)
    ]
    for key, (test, wanted) in rules:
        value = get(key)
        for item in value if isinstance(value, tuple) else (value,):
            if not test(item):
                raise ConfigError(f"{key}={value!r}: must be {wanted}")
    if cfg.model.dims % cfg.model.heads:
        raise ConfigError(f"model.dims={cfg.model.dims} must be divisible by model.heads={cfg.model.heads}")
    if cfg.data.hard_negatives > cfg.data.negatives:
        raise ConfigError(
            f"data.hard_negatives={cfg.data.hard_negatives} must be <= data.negatives={cfg.data.negatives} "
            f"(the hard ones are drawn among them)"
        )
    if cfg.decode.window_stride > cfg.decode.window:
        raise ConfigError(
            f"decode.window_stride={cfg.decode.window_stride:g} s must be <= decode.window={cfg.decode.window:g} s: "
            f"a larger stride leaves parts of every long video in no window"
        )
    length_key, length = training_window(cfg)
    if cfg.data.window_stride > length:
        raise ConfigError(
            f"data.window_stride={cfg.data.window_stride:g} s must be <= {length_key}={length:g} s: a larger stride "
            f"leaves parts of every training video in no negative window"
        )
    if cfg.model.layers > cfg.backbone.layers:
        raise ConfigError(f"model.layers={cfg.model.layers} uses more CLIP layers than backbone.layers={cfg.backbone.layers} taps")
    check_combinations(cfg)
    return cfg


def check_combinations(cfg: TrainConfig) -> None:
    """The options that only work together, or only with one model or sampling; ConfigError names the keys."""
    if cfg.model.name not in MODELS:
        raise ConfigError(f"model.name={cfg.model.name!r}: must be one of {', '.join(sorted(MODELS))}")
    if cfg.data.sampling not in ("auto", "video", "windows"):
        raise ConfigError(f"data.sampling must be auto, video or windows, got {cfg.data.sampling!r}")
    if retrieves_windows(cfg) and cfg.data.sampling == "video":
        raise ConfigError(f"model.name={cfg.model.name} trains on windows: data.sampling must be windows or auto")
    if cfg.data.negative_queries != cfg.model.background_matching:
        raise ConfigError("data.negative_queries and model.background_matching go together (BM-DETR)")
    if cfg.data.temporal_shift_below and uses_windows(cfg):
        raise ConfigError("data.temporal_shift_below (BM-DETR temporal shifting) applies to whole-video training, not to window sampling")
    if cfg.loss.background_windows and not (retrieves_windows(cfg) and cfg.model.head == "pyramid"):
        raise ConfigError(
            "loss.background_windows trains a window-retrieving model's pyramid heads on negative windows: "
            "it needs model.name=rgnet and model.head=pyramid"
        )
    if cfg.loss.negative_query_window and not (retrieves_windows(cfg) and cfg.model.background_matching):
        raise ConfigError(
            "loss.negative_query_window scores each positive window under the BM-DETR negative query: "
            "it needs model.name=rgnet and model.background_matching=true"
        )
    for key in ("window", "window_stride"):
        if getattr(cfg.data, key) and not uses_windows(cfg):
            raise ConfigError(f"data.{key} sets the training windows: it needs window sampling (model.name=rgnet or data.sampling=windows)")
    if cfg.data.group_by_video and uses_windows(cfg):
        raise ConfigError("data.group_by_video applies to whole-video training: window items hold each query's own windows")


def retrieves_windows(cfg: TrainConfig) -> bool:
    """Whether the configured model scores (query, window) pairs itself (RGNet): it trains on negative windows too."""
    return model_class(cfg.model.name).retrieves_windows


def training_window(cfg: TrainConfig) -> tuple[str, float]:
    """The key that sets the training windows' length and that length (s): ``data.window``, else ``decode.window``."""
    return ("data.window", cfg.data.window) if cfg.data.window else ("decode.window", cfg.decode.window)


def training_grid(cfg: TrainConfig) -> tuple[float, float]:
    """The training windows' length and the stride of the grid their negatives start on (s): ``data.window`` and
    ``data.window_stride`` where set, else the inference grid's (``decode.window``, ``decode.window_stride``)."""
    return training_window(cfg)[1], cfg.data.window_stride or cfg.decode.window_stride


def uses_windows(cfg: TrainConfig) -> bool:
    """Whether training draws window items and evaluation grounds whole videos window by window."""
    return cfg.data.sampling == "windows" or (cfg.data.sampling == "auto" and retrieves_windows(cfg))


def config_from_dict(values: dict) -> TrainConfig:
    """A TrainConfig from a checkpoint's config.json; keys that are not config keys are ignored."""
    cfg = TrainConfig()
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in values.items():
        if key in names:
            _set(cfg, key, value)
    return check_config(cfg)


def config_layers(path: str | Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """A YAML config file's mappings in the order they apply: the file named by its ``base`` key (relative to it) and
    that file's bases first, then its own keys. ConfigError names the file at fault."""
    path = Path(path)
    if path.resolve() in seen:
        raise ConfigError(f"{path}: its base chain comes back to it ({' -> '.join(str(p) for p in (*seen, path.resolve()))})")
    try:
        content = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte at offset {e.start})") from None
    except (yaml.YAMLError, RecursionError) as e:
        raise ConfigError(f"{path}: invalid YAML ({first_line(e) if isinstance(e, yaml.YAMLError) else 'nested too deeply'})") from None
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys")
    base = content.pop("base", None)
    if base is None:
        return [(path, content)]
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base must be the path of another config file, got {base!r}")
    return [*config_layers(path.parent / base, (*seen, path.resolve())), (path, content)]


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """A TrainConfig from a YAML file (optional; ``base: other.yaml`` in it applies that file first) and
    ``key=value`` overrides, applied in order. ConfigError names the file or the override at fault."""
    cfg = TrainConfig()
    for file, content in config_layers(path) if path is not None else []:
        for key, value in content.items():
            try:
                _set(cfg, key, value)
            except ConfigError as e:
                raise ConfigError(f"{file}: {e}") from None
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} is not key=value")
        key, text = override.split("=", 1)
        try:
            _set(cfg, key.strip(), yaml.safe_load(text) if text.strip() else "")
        except yaml.YAMLError as e:
            raise ConfigError(f"override {override!r}: invalid YAML value ({first_line(e)})") from None
    try:
        return check_config(cfg)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from None
