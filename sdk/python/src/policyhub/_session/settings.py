"""What one subscription follows and how (`Settings`), and what it calls
back: the application's verdict on each new state (`Validate`) and where
its events go (`Emit`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .._client import Tls
from ..state import Event, State

Validate = Callable[[State], str | Awaitable[str | None] | None]
"""The application's verdict on each new whole state, before it is put in
force: `None` accepts it, a string refuses it with that reason (reported
REJECTED; the previous state stays). It may be a coroutine function; an
exception it raises refuses the state with the exception's text."""

DEFAULT_HEARTBEAT_INTERVAL = 10.0


Emit = Callable[[Event], Awaitable[None]]


@dataclass
class Settings:
    """What one subscription follows and how (see `Subscription`)."""

    endpoints: list[str]
    namespace: str
    names: list[str]
    runtime_id: str | None
    labels: dict[str, str]
    cache_dir: str | None
    token: Callable[[], str | None] | None
    tls: Tls | None
    heartbeat_interval: float | None
    backoff_initial: float
    backoff_max: float
    rebalance_interval: float
    report_spread: float
    max_checkpoint_age: float | None
    retry_when_refused: bool
    log_origin: str | None
    witnesses: list[str]
    cosignatures: int
