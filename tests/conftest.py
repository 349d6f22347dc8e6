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
