"""A minimal OTLP/HTTP trace receiver for tests: POST /v1/traces (protobuf or JSON) → span dicts.

Real enough to catch what a collector would see: it decodes the exporter's actual protobuf payload
(``ExportTraceServiceRequest``) and flattens each span to ``name``, ids, ``parent_span_id``,
``kind`` and ``attributes``; spans are kept for assertions and can be awaited with a deadline.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.json_format import MessageToDict, Parse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


def _value(v) -> object:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def flatten(request: ExportTraceServiceRequest) -> list[dict]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append({
                    "name": span.name,
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "kind": span.kind,
                    "attributes": {a.key: _value(a.value) for a in span.attributes},
                    "resource": resource,
                    "status_code": span.status.code,
                })
    return spans


class OTLPReceiver:
    """Runs on 127.0.0.1 (OS-chosen port) in a thread; ``endpoint`` is what exporters are given."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path.rstrip("/") != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest()
                if "json" in (self.headers.get("Content-Type") or ""):
                    Parse(body.decode(), request)
                else:
                    request.ParseFromString(body)
                with receiver._lock:
                    receiver.spans.extend(flatten(request))
                    receiver.requests += 1
                payload = b""
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> OTLPReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def wait_for(self, predicate, timeout: float = 10.0) -> list[dict]:
        """Spans matching ``predicate``, waiting until at least one arrives or the deadline passes."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = [s for s in self.spans if predicate(s)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


def to_json(request: ExportTraceServiceRequest) -> str:
    return json.dumps(MessageToDict(request))
