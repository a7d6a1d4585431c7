"""Routing and resilience end to end: matches, splits, aliases, breaker, cool-down, failover,
retries, throttling, SSE keep-alives. Real sluice binary, several bundled mocks with runtime
fault injection (`POST /__mock/fault`), raw HTTP, curl and the official openai SDK."""

import http.client
import json
import socket
import subprocess
import textwrap
import time
import urllib.request

import openai
import pytest

from conftest import chat_body, start_mock


@pytest.fixture
def mocks():
    started = []

    def make(*args, **kw):
        m = start_mock(*args, **kw)
        started.append(m)
        return m

    yield make
    for m in started:
        m.stop()


def set_fault(mock, status=None, retry_after_s=1):
    body = json.dumps({"status": status, "retry_after_s": retry_after_s}).encode()
    req = urllib.request.Request(f"{mock.base}/__mock/fault", data=body, method="POST",
                                 headers={"content-type": "application/json"})
    assert json.loads(urllib.request.urlopen(req, timeout=5).read())["status"] == status


def model_requests(mock):
    return [r for r in mock.requests() if not r["path"].startswith("/__mock")]


def config(routes: str, upstreams: str, workers: int = 1, listener_extra: str = "") -> str:
    return textwrap.dedent("""\
        workers: {workers}
        admin: {{ bind: 127.0.0.1:{{admin_port}} }}
        telemetry: {{ flush_interval_ms: 50 }}
        access_log: {{ enabled: true, path: stdout }}
        listeners:
          - name: outbound
            bind: 127.0.0.1:{{port}}
        {listener_extra}    routes:
        {routes}
        upstreams:
        {upstreams}
        """).format(workers=workers, listener_extra=textwrap.indent(listener_extra, "    "),
                    routes=textwrap.indent(textwrap.dedent(routes), "      "),
                    upstreams=textwrap.indent(textwrap.dedent(upstreams), "  "))


class Client:
    """One keep-alive connection to sluice."""

    def __init__(self, port):
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def post(self, body: bytes, headers=None, path="/v1/chat/completions"):
        h = {"content-type": "application/json"}
        h.update(headers or {})
        self.c.request("POST", path, body=body, headers=h)
        r = self.c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data

    def get(self, path="/v1/models", headers=None):
        self.c.request("GET", path, headers=headers or {})
        r = self.c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def test_canary_header_and_body_model_route(mocks, sluice_factory):
    stable, canary, fast = mocks(), mocks(), mocks()
    cfg = config(
        routes="""\
        - name: canary
          match: { path_prefix: /v1/, headers: { x-model-version: canary } }
          upstream: canary
        - name: by-model
          match: { path_prefix: /v1/, model: small-one }
          upstream: fast
        - name: default
          match: { path_prefix: / }
          upstream: stable
        """,
        upstreams=f"""\
        stable: {{ endpoints: ["{stable.addr}"] }}
        canary: {{ endpoints: ["{canary.addr}"] }}
        fast: {{ endpoints: ["{fast.addr}"] }}
        """)
    s = sluice_factory(cfg)
    c = Client(s.port)
    for _ in range(5):
        st, h, _ = c.post(chat_body(), {"X-Model-Version": "canary"})
        assert st == 200 and h["x-sluice-upstream"] == "canary/gpt-4o-mini"
        st, h, _ = c.post(chat_body())
        assert st == 200 and h["x-sluice-upstream"] == "stable/gpt-4o-mini", h
        st, h, _ = c.post(chat_body(model="small-one"))
        assert st == 200 and h["x-sluice-upstream"] == "fast/small-one", h
    assert len(model_requests(canary)) == 5
    assert len(model_requests(stable)) == 5
    assert len(model_requests(fast)) == 5
    # Routing on the body's model keeps the body intact and correctly framed.
    assert json.loads(model_requests(fast)[0]["body"])["model"] == "small-one"


