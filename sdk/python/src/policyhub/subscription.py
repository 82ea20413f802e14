"""What one subscription follows and how, and the asyncio API over it: an
async iterator of events (`Subscription.events`) and a callback for each
state put in force (`Subscription.run`)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path

from ._client import HEARTBEAT_INTERVAL_HEADER, Tls
from ._session import Driver
from ._session.settings import Settings, Validate
from .errors import VerifyError
from .state import Applied, Event, FromCache, State
from .token import TokenSource
from .tree import CosignatureVerifier

__all__ = [
    "DEFAULT_REBALANCE_INTERVAL",
    "DEFAULT_REPORT_SPREAD",
    "HEARTBEAT_INTERVAL_HEADER",
    "Subscription",
    "Tls",
    "Validate",
]

DEFAULT_REBALANCE_INTERVAL = 60.0
"""Seconds a subscription away from its first choice of several addresses
waits, at most, before trying that one again, unless it says otherwise."""

DEFAULT_REPORT_SPREAD = 1.0
"""Seconds over which a runtime spreads its reports unless it says otherwise."""


_MIN_INTERVAL = 0.001
"""The shortest interval a subscription takes, in seconds: the server
counts its own in milliseconds, and a shorter one has the subscription
reconnect or retry in a loop (a heartbeat interval of zero or less finds
every stream dead as it opens; a negative backoff reconnects as fast as
the host allows)."""


def _accept(_: State) -> None:
    return None


def _iterable(name: str, value: object) -> list[str]:
    """`value` as an iterable of strings; a lone string is refused rather
    than taken as its characters."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be an iterable of str, not {type(value).__name__}")
    items = list(value)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{name} must hold str, not {type(item).__name__}")
    return items


