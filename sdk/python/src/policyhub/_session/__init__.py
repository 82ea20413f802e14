"""The machinery behind `Subscription.events`: connect, resume, verify,
decide whole states, report, and say what happened as events.

    start -- cache? --> FromCache (verified again, validated)
      |
      v
    connect --> fetch JWKS --> WatchActive(since = decided revision) --> Connected
      ^                              | parts --> whole revision
      |                              |   verify every bundle, validate --> Applied / Rejected
      |                              |   report APPLIED / REJECTED
      +-- next address; full-jitter <+ any failure: UNAVAILABLE, reset, a bad
          backoff after a whole round    message, 3 missed heartbeats: Disconnected

It mirrors the Rust library's session module: it resumes from the last
revision it decided on (applied or rejected), applies a state only when it
is newer than the one applied (unless the server says `reset`), follows the
server's log's tree from each checkpoint (a declared restore taken on a
stream resumed from the old history's cursor opens the stream anew from
revision 0, so the restored server is taken whole), and moves between
several addresses by rendezvous rank.

Layout: this module holds the loop (`Driver`: sessions, backoff, moves
between addresses, stale checkpoints); `connection` opens a stream on one
address; `subscription_state` holds the state in force and decides each
whole `revision`; `history` verifies checkpoints and follows the server's
log's tree, `freshness` tells a stale checkpoint; `reports` queues the
outcomes and sends them; `failure` says how a session ends; `settings` is
what the subscription follows and how. Imports point one way (a test of
the package holds it): `history` and `connection` read the
`SubscriptionState`, which imports neither.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import grpc
import grpc.aio

from .._backoff import Backoff, second_half
from .._endpoints import Endpoints
from .._telemetry import Telemetry
from ..errors import WatchError
from ..state import Connected, Disconnected, Event, HistoryRefused, Refused
from ..v1 import bundle_service_pb2 as pb
from .connection import Opened, open_stream
from .failure import History, Permanent, Transient, from_rpc_error
from .history import follow_tree, take_checkpoint, verified_size
from .revision import Assembler
from .settings import Emit, Settings, Validate
from .subscription_state import SubscriptionState

_log = logging.getLogger("policyhub")


class Driver:
    """Follows one subscription, sending every event to `emit`."""

    def __init__(self, settings: Settings, validate: Validate, emit: Emit) -> None:
        self.settings = settings
        self.emit = emit
        self.telemetry = Telemetry(settings.namespace)
        self.state = SubscriptionState(settings, validate, self.telemetry)
        self.endpoints = Endpoints(settings.endpoints, settings.runtime_id)

    async def run(self) -> None:
        """Follows until a permanent failure (raised as `WatchError`)."""
        settings = self.settings
        if not settings.endpoints:
            raise WatchError("the subscription names no endpoint", kind="config")
        await self.state.start(self.emit)
        backoff = Backoff(settings.backoff_initial, settings.backoff_max)
        while True:
            started = time.monotonic()
            refused = history = False
            try:
                await self.session()
            except Permanent as failure:
                if not (
                    settings.retry_when_refused
                    and failure.code
                    in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
                ):
                    raise WatchError(
                        f"the server refused the watch: {failure}",
                        kind="refused",
                        code=failure.code,
                    ) from failure
                reason, refused = str(failure), True
            except History as failure:
                reason, history = str(failure), True
            except Transient as failure:
                reason = str(failure)
            if time.monotonic() - started > settings.backoff_max:
                backoff = Backoff(settings.backoff_initial, settings.backoff_max)
                self.endpoints.settled()
            failed_from = self.endpoints.current
            if self.endpoints.failed():
                retry_in = backoff.next_delay()
            else:
                retry_in = settings.backoff_initial * random.random()
            refused_token = settings.token() if refused and settings.token else None
            event: Event
            if history:
                _log.error("refusing the server's history; the state in force stays: %s", reason)
                event = HistoryRefused(reason, verified_size(self.state), retry_in)
                self.telemetry.reconnecting("history")
            elif refused:
                _log.warning("the server refused the credentials; retrying: %s", reason)
                event = Refused(reason, retry_in)
                self.telemetry.reconnecting("refused")
            else:
                _log.warning(
                    "watch on %s interrupted (%s); resuming from revision %d on %s in %.3f s",
                    failed_from,
                    reason,
                    self.state.decided,
                    self.endpoints.current,
                    retry_in,
                )
                event = Disconnected(reason, retry_in, self.state.decided)
                self.telemetry.reconnecting("disconnected")
            await self.emit(event)
            await self.wait(retry_in, refused_token if refused else None)

    async def wait(self, delay: float, refused_token: str | None) -> None:
        """Waits out the backoff, noticing a stale checkpoint meanwhile and,
        after a refusal, a new token (read twice a second)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + delay
        while (now := loop.time()) < until:
            step = until - now
            stale_at = self.state.freshness.deadline()
            if stale_at is not None:
                step = min(step, max(0.0, stale_at - now))
            if refused_token is not None:
                step = min(step, 0.5)
            await asyncio.sleep(step)
            if stale_at is not None and loop.time() >= stale_at:
                await self.emit(self.state.freshness.expire())
            if (
                refused_token is not None
                and self.settings.token is not None
                and self.settings.token() != refused_token
            ):
                return

    async def session(self) -> None:
        """One connection's life; it ends only by raising."""
        state, endpoints, settings = self.state, self.endpoints, self.settings
        loop = asyncio.get_running_loop()
        opened = await open_stream(self.state, endpoints.current)
        read: asyncio.Future[object] | None = None
        try:
            await self.emit(Connected(state.decided, endpoints.current))
            rebalance_at = self.next_rebalance()
            assembler = Assembler()
            report_at: float | None = None
            last_message = loop.time()
            read = opened.read()
            while True:
                now = loop.time()
                message_deadline = last_message + opened.deadline
                stale_at = state.freshness.deadline()
                wake = min(
                    at
                    for at in (message_deadline, report_at, stale_at, rebalance_at)
                    if at is not None
                )
                done, _ = await asyncio.wait({read}, timeout=max(0.0, wake - now))
                now = loop.time()
                if not done:
                    if report_at is not None and now >= report_at:
                        report_at = None
                        await self.flush_reports(opened)
                    if stale_at is not None and now >= stale_at:
                        stale = state.freshness.expire()
                        reason = str(state.freshness)
                        await self.emit(stale)
                        raise Transient(reason)
                    if rebalance_at is not None and now >= rebalance_at:
                        moved = await self.rebalance(opened)
                        if moved is None:
                            rebalance_at = self.next_rebalance()
                        else:
                            read.cancel()
                            opened, rebalance_at, assembler = moved, None, Assembler()
                            last_message = loop.time()
                            read = opened.read()
                            await self.emit(Connected(state.decided, endpoints.current))
                        continue
                    if now >= message_deadline:
                        raise Transient(
                            f"no message for {int(opened.deadline * 1000)} ms, three heartbeats"
                        )
                    continue
                try:
                    message = read.result()
                except grpc.aio.AioRpcError as error:
                    raise from_rpc_error(error) from error
                if message is grpc.aio.EOF:
                    raise Transient("the stream ended")
                if not isinstance(message, pb.WatchActiveResponse):
                    raise Transient("the stream carried something other than a watch message")
                last_message = loop.time()
                read = opened.read()
                revoked_signer = state.signed_by_revoked(message.bundles) is not None
                if message.HasField("checkpoint") and not revoked_signer:
                    restored = await follow_tree(state, message.checkpoint, opened.client)
                    if restored is not None:
                        await self.emit(restored)
                        if message.kind != pb.WATCH_EVENT_KIND_SNAPSHOT:
                            # The stream resumed from a cursor of the history
                            # left behind, so what the restored server took up
                            # to that revision would never come: the restored
                            # server is taken whole, from a snapshot on a
                            # stream opened anew.
                            state.decided = 0
                            reopened = await open_stream(self.state, endpoints.current)
                            read.cancel()
                            await opened.close()
                            opened, assembler = reopened, Assembler()
                            last_message = loop.time()
                            read = opened.read()
                            continue
                    fresh = await take_checkpoint(state, message.checkpoint, opened.client)
                    if fresh is not None:
                        await self.emit(fresh)
                whole = assembler.push(message)
                if whole is None:
                    continue
                event = await state.decide(whole, opened.client)
                if event is not None:
                    await self.emit(event)
                if settings.report_spread <= 0:
                    await self.flush_reports(opened)
                elif report_at is None and state.reports.pending:
                    report_at = loop.time() + second_half(settings.report_spread)
        finally:
            if read is not None:
                read.cancel()
            await opened.close()

    async def flush_reports(self, opened: Opened) -> None:
        """Sends the queued outcomes on the stream's connection, waiting for
        the answer no longer than three heartbeats: a link that does not
        answer a report in that time is as dead as a silent stream (a
        half-open link does neither), and the outcomes stay queued for the
        next connection."""
        try:
            await asyncio.wait_for(self.state.reports.flush(opened.reporter), opened.deadline)
        except asyncio.TimeoutError:
            raise Transient(
                f"no answer to a report for {int(opened.deadline * 1000)} ms, three heartbeats"
            ) from None

    def next_rebalance(self) -> float | None:
        if self.endpoints.on_preferred():
            return None
        return asyncio.get_running_loop().time() + second_half(self.settings.rebalance_interval)

    async def rebalance(self, opened: Opened) -> Opened | None:
        """Opens a stream on the first choice; once it is open, the one in
        use is closed. `None` when the first choice does not answer yet."""
        preferred = self.endpoints.preferred
        try:
            moved = await asyncio.wait_for(open_stream(self.state, preferred), opened.deadline)
        except (Transient, History, Permanent, asyncio.TimeoutError) as failure:
            _log.debug("the preferred server %s does not answer yet: %s", preferred, failure)
            return None
        _log.info("moved back to the preferred server %s", preferred)
        self.endpoints.moved_to_preferred()
        await opened.close()
        return moved
