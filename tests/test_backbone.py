"""The frozen backbone: taps, preprocessing, freezing, seeded random weights."""

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from vtg_pipeline.backbone import BackboneError, Preprocess, load_backbone


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8))
    image = np.asarray(base.resize((w, h), Image.BILINEAR)).astype(int) + rng.integers(-20, 20, (h, w, 3))
    return image.clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("model", ["ViT-B-32-quickgelu", "vtg-tiny"])
@pytest.mark.parametrize("size", [(360, 640), (61, 97), (240, 180)])
def test_batched_preprocess_matches_open_clip_pil_transform(model, size):
    """Tolerance: at most 2/255 per pixel (one uint8 rounding step of the bicubic
    resize; PIL resizes in fixed point) and a mean difference below 0.02/255."""
    clip, _, pil_transform = open_clip.create_model_and_transforms(model, pretrained=None)
    cfg = clip.visual.preprocess_cfg
    image = smooth_image(*size)
    reference = pil_transform(Image.fromarray(image))
    ours = Preprocess(cfg)
    got = ours.normalize(ours.resize_crop(torch.from_numpy(image)[None]))[0]
    in_pixels = (reference - got).abs() * torch.tensor(cfg["std"]).view(3, 1, 1) * 255
    assert got.shape == reference.shape
    assert in_pixels.max() <= 2.0 + 1e-3
    assert in_pixels.mean() <= 0.02


def test_last_vision_tap_reproduces_encode_image(tiny_backbone):
    frames = tiny_backbone.preprocess.resize_crop(torch.from_numpy(smooth_image(90, 160))[None].repeat(2, 1, 1, 1))
    states = tiny_backbone.encode_frames(frames)
    model = tiny_backbone.model
    assert states.shape == (2, 4, 17, 64)
    from_tap = model.visual.ln_post(states[:, -1, 0]) @ model.visual.proj
    expected = model.encode_image(tiny_backbone.preprocess.normalize(frames))
    torch.testing.assert_close(from_tap, expected, rtol=1e-5, atol=1e-5)


def test_last_text_tap_reproduces_encode_text(tiny_backbone):
    texts = ["a red circle moves to the left", "the chef cuts the pizza into eight slices", "hi"]
    states, mask = tiny_backbone.encode_text(texts)
    tokens = tiny_backbone.tokenize(texts)
    assert states.shape[:3] == (3, int((tokens != 0).sum(1).max()), 4)
    assert mask.sum(1).tolist() == (tokens != 0).sum(1).tolist()
    model = tiny_backbone.model
    eot = tokens.argmax(-1)
    from_tap = model.ln_final(states[torch.arange(3), eot, -1]) @ model.text_projection
    torch.testing.assert_close(from_tap, model.encode_text(tokens), rtol=1e-5, atol=1e-5)


def test_backbone_is_frozen(tiny_backbone):
    assert not tiny_backbone.model.training
    assert not any(p.requires_grad for p in tiny_backbone.model.parameters())
    frames = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    out = tiny_backbone.encode_frames(frames)
    assert out.is_inference() and not out.requires_grad
    states, mask = tiny_backbone.encode_text(["a red disc"])  # the text tower too
    assert states.is_inference() and not states.requires_grad


def test_random_backbone_is_saved_once_and_reloads_identically(tiny_backbone, backbone_cache):
    again = load_backbone("vtg-tiny", "random:0", layers=2)
    assert again.spec.backbone_sha256 == tiny_backbone.spec.backbone_sha256
    assert again.spec.layers == (2, 3)
    other = load_backbone("vtg-tiny", "random:1")
    assert other.spec.backbone_sha256 != tiny_backbone.spec.backbone_sha256
    assert len(list((backbone_cache / "backbones").glob("vtg-tiny-random*.safetensors"))) == 2


def test_checkpoint_path_loads_the_same_weights(tiny_backbone, backbone_cache):
    path = backbone_cache / "backbones" / "vtg-tiny-random0.safetensors"
    by_path = load_backbone("vtg-tiny", str(path))
    assert by_path.spec.backbone_sha256 == tiny_backbone.spec.backbone_sha256


@pytest.mark.parametrize(
    "name,pretrained,message",
    [
        ("no-such-model", None, "unknown open_clip model"),
        ("vtg-tiny", "random:abc", "random:SEED"),
        ("vtg-tiny", "/nonexistent/weights.safetensors", "does not exist"),
    ],
)
def test_bad_backbone_requests_are_clear_errors(name, pretrained, message):
    with pytest.raises(BackboneError, match=message):
        load_backbone(name, pretrained)


def test_too_many_layers_is_an_error():
    with pytest.raises(BackboneError, match="layers=5"):
        load_backbone("vtg-tiny", "random:0", layers=5)


def test_uncached_weights_without_the_hub_fail_in_seconds(tmp_path, monkeypatch):
    """No network and nothing cached: one line saying what to do, not minutes of Hub retries."""
    import time

    import huggingface_hub.constants

    import vtg_pipeline.backbone as backbone

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path))  # the URL cache (~/.cache/clip) is empty too
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(backbone.BackboneError, match="HF_HUB_OFFLINE.*--pretrained PATH.*--model vtg-tiny"):
        backbone.load_backbone("ViT-B-32-quickgelu", "openai")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(backbone, "hub_reachable", lambda *a, **k: False)
    with pytest.raises(backbone.BackboneError, match="cannot be reached"):
        backbone.load_backbone("ViT-B-32-quickgelu", "openai")
    assert time.perf_counter() - started < 10
    with pytest.raises(backbone.BackboneError, match="no pretrained weights 'laion2b'.*openai"):
        backbone.load_backbone("ViT-B-32-quickgelu", "laion2b")


@pytest.mark.parametrize("content", [b"", b"garbage", b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header"])
def test_a_pretrained_file_that_is_not_a_checkpoint_is_one_line(tmp_path, content):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(content)
    with pytest.raises(BackboneError, match=f"{path}: not an open_clip checkpoint of vtg-tiny"):
        load_backbone("vtg-tiny", str(path))
