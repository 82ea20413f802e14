"""A bearer token read from a file, as a workload holds one: Kubernetes
projects a ServiceAccount token into a file and replaces it (an atomic swap
of a symlink) well before it expires. Every call looks at the file's
metadata (`os.stat`, which follows the symlink) and reads the file again
only when it changed, so the next call and the next stream carry the new
token; a file that cannot be read or is empty mid-rotation keeps the last
good token.

A file is taken as unchanged while its device, inode, size, modification
and status-change times are those of the last read. A file rewritten in
place within one tick of the file system's clock keeps its times, so one
modified less than two seconds before a read is read again on every call
until it has settled, as git treats a "racily clean" index entry."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

TokenSource = Callable[[], "str | None"]
"""Gives the bearer token of each call; `None` sends none."""

_log = logging.getLogger("policyhub")

_SETTLING_NS = 2_000_000_000
"""How long after its last modification a file's metadata is not trusted
to tell a change (nanoseconds): it is read again on every call meanwhile."""

_Stamp = tuple[int, int, int, int, int]
"""What identifies one version of a file's contents without reading them:
device, inode, size, modification and status-change times."""


def _stamp(status: os.stat_result) -> _Stamp:
    return (
        status.st_dev,
        status.st_ino,
        status.st_size,
        status.st_mtime_ns,
        status.st_ctime_ns,
    )


def token_file(path: str | Path) -> TokenSource:
    """The token `path` holds (trimmed), read again whenever the file
    changed; the last good one while the file cannot be read or is empty,
    none before a first good read."""
    file = Path(path)
    lock = threading.Lock()
    last: list[str | None] = [None]
    failing = [False]
    # The stamp of the file as read last, once settled: while the file
    # shows it, it is not read again.
    read_as: list[_Stamp | None] = [None]

    def failed(error: OSError) -> None:
        if not failing[0]:
            _log.warning(
                "cannot read the token file %s (%s); the last good token is kept", file, error
            )
        failing[0] = True

    def read() -> str | None:
        with lock:
            try:
                status = file.stat()
            except OSError as error:
                read_as[0] = None
                failed(error)
                return last[0]
            stamp = _stamp(status)
            if stamp == read_as[0]:
                return last[0]
            # Read after the stamp was taken: a change in between shows in
            # the next call's stamp, and is read then.
            try:
                token = file.read_text().strip()
            except OSError as error:
                read_as[0] = None
                failed(error)
                return last[0]
            settled = time.time_ns() - status.st_mtime_ns >= _SETTLING_NS
            read_as[0] = stamp if settled else None
            if not token:
                failed(OSError("it is empty"))
                return last[0]
            if last[0] is not None and last[0] != token:
                _log.info("the token file %s holds a new token; the next call carries it", file)
            last[0], failing[0] = token, False
            return token

    return read
