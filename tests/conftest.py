import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session", autouse=True)
def backbone_cache(tmp_path_factory):
    """Random-init backbones are created once per test session in a private cache."""
    path = tmp_path_factory.mktemp("vtg_cache")
    os.environ["VTG_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_backbone(backbone_cache):
    from vtg_pipeline.backbone import load_backbone

    return load_backbone("vtg-tiny", "random:0", layers=4)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory, backbone_cache):
    """A 4-video synthetic dataset with vtg-tiny features and frames (store=both)."""
    from vtg_pipeline.extract import ExtractConfig, run_extract
    from vtg_pipeline.synth import make_dataset

    root = tmp_path_factory.mktemp("synth")
    make_dataset(root, videos=4, seed=3, progress=False)
    run_extract(
        ExtractConfig(
            video_dirs=[str(root / "videos")],
            out=str(root / "features"),
            model="vtg-tiny",
            pretrained="random:0",
            store="both",
            progress=False,
        )
    )
    return root
