"""Which of a subscription's server addresses to use, and which next.

Each runtime ranks the addresses by rendezvous hashing: the weight of an
address is the first eight bytes (big-endian) of SHA-256(runtime id, 0x00,
address), and the heaviest is preferred, the same ranking as every other
implementation of the contract. Without a runtime id the ranking is random.
A failure moves to the next address; only a whole round of failures calls
for the backoff.
"""

from __future__ import annotations

import hashlib
import random


def weight(runtime_id: str, endpoint: str) -> int:
    """The rendezvous weight of `endpoint` for the runtime `runtime_id`."""
    digest = hashlib.sha256(runtime_id.encode() + b"\x00" + endpoint.encode()).digest()
    return int.from_bytes(digest[:8], "big")


class Endpoints:
    """The addresses in the runtime's order of preference, and the one in use."""

    def __init__(self, endpoints: list[str], runtime_id: str | None) -> None:
        ranked = sorted(set(endpoints))
        if runtime_id is None:
            random.shuffle(ranked)
        else:
            ranked.sort(key=lambda endpoint: weight(runtime_id, endpoint), reverse=True)
        self.ranked = ranked
        self._at = 0
        self._failed_in_a_row = 0

    @property
    def current(self) -> str:
        """The address in use."""
        return self.ranked[self._at]

    @property
    def preferred(self) -> str:
        """The runtime's first choice."""
        return self.ranked[0]

    def on_preferred(self) -> bool:
        """Whether the address in use is the first choice."""
        return self._at == 0

    def settled(self) -> None:
        """A stream stayed open a while: failures count from zero again."""
        self._failed_in_a_row = 0

    def moved_to_preferred(self) -> None:
        """A stream opened on the first choice, now in use."""
        self._at = 0

    def failed(self) -> bool:
        """The address in use failed: the next one is in use. True when every
        address has now failed in a row, a whole round: time for the backoff."""
        self._at = (self._at + 1) % len(self.ranked)
        self._failed_in_a_row += 1
        if self._failed_in_a_row >= len(self.ranked):
            self._failed_in_a_row = 0
            return True
        return False
