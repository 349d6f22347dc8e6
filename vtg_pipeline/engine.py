"""Where the library-scale work runs: in this process (``LocalEngine``, the default) or on a Ray cluster
(``ray_engine.RayEngine``, ``--ray``). Both give the same results; the stages they run are the same functions.

An engine does two things:

- ``extract(cfg, items, backbone)``: the feature files of ``items`` (extract.py's stages), an ``ExtractSummary``;
- ``map_stored(grounder, task, jobs)``: ``task(grounder, job)`` for each job on stored videos (grounding a video's
  queries, embedding its windows), results in the order of ``jobs``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Protocol, TypeVar

from tqdm import tqdm

from .extract import ExtractConfig, ExtractSummary, VideoItem, extract_videos

Job = TypeVar("Job")
Result = TypeVar("Result")


class Engine(Protocol):
    def extract(self, cfg: ExtractConfig, items: list[VideoItem], backbone) -> ExtractSummary: ...

    def map_stored(self, grounder, task: Callable, jobs: list, progress: bool = False, desc: str = "") -> list: ...


class LocalEngine:
    """Everything in this process: the local extraction runner, then the tasks one after another."""

    def extract(self, cfg: ExtractConfig, items: list[VideoItem], backbone) -> ExtractSummary:
        return extract_videos(cfg, items, backbone)

    def map_stored(
        self, grounder, task: Callable[[object, Job], Result], jobs: list[Job], progress: bool = False, desc: str = ""
    ) -> list[Result]:
        return [task(grounder, job) for job in tqdm(jobs, desc=desc, unit="video", disable=not progress, file=sys.stderr)]
