"""The outcomes decided and not yet reported (APPLIED or REJECTED), and
their report to the server on a connection's `Reporter`."""

from __future__ import annotations

import asyncio
import logging

import grpc
import grpc.aio

from .._client import Reporter, ReportFailed
from ..v1 import bundle_service_pb2 as pb
from ..v1 import types_pb2
from .revision import Revision
from .settings import Settings

_log = logging.getLogger("policyhub")


class Reports:
    """The outcomes queued, by policy name (a later one replaces an earlier
    one), and the newest revision they concern."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pending: dict[str, types_pb2.PolicyApplyStatus] = {}
        self.revision = 0

    def add(self, revision: Revision, state: int, own: dict[str, str], reason: str) -> None:
        """Queues the outcome of each bundle of `revision`: `own` holds a
        bundle's own reason, `reason` serves the others."""
        for bundle in revision.bundles:
            self.pending[bundle.name] = types_pb2.PolicyApplyStatus(
                name=bundle.name,
                version=bundle.version,
                state=state,  # type: ignore[arg-type]
                error=own.get(bundle.name, reason)[:1000],
                revision=revision.revision,
            )
        self.revision = max(self.revision, revision.revision)

    async def flush(self, reporter: Reporter) -> None:
        """Sends the queued outcomes; keeps them for the next try on failure."""
        if self.settings.runtime_id is None:
            self.pending.clear()
            return
        if not self.pending:
            return
        request = pb.ReportStatusRequest(
            namespace=self.settings.namespace,
            runtime_id=self.settings.runtime_id,
            revision=self.revision,
            policies=list(self.pending.values()),
        )
        try:
            await reporter.send(request)
        except (grpc.aio.AioRpcError, ReportFailed, asyncio.TimeoutError) as error:
            _log.warning("cannot report the applied state; retrying later: %s", error)
            return
        self.pending.clear()
