"""vtg_pipeline: find moments in raw videos from natural-language queries.

The package imports nothing heavy (torch, open_clip): ``vtg --help`` starts in well under a second.
``vtg_pipeline.backbone`` registers the package's open_clip configs (``vtg-tiny``) when it is imported.
"""

from pathlib import Path

__version__ = "0.1.0"

MODEL_CONFIGS = Path(__file__).parent / "model_configs"  # open_clip model configs shipped with the package