def test_weighted_split_90_10_over_2000_requests(mocks, sluice_factory):
    a, b = mocks(record=0), mocks(record=0)
    cfg = config(
        routes="""\
        - match: { path_prefix: / }
          upstream: a
          split:
            arms:
              - { upstream: a, weight: 90 }
              - { upstream: b, weight: 10 }
        """,
        upstreams=f"""\
        a: {{ endpoints: ["{a.addr}"] }}
        b: {{ endpoints: ["{b.addr}"] }}
        """, workers=2)
    s = sluice_factory(cfg)
    c = Client(s.port)
    counts = {"a": 0, "b": 0}
    for _ in range(2000):
        st, h, _ = c.get()
        assert st == 200
        counts[h["x-sluice-upstream"]] += 1
    # Expected 200 on b; 3.5 sigma of a binomial(2000, 0.1) is about 47.
    assert 150 <= counts["b"] <= 250, counts


def test_sticky_split_keeps_a_user_on_one_arm(mocks, sluice_factory):
    a, b = mocks(record=0), mocks(record=0)
    cfg = config(
        routes="""\
        - match: { path_prefix: / }
          upstream: a
          split:
            sticky_header: x-user-id
            arms:
              - { upstream: a, weight: 50 }
              - { upstream: b, weight: 50 }
        """,
        upstreams=f"""\
        a: {{ endpoints: ["{a.addr}"] }}
        b: {{ endpoints: ["{b.addr}"] }}
        """, workers=2)
    s = sluice_factory(cfg)
    arms_used = set()
    for user in range(40):
        seen = set()
        for _ in range(5):
            c = Client(s.port)  # new connections: possibly another worker
            st, h, _ = c.get(headers={"x-user-id": f"user-{user}"})
            assert st == 200
            seen.add(h["x-sluice-upstream"])
        assert len(seen) == 1, (user, seen)
        arms_used |= seen
    assert arms_used == {"a", "b"}


def test_alias_rewrites_model_for_the_upstream(mocks, sluice_factory):
    m = mocks()
    cfg = config(
        routes="""\
        - match: { path_prefix: / }
          upstream: openai
        """,
        upstreams=f"""\
        openai:
          endpoints: ["{m.addr}"]
          model_aliases: {{ fast: gpt-4o-mini, smart: gpt-4o }}
        """)
    s = sluice_factory(cfg)
    c = Client(s.port)
    st, h, body = c.post(chat_body(model="fast", content="x" * 300))
    assert st == 200, body
    assert h["x-sluice-upstream"] == "openai/gpt-4o-mini"
    rec = model_requests(m)[-1]
    sent = json.loads(rec["body"])
    assert sent["model"] == "gpt-4o-mini"
    assert sent["messages"][0]["content"] == "x" * 300
    assert int(rec["headers"]["content-length"]) == len(rec["body"].encode())
    # Not an alias: untouched, same bytes.
    raw = chat_body(model="other")
    st, h, _ = c.post(raw)
    assert st == 200 and h["x-sluice-upstream"] == "openai/other"
    assert model_requests(m)[-1]["body"].encode() == raw
    # Too large to rewrite: refused, never sent with the client's alias.
    st, h, body = c.post(chat_body(model="fast", content="y" * (1100 * 1024)))
    assert st == 413 and h["x-sluice-error"] == "request_too_large_to_route", body
    time.sleep(0.3)
    line = [json.loads(l) for l in s.log().splitlines() if l.startswith("{") and '"upstream_model"' in l]
    assert line and line[0]["upstream_model"] == "gpt-4o-mini" and line[0]["upstream"] == "openai"


def test_429_retry_after_cools_down_and_fails_over(mocks, sluice_factory):
    primary, fallback = mocks(), mocks()
    cfg = config(
        routes="""\
        - name: chat
          match: { path_prefix: / }
          upstream: primary
          failover:
            - { upstream: fallback, model: small-model }
        """,
        upstreams=f"""\
        primary: {{ endpoints: ["{primary.addr}"], retry_after_ms_max: 60000 }}
        fallback: {{ endpoints: ["{fallback.addr}"] }}
        """)
    s = sluice_factory(cfg)
    set_fault(primary, 429, retry_after_s=2)
    c = Client(s.port)
    st, h, body = c.post(chat_body(model="big-model"))
    assert st == 200, body
    assert h["x-sluice-failover"] == "primary->fallback"
    assert h["x-sluice-upstream"] == "fallback/small-model"
    assert json.loads(model_requests(fallback)[-1]["body"])["model"] == "small-model"
    assert len(model_requests(primary)) == 1
    # Cooling down for 2 s: the primary is not even tried.
    for _ in range(3):
        st, h, _ = c.post(chat_body(model="big-model"))
        assert st == 200 and h["x-sluice-failover"] == "primary->fallback"
    assert len(model_requests(primary)) == 1
    time.sleep(0.3)
    assert s.metric("sluice_upstream_cooldown_seconds", upstream="primary") > 0
    assert s.metric("sluice_upstream_rejected_total", upstream="primary", reason="cooling_down") == 3
    assert s.metric("sluice_failovers_total", route="chat", **{"from": "primary"}, to="fallback") == 4
    # The storm ends and the cool-down expires: back on the primary, no failover.
    set_fault(primary, None)
    time.sleep(2.1)
    st, h, _ = c.post(chat_body(model="big-model"))
    assert st == 200 and "x-sluice-failover" not in h and h["x-sluice-upstream"] == "primary/big-model"
    assert json.loads(model_requests(primary)[-1]["body"])["model"] == "big-model"


