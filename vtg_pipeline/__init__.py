"""vtg_pipeline: find moments in raw videos from natural-language queries.

Importing the package registers its open_clip model configs (``vtg-tiny``).
"""

from .backbone import register_model_configs

__version__ = "0.1.0"

register_model_configs()
