"""The 1×1 layers' library choices (:mod:`focalbench.models.pointwise`) kept on disk between runs, per machine.

Timing a key runs both libraries on it, and each library keeps buffers for every shape it has run (oneDNN's
primitives, MKL's workspaces) for the rest of the process: a run that times its keys ends up holding both libraries'
buffers, tens of MB more than one that only runs its choices (FocalNet-T: the README's memory paragraph). So,
like inductor's autotuning cache, the choices made in one run are written here and a later run on the same machine
takes them without timing. The file is JSON: ``{machine: {key: library}}``, the machine being the CPU's model name and
feature flags and the torch version (the oneDNN and MKL builds come with it); the key holds the dtype and threads.

Location: ``$FOCALBENCH_AUTOTUNE_CACHE``, else ``$FOCALBENCH_CACHE/pointwise-autotune.json``, else
``~/.cache/focalbench/pointwise-autotune.json``; ``FOCALBENCH_AUTOTUNE_CACHE=0`` keeps choices in memory only. Delete
the file to time again (e.g. after timing on a loaded machine). Written atomically (a temporary file, then a rename),
so ranks writing at once leave a whole file; a key another rank's write dropped is timed again next run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
from pathlib import Path

import torch

from focalbench.atomic import atomic_path
from focalbench.user_cache import cache_root

log = logging.getLogger(__name__)

FILENAME = "pointwise-autotune.json"
_loaded: tuple[Path, dict[str, str]] | None = None  # (path, this machine's choices) as read from the file
_warned: set[Path] = set()


def cache_path() -> Path | None:
    """The file the choices are kept in, or None where ``FOCALBENCH_AUTOTUNE_CACHE=0``."""
    configured = os.environ.get("FOCALBENCH_AUTOTUNE_CACHE")
    if configured == "0":
        return None
    if configured:
        return Path(configured).expanduser()
    return cache_root() / FILENAME


@functools.cache
def machine() -> str:
    """What a choice depends on besides its key: the CPU (model name and a digest of its feature flags, since cloud
    instances of different generations share a name) and the torch build."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            first_cpu = cpuinfo.read().split("\n\n")[0]
        fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first_cpu.splitlines())}
    except OSError:
        fields = {}
    model = fields.get("model name", model)
    flags = " ".join(sorted(fields.get("flags", "").split()))
    digest = hashlib.sha256(flags.encode()).hexdigest()[:8] if flags else "no flags"
    return f"{model} ({digest}) | torch {torch.__version__}"


def encode(key: tuple) -> str:
    return "|".join(str(part) for part in key)


def _warn_once(path: Path, message: str) -> None:
    if path not in _warned:
        _warned.add(path)
        log.warning("%s: %s", path, message)


def _read(path: Path) -> dict[str, dict[str, str]]:
    """The whole file (every machine's choices); empty where it is missing or unreadable (warned once)."""
    try:
        content = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):  # nothing stored there yet; writing will say if it cannot be
        return {}
    except (OSError, ValueError) as error:
        _warn_once(path, f"not read ({error}); the 1x1 layers' choices will be timed again and the file rewritten")
        return {}
    if not isinstance(content, dict) or not all(isinstance(v, dict) for v in content.values()):
        _warn_once(path, "expected a JSON object {machine: {key: library}}; the 1x1 choices will be timed again")
        return {}
    return content


def stored(key: tuple, libraries: tuple[str, ...]) -> str | None:
    """The library stored for ``key`` on this machine (one of ``libraries``), or None."""
    global _loaded
    path = cache_path()
    if path is None:
        return None
    if _loaded is None or _loaded[0] != path:
        _loaded = (path, _read(path).get(machine(), {}))
    choice = _loaded[1].get(encode(key))
    return choice if choice in libraries else None


def store(key: tuple, choice: str) -> None:
    """Adds ``key``'s choice to the file (merged with what other runs wrote since); a file that cannot be written
    is warned about once and the run goes on."""
    global _loaded
    path = cache_path()
    if path is None:
        return
    content = _read(path)
    mine = content.setdefault(machine(), {})
    mine[encode(key)] = choice
    _loaded = (path, mine)
    try:
        with atomic_path(path) as temporary:
            Path(temporary).write_text(json.dumps(content, indent=1, sort_keys=True))
    except OSError as error:
        _warn_once(path, f"not written ({error}); set FOCALBENCH_AUTOTUNE_CACHE to a writable file, or to 0")
