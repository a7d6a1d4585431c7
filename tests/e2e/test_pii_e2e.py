"""PII enforcement end to end: planted values must never reach the upstream (the mock's record
of what it received is the oracle), block fails closed, and the other actions behave as
documented in docs/pii.md. Planted values must never appear in sluice's log or /metrics either.
"""

import gzip
import http.client
import json
import time

import openai
import pytest

from conftest import sluice_config, start_mock

SSN = "123-45-6789"
EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"  # Visa test number, Luhn-valid
AWS = "AKIAIOSFODNN7EXAMPLE"
PLANTED = [SSN, EMAIL, CARD, AWS, "4111111111111111", "123456789"]
HASH_KEY = "e2e-test-hmac-key-0123456789abcdef"


def start(sluice_factory, upstream, pii_top="{ }", route_pii="{ enabled: true }", env=None, inspect=True):
    routes = f"""\
- match: {{ path_prefix: / }}
  upstream: mock
  pii: {route_pii}
""" + ("  inspect: { }\n" if inspect else "")
    text = sluice_config(upstream, "{port}", "{admin_port}", routes=routes, top_extra=f"pii: {pii_top}\n")
    return sluice_factory(text, env=env)


@pytest.fixture
def mock():
    m = start_mock()
    yield m
    m.stop()


def client(s, caller="pii-team"):
    return openai.OpenAI(base_url=s.url + "/v1", api_key="sk-test", max_retries=0,
                         default_headers={"x-sluice-caller": caller})


def post(port, path, body: bytes, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    c.request("POST", path, body=body, headers=h)
    r = c.getresponse()
    out = (r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    c.close()
    return out


def wait_metric(s, name, expected=None, at_least=None, timeout=5.0, **labels):
    deadline = time.time() + timeout
    v = s.metric(name, **labels)
    while time.time() < deadline:
        if (expected is not None and v == expected) or (at_least is not None and v >= at_least):
            return v
        time.sleep(0.05)
        v = s.metric(name, **labels)
    return v


def assert_clean(text: str):
    for p in PLANTED:
        assert p not in text, f"planted value {p!r} leaked"


def upstream_bodies(mock):
    return [r["body"] for r in mock.requests() if not r["path"].startswith("/__mock")]


# --- redaction ------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_sdk_planted_values_never_reach_upstream(mock, sluice_factory, stream):
    s = start(sluice_factory, mock.addr)
    messages = [
        {"role": "system", "content": f"The user's ssn is {SSN} and email {EMAIL}."},
        {"role": "user", "content": [
            {"type": "text", "text": f"Charge card {CARD} please."},
            {"type": "text", "text": f"My aws key: {AWS} (rotate it)"},
        ]},
    ]
    c = client(s)
    if stream:
        chunks = list(c.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True))
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    else:
        r = c.chat.completions.create(model="gpt-4o-mini", messages=messages)
        assert r.choices[0].message.content
    [body] = upstream_bodies(mock)
    assert_clean(body)
    j = json.loads(body)  # still valid JSON
    assert j["stream"] is True if stream else "stream" not in j or j["stream"] is False
    text = json.dumps(j["messages"])
    for tag in ("SSN", "EMAIL", "CREDIT_CARD", "AWS_KEY"):
        assert f"[REDACTED:{tag}]" in text, (tag, text)
    assert j["messages"][0]["content"] == "The user's ssn is [REDACTED:SSN] and email [REDACTED:EMAIL]."
    assert j["messages"][1]["content"][0] == {"type": "text", "text": "Charge card [REDACTED:CREDIT_CARD] please."}
    for entity in ("SSN", "EMAIL", "CREDIT_CARD", "AWS_KEY"):
        assert wait_metric(s, "sluice_pii_detections_total", 1, entity=entity, action="redact",
                           direction="request", caller="pii-team") == 1, entity
    assert_clean(s.metrics())
    assert_clean(s.log())


def test_json_escaped_ssn_is_redacted(mock, sluice_factory):
    s = start(sluice_factory, mock.addr)
    body = (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":'
            b'"my ssn: \\u0031\\u0032\\u0033-45-6789 thanks"}]}')
    st, _, data = post(s.port, "/v1/chat/completions", body, {"x-sluice-caller": "esc"})
    assert st == 200 and json.loads(data)["choices"]
    [up] = upstream_bodies(mock)
    content = json.loads(up)["messages"][0]["content"]
    assert SSN not in content and SSN not in up and "\\u0031\\u0032\\u0033-45" not in up
    assert "[REDACTED:SSN]" in content
    assert wait_metric(s, "sluice_pii_detections_total", 1, entity="SSN", caller="esc") == 1


def test_detection_counter_and_no_leak_to_log_or_metrics(mock, sluice_factory):
    s = start(sluice_factory, mock.addr, pii_top="{ actions: { SSN: redact } }")
    c = client(s, caller="counted")
    for _ in range(2):
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"ssn {SSN}"}])
    assert wait_metric(s, "sluice_pii_detections_total", 2, entity="SSN", action="redact",
                       direction="request", caller="counted") == 2
    for b in upstream_bodies(mock):
        assert SSN not in b and "[REDACTED:SSN]" in b
    assert_clean(s.metrics())
    assert_clean(s.log())


