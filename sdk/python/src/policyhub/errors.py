"""The errors the SDK raises, under one base class as httpx's are under
`HTTPError`: `except policyhub.PolicyhubError` takes any of them, and its
`kind` says which, as the TypeScript SDK's `kind` and the Rust library's
variants do.

- `WatchError`: a subscription stopped for good; `kind` `"refused"` (the
  server refused it: its credentials, its role, a malformed request; `code`
  is the gRPC status) or `"config"` (it cannot follow its settings).
- `VerifyError` (`"verify"`): a bundle, a checkpoint or a note did not
  verify.
- `HistoryError` (`"history"`): the server's log does not extend the one
  verified last.
- `Lagged` (`"lagged"`): a `Watcher.events()` loop fell too far behind and
  was let go.

A setting a subscription cannot follow is refused when it is made, with
Python's own `ValueError` or `TypeError`, as the standard library refuses
arguments.
"""

from __future__ import annotations

from typing import Literal

import grpc

__all__ = ["HistoryError", "Lagged", "PolicyhubError", "VerifyError", "WatchError"]

Kind = Literal["refused", "config", "verify", "history", "lagged", "cache"]
"""What went wrong, one word for each error class (`WatchError` has two;
`"cache"` is a cache the SDK refuses, which it logs and never raises)."""


class PolicyhubError(Exception):
    """The base of every error the SDK raises."""

    def __init__(self, message: str, *, kind: Kind, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.kind: Kind = kind
        """What went wrong."""
        self.code = code
        """The gRPC status the server refused with; `None` for any other error."""


class WatchError(PolicyhubError):
    """Why a subscription stopped for good: the server refused it (`kind`
    `"refused"`, with the status `code`) or it is misconfigured
    (`"config"`)."""

    def __init__(
        self,
        message: str,
        *,
        kind: Literal["refused", "config"],
        code: grpc.StatusCode | None = None,
    ) -> None:
        super().__init__(message, kind=kind, code=code)


class VerifyError(PolicyhubError):
    """Why a bundle or a checkpoint did not verify."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="verify")


class HistoryError(PolicyhubError):
    """The server's tree does not extend the one verified last."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="history")


class Lagged(PolicyhubError):
    """A `Watcher.events()` loop fell more events behind than its queue
    holds: it was let go, after the events it had, rather than hold the
    watcher back or grow without bound. Call `events()` again to follow on;
    `current()` always holds the state in force."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="lagged")
