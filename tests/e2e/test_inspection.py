"""Model-traffic inspection end to end: token and cost accounting, callers, TTFT, label caps.

The real sluice binary sits in front of the bundled mock (or, for malformed events, a tiny
inline Python upstream). The mock's usage numbers are deterministic: prompt tokens are
`max(1, bytes of message text // 4)`, completion tokens are the number of token events (16 by
default, `x-mock-tokens`). Metrics are flushed every 50 ms, so every check polls with a deadline.
"""

import hashlib
import http.client
import json
import math
import time

import openai
import pytest

from conftest import raw_exchange, recv_all, sluice_config, start_mock

PRICE_IN = 0.15
PRICE_OUT = 0.6

TOP = """\
caller: {{ sources: {sources}, header: x-sluice-caller, static_name: svc, fallback: unknown }}
pricing: {{ models: {{ gpt-4o-mini: {{ input_usd_per_mtok: 0.15, output_usd_per_mtok: 0.6, cached_input_usd_per_mtok: 0.075 }} }} }}
"""


def routes(inspect: str = "{ }") -> str:
    return f"""\
- match: {{ path_prefix: / }}
  upstream: mock
  inspect: {inspect}
"""


def start(sluice_factory, upstream, inspect="{ }", sources="[header, static]", telemetry=None):
    top = TOP.format(sources=sources)
    text = sluice_config(upstream, "{port}", "{admin_port}", routes=routes(inspect), top_extra=top)
    if telemetry:
        text = text.replace("telemetry: { flush_interval_ms: 50 }", telemetry)
    return sluice_factory(text)