def test_no_leak_at_trace_log_level_with_access_log(mock, sluice_factory):
    routes = "- match: { path_prefix: / }\n  upstream: mock\n  pii: { enabled: true }\n  inspect: { }\n"
    top = "pii: { actions: { CREDIT_CARD: block } }\naccess_log: { enabled: true }\n"
    s = sluice_factory(sluice_config(mock.addr, "{port}", "{admin_port}", routes=routes, top_extra=top),
                       env={"SLUICE_LOG": "trace"})
    post(s.port, "/v1/chat/completions", json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": f"ssn {SSN} mail {EMAIL} aws {AWS}"}]}).encode())
    assert post(s.port, "/v1/chat/completions", json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": f"card {CARD}"}]}).encode())[0] == 400
    assert post(s.port, "/v1/chat/completions", f'{{"model":"m","messages":[{{"content":"ssn {SSN}'.encode())[0] == 400
    assert wait_metric(s, "sluice_pii_detections_total", 1, entity="CREDIT_CARD", action="block") == 1
    s.stop()
    log = s.log()
    assert '"status":400' in log, "the access log was written"
    assert_clean(log)


def test_non_matching_text_forwarded_byte_identical(mock, sluice_factory):
    s = start(sluice_factory, mock.addr)
    # Odd spacing on purpose: any re-serialisation would show.
    body = (b'{"model": "gpt-4o-mini",   "messages": [{"role":"user","content":'
            b'"Invoice 123456789 is due. Your order 4111111111111112 ships with build 987-65-4321-7."}]}')
    st, _, _ = post(s.port, "/v1/chat/completions", body, {"x-sluice-caller": "clean"})
    assert st == 200
    [up] = upstream_bodies(mock)
    assert up == body.decode()
    time.sleep(0.2)  # detections would have been flushed by now (flush interval 50 ms)
    assert s.metric("sluice_pii_detections_total", caller="clean") == 0


# --- block and fail closed ----------------------------------------------------------------------


def test_block_returns_openai_error_and_forwards_nothing(mock, sluice_factory):
    s = start(sluice_factory, mock.addr, pii_top="{ actions: { SSN: redact, CREDIT_CARD: block } }")
    with pytest.raises(openai.BadRequestError) as ei:
        client(s, caller="blocked").chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"card {CARD} and ssn {SSN}"}])
    assert ei.value.status_code == 400
    raw = ei.value.response.text
    err = ei.value.response.json()["error"]
    assert "CREDIT_CARD" in err["message"]
    assert err["type"] and err["code"]
    assert_clean(raw)
    assert upstream_bodies(mock) == []
    assert wait_metric(s, "sluice_pii_detections_total", 1, entity="CREDIT_CARD", action="block",
                       caller="blocked") == 1
    assert_clean(s.log())


def test_route_level_block_override(mock, sluice_factory):
    s = start(sluice_factory, mock.addr, pii_top="{ actions: { SSN: redact } }",
              route_pii="{ enabled: true, actions: { EMAIL: block } }")
    st, _, data = post(s.port, "/v1/chat/completions", json.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"mail {EMAIL}"}]}).encode())
    assert st == 400
    err = json.loads(data)["error"]
    assert "EMAIL" in err["message"] and EMAIL not in data.decode()
    assert upstream_bodies(mock) == []


def test_block_fails_closed_on_malformed_json(mock, sluice_factory):
    s = start(sluice_factory, mock.addr, pii_top="{ actions: { CREDIT_CARD: block } }")
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello'
    st, _, data = post(s.port, "/v1/chat/completions", body)
    assert 400 <= st < 500, (st, data)
    assert "error" in json.loads(data)
    assert upstream_bodies(mock) == []


def gzip_body(content: str) -> bytes:
    return gzip.compress(json.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}).encode())


