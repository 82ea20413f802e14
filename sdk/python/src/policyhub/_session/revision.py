"""A whole revision: the stream sends one in parts (`complete = false` on
all but the last), and only a whole one becomes a candidate state."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..v1 import bundle_service_pb2 as pb
from ..v1 import types_pb2
from .failure import Transient


@dataclass
class Revision:
    """A whole revision, assembled from its parts."""

    kind: int
    revision: int
    reset: bool
    bundles: list[types_pb2.Bundle] = field(default_factory=list)


class Assembler:
    """Gathers the parts of one revision (`complete = false` on all but the
    last), so that only a whole revision becomes a candidate state."""

    def __init__(self) -> None:
        self._pending: Revision | None = None

    def push(self, message: pb.WatchActiveResponse) -> Revision | None:
        pending = self._pending
        self._pending = None
        if pending is None:
            pending = Revision(message.kind, message.revision, message.reset)
        elif pending.kind != message.kind or pending.revision != message.revision:
            raise Transient(
                f"a part of revision {message.revision} interrupted revision {pending.revision}"
            )
        pending.bundles.extend(message.bundles)
        if message.complete:
            return pending
        self._pending = pending
        return None
