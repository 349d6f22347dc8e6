"""The checkpoint contract in one place: what a checkpoint folder holds, how it is written (whole or not at all),
read and validated, and its model card.

A checkpoint folder (``best/`` of a run, ``Grounder.save_pretrained``, a Hugging Face Hub model repo) holds
``CHECKPOINT_FILES``: model.safetensors (the side network only; the frozen backbone is named, not stored),
README.md (the model card) and config.json, written last as the folder's marker (the ``TrainConfig``, the
backbone's ``backbone_spec``, epoch and metrics). Reading it refuses a backbone whose states differ in any of
``STATE_FIELDS`` from the ones the weights were trained on.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from urllib.parse import urlparse

import torch
from huggingface_hub import ModelCard, ModelCardData, constants, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id
from safetensors.torch import load_file

from .backbone import FrozenBackbone, hub_reachable, load_backbone
from .config import TrainConfig, config_from_dict
from .errors import UserError
from .features import atomic_write_text, save_tensors
from .models import create_model
from .names import first_line


class CheckpointError(UserError):
    """A checkpoint that cannot be used: missing, unreadable, or trained on other backbone states."""


# The fields of a checkpoint's backbone_spec that change the states its weights were trained on.
STATE_FIELDS = ("backbone", "backbone_sha256", "layers", "text_layers", "image_size", "vision_width", "text_width")
# A Hugging Face Hub model repo id with an optional revision (branch, tag or commit): ``org/name[@revision]``.
REPO_ID = re.compile(r"(?P<repo_id>[^/@\s]+/[^/@\s]+)(?:@(?P<revision>\S+))?")
CHECKPOINT_FILES = ["config.json", "model.safetensors", "README.md"]  # what a checkpoint folder (and a Hub repo of one) holds


@dataclass
class Checkpoint:
    """A checkpoint read and validated by ``read_checkpoint``: its folder, config, backbone and side network, whether
    its library-search head was trained (``indexable``), and the epoch and metrics it was saved with."""

    folder: Path
    cfg: TrainConfig
    backbone: FrozenBackbone
    model: torch.nn.Module
    indexable: bool = True
    trained: dict = field(default_factory=dict)


# Run folders written whole or not at all: each is written into ``.NAME.partial`` with its marker file last, then
# swapped in by ``swap_in``; ``recover_folder`` finishes a swap that a kill interrupted.
MARKERS = {"best": "config.json", "last": "progress.json"}


def staging_folder(folder: Path) -> Path:
    """The empty ``.NAME.partial`` sibling that a new version of ``folder`` is written into."""
    tmp = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def swap_in(tmp: Path, folder: Path) -> None:
    """Replace ``folder`` by the complete folder ``tmp``; a kill at any point leaves what ``recover_folder`` repairs."""
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def recover_folder(folder: Path) -> None:
    """Resolve leftovers of an interrupted ``swap_in``: keep ``folder`` if complete, else the newest complete one
    of ``.NAME.partial`` and ``.NAME.old``; remove the rest. Complete: holds its marker file (written last)."""
    marker = MARKERS[folder.name]
    tmp, old = folder.with_name(f".{folder.name}.partial"), folder.with_name(f".{folder.name}.old")
    for candidate in (tmp, old):
        if not (folder / marker).is_file() and (candidate / marker).is_file():
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(candidate, folder)
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)


def save_checkpoint(directory: Path, model: torch.nn.Module, cfg: TrainConfig, backbone: FrozenBackbone, extra: dict) -> None:
    """Write ``directory`` atomically with ``write_checkpoint``."""
    tmp = staging_folder(directory)
    write_checkpoint(tmp, model, cfg, backbone, extra)
    swap_in(tmp, directory)


def write_checkpoint(folder: Path, model: torch.nn.Module, cfg: TrainConfig, backbone: FrozenBackbone, extra: dict) -> None:
    """Write into ``folder``: model.safetensors (side network only), README.md (model card), then config.json (the
    marker: ``cfg``, ``backbone_spec`` and ``extra``, e.g. epoch and metrics)."""
    config = {**cfg.to_dict(), "backbone_spec": backbone.spec.to_dict(), **extra}
    save_tensors({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    atomic_write_text(folder / "README.md", str(model_card(config)))
    atomic_write_text(folder / "config.json", json.dumps(config, indent=2))


# The config keys a model card lists; config.json next to it has them all.
CARD_KEYS = (
    "model.name",
    "model.head",
    "model.dims",
    "model.layers",
    "model.heads",
    "model.fusion",
    "model.score_refinement",
    "model.background_matching",
    "data.fps",
    "data.mode",
    "decode.window",
    "optim.epochs",
    "optim.lr",
    "optim.batch_size",
    "seed",
    "mixed_precision",
)


def model_card(config: dict) -> ModelCard:
    """The README.md of a checkpoint with config.json content ``config``: Hub front matter, then backbone, data,
    config summary, epoch and metrics."""
    backbone, data, spec = config["backbone"], config["data"], config["backbone_spec"]
    tags = ["video-temporal-grounding", "moment-retrieval", "highlight-detection", "open_clip", data["dataset"], config["model"]["name"]]
    front = ModelCardData(library_name="vtg_pipeline", tags=tags).to_yaml()
    rows = "\n".join(f"| `{key}` | {json.dumps(reduce(lambda node, part: node[part], key.split('.'), config))} |" for key in CARD_KEYS)
    metrics = config.get("metrics") or {}
    scores = "\n".join(f"| {name} | {score} |" for name, score in metrics.items()) or "| (not recorded) | |"
    files = ", ".join(f"{name} `{data[name]}`" for name in ("train", "val", "features"))
    return ModelCard(f"""---
{front}
---