def test_gzip_body_is_decompressed_and_redacted(mock, sluice_factory):
    s = start(sluice_factory, mock.addr, pii_top="{ actions: { CREDIT_CARD: block } }")
    st, _, data = post(s.port, "/v1/chat/completions", gzip_body(f"my ssn is {SSN}"),
                       {"Content-Encoding": "gzip"})
    assert st == 200, data
    [rec] = [r for r in mock.requests()]
    assert "content-encoding" not in rec["headers"]
    assert SSN not in rec["body"]
    assert json.loads(rec["body"])["messages"][0]["content"] == "my ssn is [REDACTED:SSN]"
    # A gzip body carrying a blocked entity is refused.
    st, _, _ = post(s.port, "/v1/chat/completions", gzip_body(f"card {CARD}"), {"Content-Encoding": "gzip"})
    assert st == 400
    assert len(upstream_bodies(mock)) == 1


def test_gzip_body_refused_with_compressed_reject(mock, sluice_factory):
    s = start(sluice_factory, mock.addr, pii_top="{ compressed: reject }")
    st, _, data = post(s.port, "/v1/chat/completions", gzip_body(f"my ssn is {SSN}"),
                       {"Content-Encoding": "gzip"})
    assert st == 415, data
    assert "error" in json.loads(data)
    assert upstream_bodies(mock) == []


# --- mask, hash, log, dry run -------------------------------------------------------------------


def test_mask_keeps_last_four(mock, sluice_factory):
    s = start(sluice_factory, mock.addr, pii_top="{ actions: { EMAIL: mask, SSN: mask } }")
    client(s).chat.completions.create(model="gpt-4o-mini",
                                      messages=[{"role": "user", "content": f"mail {EMAIL} ssn {SSN}"}])
    [up] = upstream_bodies(mock)
    content = json.loads(up)["messages"][0]["content"]
    assert content == f"mail {'*' * (len(EMAIL) - 4)}.com ssn {'*' * 7}6789"
    assert wait_metric(s, "sluice_pii_detections_total", 1, entity="EMAIL", action="mask") == 1


def test_hash_is_a_stable_pseudonym(mock, sluice_factory):
    s = start(sluice_factory, mock.addr, pii_top="{ actions: { EMAIL: hash }, hash_key: { env: SLUICE_PII_KEY } }",
              env={"SLUICE_PII_KEY": HASH_KEY})
    c = client(s)
    for content in (f"mail {EMAIL}", f"again {EMAIL.upper()}", "other bob@example.org"):
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": content}])
    a, b, other = [json.loads(x)["messages"][0]["content"] for x in upstream_bodies(mock)]
    pa, pb, po = a.split()[-1], b.split()[-1], other.split()[-1]
    assert pa.startswith("[EMAIL:") and pa.endswith("]") and len(pa) == len("[EMAIL:]") + 8, pa
    assert pa == pb, "same value (emails compare lower-cased), same key: same pseudonym"
    assert po != pa and po.startswith("[EMAIL:")
    assert_clean(a + b)
    assert HASH_KEY not in s.log() and HASH_KEY not in s.metrics()
    assert wait_metric(s, "sluice_pii_detections_total", 3, entity="EMAIL", action="hash") == 3


def test_hash_pseudonym_stable_across_restarts_and_keyed(mock, sluice_factory):
    pseudonyms = []
    for key in (HASH_KEY, HASH_KEY, HASH_KEY + "-rotated"):
        mock.clear()
        s = start(sluice_factory, mock.addr, pii_top="{ actions: { SSN: hash }, hash_key: { env: SLUICE_PII_KEY } }",
                  env={"SLUICE_PII_KEY": key})
        client(s).chat.completions.create(model="gpt-4o-mini",
                                          messages=[{"role": "user", "content": f"ssn {SSN}"}])
        [up] = upstream_bodies(mock)
        pseudonyms.append(json.loads(up)["messages"][0]["content"].split()[-1])
        s.stop()
    a, b, rotated = pseudonyms
    assert a.startswith("[SSN:") and a == b, pseudonyms
    assert rotated != a, "a different key must give a different pseudonym"


def test_hash_without_key_env_refuses_to_start(mock):
    from conftest import start_sluice
    routes = "- match: { path_prefix: / }\n  upstream: mock\n  pii: { enabled: true }\n"
    text = sluice_config(mock.addr, "{port}", "{admin_port}", routes=routes,
                         top_extra="pii: { actions: { EMAIL: hash }, hash_key: { env: SLUICE_PII_KEY_UNSET_E2E } }\n")
    s = start_sluice(text, expect_ready=False)
    try:
        assert s.proc.wait(15) != 0
        assert "SLUICE_PII_KEY_UNSET_E2E" in s.log()
    finally:
        s.stop()


