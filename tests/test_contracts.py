"""Contracts kept in one place: the checkpoint in checkpoint.py (so grounding never imports training), and one base
for the errors that mean bad input (so `vtg` needs no list of them)."""

import importlib
import inspect
import pkgutil
import subprocess
import sys

import vtg_pipeline
from vtg_pipeline.cli import USER_ERRORS
from vtg_pipeline.errors import UserError

# A run that fails (a non-finite loss) exits 1, and a video that cannot be decoded costs only that video: not bad input.
NOT_USER_ERRORS = {"TrainingError", "VideoError"}


def test_grounding_searching_and_serving_never_import_training():
    code = "import sys, vtg_pipeline.grounder, vtg_pipeline.library, vtg_pipeline.serve; print('vtg_pipeline.training' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_every_error_of_ours_that_means_bad_input_is_a_user_error_that_vtg_prints_in_one_line():
    errors = {}
    for module in pkgutil.walk_packages(vtg_pipeline.__path__, "vtg_pipeline."):
        if module.name in ("vtg_pipeline.__main__", "vtg_pipeline.ray_engine"):  # runs vtg; imports ray (it defines no error)
            continue
        for name, value in inspect.getmembers(importlib.import_module(module.name), inspect.isclass):
            if issubclass(value, Exception) and value.__module__ == module.name and not name.startswith("_"):
                errors[name] = value
    assert {"AnnotationError", "BackboneError", "CheckpointError", "ConfigError", "DataError", "ExtractError", "GroundError",
            "LibraryError", "PredictionError", "ResumeError", "UnsafeNameError"} <= set(errors)  # fmt: skip
    for name, error in errors.items():
        if name not in NOT_USER_ERRORS and error is not UserError:
            assert issubclass(error, UserError), f"{error.__module__}.{name} is not a UserError"
            assert issubclass(error, USER_ERRORS)


def test_vtg_extract_flags_are_the_fields_of_extract_config():
    from dataclasses import fields

    from vtg_pipeline.cli import build_parser
    from vtg_pipeline.extract_config import ExtractConfig

    def parsed(*flags: str) -> ExtractConfig:
        args = build_parser().parse_args(["extract", "videos", "--out", "o", *flags])
        return ExtractConfig(**{spec.name: getattr(args, spec.name) for spec in fields(ExtractConfig) if hasattr(args, spec.name)})

    assert parsed() == ExtractConfig(["videos"], "o"), "every flag's default is the field's"
    assert parsed("--batch-size", "8", "--no-progress", "--states", "fp8", "--model", "vtg-tiny") == ExtractConfig(
        ["videos"], "o", batch_size=8, progress=False, states="fp8", model="vtg-tiny", pretrained="random:0"
    )
    flags = {action.dest for action in build_parser()._subparsers._group_actions[0].choices["extract"]._actions}
    assert {spec.name for spec in fields(ExtractConfig) if "help" in spec.metadata} <= flags