def test_429_without_failover_answers_429_with_retry_after(mocks, sluice_factory):
    m = mocks()
    cfg = config(routes="""\
        - match: { path_prefix: / }
          upstream: m
        """, upstreams=f"""\
        m: {{ endpoints: ["{m.addr}"], retry_after_ms_max: 60000 }}
        """)
    s = sluice_factory(cfg)
    set_fault(m, 429, retry_after_s=3)
    c = Client(s.port)
    st, h, _ = c.post(chat_body())
    assert st == 429 and h["retry-after"] == "3"  # the upstream's own answer
    st, h, body = c.post(chat_body())
    assert st == 429 and h["x-sluice-error"] == "upstream_cooling_down"
    assert 1 <= int(h["retry-after"]) <= 3
    assert json.loads(body)["error"]["type"] == "rate_limit_error"
    assert len(model_requests(m)) == 1


def test_retry_after_cooldown_is_opt_in(mocks, sluice_factory):
    m = mocks()
    cfg = config(routes="""\
        - match: { path_prefix: / }
          upstream: m
        """, upstreams=f"""\
        m: {{ endpoints: ["{m.addr}"] }}
        """)
    s = sluice_factory(cfg)
    set_fault(m, 429, retry_after_s=30)
    c = Client(s.port)
    for _ in range(3):
        st, h, _ = c.post(chat_body())
        assert st == 429 and "x-sluice-error" not in h  # every one is the upstream's own
    assert len(model_requests(m)) == 3


def test_503_storm_opens_breaker_then_half_opens_and_recovers(mocks, sluice_factory):
    m = mocks()
    cfg = config(routes="""\
        - match: { path_prefix: / }
          upstream: m
        """, upstreams=f"""\
        m:
          endpoints: ["{m.addr}"]
          breaker: {{ consecutive_failures: 3, open_ms: 800, open_ms_max: 5000 }}
        """, workers=2)
    s = sluice_factory(cfg)
    set_fault(m, 503)
    for _ in range(3):
        st, _, _ = Client(s.port).post(chat_body())
        assert st == 503
    # Open: sluice answers itself, the upstream is spared (across both workers).
    for _ in range(6):
        st, h, body = Client(s.port).post(chat_body())
        assert st == 503 and h["x-sluice-error"] == "upstream_circuit_open", body
        assert "retry-after" in h
    assert len(model_requests(m)) == 3
    time.sleep(0.2)
    assert s.metric("sluice_upstream_breaker_state", upstream="m") == 1
    assert s.metric("sluice_upstream_breaker_opened_total", upstream="m") == 1
    # Half-open: one probe goes through; it fails, so the breaker opens again (for longer).
    time.sleep(0.9)
    st, _, _ = Client(s.port).post(chat_body())
    assert st == 503
    assert len(model_requests(m)) == 4
    st, h, _ = Client(s.port).post(chat_body())
    assert h.get("x-sluice-error") == "upstream_circuit_open"
    # The storm ends; the next probe succeeds and the breaker closes.
    set_fault(m, None)
    time.sleep(1.7)
    st, _, _ = Client(s.port).post(chat_body())
    assert st == 200
    for _ in range(5):
        st, _, _ = Client(s.port).post(chat_body())
        assert st == 200
    time.sleep(0.3)
    assert s.metric("sluice_upstream_breaker_state", upstream="m") == 0
    assert s.metric("sluice_upstream_breaker_opened_total", upstream="m") == 2