def test_log_action_forwards_unchanged_and_counts(mock, sluice_factory):
    s = start(sluice_factory, mock.addr, pii_top="{ actions: { SSN: log } }")
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"ssn {SSN}"}]}).encode()
    st, _, _ = post(s.port, "/v1/chat/completions", body, {"x-sluice-caller": "logger"})
    assert st == 200
    assert upstream_bodies(mock) == [body.decode()]
    assert wait_metric(s, "sluice_pii_detections_total", 1, entity="SSN", action="log", caller="logger") == 1
    assert SSN not in s.log() and SSN not in s.metrics()


def test_dry_run_forwards_unchanged_and_counts(mock, sluice_factory):
    s = start(sluice_factory, mock.addr, pii_top="{ actions: { SSN: redact, CREDIT_CARD: block } }",
              route_pii="{ enabled: true, dry_run: true }")
    body = json.dumps({"model": "gpt-4o-mini",
                       "messages": [{"role": "user", "content": f"ssn {SSN} card {CARD}"}]}).encode()
    st, _, _ = post(s.port, "/v1/chat/completions", body, {"x-sluice-caller": "dry"})
    assert st == 200
    assert upstream_bodies(mock) == [body.decode()]
    assert wait_metric(s, "sluice_pii_detections_total", 1, entity="SSN", caller="dry") == 1
    assert wait_metric(s, "sluice_pii_detections_total", 1, entity="CREDIT_CARD", caller="dry") == 1
    assert_clean(s.metrics())
    assert_clean(s.log())


# --- every documented request path, other dialects ----------------------------------------------


@pytest.mark.parametrize("path,body", [
    ("/v1/messages", {"model": "c", "max_tokens": 5, "system": f"ssn {SSN}", "messages": [
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                      "content": [{"type": "text", "text": f"ssn {SSN}"}]}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f",
                                           "input": {"a": {"b": [f"ssn {SSN}", EMAIL]}}}]}]}),
    ("/v1/messages", {"model": "c", "max_tokens": 5, "system": [{"type": "text", "text": f"mail {EMAIL}"}],
                      "messages": [{"role": "user", "content": [
                          {"type": "tool_result", "tool_use_id": "t", "content": f"ssn {SSN}"}]}]}),
    ("/generate", {"inputs": f"ssn {SSN} mail {EMAIL}"}),
    ("/v1/embeddings", {"model": "e", "input": [f"ssn {SSN}", f"mail {EMAIL}"]}),
    ("/v1/completions", {"model": "gpt-4o-mini", "prompt": [f"ssn {SSN}", f"mail {EMAIL}"]}),
    ("/v1/responses", {"model": "gpt-4o-mini", "instructions": f"ssn {SSN}", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": f"mail {EMAIL}"}]},
        {"type": "function_call_output", "call_id": "c", "output": f"ssn {SSN}"}]}),
    ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function", "function": {
            "name": "f", "arguments": json.dumps({"email": EMAIL, "ssn": SSN})}}]}]}),
], ids=["anthropic-tools", "anthropic-system-parts", "tgi", "embeddings", "completions", "responses",
        "tool-call-arguments"])
def test_documented_paths_redacted_in_every_dialect(mock, sluice_factory, path, body):
    s = start(sluice_factory, mock.addr, pii_top="{ actions: { EMAIL: hash }, hash_key: { env: SLUICE_PII_KEY } }",
              env={"SLUICE_PII_KEY": HASH_KEY})
    post(s.port, path, json.dumps(body).encode())  # the mock has no /v1/responses: a 404 is fine here
    [up] = upstream_bodies(mock)
    assert_clean(up)
    j = json.loads(up)
    assert "[REDACTED:SSN]" in up or "[EMAIL:" in up
    if path == "/v1/chat/completions":
        args = json.loads(j["messages"][0]["tool_calls"][0]["function"]["arguments"])  # inner JSON still valid
        assert args["ssn"] == "[REDACTED:SSN]" and args["email"].startswith("[EMAIL:")


def test_route_pii_without_engine_is_a_config_error(mock):
    from conftest import start_sluice
    routes = "- match: { path_prefix: / }\n  upstream: mock\n  pii: { enabled: true, actions: { SSN: block } }\n"
    s = start_sluice(sluice_config(mock.addr, "{port}", "{admin_port}", routes=routes), expect_ready=False)
    try:
        assert s.proc.wait(15) != 0, "a route asking for PII enforcement with no engine must not start"
        assert "pii" in s.log()
    finally:
        s.stop()


