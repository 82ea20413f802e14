"""What one subscription follows and how, and the asyncio API over it: an
async iterator of events (`Subscription.events`) and a callback for each
state put in force (`Subscription.run`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path

from ._client import HEARTBEAT_INTERVAL_HEADER, Tls
from ._session import Driver
from ._session.settings import Settings, Validate
from .state import Applied, Event, FromCache, State
from .token import TokenSource

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


def _accept(_: State) -> None:
    return None


class Subscription:
    """Follows the policies of a namespace at one or several addresses of one
    deployment (`http://host:port` or `https://host:port`).

    With several addresses the runtime prefers one, chosen by its runtime id
    with rendezvous hashing (at random without an id); a failure moves to the
    next, and away from its first choice it tries that one again within the
    rebalance interval, moving back once it answers.

    Durations are in seconds.
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
        - `token`: the bearer token of every call, read again on each (see
          `policyhub.token_file`).
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
        self.settings = Settings(
            endpoints=[endpoints] if isinstance(endpoints, str) else list(endpoints),
            namespace=namespace,
            names=sorted(set(names)),
            runtime_id=runtime_id,
            labels=dict(labels or {}),
            cache_dir=str(cache_dir) if cache_dir is not None else None,
            token=token,
            tls=tls,
            heartbeat_interval=heartbeat_interval,
            backoff_initial=backoff[0],
            backoff_max=backoff[1],
            rebalance_interval=rebalance_interval,
            report_spread=report_spread,
            max_checkpoint_age=max_checkpoint_age,
            retry_when_refused=retry_when_refused,
            log_origin=log_origin,
            witnesses=list(witnesses),
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