# vtg_pipeline checkpoint ({config["model"]["name"]})

A video temporal grounding side network (moment retrieval and highlight detection) trained with
vtg_pipeline on the per-layer states of a frozen open_clip backbone; the backbone is not in this folder.

```python
from vtg_pipeline.grounder import Grounder

grounder = Grounder.from_pretrained("PATH_OR_ORG/NAME")  # refuses a backbone whose states differ from these
results = grounder.ground("video.mp4", ["a person opens the door"])
```

## Backbone

{backbone["name"]}, weights `{backbone["pretrained"]}` (sha256 `{spec["backbone_sha256"]}`), {backbone["precision"]};
vision blocks {", ".join(map(str, spec["layers"]))} tapped, image size {spec["image_size"]}.

## Training data

{data["dataset"]} annotations in `{data["root"] or "."}`: {files}.

## Config

| key | value |
|---|---|
{rows}

## Results

Epoch {config.get("epoch", "(not recorded)")} of {config["optim"]["epochs"]}, on the validation annotations (`{data["val"]}`):

| metric | value |
|---|---|
{scores}
""")


def checkpoint_folder(checkpoint: str | Path) -> Path:
    """The local folder of ``checkpoint``: as given when it is an existing folder, a Path, or a string that is not
    a Hub repo id; else Hub repo ``org/name[@revision]``'s snapshot in the Hub cache, updated first when the Hub
    can be reached. CheckpointError when the repo is neither cached nor downloadable."""
    match = REPO_ID.fullmatch(checkpoint) if isinstance(checkpoint, str) else None
    if match is None or os.path.isdir(checkpoint):
        return Path(checkpoint)
    repo_id, revision = match["repo_id"], match["revision"]
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return Path(checkpoint)
    offline = constants.HF_HUB_OFFLINE
    online = not offline and hub_reachable(urlparse(constants.ENDPOINT).hostname)  # fail in seconds, not after retries
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=CHECKPOINT_FILES, local_files_only=not online))
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{checkpoint}: no such folder, and Hugging Face Hub model {repo_id} is not in the cache "
            f"({constants.HF_HUB_CACHE}) and the Hub cannot be reached{' (HF_HUB_OFFLINE is set)' if offline else ''}"
        ) from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{checkpoint}: Hugging Face Hub model {repo_id} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{checkpoint}: no such folder, and no Hugging Face Hub model {repo_id} that you can read "
            "(a private or gated one needs `hf auth login` or HF_TOKEN)"
        ) from None
    except HfHubHTTPError as e:
        raise CheckpointError(f"{checkpoint}: downloading Hugging Face Hub model {repo_id} failed ({first_line(e)})") from None


def read_checkpoint(checkpoint: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load and validate ``checkpoint`` (a folder, or a Hub repo id: ``checkpoint_folder``): its config, backbone and
    side network on ``device``.

    CheckpointError (one line naming the file) for an unreadable config or weights file, config values out of range,
    weights that do not fit the configured model, and a backbone whose states would differ from the ones the
    weights were trained on (``STATE_FIELDS`` of ``backbone_spec``).
    """
    checkpoint_dir = checkpoint_folder(checkpoint)
    config_file, weights_file = checkpoint_dir / "config.json", checkpoint_dir / "model.safetensors"
    for path in (config_file, weights_file):
        if not path.is_file():
            raise CheckpointError(f"{path}: not found (a checkpoint is the best/ folder of a training run)")
    try:
        values = json.loads(config_file.read_text())
        if not isinstance(values, dict) or not isinstance(values.get("backbone_spec"), dict):
            raise ValueError("expected a JSON object with a backbone_spec")
        cfg = config_from_dict(values)
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config_file}: not a checkpoint config ({e})") from None
    backbone = load_backbone(cfg.backbone.name, cfg.backbone.pretrained, cfg.backbone.layers, device, cfg.backbone.precision)
    trained_on, now = values["backbone_spec"], backbone.spec.to_dict()
    for name in STATE_FIELDS:
        if json.dumps(trained_on.get(name)) != json.dumps(now[name]):
            raise CheckpointError(
                f"{config_file}: the weights were trained on backbone {name} {trained_on.get(name)}, but its "
                f"backbone settings ({cfg.backbone.name}, {cfg.backbone.pretrained}, {cfg.backbone.layers} layers) give {now[name]}"
            )
    model = create_model(cfg.model)
    try:
        missing, unexpected = model.load_state_dict(load_file(str(weights_file)), strict=False)
    except Exception as e:  # safetensors' own error type for a cut or garbage file; RuntimeError for the wrong model
        raise CheckpointError(f"{weights_file}: not the weights of this config's model ({type(e).__name__}: {first_line(e)})") from None
    if unexpected or any(not key.startswith("retrieval.") for key in missing):  # a checkpoint older than the head still grounds
        raise CheckpointError(
            f"{weights_file}: not the weights of this config's model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    trained = {key: values[key] for key in ("epoch", "metrics") if key in values}
    return Checkpoint(checkpoint_dir, cfg, backbone, model.to(device), indexable=not missing, trained=trained)