@pytest.mark.parametrize("actions", ["{ CREDIT_CARD: block }", "{ SSN: redact }"])
def test_body_over_pii_limit_is_refused(mock, sluice_factory, actions):
    s = start(sluice_factory, mock.addr, pii_top=f"{{ body_bytes_max: 1024, actions: {actions} }}")
    body = json.dumps({"model": "gpt-4o-mini",
                       "messages": [{"role": "user", "content": "x" * 3000 + f" ssn {SSN}"}]}).encode()
    st, _, data = post(s.port, "/v1/chat/completions", body)
    assert st == 413, data
    assert json.loads(data)["error"]["message"]
    assert upstream_bodies(mock) == []


TRICKY = [
    "line1\nssn: 123-45-6789\tend",
    'quotes "123-45-6789" and \\ backslash',
    "\U0001F600\U0001F600 ssn 123-45-6789 \u00e9\u4e2d",
    "ssn 123-45-6789\u2028after a line separator",
    "mail jane.doe@example.com/ssn 123-45-6789",
]


@pytest.mark.parametrize("ensure_ascii", [True, False], ids=["escaped", "utf8"])
def test_redaction_offsets_survive_escapes_and_multibyte(mock, sluice_factory, ensure_ascii):
    s = start(sluice_factory, mock.addr)
    for text in TRICKY:
        mock.clear()
        body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]},
                          ensure_ascii=ensure_ascii).encode()
        st, _, _ = post(s.port, "/v1/chat/completions", body)
        assert st == 200
        [up] = upstream_bodies(mock)
        got = json.loads(up)["messages"][0]["content"]
        assert got == text.replace(SSN, "[REDACTED:SSN]").replace(EMAIL, "[REDACTED:EMAIL]"), (text, got)


# --- fail closed on bodies too large to read ----------------------------------------------------

CUSTOM = ("custom_patterns: [ { name: EMPLOYEE_ID, pattern: 'EMP-[0-9]{6}', anchor: 'EMP-' } ], "
          "dictionaries: [ { name: CUSTOMER, terms: ['Acme Corp'] } ]")


def _over_read_limit(mock, sluice_factory, actions):
    """Route: pii + inspect with over_limit: pass. The route reads at most
    max(1 MiB inspect default, pii.body_bytes_max) = 1 MiB; the body is 1.2 MB."""
    routes = ("- match: { path_prefix: / }\n  upstream: mock\n  pii: { enabled: true }\n"
              "  inspect: { over_limit: pass }\n")
    top = f"pii: {{ body_bytes_max: 1024, actions: {actions}, {CUSTOM} }}\n"
    s = sluice_factory(sluice_config(mock.addr, "{port}", "{admin_port}", routes=routes, top_extra=top))
    small = json.dumps({"model": "m", "messages": [{"role": "user", "content": "EMP-123456 of Acme Corp"}]})
    st_small, _, _ = post(s.port, "/v1/chat/completions", small.encode())
    big = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 1_200_000 + " EMP-123456 of Acme Corp"}]})
    st, _, data = post(s.port, "/v1/chat/completions", big.encode())
    return st_small, st, data


def test_builtin_block_fails_closed_on_unreadable_body(mock, sluice_factory):
    st_small, st, data = _over_read_limit(mock, sluice_factory, "{ CREDIT_CARD: block }")
    assert st == 413, data[:200]
    assert all("EMP-123456" not in b for b in upstream_bodies(mock))


@pytest.mark.parametrize("entity", ["EMPLOYEE_ID", "CUSTOMER"])
def test_custom_entity_block_fails_closed_on_unreadable_body(mock, sluice_factory, entity):
    st_small, st, data = _over_read_limit(mock, sluice_factory, f"{{ {entity}: block }}")
    assert st_small == 400, "the block policy itself works on a small body"
    assert st == 413, f"got {st}: the over-limit body was forwarded"
    assert upstream_bodies(mock) == []


def test_policy_hot_reload_redact_to_block(mock, sluice_factory):
    s = start(sluice_factory, mock.addr, pii_top="{ actions: { SSN: redact } }")
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"ssn {SSN}"}]}).encode()
    st, _, _ = post(s.port, "/v1/chat/completions", body)
    assert st == 200
    s.write_config(s.cfg_path.read_text().replace("SSN: redact", "SSN: block"))
    deadline = time.time() + 10
    while time.time() < deadline and s.metric("sluice_config_reloads_total", result="ok") < 1:
        time.sleep(0.05)
    assert s.metric("sluice_config_reloads_total", result="ok") == 1, s.log()
    st, _, data = post(s.port, "/v1/chat/completions", body)
    assert st == 400 and "SSN" in json.loads(data)["error"]["message"]
    ups = upstream_bodies(mock)
    assert len(ups) == 1 and "[REDACTED:SSN]" in ups[0]
