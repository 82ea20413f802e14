"""The SDK's metrics and traces reach the OpenTelemetry SDK an application
configured."""

from __future__ import annotations

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from policyhub._telemetry import Telemetry


def test_decisions_and_reconnections_are_counted_and_traced() -> None:
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(tracer_provider)

    telemetry = Telemetry("payments")
    with telemetry.deciding(7):
        telemetry.decided("applied", 7)
    telemetry.decided("rejected", 8)
    telemetry.reconnecting("disconnected")

    data = reader.get_metrics_data()
    assert data is not None
    points = {
        (metric.name, tuple(sorted((point.attributes or {}).items()))): point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
        if isinstance(point, NumberDataPoint)
    }
    states = "policyhub.runtime.states"
    assert points[(states, (("namespace", "payments"), ("outcome", "applied")))] == 1
    assert points[(states, (("namespace", "payments"), ("outcome", "rejected")))] == 1
    assert points[("policyhub.runtime.revision", (("namespace", "payments"),))] == 7
    reconnections = (("namespace", "payments"), ("reason", "disconnected"))
    assert points[("policyhub.runtime.reconnections", reconnections)] == 1
    [span] = spans.get_finished_spans()
    assert span.name == "policyhub.decide"
    assert span.attributes is not None and span.attributes["policyhub.revision"] == 7
