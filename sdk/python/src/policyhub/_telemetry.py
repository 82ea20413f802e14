"""Metrics and traces through OpenTelemetry's API, when the application has
it installed (the `telemetry` extra); otherwise nothing. Without an SDK
configured the API's no-op providers are used, as OpenTelemetry intends for
libraries.

Instruments (meter `policyhub`): `policyhub.runtime.states` (counter of
states decided, attribute `outcome`: `applied` or `rejected`),
`policyhub.runtime.reconnections` (counter, attribute `reason`: `disconnected`,
`history` or `refused`), `policyhub.runtime.revision` (gauge of the revision
in force). Each decision is a span, `policyhub.decide`, with the namespace
and revision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

try:
    from opentelemetry import metrics, trace
except ImportError:  # the telemetry extra is not installed
    metrics = None  # type: ignore[assignment]
    trace = None  # type: ignore[assignment]


class Telemetry:
    """The instruments of one subscription."""

    def __init__(self, namespace: str) -> None:
        self._namespace = namespace
        self._states: Any = None
        self._reconnections: Any = None
        self._revision: Any = None
        self._tracer: Any = None
        if metrics is not None and trace is not None:
            meter = metrics.get_meter("policyhub")
            self._states = meter.create_counter(
                "policyhub.runtime.states", description="States decided, by outcome"
            )
            self._reconnections = meter.create_counter(
                "policyhub.runtime.reconnections", description="Streams lost, by reason"
            )
            self._revision = meter.create_gauge(
                "policyhub.runtime.revision", description="The revision in force"
            )
            self._tracer = trace.get_tracer("policyhub")

    def decided(self, outcome: str, revision: int) -> None:
        if self._states is not None:
            self._states.add(1, {"namespace": self._namespace, "outcome": outcome})
            if outcome == "applied":
                self._revision.set(revision, {"namespace": self._namespace})

    def reconnecting(self, reason: str) -> None:
        if self._reconnections is not None:
            self._reconnections.add(1, {"namespace": self._namespace, "reason": reason})

    @contextlib.contextmanager
    def deciding(self, revision: int) -> Iterator[None]:
        if self._tracer is None:
            yield
            return
        attributes = {"policyhub.namespace": self._namespace, "policyhub.revision": revision}
        with self._tracer.start_as_current_span("policyhub.decide", attributes=attributes):
            yield
