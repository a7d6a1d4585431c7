"""OpenTelemetry traces end to end: sluice exports one span per model call over OTLP/HTTP to a
real receiver that decodes the protobuf with the official opentelemetry-proto classes."""

import json
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from conftest import sluice_config

HERE = Path(__file__).parent


@pytest.fixture
def receiver(tmp_path):
    out = tmp_path / "spans.jsonl"
    p = subprocess.Popen([sys.executable, str(HERE / "otlp_receiver.py"), "0", str(out)],
                         stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.startswith("otlp receiver listening on "), line
    yield line.rsplit(" ", 1)[1].strip(), out
    p.terminate()
    p.wait(5)


def read_spans(path, want, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists():
            spans = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
            if len(spans) >= want:
                return spans
        time.sleep(0.1)
    raise AssertionError(f"expected {want} spans, got {path.read_text() if path.exists() else 'none'}")


def test_gen_ai_span_per_call_with_traceparent_continued(mock, sluice_factory, receiver):
    addr, out = receiver
    top = (f"otel: {{ enabled: true, endpoint: 'http://{addr}/v1/traces', export_interval_ms: 100 }}\n"
           "caller: { sources: [header] }\n")
    routes = "- match: { path_prefix: /v1/ }\n  upstream: mock\n  inspect: {}\n"
    s = sluice_factory(upstream=mock.addr, top_extra=top, routes=routes)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = "00f067aa0ba902b7"
    client = openai.OpenAI(base_url=s.url + "/v1", api_key="sk-test", max_retries=0,
                           default_headers={"traceparent": f"00-{trace_id}-{parent}-01",
                                            "x-sluice-caller": "checkout"})
    r = client.chat.completions.create(model="gpt-4o-mini", max_tokens=50,
                                       messages=[{"role": "user", "content": "hi"}])
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}))
    spans = read_spans(out, 2)
    a, b = spans[0], spans[1]
    for sp in (a, b):
        assert sp["trace_id"] == trace_id
        assert sp["parent_span_id"] == parent
        assert sp["name"] == "chat gpt-4o-mini"
        at = sp["attributes"]
        assert at["gen_ai.operation.name"] == "chat"
        assert at["gen_ai.provider.name"] == "openai"
        assert at["gen_ai.request.model"] == "gpt-4o-mini"
        assert at["gen_ai.response.model"] == "gpt-4o-mini"
        assert at["gen_ai.usage.output_tokens"] == 16
        assert at["sluice.caller"] == "checkout"
        assert at["http.response.status_code"] == 200
    assert a["attributes"]["gen_ai.usage.input_tokens"] == r.usage.prompt_tokens
    assert a["attributes"]["gen_ai.request.max_tokens"] == 50
    assert b["attributes"]["gen_ai.request.stream"] is True
    # The upstream saw the same trace, with sluice's span as parent.
    tp = mock.requests()[-1]["headers"]["traceparent"]
    assert tp.split("-")[1] == trace_id and tp.split("-")[2] == b["span_id"]
    assert chunks


def test_collector_down_never_slows_requests(mock, sluice_factory):
    top = "otel: { enabled: true, endpoint: 'http://127.0.0.1:9/v1/traces', export_interval_ms: 100 }\n"
    routes = "- match: { path_prefix: /v1/ }\n  upstream: mock\n  inspect: {}\n"
    s = sluice_factory(upstream=mock.addr, top_extra=top, routes=routes)
    client = openai.OpenAI(base_url=s.url + "/v1", api_key="sk-test", max_retries=0)
    t0 = time.monotonic()
    for _ in range(20):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert time.monotonic() - t0 < 5
    deadline = time.time() + 10
    while time.time() < deadline and s.metric("sluice_otel_spans_dropped_total") < 1 \
            and s.metric("sluice_otel_export_failures_total") < 1:
        time.sleep(0.2)
    assert s.metric("sluice_otel_export_failures_total") + s.metric("sluice_otel_spans_dropped_total") >= 1