def test_retry_moves_to_a_healthy_endpoint_within_budget(mocks, sluice_factory):
    good, bad = mocks(), mocks()
    cfg = config(routes="""\
        - name: r
          match: { path_prefix: / }
          upstream: pool
          retry: { attempts_max: 2, backoff_base_ms: 5, backoff_max_ms: 20, budget_percent: 100 }
        """, upstreams=f"""\
        pool:
          endpoints: ["{good.addr}", "{bad.addr}"]
          balance: p2c
        """)
    s = sluice_factory(cfg)
    set_fault(bad, 503)
    c = Client(s.port)
    for _ in range(40):
        st, _, body = c.post(chat_body())
        assert st == 200, body
    bad_seen = len(model_requests(bad))
    assert bad_seen > 0
    time.sleep(0.3)
    assert s.metric("sluice_retries_total", route="r", upstream="pool") == bad_seen


def test_stream_is_never_retried_after_its_first_byte(mocks, sluice_factory):
    m, fallback = mocks(), mocks()
    cfg = config(routes="""\
        - match: { path_prefix: / }
          upstream: m
          retry: { attempts_max: 3, budget_percent: 100 }
          failover: [ { upstream: fallback } ]
        """, upstreams=f"""\
        m: {{ endpoints: ["{m.addr}"] }}
        fallback: {{ endpoints: ["{fallback.addr}"] }}
        """)
    s = sluice_factory(cfg)
    out = subprocess.run(
        ["curl", "-sS", "-N", "--max-time", "10", s.url + "/v1/chat/completions",
         "-H", "content-type: application/json",
         "--data-binary", chat_body(model="gpt-4o-mini+mock-reset-3", stream=True).decode()],
        capture_output=True)
    assert out.returncode != 0, out  # the client sees a broken stream...
    assert out.stdout.count(b"data: ") >= 3  # ...after the tokens that did arrive
    assert b"[DONE]" not in out.stdout
    assert len(model_requests(m)) == 1  # the upstream saw one request
    assert len(model_requests(fallback)) == 0
    time.sleep(0.3)
    assert s.metric("sluice_retries_total") == 0


def test_adaptive_throttle_sheds_locally_when_upstream_refuses(mocks, sluice_factory):
    m = mocks()
    cfg = config(routes="""\
        - match: { path_prefix: / }
          upstream: m
        """, upstreams=f"""\
        m:
          endpoints: ["{m.addr}"]
          throttle: {{ k: 1.5, window_ms: 30000 }}
        """)
    s = sluice_factory(cfg)
    c = Client(s.port)
    for _ in range(20):
        assert c.get()[0] == 200
    set_fault(m, 503)
    codes = []
    for _ in range(200):
        st, h, _ = c.get()
        codes.append(h.get("x-sluice-error", st))
    shed = codes.count("upstream_throttled")
    assert shed > 50, codes
    assert len(model_requests(m)) == 20 + 200 - shed
    time.sleep(0.3)
    assert s.metric("sluice_upstream_rejected_total", upstream="m", reason="throttled") == shed
    assert s.metric("sluice_upstream_throttle_probability", upstream="m") > 0.3


def read_until(sock, marker: bytes, timeout=5.0) -> bytes:
    sock.settimeout(timeout)
    out = b""
    while marker not in out:
        chunk = sock.recv(65536)
        if not chunk:
            break
        out += chunk
    return out


