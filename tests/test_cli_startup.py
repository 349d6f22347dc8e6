"""`vtg --help`, `vtg eval` and `vtg inspect` start without torch (seconds to import); bench/cli_startup.py times them."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vtg_pipeline.features import StreamingSafetensorsWriter

HEAVY = ("torch", "open_clip", "torchvision", "av", "accelerate")
# Runs `vtg ARGV...`, then prints which heavy modules it imported as the last line.
PROBE = f"""
import json, sys
from vtg_pipeline.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""


def imported(*argv: str) -> list[str]:
    """The heavy modules that `vtg argv` imports, in a fresh interpreter."""
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])


def tiny_store(folder: Path) -> Path:
    writer = StreamingSafetensorsWriter(
        folder / "v.safetensors", {"timestamps": (np.float64, (2,))}, {"duration": "4.0", "layers": "[0, 1]", "fps": "0.5"}
    )
    writer.write("timestamps", 0, np.array([0.0, 2.0]))
    writer.commit()
    return folder


def tiny_eval_pair(folder: Path) -> list[str]:
    gt = {"qid": 1, "query": "q", "vid": "v", "duration": 10, "relevant_windows": [[2, 4]]}
    pred = {"qid": 1, "query": "q", "vid": "v", "pred_relevant_windows": [[2, 4, 0.9]]}
    (folder / "gt.jsonl").write_text(json.dumps(gt) + "\n")
    (folder / "pred.jsonl").write_text(json.dumps(pred) + "\n")
    return ["--pred", str(folder / "pred.jsonl"), "--gt", str(folder / "gt.jsonl"), "--dataset", "charades"]


@pytest.mark.parametrize("argv", [["--help"], ["eval", "--help"], ["extract", "--help"], ["ground", "--help"], ["inspect", "--help"]])
def test_help_imports_no_heavy_module(argv):
    assert imported(*argv) == []


def test_eval_and_inspect_import_no_heavy_module(tmp_path):
    assert imported("eval", *tiny_eval_pair(tmp_path)) == []
    assert imported("inspect", str(tiny_store(tmp_path))) == []


def test_the_backbone_module_registers_vtg_tiny():
    code = (
        "import sys, vtg_pipeline; assert 'open_clip' not in sys.modules\n"
        "import open_clip, vtg_pipeline.backbone; assert 'vtg-tiny' in open_clip.list_models()"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
