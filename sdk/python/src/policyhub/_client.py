"""One connection to the server: the channel (TLS or not), the token on
every call, and the calls a subscription makes, typed."""

from __future__ import annotations

import asyncio
import dataclasses
import urllib.parse
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio

from .bundle import Jwk, Jwks
from .v1 import bundle_service_pb2 as pb
from .v1 import bundle_service_pb2_grpc as pb_grpc

HEARTBEAT_INTERVAL_HEADER = "policyhub-heartbeat-interval-ms"
"""The response header of WatchActive in which the server says its
heartbeat interval, in milliseconds."""

# Codes that new credentials or a fixed request may cure, but not a retry.
PERMANENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


@dataclasses.dataclass(frozen=True)
class Tls:
    """TLS for `https://` endpoints: the CA that signed the server's
    certificate (PEM; `None`: the system's roots) and, for mutual TLS, the
    client's certificate chain and private key (PEM)."""

    ca_certificate: bytes | None = None
    client_certificate: bytes | None = None
    client_key: bytes | None = None
    server_name: str | None = None
    """Overrides the name the server's certificate is checked against."""


class Client:
    """A channel to one address and the BundleService calls on it."""

    def __init__(
        self,
        address: str,
        *,
        tls: Tls | None,
        token: Callable[[], str | None] | None,
        keepalive_ms: int,
        call_timeout: float,
    ) -> None:
        parts = urllib.parse.urlsplit(address)
        secure = parts.scheme == "https"
        # host:port alone (the subscription refused any other shape of
        # address; a trailing "/" is no part of gRPC's target), with the
        # scheme's port when the address names none.
        target = parts.netloc if parts.port else f"{parts.netloc}:{443 if secure else 80}"
        options: list[tuple[str, Any]] = [
            # A channel of its own per subscription, so that each runtime has
            # its own connection, as it would in its own process.
            ("grpc.use_local_subchannel_pool", 1),
            # HTTP/2 pings find a half-open connection between heartbeats.
            ("grpc.keepalive_time_ms", keepalive_ms),
            ("grpc.keepalive_timeout_ms", keepalive_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.enable_retries", 0),
        ]
        if secure:
            tls = tls or Tls()
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            credentials = grpc.ssl_channel_credentials(
                root_certificates=tls.ca_certificate,
                private_key=tls.client_key,
                certificate_chain=tls.client_certificate,
            )
            self.channel = grpc.aio.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.aio.insecure_channel(target, options=options)
        # The generated stub is untyped; its calls are typed here, once.
        stub: Any = pb_grpc.BundleServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self._stub = stub
        self._token = token
        self.call_timeout = call_timeout

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The token of the next call, read again from its source."""
        token = self._token() if self._token is not None else None
        return (("authorization", f"Bearer {token.strip()}"),) if token else ()

    async def signing_keys(self) -> tuple[Jwks, frozenset[str]]:
        """The keys that verify, and the ids of the revoked ones."""
        reply: pb.GetSigningKeysResponse = await self._stub.GetSigningKeys(
            pb.GetSigningKeysRequest(), metadata=self.metadata(), timeout=self.call_timeout
        )
        jwks = Jwks(
            tuple(
                Jwk(kty=k.kty, crv=k.crv, x=k.x, kid=k.kid, alg=k.alg, use=k.use)
                for k in reply.keys
            )
        )
        return jwks, frozenset(reply.revoked_key_ids)

    def watch(
        self, request: pb.WatchActiveRequest
    ) -> grpc.aio.UnaryStreamCall[pb.WatchActiveRequest, pb.WatchActiveResponse]:
        call: grpc.aio.UnaryStreamCall[pb.WatchActiveRequest, pb.WatchActiveResponse] = (
            self._stub.WatchActive(request, metadata=self.metadata())
        )
        return call

    async def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        reply: pb.GetConsistencyProofResponse = await self._stub.GetConsistencyProof(
            pb.GetConsistencyProofRequest(old_size=old_size, new_size=new_size),
            metadata=self.metadata(),
            timeout=self.call_timeout,
        )
        return list(reply.hashes)

    async def restore_proof(self, tree_size: int) -> pb.GetRestoreProofResponse:
        reply: pb.GetRestoreProofResponse = await self._stub.GetRestoreProof(
            pb.GetRestoreProofRequest(tree_size=tree_size),
            metadata=self.metadata(),
            timeout=self.call_timeout,
        )
        return reply

    async def report(self, request: pb.ReportStatusRequest) -> None:
        await self._stub.ReportStatus(request, metadata=self.metadata(), timeout=self.call_timeout)

    def report_stream(
        self,
    ) -> grpc.aio.StreamStreamCall[pb.ReportStatusRequest, pb.ReportStatusResponse]:
        call: grpc.aio.StreamStreamCall[pb.ReportStatusRequest, pb.ReportStatusResponse] = (
            self._stub.ReportStatusStream(metadata=self.metadata())
        )
        return call

    async def close(self) -> None:
        await self.channel.close()


def announced_heartbeat(metadata: Any) -> float | None:
    """The heartbeat interval (seconds) the server announced, if any."""
    if not metadata:
        return None
    for key, value in metadata:
        if key == HEARTBEAT_INTERVAL_HEADER:
            try:
                millis = int(value)
            except (TypeError, ValueError):
                return None
            return millis / 1000 if millis > 0 else None
    return None


class Reporter:
    """Where one connection's reports go: a ReportStatusStream opened at the
    first report, each answered before the next; or one ReportStatus call
    each where the server does not serve the stream or will not hold
    another one."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._stream: (
            grpc.aio.StreamStreamCall[pb.ReportStatusRequest, pb.ReportStatusResponse] | None
        ) = None
        self._calls = False

    async def send(self, request: pb.ReportStatusRequest) -> None:
        """Sends one report and waits for the answer; `grpc.aio.AioRpcError`
        when it cannot."""
        if self._calls:
            await self._client.report(request)
            return
        if self._stream is None:
            self._stream = self._client.report_stream()
        stream = self._stream
        try:
            await stream.write(request)
            reply = await asyncio.wait_for(stream.read(), self._client.call_timeout)
        except grpc.aio.AioRpcError as error:
            self._stream = None
            if error.code() in (
                grpc.StatusCode.UNIMPLEMENTED,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            ):
                self._calls = True
                await self._client.report(request)
                return
            raise
        except asyncio.TimeoutError as error:
            stream.cancel()
            self._stream = None
            raise ReportFailed("the report stream did not answer") from error
        except asyncio.InvalidStateError as error:
            # The call finished (its link lost) before this write: grpc.aio
            # says so with InvalidStateError, not with the call's status.
            self._stream = None
            raise ReportFailed("the report stream had ended") from error
        if reply is grpc.aio.EOF:
            self._stream = None
            raise ReportFailed("the report stream ended")

    def close(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None


class ReportFailed(Exception):
    """A report did not reach the server."""
