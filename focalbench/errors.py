"""The one base class of the errors a user can fix (data, checkpoints, images, config), and how the CLI shows them.

Every such error derives from :class:`FocalbenchError` (and from the builtin it refines, ``ValueError`` or
``FileNotFoundError``, so ``except ValueError`` keeps working). ``cli.py`` prints exactly these as one line,
``error: <message>``, and exits 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re

# torch re-raises an exception from a DataLoader worker as the same type with the message
# "Caught X in DataLoader worker process N.\nOriginal Traceback (most recent call last):\n...\nmodule.X: message".
_WORKER_PREFIX = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.")


class FocalbenchError(Exception):
    """An error in what the user gave (data, weights, images, config); its message says what and where.

    Re-raised from a DataLoader worker (torch builds it again from the worker's formatted traceback), it keeps
    the original message: the last line of that traceback, without the exception's type."""

    def __init__(self, message: object = "", *args: object) -> None:
        if isinstance(message, str) and _WORKER_PREFIX.match(message):
            last = message.strip().splitlines()[-1]
            prefix = f"{type(self).__module__}.{type(self).__qualname__}: "
            message = last[len(prefix) :] if last.startswith(prefix) else last.split(": ", 1)[-1]
        super().__init__(message, *args)


class ConfigError(FocalbenchError, ValueError):
    """A configuration value that cannot work; the message names the config key and what was expected."""


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
    """The message of ``error`` on one line (a worker's error already carries its original message)."""
    return " ".join(str(error).split())
