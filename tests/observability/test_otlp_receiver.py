"""The test OTLP receiver decodes what the real OpenTelemetry SDK exporter sends."""

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from otlp_receiver import OTLPReceiver


def test_receives_spans_from_the_sdk_exporter():
    with OTLPReceiver() as receiver:
        provider = TracerProvider(resource=Resource.create({"service.name": "probe"}))
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=receiver.endpoint + "/v1/traces")))
        tracer = provider.get_tracer("probe")
        with tracer.start_as_current_span("outer", attributes={"lightmesh.service": "whoami"}):
            with tracer.start_as_current_span("inner"):
                pass
        provider.shutdown()
        spans = receiver.wait_for(lambda s: s["name"] == "outer")
        assert spans and spans[0]["attributes"]["lightmesh.service"] == "whoami"
        assert spans[0]["resource"]["service.name"] == "probe"
        [inner] = receiver.wait_for(lambda s: s["name"] == "inner")
        assert inner["parent_span_id"] == spans[0]["span_id"] and inner["trace_id"] == spans[0]["trace_id"]
