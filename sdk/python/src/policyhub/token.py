"""A bearer token read from a file, as a workload holds one: Kubernetes
projects a ServiceAccount token into a file and replaces it (an atomic swap
of a symlink) well before it expires. The file is read again on every call,
so the next call and the next stream carry the new token; a file that
cannot be read or is empty mid-rotation keeps the last good token."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

TokenSource = Callable[[], "str | None"]
"""Gives the bearer token of each call; `None` sends none."""

_log = logging.getLogger("policyhub")


def token_file(path: str | Path) -> TokenSource:
    """The token `path` holds (trimmed), read again on every call; the last
    good one while the file cannot be read or is empty, none before a first
    good read."""
    file = Path(path)
    lock = threading.Lock()
    last: list[str | None] = [None]
    failing = [False]

    def read() -> str | None:
        with lock:
            try:
                token = file.read_text().strip()
                if not token:
                    raise OSError("it is empty")
            except OSError as error:
                if not failing[0]:
                    _log.warning(
                        "cannot read the token file %s (%s); the last good token is kept",
                        file,
                        error,
                    )
                failing[0] = True
                return last[0]
            if last[0] is not None and last[0] != token:
                _log.info("the token file %s holds a new token; the next call carries it", file)
            last[0], failing[0] = token, False
            return token

    return read
