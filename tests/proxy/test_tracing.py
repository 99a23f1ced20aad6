"""traceparent handling and one span per proxied request (in-memory exporter and a real OTLP receiver)."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lightmesh.proxy.http import HTTPOptions
from lightmesh.proxy.tracing import format_traceparent, make_tracer, parse_traceparent

from .backends import Backend, ProxyUnderTest, closed_port, on_uvloop, request, simple_config

INCOMING = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_parse_traceparent():
    assert parse_traceparent(INCOMING) == (0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331, 1)
    assert parse_traceparent(INCOMING.encode()) is not None
    assert parse_traceparent(INCOMING.upper()) is None  # W3C: lower-case hex only
    for bad in (None, "", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331", "ff" + INCOMING[2:],
                "00-" + "0" * 32 + "-b7ad6b7169203331-01", "00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01",
                INCOMING + "-extra", "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01"):
        assert parse_traceparent(bad) is None, bad
    # a future version may carry more fields
    assert parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x") is not None


@given(st.integers(1, 2**128 - 1), st.integers(1, 2**64 - 1), st.integers(0, 255))
def test_traceparent_round_trip(trace_id, span_id, flags):
    assert parse_traceparent(format_traceparent(trace_id, span_id, flags)) == (trace_id, span_id, flags)


def _options(exporter) -> HTTPOptions:
    return HTTPOptions(tracer=make_tracer("unused", "proxy-test", exporter=exporter, batch=False))


@on_uvloop
async def test_span_continues_incoming_trace_and_propagates_upstream():
    exporter = InMemorySpanExporter()
    async with Backend() as b, ProxyUnderTest(simple_config([b.url]), options=_options(exporter)) as p:
        resp = await request(p.port, path="/t?q=1", headers={"traceparent": INCOMING, "tracestate": "k=v"})
        assert resp.status == 200
    (span,) = exporter.get_finished_spans()
    ctx = span.get_span_context()
    assert span.name == "r"
    assert ctx.trace_id == 0x0af7651916cd43dd8448eb211c80319c
    assert span.parent.span_id == 0xb7ad6b7169203331
    attrs = dict(span.attributes)
    assert attrs["service"] == "svc" and attrs["route"] == "r" and attrs["upstream"] == b.url
    assert attrs["http.status_code"] == 200 and attrs["retries"] == 0
    # OpenTelemetry's stable HTTP names, next to the older ones
    assert attrs["http.response.status_code"] == 200 and attrs["http.request.method"] == "GET"
    assert attrs["server.address"] == "svc" and attrs["url.path"] == "/t"
    assert "error.type" not in attrs and "http.request.method_original" not in attrs
    seen = b.requests[-1]
    assert seen.header_all("traceparent") == [f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01"]
    assert seen.header("tracestate") == "k=v"


@on_uvloop
@pytest.mark.parametrize("incoming", [{}, {"traceparent": "garbage"}, {"TraceParent": "00-" + "0" * 32 + "-b7ad6b7169203331-01"}])
async def test_a_new_trace_does_not_carry_the_requests_tracestate(incoming):
    # W3C Trace Context: a tracestate without a valid traceparent belongs to no trace that goes on
    async with Backend() as b, ProxyUnderTest(simple_config([b.url]), options=_options(InMemorySpanExporter())) as p:
        resp = await request(p.port, headers={**incoming, "tracestate": "congo=t61rcWkgMzE", "X-Other": "kept"})
        assert resp.status == 200
    seen = b.requests[-1]
    assert seen.header("tracestate") is None and seen.header("x-other") == "kept"
    assert seen.header_all("traceparent") and seen.header_all("traceparent") != ["garbage"]


@on_uvloop
async def test_new_trace_without_or_with_invalid_traceparent_and_error_status():
    exporter = InMemorySpanExporter()
    cfg = simple_config({"down": [f"http://127.0.0.1:{closed_port()}"]}, routers=[
        {"name": "down", "service": "down", "middlewares": ["retry"]}],
        middlewares=[{"type": "retry", "name": "retry", "attempts": 1}])
    async with ProxyUnderTest(cfg, options=_options(exporter)) as p:
        resp = await request(p.port, headers={"traceparent": "garbage"})
        assert resp.status == 502
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert span.attributes["http.status_code"] == 502 and span.attributes["retries"] == 1
    assert span.attributes["error.type"] == "502"
    assert not span.status.is_ok


@on_uvloop
async def test_requests_the_proxy_refuses_itself_get_a_span_too():
    # a sampled trace that ends at the proxy (ACL, no route, no server) shows where and why
    exporter = InMemorySpanExporter()
    cfg = simple_config({"svc": [], "guarded": ["http://127.0.0.1:9"]}, routers=[
        {"name": "empty", "service": "svc", "match": {"hosts": ["empty"]}},
        {"name": "guarded", "service": "guarded", "match": {"hosts": ["guarded"]}, "middlewares": ["nobody"]}],
        middlewares=[{"type": "allow_list", "name": "nobody", "source_ranges": []}])
    async with ProxyUnderTest(cfg, options=_options(exporter)) as p:
        for host, status in (("guarded", 403), ("empty", 503), ("elsewhere", 404)):
            resp = await request(p.port, host=host, path="/x?secret=1", headers={"traceparent": INCOMING})
            assert resp.status == status
    spans = {s.attributes["http.status_code"]: s for s in exporter.get_finished_spans()}
    assert set(spans) == {403, 503, 404}
    assert spans[404].name == "unrouted" and spans[403].name == "guarded"  # every span has a name
    assert all(s.get_span_context().trace_id == 0x0af7651916cd43dd8448eb211c80319c for s in spans.values())
    assert spans[403].attributes["route"] == "guarded" and spans[403].attributes["upstream"] == ""
    assert spans[404].attributes["service"] == "unrouted" and spans[404].attributes["http.target"] == "/x"
    assert not spans[503].status.is_ok


@on_uvloop
async def test_tracing_off_passes_traceparent_untouched():
    async with Backend() as b, ProxyUnderTest(simple_config([b.url])) as p:
        await request(p.port, headers={"traceparent": "not-even-valid"})
        assert b.requests[-1].header_all("traceparent") == ["not-even-valid"]


def test_spans_reach_a_real_otlp_receiver():
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "observability"))
    try:
        from otlp_receiver import OTLPReceiver
    finally:
        sys.path.pop(0)

    with OTLPReceiver() as receiver:
        tracer = make_tracer(receiver.endpoint, "lightmesh-proxy-test", 1.0)

        @on_uvloop
        async def run():
            async with Backend() as b, ProxyUnderTest(simple_config([b.url]),
                                                      options=HTTPOptions(tracer=tracer)) as p:
                assert (await request(p.port, headers={"traceparent": INCOMING})).status == 200
                return b.url
        upstream = run()
        tracer.shutdown()  # flushes the batch processor
        spans = receiver.wait_for(lambda s: s["name"] == "r", timeout=10)
    assert len(spans) == 1
    span = spans[0]
    assert span["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert span["parent_span_id"] == "b7ad6b7169203331"
    assert span["attributes"]["upstream"] == upstream
    assert span["attributes"]["service"] == "svc"
    assert span["resource"]["service.name"] == "lightmesh-proxy-test"


def test_sampled_out_still_propagates():
    exporter = InMemorySpanExporter()
    tracer = make_tracer("unused", exporter=exporter, sample_ratio=0.0, batch=False)

    @on_uvloop
    async def run():
        async with Backend() as b, ProxyUnderTest(simple_config([b.url]), options=HTTPOptions(tracer=tracer)) as p:
            await request(p.port)
            await asyncio.sleep(0)
            return b.requests[-1].header("traceparent")
    sent = run()
    parsed = parse_traceparent(sent)
    assert parsed is not None and parsed[2] & 0x01 == 0  # sampled flag cleared
    assert not exporter.get_finished_spans()


@on_uvloop
async def test_a_failing_tracer_never_fails_requests():
    class Broken:
        def start(self, *args):
            raise RuntimeError("exporter exploded")

    async with Backend() as b, ProxyUnderTest(simple_config([b.url]), options=HTTPOptions(tracer=Broken())) as p:
        resp = await request(p.port, headers={"traceparent": INCOMING})
        assert resp.status == 200
        assert b.requests[-1].header("traceparent") == INCOMING  # untouched when no span


@on_uvloop
async def test_a_method_outside_the_known_list_is_other_with_the_original_kept():
    exporter = InMemorySpanExporter()
    async with ProxyUnderTest(simple_config({"svc": []}), options=_options(exporter)) as p:
        for method in ("BAN", "get"):
            assert (await request(p.port, method=method)).status == 503
    spans = exporter.get_finished_spans()
    assert [(s.attributes["http.request.method"], s.attributes["http.request.method_original"]) for s in spans] == [
        ("_OTHER", "BAN"), ("_OTHER", "get")]


@on_uvloop
async def test_two_traceparent_headers_start_a_new_trace():
    exporter = InMemorySpanExporter()
    async with Backend() as b, ProxyUnderTest(simple_config([b.url]), options=_options(exporter)) as p:
        from .backends import RawClient
        client = await RawClient.connect(p.port)
        await client.send(b"GET / HTTP/1.1\r\nHost: svc\r\ntraceparent: " + INCOMING.encode() +
                          b"\r\ntraceparent: " + INCOMING.encode() + b"\r\n\r\n")
        assert (await client.response()).status == 200
        await client.close()
        assert (await request(p.port, headers={"traceparent": INCOMING})).status == 200  # the control
    first, second = exporter.get_finished_spans()
    assert first.parent is None and first.get_span_context().trace_id != 0x0af7651916cd43dd8448eb211c80319c
    assert second.parent.span_id == 0xb7ad6b7169203331


def test_stopping_with_a_collector_that_never_answers_is_bounded():
    # A proxy stopping for a rollout flushed its queued spans to a hung collector for 10 s per export
    # (7–20 s in all), and the supervisor killed the worker. The flush now gives up after 2 s.
    from lightmesh import otel

    with socket.socket() as hung:  # listens, never accepts: every export waits out its timeout
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        tracer = make_tracer("http://127.0.0.1:%d" % hung.getsockname()[1], "lightmesh-proxy-test", 1.0)
        spans = tracer.provider.get_tracer("test")
        for i in range(1500):  # three batches' worth
            spans.start_span(f"s{i}").end()
        start = time.monotonic()
        tracer.shutdown()
        took = time.monotonic() - start
    assert otel.SHUTDOWN_SECONDS - 0.5 <= took < otel.SHUTDOWN_SECONDS + 3, took  # waited, then gave up
