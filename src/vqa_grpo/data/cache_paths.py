"""Where the loaded-examples index (cache.py) lives by default: the folder's name beside the data,
and the user's cache folder for data that has no writable folder of its own (a Hub dataset)."""

from __future__ import annotations

import os
from pathlib import Path

FOLDER = ".vqa_grpo_cache"


def user_cache() -> Path:
    """``$XDG_CACHE_HOME/vqa_grpo/data`` (``~/.cache/vqa_grpo/data``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vqa_grpo" / "data"