def _interval(name: str, value: object, *, zero: bool = False) -> float:
    """A duration in seconds: finite and at least `_MIN_INTERVAL` (or zero,
    where zero means "at once")."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    seconds = float(value)
    if zero and seconds == 0:
        return 0.0
    if not math.isfinite(seconds) or seconds < _MIN_INTERVAL:
        least = "zero or at least" if zero else "at least"
        raise ValueError(f"{name} must be {least} {_MIN_INTERVAL} seconds, got {value!r}")
    return seconds


def _backoff(value: object) -> tuple[float, float]:
    """The backoff's bounds: the first at least `_MIN_INTERVAL`, the cap no
    smaller than it."""
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise TypeError(f"backoff must be a pair (initial, maximum) of seconds, got {value!r}")
    initial = _interval("backoff initial delay", value[0])
    maximum = _interval("backoff maximum delay", value[1])
    if initial > maximum:
        raise ValueError(
            f"backoff must be (initial, maximum) with initial <= maximum, got {tuple(value)!r}"
        )
    return initial, maximum


def _endpoint(address: str) -> str:
    """An address a subscription connects to: `http://host[:port]` or
    `https://host[:port]`, nothing else (a path would be silently dropped,
    another scheme silently taken for plaintext)."""
    parts = urllib.parse.urlsplit(address)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or port == -1
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ValueError(
            f"endpoint {address!r} is not an http:// or https:// address"
            " (http://host:port or https://host:port)"
        )
    return address


def _witness(key: str) -> str:
    """A witness's verifier key, parsed once here so that a malformed one
    is refused now rather than found on every checkpoint."""
    try:
        CosignatureVerifier.parse(key)
    except VerifyError as error:
        raise ValueError(f"witnesses: {error}") from error
    return key


class Subscription:
    """Follows the policies of a namespace at one or several addresses of one
    deployment (`http://host:port` or `https://host:port`).

    With several addresses the runtime prefers one, chosen by its runtime id
    with rendezvous hashing (at random without an id); a failure moves to the
    next, and away from its first choice it tries that one again within the
    rebalance interval, moving back once it answers.

    Durations are in seconds. A setting the subscription cannot follow is
    refused here, before anything connects: `TypeError` for one of the
    wrong type, `ValueError` for a value out of range (an interval under a
    millisecond, zero or less among them; a backoff whose first bound is
    above its cap; an address that is not `http://` or `https://`), naming
    the setting and the value.
    """

    def __init__(
        self,
        endpoints: str | Iterable[str],
        namespace: str,
        *,
        names: Iterable[str] = (),
        runtime_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        cache_dir: str | Path | None = None,
        token: TokenSource | None = None,
        tls: Tls | None = None,
        heartbeat_interval: float | None = None,
        backoff: tuple[float, float] = (1.0, 30.0),
        rebalance_interval: float = DEFAULT_REBALANCE_INTERVAL,
        report_spread: float = DEFAULT_REPORT_SPREAD,
        max_checkpoint_age: float | None = 600.0,
        retry_when_refused: bool = False,
        log_origin: str | None = None,
        witnesses: Iterable[str] = (),
        cosignatures: int = 0,
    ) -> None:
        """
        - `names`: only these policies (empty: every policy of the namespace).
        - `runtime_id`, `labels`: the runtime's identity in the fleet view;
          with an id it reports what it applied and rejected.
        - `cache_dir`: where the last good state is kept, and started from.
        - `token`: the bearer token of every call, asked of it on each (see
          `policyhub.token_file`, which reads its file when it changed).
        - `tls`: the CA, and the client certificate for mutual TLS.
        - `heartbeat_interval`: overrides the interval the server announces
          (10 s when it announces none): three without a message mean a
          dead stream.
        - `backoff`: reconnection delays, a random time up to the first
          bound, doubling per failed attempt up to the second (full jitter).
        - `rebalance_interval`: with several endpoints, the longest time away
          from the first choice (a random time in its second half).
        - `report_spread`: reports go out at a random moment in its second
          half after an outcome (0: at once).
        - `max_checkpoint_age`: how old the server's newest signed checkpoint
          may grow before `CheckpointStale` (`None`: not checked).
        - `retry_when_refused`: a refused token is retried (an event
          `Refused`) rather than the end of the subscription.
        - `log_origin`: pins the origin of the server's log.
        - `witnesses`, `cosignatures`: take a checkpoint only when at least
          `cosignatures` of these witnesses (verifier keys
          `<name>+<key id>+<base64 key>`) cosigned it (C2SP cosignature/v1).
        """
        addresses = [endpoints] if isinstance(endpoints, str) else _iterable("endpoints", endpoints)
        if not addresses:
            raise ValueError("endpoints must name at least one address, got none")
        if not isinstance(namespace, str):
            raise TypeError(f"namespace must be a str, not {type(namespace).__name__}")
        if not namespace:
            raise ValueError("namespace must not be empty, got ''")
        if token is not None and not callable(token):
            raise TypeError(
                "token must be a callable that returns the token (such as"
                f" policyhub.token_file(path)), not {type(token).__name__}"
            )
        if tls is not None and not isinstance(tls, Tls):
            raise TypeError(f"tls must be a policyhub.Tls, not {type(tls).__name__}")
        backoff_initial, backoff_max = _backoff(backoff)
        witness_keys = [_witness(key) for key in _iterable("witnesses", witnesses)]
        if isinstance(cosignatures, bool) or not isinstance(cosignatures, int):
            raise TypeError(f"cosignatures must be an int, not {type(cosignatures).__name__}")
        if not 0 <= cosignatures <= len(witness_keys):
            raise ValueError(
                f"cosignatures must be between 0 and the {len(witness_keys)} witnesses given,"
                f" got {cosignatures}"
            )
        self.settings = Settings(
            endpoints=[_endpoint(address) for address in addresses],
            namespace=namespace,
            names=sorted(set(_iterable("names", names))),
            runtime_id=runtime_id,
            labels=dict(labels or {}),
            cache_dir=str(cache_dir) if cache_dir is not None else None,
            token=token,
            tls=tls,
            heartbeat_interval=(
                None
                if heartbeat_interval is None
                else _interval("heartbeat_interval", heartbeat_interval)
            ),
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            rebalance_interval=_interval("rebalance_interval", rebalance_interval),
            report_spread=_interval("report_spread", report_spread, zero=True),
            max_checkpoint_age=(
                None
                if max_checkpoint_age is None
                else _interval("max_checkpoint_age", max_checkpoint_age)
            ),
            retry_when_refused=retry_when_refused,
            log_origin=log_origin,
            witnesses=witness_keys,
            cosignatures=cosignatures,
        )

    async def events(self, validate: Validate = _accept) -> AsyncIterator[Event]:
        """The subscription as an async iterator of events. It connects,
        resumes and reconnects while it is iterated, and stops when the
        iteration stops; it raises `WatchError` on a permanent failure.

        `validate` is the application's check of each new whole state: it
        returns `None` to accept it or a reason to refuse it (reported
        REJECTED; the previous state stays in force). It may be async.
        """
        queue: asyncio.Queue[Event | Exception] = asyncio.Queue(maxsize=1)

        async def emit(event: Event) -> None:
            await queue.put(event)

        async def drive() -> None:
            try:
                await Driver(self.settings, validate, emit).run()
            except Exception as error:  # a permanent failure, or a defect: the caller's
                await queue.put(error)

        task = asyncio.create_task(drive())
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(
        self,
        on_change: Callable[[State], object | Awaitable[object]],
        validate: Validate = _accept,
    ) -> None:
        """Follows the namespace until a permanent failure (`WatchError`),
        calling `on_change` with every state put in force (from the cache at
        start, then from the server). It may be async."""
        async for event in self.events(validate):
            if isinstance(event, Applied | FromCache):
                result = on_change(event.state)
                if asyncio.iscoroutine(result):
                    await result
