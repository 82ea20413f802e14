"""`Connected` means a stream is open: the server answered the watch with
its response headers. A watch the server refuses before answering, or a
server that is down, is a `Disconnected` and nothing else; gRPC hands such
a call an empty set of headers, which once read as an open stream, so that
every retry against a server that was away said `Connected` first."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from policyhub.v1 import bundle_service_pb2 as pb
from policyhub.v1 import bundle_service_pb2_grpc as pb_grpc

import policyhub


def signing_key() -> pb.Jwk:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return pb.Jwk(kty="OKP", crv="Ed25519", x=x, kid="k1", alg="EdDSA", use="sig")


class Server(pb_grpc.BundleServiceServicer):
    """Serves its keys, and answers each watch as `answer` says: refuse it
    at once (`UNAVAILABLE` before any headers), open it and say nothing
    more, or open it with no headers of its own and send a message."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.watches = 0
        self.key = signing_key()

    async def GetSigningKeys(
        self, request: pb.GetSigningKeysRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.GetSigningKeysResponse:
        return pb.GetSigningKeysResponse(keys=[self.key])

    async def WatchActive(
        self, request: pb.WatchActiveRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.WatchActiveResponse]:
        self.watches += 1
        if self.answer == "refuse":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the database is away")
        if self.answer == "message":
            yield pb.WatchActiveResponse(revision=1)
            await asyncio.sleep(3600)
            return
        await context.send_initial_metadata(((policyhub.HEARTBEAT_INTERVAL_HEADER, "60000"),))
        await asyncio.sleep(3600)
        yield pb.WatchActiveResponse()


async def serve(servicer: Server) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    pb_grpc.add_BundleServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"http://127.0.0.1:{port}"


async def first_events(
    address: str, count: int, after_first: grpc.aio.Server | None = None
) -> list[policyhub.Event]:
    """The subscription's first `count` events; `after_first` is stopped
    once the first came."""
    subscription = policyhub.Subscription(address, "payments", backoff=(0.01, 0.05))
    events: list[policyhub.Event] = []

    async def collect() -> None:
        async for event in subscription.events():
            events.append(event)
            if len(events) == 1 and after_first is not None:
                await after_first.stop(None)
            if len(events) == count:
                return

    await asyncio.wait_for(collect(), 20)
    return events


def test_a_watch_refused_before_the_server_answers_is_no_connection() -> None:
    async def run() -> None:
        servicer = Server("refuse")
        server, address = await serve(servicer)
        try:
            events = await first_events(address, 4)
        finally:
            await server.stop(None)
        assert servicer.watches >= 4
        assert all(isinstance(event, policyhub.Disconnected) for event in events), events
        assert "UNAVAILABLE: the database is away" in events[0].reason  # type: ignore[union-attr]

    asyncio.run(run())


def test_a_server_that_went_away_is_no_connection() -> None:
    async def run() -> None:
        # The keys fetched while it was up, then every retry finds it down.
        server, address = await serve(Server("refuse"))
        events = await first_events(address, 5, after_first=server)
        assert all(isinstance(event, policyhub.Disconnected) for event in events), events

    asyncio.run(run())


@pytest.mark.parametrize(
    "answer",
    [
        # Headers of its own (the heartbeat interval), then nothing.
        "open",
        # No headers of its own, then a message: the stream opens with it.
        "message",
    ],
)
def test_a_watch_the_server_answers_is_connected(answer: str) -> None:
    async def run() -> None:
        servicer = Server(answer)
        server, address = await serve(servicer)
        try:
            [event] = await first_events(address, 1)
        finally:
            await server.stop(None)
        assert event == policyhub.Connected(0, address)

    asyncio.run(run())