def prompt_tokens(*texts: str) -> int:
    """The mock's prompt token count for these message texts."""
    return max(1, sum(len(t.encode()) for t in texts) // 4)


def wait_metric(s, name, expected=None, at_least=None, timeout=5.0, **labels) -> float:
    """Poll `name{labels}` until it equals `expected` (or reaches `at_least`); return the value."""
    deadline = time.time() + timeout
    v = s.metric(name, **labels)
    while time.time() < deadline:
        if expected is not None and v == expected:
            return v
        if at_least is not None and v >= at_least:
            return v
        time.sleep(0.05)
        v = s.metric(name, **labels)
    return v


def tokens(s, ty, **labels):
    return s.metric("sluice_gen_ai_tokens_total", gen_ai_token_type=ty, **labels)


def post(port, path, body, headers=None, timeout=10.0):
    """POST with http.client; returns (status, headers dict, full body bytes)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    c.request("POST", path, body=body, headers=h)
    r = c.getresponse()
    try:
        data = r.read()
    except http.client.IncompleteRead as e:
        data = e.partial
    except ConnectionResetError:
        data = b""
    out = (r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    c.close()
    return out


def sse_data(body: bytes):
    """The `data:` payloads of an SSE body, in order."""
    out = []
    for ev in body.decode().split("\n\n"):
        for line in ev.split("\n"):
            if line.startswith("data:"):
                out.append(line[5:].strip())
    return out


@pytest.fixture
def mock():
    m = start_mock()
    yield m
    m.stop()


def client(s, key="sk-test", headers=None):
    return openai.OpenAI(base_url=s.url + "/v1", api_key=key, max_retries=0, default_headers=headers or {})


# --- JSON chat: exact tokens, cost, callers ---------------------------------------------------


def test_json_chat_tokens_and_cost_exact_with_header_caller(mock, sluice_factory):
    s = start(sluice_factory, mock.addr)
    c = client(s, headers={"x-sluice-caller": "team-a"})
    sent_in = sent_out = 0
    expected_cost = 0.0
    for i, (content, n) in enumerate([("Hello there", 16), ("x" * 101, 7), ("a longer prompt " * 9, 33)]):
        r = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": content}],
                                      extra_headers={"x-mock-tokens": str(n)})
        assert r.choices[0].message.content
        assert r.usage.prompt_tokens == prompt_tokens(content)
        assert r.usage.completion_tokens == n
        sent_in += r.usage.prompt_tokens
        sent_out += r.usage.completion_tokens
        expected_cost += r.usage.prompt_tokens * PRICE_IN + r.usage.completion_tokens * PRICE_OUT
    lab = dict(caller="team-a", gen_ai_request_model="gpt-4o-mini", gen_ai_provider_name="openai", estimated="false")
    assert wait_metric(s, "sluice_gen_ai_tokens_total", sent_out, gen_ai_token_type="output", **lab) == sent_out
    assert tokens(s, "input", **lab) == sent_in
    assert tokens(s, "output", caller="team-a", estimated="true") == 0
    # Micro-USD, floored with the fraction carried over: within 1 of the exact sum.
    cost = wait_metric(s, "sluice_gen_ai_cost_microusd_total", math.floor(expected_cost), caller="team-a",
                       gen_ai_request_model="gpt-4o-mini", gen_ai_provider_name="openai")
    assert abs(cost - expected_cost) <= 1, (cost, expected_cost)
    assert s.metric("sluice_gen_ai_requests_total", caller="team-a", outcome="ok") == 3
    assert s.metric("gen_ai_client_token_usage_sum", gen_ai_token_type="output", caller="team-a",
                    gen_ai_operation_name="chat") == sent_out
    assert s.metric("gen_ai_client_token_usage_count", gen_ai_token_type="input", caller="team-a") == 3
    assert s.metric("gen_ai_client_operation_duration_seconds_count", gen_ai_provider_name="openai") == 3


def test_caller_from_api_key_hash_never_exposes_key(mock, sluice_factory):
    s = start(sluice_factory, mock.addr, sources="[header, api_key_hash, static]")
    key = "sk-live-Zq8SECRETkey0123456789"
    r = client(s, key=key).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    caller = "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]
    assert wait_metric(s, "sluice_gen_ai_tokens_total", r.usage.completion_tokens, caller=caller,
                       gen_ai_token_type="output") == 16
    assert tokens(s, "input", caller=caller) == r.usage.prompt_tokens
    text = s.metrics()
    assert key not in text and "Zq8SECRET" not in text
    # x-api-key (Anthropic style) hashes the same way.
    st, _, _ = post(s.port, "/v1/messages", json.dumps(
        {"model": "claude-x", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}).encode(),
        {"x-api-key": key})
    assert st == 200
    assert wait_metric(s, "sluice_gen_ai_requests_total", 1, caller=caller, gen_ai_provider_name="anthropic") == 1
    assert key not in s.metrics() and key not in s.log()


def test_caller_static_and_fallback(mock, sluice_factory):
    s = start(sluice_factory, mock.addr, sources="[header, static]")
    client(s).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert wait_metric(s, "sluice_gen_ai_tokens_total", 16, caller="svc", gen_ai_token_type="output") == 16
    s2 = start(sluice_factory, mock.addr, sources="[header]")
    client(s2).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert wait_metric(s2, "sluice_gen_ai_tokens_total", 16, caller="unknown", gen_ai_token_type="output") == 16


# --- streaming --------------------------------------------------------------------------------


def test_stream_client_asked_usage_counted_exactly(mock, sluice_factory):
    s = start(sluice_factory, mock.addr, inspect="{ include_usage: inject }")
    c = client(s, headers={"x-sluice-caller": "streamer"})
    content = "stream me some tokens please"
    chunks = list(c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": content}],
                                            stream=True, stream_options={"include_usage": True},
                                            extra_headers={"x-mock-tokens": "12"}))
    usage = [ch.usage for ch in chunks if ch.usage]
    assert len(usage) == 1, "the client asked for usage and must still get its usage chunk"
    assert usage[0].completion_tokens == 12 and usage[0].prompt_tokens == prompt_tokens(content)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    lab = dict(caller="streamer", estimated="false")
    assert wait_metric(s, "sluice_gen_ai_tokens_total", 12, gen_ai_token_type="output", **lab) == 12
    assert tokens(s, "input", **lab) == prompt_tokens(content)


def test_stream_inject_usage_is_hidden_from_client(mock, sluice_factory):
    s = start(sluice_factory, mock.addr, inspect="{ include_usage: inject }")
    content = "no usage asked by me"
    # SDK: the stream looks exactly like a stream without usage.
    chunks = list(client(s, headers={"x-sluice-caller": "inj"}).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": content}], stream=True))
    assert chunks and all(ch.choices for ch in chunks), "a usage-only chunk leaked to the client"
    assert all(ch.usage is None for ch in chunks)
    rec = json.loads(mock.requests()[-1]["body"])
    assert rec["stream_options"]["include_usage"] is True
    # Raw HTTP: every data event has non-empty choices, and the stream ends with [DONE].
    st, h, body = post(s.port, "/v1/chat/completions", json.dumps(
        {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": content}]}).encode(),
        {"x-sluice-caller": "inj", "x-mock-tokens": "5"})
    assert st == 200 and h["content-type"].startswith("text/event-stream")
    events = sse_data(body)
    assert events[-1] == "[DONE]"
    for e in events[:-1]:
        assert json.loads(e)["choices"], f"usage-only chunk reached the client: {e}"
    assert json.loads(mock.requests()[-1]["body"])["stream_options"] == {"include_usage": True}
    lab = dict(caller="inj", estimated="false")
    assert wait_metric(s, "sluice_gen_ai_tokens_total", 21, gen_ai_token_type="output", **lab) == 21
    assert tokens(s, "input", **lab) == 2 * prompt_tokens(content)
    assert tokens(s, "output", caller="inj", estimated="true") == 0


def test_stream_without_usage_and_inject_off_is_estimated(mock, sluice_factory):
    s = start(sluice_factory, mock.addr, inspect="{ include_usage: off }")
    chunks = list(client(s, headers={"x-sluice-caller": "est"}).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "estimate me"}], stream=True))
    assert all(ch.usage is None for ch in chunks)
    assert "stream_options" not in json.loads(mock.requests()[-1]["body"])
    # The BPE tables load on a background thread at start: slow in a debug build on a busy machine.
    out = wait_metric(s, "sluice_gen_ai_tokens_total", at_least=1, timeout=60, caller="est", gen_ai_token_type="output",
                      estimated="true")
    assert out > 0
    assert tokens(s, "output", caller="est", estimated="false") == 0


def test_anthropic_messages_json_and_stream(mock, sluice_factory):
    s = start(sluice_factory, mock.addr)
    msgs = [{"role": "user", "content": "Tell me about sluices."}]
    body = {"model": "claude-3-5-haiku", "max_tokens": 64, "system": "be brief", "messages": msgs}
    st, _, data = post(s.port, "/v1/messages", json.dumps(body).encode(),
                       {"x-sluice-caller": "anth", "x-mock-tokens": "9"})
    assert st == 200
    j = json.loads(data)
    assert j["usage"] == {"input_tokens": prompt_tokens("Tell me about sluices.", "be brief"), "output_tokens": 9}
    st, h, data = post(s.port, "/v1/messages", json.dumps(dict(body, stream=True)).encode(),
                       {"x-sluice-caller": "anth", "x-mock-tokens": "11"})
    assert st == 200 and b"event: message_stop" in data
    p = j["usage"]["input_tokens"]
    lab = dict(caller="anth", gen_ai_provider_name="anthropic", gen_ai_request_model="claude-3-5-haiku",
               estimated="false")
    assert wait_metric(s, "sluice_gen_ai_tokens_total", 20, gen_ai_token_type="output", **lab) == 20
    assert tokens(s, "input", **lab) == 2 * p
    assert s.metric("sluice_gen_ai_requests_total", caller="anth", gen_ai_provider_name="anthropic",
                    outcome="ok") == 2


def test_tgi_generate_stream(mock, sluice_factory):
    s = start(sluice_factory, mock.addr)
    inputs = "What is a sluice gate?"
    st, h, data = post(s.port, "/generate_stream", json.dumps(
        {"inputs": inputs, "parameters": {"max_new_tokens": 20}}).encode(),
        {"x-sluice-caller": "tgi-user", "x-mock-tokens": "7"})
    assert st == 200
    last = json.loads(sse_data(data)[-1])
    assert last["details"]["generated_tokens"] == 7
    st, _, data = post(s.port, "/generate", json.dumps({"inputs": inputs}).encode(),
                       {"x-sluice-caller": "tgi-user", "x-mock-tokens": "5"})
    assert st == 200 and json.loads(data)["details"]["generated_tokens"] == 5
    lab = dict(caller="tgi-user", gen_ai_provider_name="tgi", estimated="false")
    assert wait_metric(s, "sluice_gen_ai_tokens_total", 12, gen_ai_token_type="output", **lab) == 12
    assert tokens(s, "input", **lab) == 2 * prompt_tokens(inputs)
    assert s.metric("gen_ai_client_token_usage_count", caller="tgi-user", gen_ai_operation_name="text_completion",
                    gen_ai_token_type="output") == 2


def test_ttft_and_time_per_output_token_recorded_for_streams(mock, sluice_factory):
    """Mock: first token after 100 ms, then one every 20 ms; 6 tokens. Three dialects."""
    s = start(sluice_factory, mock.addr)
    timing = {"x-mock-ttft-ms": "100", "x-mock-itl-ms": "20", "x-mock-tokens": "6", "x-sluice-caller": "lat"}
    c = client(s, headers=timing)
    list(c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True))
    post(s.port, "/v1/messages", json.dumps({"model": "claude-x", "max_tokens": 9, "stream": True,
                                            "messages": [{"role": "user", "content": "hi"}]}).encode(), timing)
    post(s.port, "/generate_stream", json.dumps({"inputs": "hi"}).encode(), timing)
    for provider in ("openai", "anthropic", "tgi"):
        assert wait_metric(s, "gen_ai_server_time_to_first_token_seconds_count", 1,
                           gen_ai_provider_name=provider) == 1, provider
        ttft = s.metric("gen_ai_server_time_to_first_token_seconds_sum", gen_ai_provider_name=provider)
        assert 0.1 <= ttft < 2.0, (provider, ttft)
        assert s.metric("gen_ai_server_time_per_output_token_seconds_count", gen_ai_provider_name=provider) == 1
        tpot = s.metric("gen_ai_server_time_per_output_token_seconds_sum", gen_ai_provider_name=provider)
        assert 0.015 <= tpot < 0.5, (provider, tpot)
        dur = s.metric("gen_ai_client_operation_duration_seconds_sum", gen_ai_provider_name=provider)
        assert dur >= 0.1 + 5 * 0.02, (provider, dur)
    # A non-streaming call records no TTFT.
    c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert wait_metric(s, "sluice_gen_ai_requests_total", 4, caller="lat") == 4
    assert s.metric("gen_ai_server_time_to_first_token_seconds_count", gen_ai_provider_name="openai") == 1


@pytest.mark.parametrize("include_usage", ["off", "inject"])
def test_upstream_cut_mid_stream_counted_as_aborted(mock, sluice_factory, include_usage):
    # With inject the response goes through the rewriting path: a cut must still not look finished.
    s = start(sluice_factory, mock.addr, inspect=f"{{ include_usage: {include_usage} }}")
    body = json.dumps({"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
                       "messages": [{"role": "user", "content": "cut me off"}]}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nx-sluice-caller: cut\r\nx-mock-reset-after: 3\r\n"
            f"x-mock-itl-ms: 2\r\n\r\n").encode()
    data = raw_exchange(s.port, head + body)
    assert data.startswith(b"HTTP/1.1 200")
    assert b"Hello" in data, "the tokens before the cut reach the client"
    assert b"[DONE]" not in data and not data.endswith(b"0\r\n\r\n"), "a cut stream must not look complete"
    assert wait_metric(s, "sluice_gen_ai_requests_total", 1, caller="cut", outcome="aborted") == 1
    assert s.metric("sluice_gen_ai_requests_total", caller="cut", outcome="ok") == 0
    assert wait_metric(s, "sluice_gen_ai_tokens_total", at_least=1, caller="cut", gen_ai_token_type="output") > 0
    assert wait_metric(s, "sluice_streams_aborted_total", at_least=1, side="upstream") >= 1


# --- malformed upstream events ----------------------------------------------------------------


MALFORMED_SSE = (
    b'data: {"id":"m1","object":"chat.completion.chunk","model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}\n\n'
    b'data: {"id":"m1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":\n\n'
    b'data: {"id":"m1","object":"chat.completion.chunk","model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b'data: {"id":"m1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
    b"data: [DONE]\n\n"
)


def _canned(ctype: str, body: bytes):
    """A PyUpstream answer: one fixed (content type, body), then close."""
    def respond(h, head, req_body):
        h.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
                      b"connection: close\r\n\r\n" % (ctype.encode(), len(body)) + body)
    return respond


def _trickle(body: bytes):
    """A PyUpstream answer: an SSE body written one byte (one chunk) at a time."""
    def respond(h, head, req_body):
        h.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                      b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n")
        for b in body:
            h.wfile.write(b"1\r\n" + bytes([b]) + b"\r\n")
            h.wfile.flush()
        h.wfile.write(b"0\r\n\r\n")
    return respond


@pytest.fixture
def canned_upstream(py_upstream):
    """A tiny Python upstream serving a fixed response: `canned_upstream(ctype, body)` -> addr."""
    return lambda ctype, body: py_upstream(_canned(ctype, body)).addr


@pytest.fixture
def malformed_upstream(canned_upstream):
    return canned_upstream("text/event-stream", MALFORMED_SSE)


def test_malformed_upstream_event_forwarded_untouched_and_counted(malformed_upstream, sluice_factory):
    s = start(sluice_factory, malformed_upstream)
    st, h, data = post(s.port, "/v1/chat/completions", json.dumps(
        {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
         "messages": [{"role": "user", "content": "hello"}]}).encode(), {"x-sluice-caller": "mal"})
    assert st == 200
    assert data == MALFORMED_SSE, "sluice must forward a stream it cannot parse byte for byte"
    assert wait_metric(s, "sluice_gen_ai_malformed_events_total", at_least=1, gen_ai_provider_name="openai") >= 1
    # The well-formed usage chunk after the bad event is still counted.
    assert wait_metric(s, "sluice_gen_ai_tokens_total", 2, caller="mal", gen_ai_token_type="output") == 2


# --- over-limit bodies, label caps ------------------------------------------------------------


def big_body(n=4096):
    return json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "z" * n}]}).encode()


def test_over_limit_pass_forwards_uninspected(mock, sluice_factory):
    s = start(sluice_factory, mock.addr, inspect="{ body_bytes_max: 2048, over_limit: pass }")
    body = big_body()
    st, _, data = post(s.port, "/v1/chat/completions", body, {"x-sluice-caller": "big"})
    assert st == 200 and json.loads(data)["object"] == "chat.completion"
    assert mock.requests()[-1]["body"] == body.decode()
    assert wait_metric(s, "sluice_gen_ai_uninspected_total", 1, caller="big") == 1
    # The response is still inspected: the provider's usage counts, exactly.
    assert wait_metric(s, "sluice_gen_ai_tokens_total", 1024, caller="big", gen_ai_token_type="input") == 1024
    # A small body on the same route is inspected as usual and not counted as uninspected.
    st, _, _ = post(s.port, "/v1/chat/completions", big_body(100), {"x-sluice-caller": "big"})
    assert st == 200
    assert wait_metric(s, "sluice_gen_ai_tokens_total", 1024 + 25, caller="big", gen_ai_token_type="input") == 1049
    assert s.metric("sluice_gen_ai_uninspected_total", caller="big") == 1


def test_over_limit_chunked_body_is_forwarded_as_it_came(mock, sluice_factory):
    """A chunked body over body_bytes_max, arriving in several reads: the part sluice read while
    buffering and the rest it streams reach the upstream as the same body, counted uninspected."""
    import socket
    s = start(sluice_factory, mock.addr, inspect="{ body_bytes_max: 2048, over_limit: pass }")
    body = big_body()
    parts = [body[i:i + 1500] for i in range(0, len(body), 1500)]
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"x-sluice-caller: chunky\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        c.sendall(head)
        for p in parts:
            c.sendall(b"%x\r\n" % len(p) + p + b"\r\n")
            time.sleep(0.05)  # separate reads on sluice's side
        c.sendall(b"0\r\n\r\n")
        out = recv_all(c, timeout=10)
    assert out.startswith(b"HTTP/1.1 200"), out[:200]
    assert mock.requests()[-1]["body"] == body.decode()
    assert wait_metric(s, "sluice_gen_ai_uninspected_total", 1, caller="chunky") == 1


def test_compressed_request_on_inspect_only_route_is_uninspected(mock, sluice_factory):
    import gzip
    s = start(sluice_factory, mock.addr, inspect="{ include_usage: inject }")
    body = gzip.compress(json.dumps({"model": "gpt-4o-mini", "stream": True,
                                     "messages": [{"role": "user", "content": "hi"}]}).encode())
    post(s.port, "/v1/chat/completions", body, {"Content-Encoding": "gzip", "x-sluice-caller": "gz"})
    # Forwarded as received (no PII filter decodes it), never rewritten, and counted.
    [rec] = mock.requests()
    assert rec["headers"].get("content-encoding") == "gzip"
    assert wait_metric(s, "sluice_gen_ai_uninspected_total", 1, caller="gz") == 1


def test_over_limit_reject_answers_413(mock, sluice_factory):
    s = start(sluice_factory, mock.addr, inspect="{ body_bytes_max: 2048, over_limit: reject }")
    c = client(s)
    with pytest.raises(openai.APIStatusError) as ei:
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "z" * 4096}])
    assert ei.value.status_code == 413
    err = ei.value.response.json()["error"]
    assert err["message"] and err["type"] and err["code"]
    assert mock.requests() == []


def test_caller_label_cap(mock, sluice_factory):
    s = start(sluice_factory, mock.addr,
              telemetry="telemetry: { flush_interval_ms: 50, caller_labels_max: 2, model_labels_max: 64 }")
    for who in ["c1", "c2", "c3", "c4"]:
        client(s, headers={"x-sluice-caller": who}).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        # One at a time so the first two seen are c1 and c2.
        assert wait_metric(s, "sluice_gen_ai_requests_total", at_least=1, caller=who if who in ("c1", "c2") else "other") >= 1
    assert wait_metric(s, "sluice_gen_ai_tokens_total", 64, gen_ai_token_type="output") == 64
    callers = set()
    for line in s.metrics().splitlines():
        if line.startswith("sluice_gen_ai_tokens_total{"):
            callers.add(line.split('caller="', 1)[1].split('"', 1)[0])
    assert callers == {"c1", "c2", "other"}
    assert tokens(s, "output", caller="other") == 32


def test_model_label_cap(mock, sluice_factory):
    s = start(sluice_factory, mock.addr,
              telemetry="telemetry: { flush_interval_ms: 50, caller_labels_max: 64, model_labels_max: 2 }")
    c = client(s, headers={"x-sluice-caller": "models"})
    for model in ["m-a", "m-b", "m-c", "m-d"]:
        c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        assert wait_metric(s, "sluice_gen_ai_requests_total", at_least=1,
                           gen_ai_request_model=model if model in ("m-a", "m-b") else "other") >= 1
    assert wait_metric(s, "sluice_gen_ai_tokens_total", 64, caller="models", gen_ai_token_type="output") == 64
    models = set()
    for line in s.metrics().splitlines():
        if line.startswith("sluice_gen_ai_tokens_total{"):
            models.add(line.split('gen_ai_request_model="', 1)[1].split('"', 1)[0])
    assert models == {"m-a", "m-b", "other"}
    assert tokens(s, "output", gen_ai_request_model="other") == 32


# --- more dialects and usage shapes ----------------------------------------------------------


def test_cached_input_tokens_priced_at_cached_rate(canned_upstream, sluice_factory):
    body = json.dumps({
        "id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100,
                  "prompt_tokens_details": {"cached_tokens": 800}},
    }).encode()
    s = start(sluice_factory, canned_upstream("application/json", body))
    for _ in range(3):
        st, _, data = post(s.port, "/v1/chat/completions", json.dumps(
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode(),
            {"x-sluice-caller": "cache"})
        assert st == 200 and data == body
    lab = dict(caller="cache", estimated="false")
    assert wait_metric(s, "sluice_gen_ai_tokens_total", 300, gen_ai_token_type="output", **lab) == 300
    assert tokens(s, "input", **lab) == 3000
    assert tokens(s, "cached_input", **lab) == 2400
    # 200 fresh * 0.15 + 800 cached * 0.075 + 100 * 0.6 = 30 + 60 + 60 = 150 micro-USD per call.
    expected = 3 * (200 * PRICE_IN + 800 * 0.075 + 100 * PRICE_OUT)
    cost = wait_metric(s, "sluice_gen_ai_cost_microusd_total", expected, caller="cache")
    assert abs(cost - expected) <= 1, (cost, expected)


def test_inject_on_legacy_completions_stream_and_explicit_false(mock, sluice_factory):
    s = start(sluice_factory, mock.addr, inspect="{ include_usage: inject }")
    cases = [
        ("/v1/completions", {"model": "gpt-4o-mini", "stream": True, "prompt": "hello world"}),
        ("/v1/chat/completions", {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": False},
                                  "messages": [{"role": "user", "content": "hello world"}]}),
    ]
    for path, req in cases:
        mock.clear()
        st, _, data = post(s.port, path, json.dumps(req).encode(), {"x-sluice-caller": "legacy", "x-mock-tokens": "4"})
        assert st == 200
        events = sse_data(data)
        assert events[-1] == "[DONE]"
        assert all(json.loads(e)["choices"] for e in events[:-1]), events
        assert "usage" not in data.decode()
        assert json.loads(mock.requests()[-1]["body"])["stream_options"]["include_usage"] is True
    lab = dict(caller="legacy", estimated="false")
    assert wait_metric(s, "sluice_gen_ai_tokens_total", 8, gen_ai_token_type="output", **lab) == 8
    assert tokens(s, "input", **lab) == 2 * prompt_tokens("hello world")


def test_embeddings_counted(mock, sluice_factory):
    s = start(sluice_factory, mock.addr)
    r = client(s, headers={"x-sluice-caller": "emb"}).embeddings.create(
        model="text-embedding-3-small", input=["hello world", "abcdefgh"])
    assert len(r.data) == 2
    assert wait_metric(s, "sluice_gen_ai_tokens_total", r.usage.prompt_tokens, caller="emb",
                       gen_ai_token_type="input", estimated="false") == r.usage.prompt_tokens == 4
    assert s.metric("gen_ai_client_token_usage_count", caller="emb", gen_ai_operation_name="embeddings",
                    gen_ai_token_type="input") == 1


@pytest.mark.parametrize("status", ["429", "500"])
def test_upstream_error_is_not_billed(mock, sluice_factory, status):
    s = start(sluice_factory, mock.addr)
    caller = f"err{status}"
    st, _, _ = post(s.port, "/v1/chat/completions", json.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "word " * 4000}]}).encode(),
        {"x-sluice-caller": caller, "x-mock-status": status})
    assert st == int(status)
    assert wait_metric(s, "sluice_gen_ai_requests_total", 1, caller=caller, outcome="error") == 1
    time.sleep(0.2)  # anything else from this exchange was flushed with the request counter
    assert s.metric("sluice_gen_ai_tokens_total", caller=caller) == 0, \
        f"tokens counted for a {status}: {s.metric('sluice_gen_ai_tokens_total', caller=caller)}"
    assert s.metric("sluice_gen_ai_cost_microusd_total", caller=caller) == 0


def _sse(event: str | None, data) -> bytes:
    d = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "").encode() + f"data: {d}\n\n".encode()


def test_anthropic_stream_with_prompt_cache(canned_upstream, sluice_factory):
    body = (
        _sse("message_start", {"type": "message_start", "message": {
            "id": "m", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-20241022", "content": [],
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20,
                      "output_tokens": 1}}})
        + _sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": "Hi"}})
        + _sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                 "usage": {"output_tokens": 7}})
        + _sse("message_stop", {"type": "message_stop"}))
    s = start(sluice_factory, canned_upstream("text/event-stream", body))
    st, _, data = post(s.port, "/v1/messages", json.dumps(
        {"model": "claude-3-5-haiku", "max_tokens": 9, "stream": True,
         "messages": [{"role": "user", "content": "hi"}]}).encode(), {"x-sluice-caller": "cache-a"})
    assert st == 200 and data == body
    lab = dict(caller="cache-a", gen_ai_provider_name="anthropic", gen_ai_request_model="claude-3-5-haiku",
               gen_ai_response_model="claude-3-5-haiku-20241022", estimated="false")
    assert wait_metric(s, "sluice_gen_ai_tokens_total", 7, gen_ai_token_type="output", **lab) == 7
    # Whole prompt (input + cache read + cache creation), cached = cache read; output is the final count.
    assert tokens(s, "input", **lab) == 130
    assert tokens(s, "cached_input", **lab) == 100
    assert s.metric("gen_ai_server_time_to_first_token_seconds_count", gen_ai_provider_name="anthropic") == 1


def test_responses_api_stream_reasoning_and_cached(canned_upstream, sluice_factory):
    body = (
        _sse("response.created", {"type": "response.created",
                                  "response": {"id": "r", "model": "gpt-4o-mini-2024-07-18", "status": "in_progress"}})
        + _sse("response.output_text.delta", {"type": "response.output_text.delta", "delta": "Hi"})
        + _sse("response.completed", {"type": "response.completed", "response": {
            "id": "r", "model": "gpt-4o-mini-2024-07-18", "status": "completed",
            "usage": {"input_tokens": 50, "input_tokens_details": {"cached_tokens": 10}, "output_tokens": 30,
                      "output_tokens_details": {"reasoning_tokens": 12}, "total_tokens": 80}}}))
    s = start(sluice_factory, canned_upstream("text/event-stream", body))
    st, _, data = post(s.port, "/v1/responses", json.dumps(
        {"model": "gpt-4o-mini", "stream": True, "input": "hi"}).encode(), {"x-sluice-caller": "resp"})
    assert st == 200 and data == body
    lab = dict(caller="resp", gen_ai_response_model="gpt-4o-mini-2024-07-18", estimated="false")
    assert wait_metric(s, "sluice_gen_ai_tokens_total", 30, gen_ai_token_type="output", **lab) == 30
    assert tokens(s, "input", **lab) == 50
    assert tokens(s, "cached_input", **lab) == 10
    assert tokens(s, "reasoning", **lab) == 12
    # Priced by the longest matching prefix of the response model (gpt-4o-mini).
    expected = 40 * PRICE_IN + 10 * 0.075 + 30 * PRICE_OUT
    cost = wait_metric(s, "sluice_gen_ai_cost_microusd_total", math.floor(expected), caller="resp")
    assert abs(cost - expected) <= 1, (cost, expected)


def test_ollama_ndjson_counted(canned_upstream, sluice_factory):
    body = (json.dumps({"model": "llama3", "message": {"role": "assistant", "content": "Hi"}, "done": False}) + "\n"
            + json.dumps({"model": "llama3", "message": {"role": "assistant", "content": ""}, "done": True,
                          "prompt_eval_count": 26, "eval_count": 9}) + "\n").encode()
    s = start(sluice_factory, canned_upstream("application/x-ndjson", body))
    st, _, data = post(s.port, "/api/chat", json.dumps(
        {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}).encode(), {"x-sluice-caller": "oll"})
    assert st == 200 and data == body
    lab = dict(caller="oll", gen_ai_provider_name="ollama", estimated="false")
    assert wait_metric(s, "sluice_gen_ai_tokens_total", 9, gen_ai_token_type="output", **lab) == 9
    assert tokens(s, "input", **lab) == 26


def _openai_stream(sep: bytes, space: bytes) -> tuple[bytes, bytes]:
    """(upstream stream with a usage chunk, what the client must get: the same minus that chunk)."""
    events = [
        b'{"id":"x","object":"chat.completion.chunk","model":"gpt-4o-mini",'
        b'"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}',
        b'{"id":"x","object":"chat.completion.chunk","model":"gpt-4o-mini",'
        b'"choices":[{"index":0,"delta":{"content":" there"},"finish_reason":"stop"}]}',
        b'{"id":"x","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}',
        b"[DONE]",
    ]
    up = b"".join(b"data:" + space + e + sep for e in events)
    client_sees = b"".join(b"data:" + space + e + sep for i, e in enumerate(events) if i != 2)
    return up, client_sees


@pytest.mark.parametrize("sep,space,trickle", [
    (b"\n\n", b" ", True), (b"\r\n\r\n", b" ", False), (b"\r\n\r\n", b" ", True),
    (b"\n\n", b"", False), (b"\r\r", b" ", False),
], ids=["lf-1byte", "crlf", "crlf-1byte", "no-space", "cr"])
def test_injected_usage_chunk_stripped_whatever_the_framing(sluice_factory, py_upstream, sep, space, trickle):
    up, expected = _openai_stream(sep, space)
    srv = py_upstream(_trickle(up) if trickle else _canned("text/event-stream", up))
    s = start(sluice_factory, srv.addr, inspect="{ include_usage: inject }")
    st, _, data = post(s.port, "/v1/chat/completions", json.dumps(
        {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode(),
        {"x-sluice-caller": "frag"})
    assert st == 200
    assert data == expected
    lab = dict(caller="frag", estimated="false")
    assert wait_metric(s, "sluice_gen_ai_tokens_total", 2, gen_ai_token_type="output", **lab) == 2
    assert tokens(s, "input", **lab) == 3


def test_api_key_hash_ignores_auth_scheme_case(mock, sluice_factory):
    s = start(sluice_factory, mock.addr, sources="[header, api_key_hash]")
    key = "sk-abc123"
    for auth in (f"Bearer {key}", f"bearer {key}", f"BEARER {key}"):
        st, _, _ = post(s.port, "/v1/chat/completions", json.dumps(
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode(), {"Authorization": auth})
        assert st == 200
    caller = "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]
    assert wait_metric(s, "sluice_gen_ai_requests_total", 3, outcome="ok") == 3
    assert s.metric("sluice_gen_ai_requests_total", caller=caller) == 3, [
        l for l in s.metrics().splitlines() if l.startswith("sluice_gen_ai_requests_total")]


def test_inject_with_openai_usage_null_on_every_chunk(canned_upstream, sluice_factory):
    """OpenAI's real shape with include_usage: `"usage": null` on content chunks, then a usage-only
    chunk. The content chunks reach the client intact; only the usage-only chunk is dropped."""
    head = {"id": "x", "object": "chat.completion.chunk", "model": "gpt-4o-mini"}
    content = [dict(head, choices=[{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}], usage=None),
               dict(head, choices=[{"index": 0, "delta": {"content": " end"}, "finish_reason": "stop"}], usage=None)]
    usage = dict(head, choices=[], usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
    up = b"".join(_sse(None, e) for e in content + [usage]) + b"data: [DONE]\n\n"
    s = start(sluice_factory, canned_upstream("text/event-stream", up), inspect="{ include_usage: inject }")
    chunks = list(client(s, headers={"x-sluice-caller": "null-usage"}).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hi end"
    assert all(c.choices for c in chunks)
    lab = dict(caller="null-usage", estimated="false")
    assert wait_metric(s, "sluice_gen_ai_tokens_total", 2, gen_ai_token_type="output", **lab) == 2
    assert tokens(s, "input", **lab) == 3


def test_curl_json_and_stream_counted(mock, sluice_factory):
    import subprocess
    s = start(sluice_factory, mock.addr, inspect="{ include_usage: inject }")
    for stream in (False, True):
        body = json.dumps({"model": "gpt-4o-mini", "stream": stream,
                           "messages": [{"role": "user", "content": "curl says hello"}]})
        out = subprocess.run(["curl", "-sS", "-N", "--fail", s.url + "/v1/chat/completions",
                              "-H", "content-type: application/json", "-H", "x-sluice-caller: curl",
                              "-H", "x-mock-tokens: 5", "--data-binary", body],
                             capture_output=True, check=True, timeout=20).stdout
        if stream:
            assert sse_data(out)[-1] == "[DONE]" and b'"usage"' not in out
        else:
            assert json.loads(out)["usage"]["completion_tokens"] == 5
    lab = dict(caller="curl", estimated="false")
    assert wait_metric(s, "sluice_gen_ai_tokens_total", 10, gen_ai_token_type="output", **lab) == 10
    assert tokens(s, "input", **lab) == 2 * prompt_tokens("curl says hello")


def test_concurrent_mixed_traffic_on_two_workers_counted_exactly(mock, sluice_factory):
    from concurrent.futures import ThreadPoolExecutor
    text = sluice_config(mock.addr, "{port}", "{admin_port}", routes=routes("{ include_usage: inject }"),
                         top_extra=TOP.format(sources="[header]"), workers=2)
    s = sluice_factory(text)

    def one(i):
        c = client(s, headers={"x-sluice-caller": f"w{i % 3}", "x-mock-tokens": str(1 + i % 7)})
        msgs = [{"role": "user", "content": f"request number {i}"}]
        if i % 2:
            return sum(1 for ch in c.chat.completions.create(model="gpt-4o-mini", messages=msgs, stream=True)
                       if ch.choices and ch.choices[0].delta.content)
        return c.chat.completions.create(model="gpt-4o-mini", messages=msgs).usage.completion_tokens

    n = 30
    with ThreadPoolExecutor(6) as ex:
        got = list(ex.map(one, range(n)))
    assert got == [1 + i % 7 for i in range(n)]
    total = sum(got)
    assert wait_metric(s, "sluice_gen_ai_tokens_total", total, gen_ai_token_type="output", estimated="false") == total
    assert s.metric("sluice_gen_ai_tokens_total", gen_ai_token_type="input") == sum(
        prompt_tokens(f"request number {i}") for i in range(n))
    for k in range(3):
        assert s.metric("sluice_gen_ai_requests_total", caller=f"w{k}", outcome="ok") == len(range(k, n, 3))


@pytest.mark.parametrize("include_usage", ["off", "inject"])
def test_client_disconnect_mid_stream_counted_as_aborted(mock, sluice_factory, include_usage):
    import socket
    s = start(sluice_factory, mock.addr, inspect=f"{{ include_usage: {include_usage} }}")
    body = json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nx-sluice-caller: gone\r\nx-mock-tokens: 200\r\n"
            f"x-mock-itl-ms: 10\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        c.sendall(head + body)
        got = b""
        while got.count(b"data:") < 5:
            chunk = c.recv(65536)
            assert chunk
            got += chunk
    assert wait_metric(s, "sluice_gen_ai_requests_total", 1, timeout=10, caller="gone", outcome="aborted") == 1
    assert wait_metric(s, "sluice_streams_aborted_total", at_least=1, side="downstream") >= 1
    out = tokens(s, "output", caller="gone")
    assert 0 < out < 200, out
