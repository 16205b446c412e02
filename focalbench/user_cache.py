"""Where focalbench keeps what it makes for itself between runs: the demo data, the 1×1 layers' library choices."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$FOCALBENCH_CACHE``, else ``~/.cache/focalbench``."""
    return Path(os.environ.get("FOCALBENCH_CACHE") or Path.home() / ".cache" / "focalbench").expanduser()
