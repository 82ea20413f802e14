"""How fresh the server's newest signed checkpoint is: a replica cut off
from its database goes on serving, and its checkpoints stop moving."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from ..bundle import CheckpointClaims
from ..state import CheckpointFresh, CheckpointStale, Event


class Freshness:
    """The server's newest checkpoint verified, and whether it grew stale."""

    def __init__(self, max_age: float | None) -> None:
        self.max_age = max_age
        self.newest: CheckpointClaims | None = None
        self.newest_jws = ""
        self.stale = False

    @staticmethod
    def age(signed_at: datetime) -> float:
        return max(0.0, (datetime.now(timezone.utc) - signed_at).total_seconds())

    def holds(self, jws: str) -> bool:
        return bool(jws) and jws == self.newest_jws

    def observe(self, claims: CheckpointClaims, jws: str) -> Event | None:
        if self.newest is not None and self.newest.signed_at >= claims.signed_at:
            return None
        self.newest, self.newest_jws = claims, jws
        fresh = self.max_age is None or self.age(claims.signed_at) < self.max_age
        if self.stale and fresh:
            self.stale = False
            return CheckpointFresh(claims.revision, claims.signed_at)
        return None

    def deadline(self) -> float | None:
        """When (event loop time) the newest checkpoint grows too old."""
        if self.max_age is None or self.newest is None or self.stale:
            return None
        left = max(0.0, self.max_age - self.age(self.newest.signed_at))
        return asyncio.get_running_loop().time() + left

    def expire(self) -> CheckpointStale:
        self.stale = True
        assert self.newest is not None
        return CheckpointStale(
            self.newest.revision, self.newest.signed_at, self.age(self.newest.signed_at)
        )

    def __str__(self) -> str:
        if self.newest is None:
            return "no checkpoint yet"
        if self.stale and self.max_age is not None:
            return (
                f"the server's newest checkpoint (revision {self.newest.revision}, signed "
                f"{self.newest.time}) is older than {int(self.max_age * 1000)} ms: its replica "
                "may be cut off from its database"
            )
        return f"checkpoint of revision {self.newest.revision} signed {self.newest.time}"
