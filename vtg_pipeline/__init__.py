"""vtg_pipeline: find moments in raw videos from natural-language queries.

Importing the package registers its open_clip model configs (``vtg-tiny``) without importing open_clip and
torch (seconds): at once when open_clip is already loaded, else the moment it is.
"""

import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

MODEL_CONFIGS = Path(__file__).parent / "model_configs"


class _RegisterWhenImported:
    """A ``sys.meta_path`` finder that adds ``MODEL_CONFIGS`` to open_clip right after open_clip's first import."""

    def find_spec(self, name, path=None, target=None):
        if name != "open_clip":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            module.add_model_config(MODEL_CONFIGS)

        spec.loader.exec_module = exec_module
        return spec


if "open_clip" in sys.modules:
    sys.modules["open_clip"].add_model_config(MODEL_CONFIGS)
else:
    sys.meta_path.insert(0, _RegisterWhenImported())
