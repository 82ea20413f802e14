"""How a session ends: a failure to retry after a backoff (`Transient`), a
history that does not extend the one verified (`History`) or a refusal for
good (`Permanent`), and the gRPC errors turned into them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import grpc
import grpc.aio

from .._client import PERMANENT_CODES

T = TypeVar("T")


class Transient(Exception):
    """Retry after a backoff."""


class History(Exception):
    """The server's history does not extend the one verified: retry after a
    backoff, applying nothing meanwhile."""


class Permanent(Exception):
    """The server refused for good."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


def from_rpc_error(error: grpc.aio.AioRpcError) -> Exception:
    return from_status(error.code(), error.details())


def from_status(code: grpc.StatusCode, details: str | None) -> Exception:
    """The failure a call's status says."""
    if code in PERMANENT_CODES:
        return Permanent(code, details or "")
    return Transient(f"{code.name}: {details}")


async def ended(call: grpc.aio.Call) -> Exception:
    """The failure of a call that is over."""
    code = await call.code()
    if code == grpc.StatusCode.OK:
        return Transient("the stream ended")
    return from_status(code, await call.details())


async def rpc(call: Awaitable[T]) -> T:
    """Awaits one call, its failure turned into the session's own."""
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error) from error
    except asyncio.TimeoutError as error:
        raise Transient("the server did not answer in time") from error
