"""Video ids, the paths built from them, and names and times shown to users.

A video id (DESIGN.md: the video's path relative to the folder given to
``extract``, without its extension) comes from files a user may not have
written: a feature store's manifest, an annotation's ``vid``, a feature file's
``video_id`` metadata. Every id read from such a file passes ``check_video_id``
and every path built from an id goes through ``path_in``, so no crafted id can
make a command read, write or delete outside its folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import UserError


class UnsafeNameError(UserError):
    """An id or path that would leave its folder; one line naming where it was read."""


def check_video_id(video_id: object, where: str) -> str:
    """``video_id`` if it is a safe relative id, else UnsafeNameError naming ``where`` (e.g. ``manifest.jsonl:3``).

    Safe: a non-empty string, relative, no ``..`` component, no NUL or other control character, no backslash.
    """
    if not isinstance(video_id, str) or not video_id.strip():
        raise UnsafeNameError(f"{where}: video id {video_id!r} is not a non-empty string")
    parts = video_id.split("/")
    problem = (
        "is absolute"
        if video_id.startswith("/") or re.match(r"^[A-Za-z]:", video_id)
        else "contains '..'"
        if ".." in parts
        else "contains a control character"
        if any(ord(c) < 32 or ord(c) == 127 for c in video_id)
        else "contains a backslash"
        if "\\" in video_id
        else "has an empty or '.' component"
        if "" in parts or "." in parts
        else None
    )
    if problem:
        raise UnsafeNameError(f"{where}: video id {video_id!r} {problem}")
    return video_id


def path_in(folder: str | Path, relative: str, suffix: str = "") -> Path:
    """``folder / (relative + suffix)``, refused (UnsafeNameError) unless it lies inside ``folder``.

    Symlinks are resolved on both sides, so a link pointing out of the folder is refused too.
    """
    folder = Path(folder)
    path = folder / f"{relative}{suffix}"
    root = os.path.realpath(folder)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise UnsafeNameError(f"{path}: lies outside {folder}")
    return path


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (library errors often span many lines)."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), "")


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: object) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``), so a name cannot forge terminal lines."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


def path_exists(path: str) -> bool:
    """Whether ``path`` exists here; the Ray runner asks each node (this module imports no torch, so a worker starts fast)."""
    return os.path.exists(path)


def hms(seconds: float) -> str:
    """Seconds as h:mm:ss.s (``3725.25`` -> ``1:02:05.2``)."""
    tenths = int(round(seconds * 10))
    return f"{tenths // 36000}:{tenths // 600 % 60:02d}:{tenths % 600 / 10:04.1f}"
