"""Whole, verified states, and the events of a subscription."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .errors import WatchError as WatchError


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose signature, digest and subject were checked."""

    name: str
    version: int
    label: str | None
    digest: str
    """`sha256:` digest of the body's canonical JSON."""
    revision: int
    """The revision at which this version became active."""
    key_id: str
    """The key that signed it."""
    body: dict[str, Any]
    """The policy document, from the verified payload."""
    jws: str
    """The signed bundle itself, for caching or passing on."""


class Source(enum.Enum):
    """Where a state came from."""

    SERVER = "server"
    """Received from the server."""
    CACHE = "cache"
    """Read back from the last-known-good cache (verified again)."""


@dataclass(frozen=True)
class State:
    """The complete active set of a namespace (or of the policies selected)
    at one revision."""

    namespace: str
    revision: int = 0
    """Everything up to this revision is in the state."""
    bundles: dict[str, VerifiedBundle] = field(default_factory=dict)
    """Active bundles by policy name."""
    source: Source = Source.SERVER
    verified_at: float = 0.0
    """When it was verified and accepted, seconds since the epoch (kept
    through the cache)."""

    def body(self, name: str) -> dict[str, Any] | None:
        """The document of the policy `name`, if the state holds it."""
        bundle = self.bundles.get(name)
        return bundle.body if bundle is not None else None


@dataclass(frozen=True)
class FromCache:
    """At start, the last-known-good state read back from the cache and
    verified again: in force until the server answers."""

    state: State


@dataclass(frozen=True)
class Connected:
    """A stream to the server is open (the server answered it with its
    response headers); what changed after `revision` follows. A call that
    fails before the server answers is a `Disconnected`, never this."""

    revision: int
    endpoint: str
    """The address it is open to, one of the subscription's endpoints."""


@dataclass(frozen=True)
class Applied:
    """A new whole state, every bundle verified and the application's
    validation passed: it is in force, cached, and reported APPLIED."""

    state: State


@dataclass(frozen=True)
class Rejected:
    """A state refused (a bundle did not verify, or the application's
    validation refused it): the previous state stays in force, and the
    refusal is reported REJECTED."""

    revision: int
    """The refused revision (0 when not known)."""
    reason: str


@dataclass(frozen=True)
class CheckpointStale:
    """The server's newest signed checkpoint is older than the subscription's
    `max_checkpoint_age`: its replica may be cut off from its database. The
    state in force stays; the subscription reconnects."""

    revision: int
    signed_at: datetime
    age: float
    """Seconds."""


@dataclass(frozen=True)
class CheckpointFresh:
    """After `CheckpointStale`, a current checkpoint arrived."""

    revision: int
    signed_at: datetime


@dataclass(frozen=True)
class HistoryRefused:
    """The server showed a history that does not extend the one verified
    last (wound back, forked, another log, or without the witnesses'
    cosignatures required): nothing it sends is applied; the subscription
    retries after `retry_in` seconds."""

    reason: str
    verified_size: int
    retry_in: float


@dataclass(frozen=True)
class HistoryRestored:
    """The server proved that its log records a restore its operator
    declared, newer than any taken before: its tree is taken from now on."""

    reason: str
    """The operator's reason, as recorded."""
    from_size: int
    to_size: int


@dataclass(frozen=True)
class Refused:
    """The server refused the credentials of a subscription that retries
    refusals: the state in force stays; it tries again after `retry_in`
    seconds, or once the token source gives another token."""

    reason: str
    retry_in: float


@dataclass(frozen=True)
class Disconnected:
    """The stream was lost (the server went away, a reset, a bad message,
    three missed heartbeats); the subscription reconnects after `retry_in`
    seconds and resumes from `revision`."""

    reason: str
    retry_in: float
    revision: int


Event = (
    FromCache
    | Connected
    | Applied
    | Rejected
    | CheckpointStale
    | CheckpointFresh
    | HistoryRefused
    | HistoryRestored
    | Refused
    | Disconnected
)
"""What happened to a subscription."""
