"""Access log and audit trail for model calls: tokens, model, caller, latency, TTFT, status per
request; one audit event per PII detection with its place, never its value."""

import json
import time

import openai

from conftest import raw_exchange
from test_dataplane import post, split_response


def read_json_lines(path, pred, timeout=5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists():
            rows = []
            for l in path.read_text().splitlines():
                try:
                    rows.append(json.loads(l))
                except ValueError:
                    continue
            hits = [r for r in rows if pred(r)]
            if hits:
                return hits
        time.sleep(0.05)
    raise AssertionError(f"no matching line in {path}: {path.read_text() if path.exists() else ''}")


def test_access_log_has_tokens_model_caller_ttft(mock, sluice_factory, tmp_path):
    log = tmp_path / "access.log"
    top = f"access_log: {{ enabled: true, path: {log} }}\n"
    routes = "- match: { path_prefix: /v1/ }\n  upstream: mock\n  inspect: {}\n"
    s = sluice_factory(upstream=mock.addr, top_extra=top, routes=routes)
    client = openai.OpenAI(base_url=s.url + "/v1", api_key="sk-test", max_retries=0,
                           default_headers={"x-sluice-caller": "search-svc"})
    list(client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                        messages=[{"role": "user", "content": "a secret prompt"}],
                                        stream_options={"include_usage": True}))
    row = read_json_lines(log, lambda r: r.get("stream") is True)[0]
    assert row["caller"] == "search-svc" and row["model"] == "gpt-4o-mini"
    assert row["provider"] == "openai" and row["status"] == 200
    assert row["output_tokens"] == 16 and row["input_tokens"] >= 1 and row["tokens_estimated"] is False
    assert row["ttft_us"] > 0 and row["duration_us"] >= row["ttft_us"]
    assert "a secret prompt" not in log.read_text()


def test_pii_audit_event_names_place_not_value(mock, sluice_factory):
    top = "pii: { actions: { SSN: redact } }\n"
    routes = "- match: { path_prefix: /v1/ }\n  upstream: mock\n  pii: {}\n"
    s = sluice_factory(upstream=mock.addr, top_extra=top, routes=routes)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "ssn 123-45-6789"}]}).encode()
    out = raw_exchange(s.port, post(s.port, "/v1/chat/completions", body,
                                    {"Connection": "close", "x-sluice-caller": "hr"}))
    assert split_response(out)[0] == 200
    deadline = time.time() + 5
    events = []
    while time.time() < deadline and not events:
        events = [json.loads(l) for l in s.log().splitlines()
                  if l.startswith("{") and '"pii_detection"' in l]
        time.sleep(0.05)
    assert events, s.log()
    e = events[0]
    assert e["entity"] == "SSN" and e["action"] == "redact" and e["direction"] == "request"
    assert e["path"] == "messages[0].content" and e["end"] - e["start"] == 11
    assert e["caller"] == "hr"
    assert "123-45-6789" not in s.log()


def test_pii_in_a_json_answer_is_redacted_before_the_app_sees_it(sluice_factory, py_upstream):
    """A non-streaming completion that carries PII: held (bounded), redacted, re-framed."""
    answer = json.dumps({
        "id": "c1", "object": "chat.completion", "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "Sure: her SSN is 123-45-6789."}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14},
    }).encode()

    def respond(h, head, body):
        h.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                      b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(answer), answer))

    up = py_upstream(respond)
    top = "pii: { actions: { SSN: redact } }\n"
    routes = "- match: { path_prefix: /v1/ }\n  upstream: mock\n  pii: {}\n  inspect: {}\n"
    s = sluice_factory(upstream=up.addr, top_extra=top, routes=routes)
    client = openai.OpenAI(base_url=s.url + "/v1", api_key="sk-test", max_retries=0)
    r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "Sure: her SSN is [REDACTED:SSN]."
    assert r.usage.completion_tokens == 9
    deadline = time.time() + 5
    while time.time() < deadline and s.metric("sluice_pii_detections_total", direction="response") < 1:
        time.sleep(0.05)
    assert s.metric("sluice_pii_detections_total", entity="SSN", direction="response") == 1
    assert s.metric("sluice_gen_ai_tokens_total", gen_ai_token_type="output") == 9
    assert "123-45-6789" not in s.log()
