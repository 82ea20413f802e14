"""Every error the SDK raises is a `PolicyhubError`, as httpx's are
`HTTPError`s, with a `kind` that says which and, for a refusal, the gRPC
status `code`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from policyhub.v1 import bundle_service_pb2 as pb
from policyhub.v1 import bundle_service_pb2_grpc as pb_grpc

import policyhub
from policyhub.bundle import Jwks, verify_bundle
from policyhub.tree import Remembered, TreeHead


class Refusing(pb_grpc.BundleServiceServicer):
    """Serves no keys, and refuses every watch: the caller has no role."""

    async def GetSigningKeys(
        self, request: pb.GetSigningKeysRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.GetSigningKeysResponse:
        return pb.GetSigningKeysResponse()

    async def WatchActive(
        self, request: pb.WatchActiveRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.WatchActiveResponse]:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no role for payments")
        yield pb.WatchActiveResponse()


def test_every_public_error_is_a_policyhub_error_of_its_kind() -> None:
    for error in (
        policyhub.WatchError,
        policyhub.VerifyError,
        policyhub.HistoryError,
        policyhub.Lagged,
    ):
        assert issubclass(error, policyhub.PolicyhubError), error
    with pytest.raises(policyhub.PolicyhubError) as verify:
        verify_bundle("not.a.jws", Jwks())
    assert (verify.value.kind, verify.value.code) == ("verify", None)
    remembered = Remembered(origin="log")
    remembered.head = TreeHead("log", 5, b"\0" * 32, "five")
    with pytest.raises(policyhub.PolicyhubError) as history:
        remembered.judge(TreeHead("another log", 7, b"\1" * 32, "seven"))
    assert (history.value.kind, history.value.code) == ("history", None)


def test_a_refused_watch_is_a_watch_error_of_kind_refused_with_its_status() -> None:
    async def run() -> policyhub.PolicyhubError:
        server = grpc.aio.server()
        pb_grpc.add_BundleServiceServicer_to_server(Refusing(), server)  # type: ignore[no-untyped-call]
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            subscription = policyhub.Subscription(f"http://127.0.0.1:{port}", "payments")
            with pytest.raises(policyhub.PolicyhubError) as refused:
                async for _ in subscription.events():
                    pass
            return refused.value
        finally:
            await server.stop(None)

    error = asyncio.run(asyncio.wait_for(run(), 20))
    assert isinstance(error, policyhub.WatchError)
    assert (error.kind, error.code) == ("refused", grpc.StatusCode.PERMISSION_DENIED)
    assert "PERMISSION_DENIED: no role for payments" in str(error)