def test_sse_keepalives_while_waiting_for_a_slow_first_token(mocks, sluice_factory):
    m = mocks()
    cfg = config(routes="""\
        - match: { path_prefix: / }
          upstream: m
          timeouts: { sse_keepalive_ms: 100 }
        """, upstreams=f"""\
        m: {{ endpoints: ["{m.addr}"] }}
        """)
    s = sluice_factory(cfg)
    body = chat_body(model="gpt-4o-mini+mock-slow-600", stream=True)
    req = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", s.port)) as sk:
        sk.sendall(req)
        t0 = time.time()
        first = read_until(sk, b": keep-alive")
        assert time.time() - t0 < 0.5
        assert first.startswith(b"HTTP/1.1 200") and b"text/event-stream" in first
        rest = read_until(sk, b"0\r\n\r\n", timeout=10)
    data = first + rest
    assert data.count(b": keep-alive") >= 3
    assert b"data: [DONE]" in data and data.endswith(b"0\r\n\r\n")
    # The upstream answers an error after the head went out: an SSE error event, clean end.
    body = chat_body(model="gpt-4o-mini+mock-503+mock-slow-400", stream=True)
    req = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", s.port)) as sk:
        sk.sendall(req)
        data = read_until(sk, b"0\r\n\r\n", timeout=10)
    assert data.startswith(b"HTTP/1.1 200") and b": keep-alive" in data
    assert b"event: error\ndata: {\"error\"" in data
    assert b"upstream_error_after_stream_start" in data and data.endswith(b"0\r\n\r\n")
    # The openai SDK reads the same stream normally.
    client = openai.OpenAI(base_url=s.url + "/v1", api_key="sk-test", max_retries=0)
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini+mock-slow-300", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_openai_sdk_retrying_429s_stays_bounded(mocks, sluice_factory):
    primary, fallback = mocks(), mocks()
    cfg = config(routes="""\
        - name: failover
          match: { path_prefix: /v1/, headers: { x-route: failover } }
          upstream: primary
          failover: [ { upstream: fallback, model: small-model } ]
        - name: plain
          match: { path_prefix: / }
          upstream: primary
          retry: { attempts_max: 3, budget_percent: 100 }
        """, upstreams=f"""\
        primary: {{ endpoints: ["{primary.addr}"], retry_after_ms_max: 60000 }}
        fallback: {{ endpoints: ["{fallback.addr}"] }}
        """)
    s = sluice_factory(cfg)
    set_fault(primary, 429, retry_after_s=1)
    # With a failover target: the SDK gets an answer at once, it never has to retry.
    fo = openai.OpenAI(base_url=s.url + "/v1", api_key="sk-test", max_retries=2,
                       default_headers={"x-route": "failover"})
    r = fo.chat.completions.with_raw_response.create(
        model="big-model", messages=[{"role": "user", "content": "hi"}])
    assert r.headers["x-sluice-failover"] == "primary->fallback"
    assert r.parse().choices[0].message.content
    # Without one: sluice's own retries stop at the cool-down (same endpoint), the SDK's
    # retries honour Retry-After; the total stays bounded and ends in a clean error.
    time.sleep(1.1)
    primary.clear()
    sdk = openai.OpenAI(base_url=s.url + "/v1", api_key="sk-test", max_retries=2)
    t0 = time.time()
    with pytest.raises(openai.RateLimitError) as ei:
        sdk.chat.completions.create(model="big-model", messages=[{"role": "user", "content": "hi"}])
    elapsed = time.time() - t0
    assert elapsed < 10
    assert ei.value.status_code == 429
    upstream_attempts = len(model_requests(primary))
    assert 1 <= upstream_attempts <= 3, upstream_attempts  # never more than the SDK's tries
    # The storm ends: the SDK's next call succeeds.
    set_fault(primary, None)
    time.sleep(1.1)
    r = sdk.chat.completions.create(model="big-model", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content


def test_config_errors_name_routing_fields(tmp_path):
    from conftest import SLUICE_BIN
    p = tmp_path / "bad.yaml"
    p.write_text(textwrap.dedent("""\
        listeners:
          - name: l
            bind: 127.0.0.1:1
            routes:
              - match: { path_prefix: / }
                upstream: a
                split: { arms: [ { upstream: b, weight: 1 } ] }
                failover: [ { upstream: nope } ]
        upstreams:
          a: { endpoints: ["127.0.0.1:2"], breaker: { half_open_probes: 0 }, throttle: { k: 0.5 } }
          b: { endpoints: ["127.0.0.1:3"] }
        """))
    out = subprocess.run([SLUICE_BIN, "check", "--config", str(p)], capture_output=True, text=True)
    assert out.returncode != 0
    err = out.stderr + out.stdout
    assert "listeners[0].routes[0].upstream: with a split, the route's upstream must be one of the arms" in err
    assert "listeners[0].routes[0].failover[0].upstream: no upstream named `nope`" in err
    assert "upstreams.a.breaker.half_open_probes" in err
    assert "upstreams.a.throttle.k" in err
