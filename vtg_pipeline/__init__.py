"""vtg_pipeline: find moments in raw videos from natural-language queries.

The package imports nothing heavy (torch, open_clip): ``vtg --help`` starts in well under a second.
``vtg_pipeline.backbone`` registers the package's open_clip configs (``vtg-tiny``) when it is imported.
"""

import os
from pathlib import Path

# OpenMP threads that wait for work spin for 1,000 rounds (microseconds), then sleep; libgomp's default is 300,000.
# libgomp reads this when torch loads it, so it must be set before the first `import torch`. Beside another busy
# process, long-spinning threads take the cores the working ones need: a training step of the learning check ran 4
# to 20 times slower beside a second one, 2.3 times with this, and as fast as before alone (docs/BENCHMARKS.md,
# "Beside a busy neighbour"). A wait policy or spin count the user set is kept.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

__version__ = "0.1.0"

MODEL_CONFIGS = Path(__file__).parent / "model_configs"  # open_clip model configs shipped with the package
