"""The one base class of the errors a user can fix (data, checkpoints, images, config), and how the CLI shows them.

Every such error derives from :class:`FocalbenchError` (and from the builtin it refines, ``ValueError`` or
``FileNotFoundError``, so ``except ValueError`` keeps working). ``cli.py`` prints exactly these as one line,
``error: <message>``, and exits 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re


class FocalbenchError(Exception):
    """An error in what the user gave (data, weights, images, config); its message says what and where."""


class ConfigError(FocalbenchError, ValueError):
    """A configuration value that cannot work; the message names the config key and what was expected."""


# torch re-raises an exception from a DataLoader worker as the same type with the message
# "Caught X in DataLoader worker process N.\nOriginal Traceback (most recent call last):\n...\nmodule.X: message".
_WORKER_PREFIX = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.")


def project_error(error: BaseException) -> FocalbenchError | None:
    """``error`` itself or the :class:`FocalbenchError` it was raised from (jsonargparse re-raises an error from a
    class's constructor as a ``ValueError`` chained to it), else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, FocalbenchError):
            return error
        seen.add(id(error))
        error = error.__cause__  # explicit chains only: an error raised while handling ours may be a bug
    return None


def user_message(error: BaseException) -> str:
    """The message of ``error`` on one line; for an error re-raised from a DataLoader worker, the original
    message (the last line of the worker's traceback, without the exception's type)."""
    message = str(error)
    if _WORKER_PREFIX.match(message):
        last = message.strip().splitlines()[-1]
        prefix = f"{type(error).__module__}.{type(error).__qualname__}: "
        message = last[len(prefix) :] if last.startswith(prefix) else last.split(": ", 1)[-1]
    return " ".join(message.split())
