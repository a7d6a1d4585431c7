#!/usr/bin/env python3
"""A real OTLP/HTTP trace receiver for tests: decodes with the official protobuf classes.

Owns: checking sluice's hand-written OTLP protobuf encoder against the reference decoder
(pip package `opentelemetry-proto`, which brings `protobuf`).

Usage: otlp_receiver.py PORT OUT_JSONL [--status CODE]
  PORT       port on 127.0.0.1 to listen on (0 picks a free one)
  OUT_JSONL  file to which each decoded span is appended as one JSON line
  --status   answer every export with this HTTP status instead of 200 (failure tests)

Prints `otlp receiver listening on 127.0.0.1:PORT` (flushed) once it accepts connections.
Only POST /v1/traces with `content-type: application/x-protobuf` is accepted; a body that does
not decode is answered 400 and recorded as a line {"decode_error": "..."}. Keep-alive
(HTTP/1.1) is supported, as an OpenTelemetry Collector does. Listens on loopback only.
"""

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

BODY_MAX_BYTES = 32 << 20


def any_value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(v, kind)
    if kind == "bytes_value":
        return v.bytes_value.hex()
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}


def attrs(kvs):
    out = {}
    for kv in kvs:
        if kv.key in out:
            raise ValueError(f"duplicate attribute key {kv.key!r}")
        out[kv.key] = any_value(kv.value)
    return out


def spans_of(req):
    for rs in req.resource_spans:
        resource = attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            scope = {"name": ss.scope.name, "version": ss.scope.version}
            for s in ss.spans:
                yield {
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex() or None,
                    "name": s.name,
                    "kind": s.kind,
                    "start_time_unix_nano": s.start_time_unix_nano,
                    "end_time_unix_nano": s.end_time_unix_nano,
                    "attributes": attrs(s.attributes),
                    "status": {"code": s.status.code, "message": s.status.message},
                    "has_status": s.HasField("status"),
                    "resource": resource,
                    "scope": scope,
                }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "otlp-test-receiver"

    def log_message(self, fmt, *args):  # quiet: the test reads the output file
        pass

    def reply(self, status, body=b"", ctype="application/x-protobuf"):
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def record(self, lines):
        with self.server.lock, open(self.server.out_path, "a", encoding="utf-8") as f:
            for line in lines:
                f.write(json.dumps(line, sort_keys=True) + "\n")

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        if length > BODY_MAX_BYTES:
            self.reply(413, b"too large", "text/plain")
            return
        body = self.rfile.read(length)
        if self.path != "/v1/traces":
            self.reply(404, b"not found", "text/plain")
            return
        if self.headers.get("content-type") != "application/x-protobuf":
            self.reply(415, b"want application/x-protobuf", "text/plain")
            return
        if self.server.status != 200:
            self.reply(self.server.status, b"configured failure", "text/plain")
            return
        req = ExportTraceServiceRequest()
        try:
            req.ParseFromString(body)
            spans = list(spans_of(req))
        except (DecodeError, ValueError) as e:
            self.record([{"decode_error": str(e)}])
            self.reply(400, b"bad protobuf", "text/plain")
            return
        # Headers the exporter was configured with, so tests can check they arrive.
        for s in spans:
            s["http_authorization"] = self.headers.get("authorization")
        self.record(spans)
        self.reply(200, ExportTraceServiceResponse().SerializeToString())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("port", type=int)
    ap.add_argument("out")
    ap.add_argument("--status", type=int, default=200)
    a = ap.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.daemon_threads = True
    srv.out_path = a.out
    srv.status = a.status
    srv.lock = threading.Lock()
    host, port = srv.server_address[:2]
    print(f"otlp receiver listening on {host}:{port}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
