"""One connection to the server: its client, and the watch stream opened on
it from the decided revision, with what goes with the stream (`Opened`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import grpc.aio

from .._client import Client, Reporter, announced_heartbeat
from ..v1 import bundle_service_pb2 as pb
from .failure import ended, rpc
from .settings import DEFAULT_HEARTBEAT_INTERVAL, Settings

if TYPE_CHECKING:
    from .subscription_state import SubscriptionState


@dataclass
class Opened:
    """A stream open on one address, and what goes with it."""

    client: Client
    reporter: Reporter
    call: grpc.aio.UnaryStreamCall[pb.WatchActiveRequest, pb.WatchActiveResponse]
    deadline: float
    """Three heartbeat intervals: a stream silent for longer is dead."""
    first: pb.WatchActiveResponse | None = None
    """The message read to learn that the stream is open, when the server
    answered with no headers; `read()` hands it out first."""

    def read(self) -> asyncio.Future[object]:
        """The stream's next message."""
        if self.first is not None:
            message, self.first = self.first, None
            done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            done.set_result(message)
            return done
        return asyncio.ensure_future(self.call.read())

    async def close(self) -> None:
        self.reporter.close()
        self.call.cancel()
        await self.client.close()


def new_client(settings: Settings, address: str) -> Client:
    """A client of `address`: its keepalive and its calls' timeout follow
    the heartbeat interval asked for, or the default one."""
    interval = settings.heartbeat_interval or DEFAULT_HEARTBEAT_INTERVAL
    return Client(
        address,
        tls=settings.tls,
        token=settings.token,
        keepalive_ms=max(int(interval * 1000), 100),
        call_timeout=max(3 * interval, 5.0),
    )


async def open_stream(state: SubscriptionState, address: str) -> Opened:
    """Connects, fetches the keys if none are held, sends the reports
    pending and opens the watch from the decided revision."""
    settings = state.settings
    client = new_client(settings, address)
    try:
        reporter = Reporter(client)
        if not state.jwks.keys:
            await state.refresh_keys(client)
        await state.reports.flush(reporter)
        runtime = (
            pb.RuntimeIdentity(id=settings.runtime_id, labels=settings.labels)
            if settings.runtime_id is not None
            else None
        )
        call = client.watch(
            pb.WatchActiveRequest(
                namespace=settings.namespace,
                names=settings.names,
                since_revision=state.decided,
                runtime=runtime,
            )
        )
        metadata = await rpc(asyncio.wait_for(call.initial_metadata(), client.call_timeout))
        first = None
        if not metadata:
            # gRPC hands a call that failed before any response headers came
            # (the server down, a refusal) an empty set of them, sometimes
            # before its status: empty headers say nothing yet. The stream is
            # open once a message comes; a call that ends first never was.
            message = await rpc(asyncio.wait_for(call.read(), client.call_timeout))
            if not isinstance(message, pb.WatchActiveResponse):
                raise await ended(call)
            first = message
        interval = (
            settings.heartbeat_interval
            or announced_heartbeat(metadata)
            or DEFAULT_HEARTBEAT_INTERVAL
        )
        return Opened(client, reporter, call, 3 * interval, first)
    except BaseException:
        await client.close()
        raise
