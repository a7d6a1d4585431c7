"""Self-test of the OTLP test receiver (`otlp_receiver.py`) with spans built by the official
protobuf classes, so that a failure in `tests/otel_export.rs` can be blamed on sluice's encoder
rather than on the receiver. Skipped when the pip package `opentelemetry-proto` is missing.
Binds 127.0.0.1 only."""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status  # noqa: E402

HERE = Path(__file__).resolve().parent


@pytest.fixture
def receiver(tmp_path):
    out = tmp_path / "spans.jsonl"
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "otlp_receiver.py"), "0", str(out)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("otlp receiver listening on "), line
        yield line.rsplit(" ", 1)[1], out
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def post(addr, body, ctype="application/x-protobuf"):
    req = urllib.request.Request(
        f"http://{addr}/v1/traces", data=body, method="POST", headers={"content-type": ctype}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def read_lines(path, want):
    deadline = time.time() + 5
    while time.time() < deadline:
        if path.exists():
            lines = [json.loads(x) for x in path.read_text().splitlines()]
            if len(lines) >= want:
                return lines
        time.sleep(0.02)
    return []


def test_decodes_spans_built_by_the_official_classes(receiver):
    addr, out = receiver
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "svc"
    ss = rs.scope_spans.add()
    ss.scope.name, ss.scope.version = "sluice", "0.1.0"
    s = ss.spans.add()
    s.trace_id = bytes(range(1, 17))
    s.span_id = bytes(range(1, 9))
    s.parent_span_id = bytes(range(9, 17))
    s.name = "chat m"
    s.kind = Span.SPAN_KIND_CLIENT
    s.start_time_unix_nano, s.end_time_unix_nano = 5, 7
    for key, field, value in [
        ("i", "int_value", -3),
        ("d", "double_value", 1.5),
        ("b", "bool_value", False),
        ("s", "string_value", ""),
    ]:
        a = s.attributes.add()
        a.key = key
        setattr(a.value, field, value)
    s.status.code = Status.STATUS_CODE_ERROR
    s.status.message = "boom"

    status, body = post(addr, req.SerializeToString())
    assert status == 200
    ExportTraceServiceResponse().ParseFromString(body)
    [got] = read_lines(out, 1)
    assert got["trace_id"] == bytes(range(1, 17)).hex()
    assert got["parent_span_id"] == bytes(range(9, 17)).hex()
    assert got["kind"] == 3
    assert got["attributes"] == {"i": -3, "d": 1.5, "b": False, "s": ""}
    assert got["status"] == {"code": 2, "message": "boom"}
    assert got["resource"] == {"service.name": "svc"}
    assert got["scope"] == {"name": "sluice", "version": "0.1.0"}


def test_rejects_garbage_and_wrong_content_type(receiver):
    addr, out = receiver
    assert post(addr, b"\x0a\xff\xff")[0] == 400
    assert post(addr, b"", ctype="application/json")[0] == 415
    [line] = read_lines(out, 1)
    assert "decode_error" in line
