"""Auth end to end: outbound credential injection (env, rotating file), inbound static keys and
JWTs (HS256, RS256, ES256 with a JWKS file made here), 401/403 in the OpenAI shape, the
identity as the caller for limits, and secrets never leaking into logs, metrics, /config or
error bodies."""

import base64
import hashlib
import hmac
import json
import os
import textwrap
import time

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from conftest import chat_body, http_get, sluice_config
from test_ratelimit import request


def b64u(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def int_b64u(n: int) -> str:
    return b64u(n.to_bytes((n.bit_length() + 7) // 8, "big"))


class Keys:
    """One key of each kind, their JWKS, and a token signer."""

    def __init__(self):
        self.hs_secret = os.urandom(32)
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        rn = self.rsa.public_key().public_numbers()
        en = self.ec.public_key().public_numbers()
        self.jwks = {"keys": [
            {"kty": "oct", "kid": "hs", "alg": "HS256", "k": b64u(self.hs_secret)},
            {"kty": "RSA", "kid": "rs", "alg": "RS256", "n": int_b64u(rn.n), "e": int_b64u(rn.e)},
            {"kty": "EC", "kid": "es", "alg": "ES256", "crv": "P-256",
             "x": b64u(en.x.to_bytes(32, "big")), "y": b64u(en.y.to_bytes(32, "big"))},
        ]}

    def token(self, alg, claims, kid=None):
        kid = kid or {"HS256": "hs", "RS256": "rs", "ES256": "es"}[alg]
        head = b64u(json.dumps({"alg": alg, "typ": "JWT", "kid": kid}).encode())
        body = b64u(json.dumps(claims).encode())
        msg = f"{head}.{body}".encode()
        if alg == "HS256":
            sig = hmac.new(self.hs_secret, msg, hashlib.sha256).digest()
        elif alg == "RS256":
            sig = self.rsa.sign(msg, padding.PKCS1v15(), hashes.SHA256())
        else:
            r, s = decode_dss_signature(self.ec.sign(msg, ec.ECDSA(hashes.SHA256())))
            sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{head}.{body}.{b64u(sig)}"


@pytest.fixture(scope="module")
def keys():
    return Keys()


def sha(k: str) -> str:
    return hashlib.sha256(k.encode()).hexdigest()


def cfg(mock, routes, upstream_extra="", listener_extra="", top_extra=""):
    return sluice_config(mock.addr, "{port}", "{admin_port}", routes=textwrap.dedent(routes),
                         extra_upstream=textwrap.dedent(upstream_extra),
                         listener_extra=textwrap.dedent(listener_extra), top_extra=top_extra)


# --- outbound -----------------------------------------------------------------------------


def test_outbound_key_from_env_replaces_the_clients(mock, sluice_factory):
    s = sluice_factory(cfg(mock, """\
      - match: { path_prefix: / }
        upstream: mock
    """, upstream_extra="""\
    auth:
      env: SLUICE_TEST_UPSTREAM_KEY
    """), env={"SLUICE_TEST_UPSTREAM_KEY": "sk-upstream-from-env"})
    st, _, _, _ = request(s.port, "POST", "/v1/chat/completions", chat_body(),
                          {"Authorization": "Bearer sk-client-own", "x-api-key": "sk-client-x"})
    assert st == 200
    h = mock.requests()[-1]["headers"]
    assert h["authorization"] == "Bearer sk-upstream-from-env"
    assert "x-api-key" not in h
    # A client that sends nothing gets the key injected all the same.
    request(s.port)
    assert mock.requests()[-1]["headers"]["authorization"] == "Bearer sk-upstream-from-env"


def test_outbound_key_file_rewritten_is_used_without_restart(mock, sluice_factory, tmp_path):
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    key = secret_dir / "api-key"
    key.write_text("sk-ant-first\n")
    s = sluice_factory(cfg(mock, """\
      - match: { path_prefix: / }
        upstream: mock
    """, upstream_extra=f"""\
    auth:
      header: x-api-key
      file: {key}
      refresh_ms: 100
    """))
    request(s.port, headers={"x-api-key": "sk-client-key", "Authorization": "Bearer c"})
    h = mock.requests()[-1]["headers"]
    assert h["x-api-key"] == "sk-ant-first" and "authorization" not in h
    # Rotate the way a Secret mount does: write aside, then rename over.
    tmp = secret_dir / "..new"
    tmp.write_text("sk-ant-second")
    os.replace(tmp, key)
    deadline = time.time() + 5
    seen = None
    while time.time() < deadline:
        request(s.port)
        seen = mock.requests()[-1]["headers"]["x-api-key"]
        if seen == "sk-ant-second":
            break
        time.sleep(0.05)
    assert seen == "sk-ant-second"
    assert s.proc.poll() is None
    time.sleep(0.3)
    assert s.metric("sluice_auth_credential_reloads_total", upstream="mock") >= 1
    # A broken file keeps the last good key (and says so).
    key.write_text("")
    time.sleep(0.4)
    request(s.port)
    assert mock.requests()[-1]["headers"]["x-api-key"] == "sk-ant-second"
    assert s.metric("sluice_auth_credential_errors_total", upstream="mock") >= 1


def test_missing_outbound_env_is_a_startup_error(mock, sluice_factory):
    s = sluice_factory(cfg(mock, """\
      - match: { path_prefix: / }
        upstream: mock
    """, upstream_extra="""\
    auth:
      env: SLUICE_TEST_NOT_SET_ANYWHERE
    """), expect_ready=False)
    assert s.proc.wait(10) != 0
    assert "SLUICE_TEST_NOT_SET_ANYWHERE is not set" in s.log()


# --- inbound ------------------------------------------------------------------------------


def test_static_keys_401_403_and_identity_is_the_caller(mock, sluice_factory):
    routes = f"""\
      - name: admin
        match: {{ path_prefix: /v1/models }}
        upstream: mock
        auth:
          api_keys:
            - {{ name: team-a, sha256: "{sha("sk-team-a-123")}" }}
            - {{ name: team-b, sha256: "{sha("sk-team-b-456")}" }}
          allow: [team-a]
      - name: chat
        match: {{ path_prefix: / }}
        upstream: mock
        rate_limits:
          - name: per-caller
            key: [caller]
            requests_per_second: 1
    """
    listener = f"""\
    auth:
      api_keys:
        - {{ name: team-a, sha256: "{sha("sk-team-a-123")}" }}
        - {{ name: team-b, sha256: "{sha("sk-team-b-456")}" }}
    """
    s = sluice_factory(cfg(mock, routes, listener_extra=listener))
    chat = "/v1/chat/completions"
    # Missing, wrong: 401 in the OpenAI shape.
    st, h, body, _ = request(s.port, "POST", chat, chat_body())
    err = json.loads(body)["error"]
    assert (st, err["type"], err["code"]) == (401, "authentication_error", "missing_api_key")
    st, _, body, _ = request(s.port, "POST", chat, chat_body(), {"Authorization": "Bearer sk-wrong-999"})
    assert st == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    assert b"sk-wrong-999" not in body
    # Good keys, as Bearer or x-api-key; the key itself is not forwarded.
    st, _, _, _ = request(s.port, "POST", chat, chat_body(), {"Authorization": "Bearer sk-team-a-123"})
    assert st == 200
    fwd = mock.requests()[-1]["headers"]
    assert "authorization" not in fwd and "x-api-key" not in fwd
    st, _, _, _ = request(s.port, "POST", chat, chat_body(), {"x-api-key": "sk-team-b-456"})
    assert st == 200
    # The identity is the rate-limit key: team-a is spent for this second, team-b too, but a
    # spoofed caller header changes nothing.
    st, _, _, _ = request(s.port, "POST", chat, chat_body(),
                          {"Authorization": "Bearer sk-team-a-123", "x-sluice-caller": "someone-else"})
    assert st == 429
    # Route with an allow list: team-b is authenticated but forbidden.
    st, _, body, _ = request(s.port, headers={"x-api-key": "sk-team-b-456"})
    err = json.loads(body)["error"]
    assert (st, err["type"], err["code"]) == (403, "permission_error", "forbidden")
    assert request(s.port, headers={"x-api-key": "sk-team-a-123"})[0] == 200
    time.sleep(0.3)
    assert s.metric("sluice_auth_failures_total", reason="missing") == 1
    assert s.metric("sluice_auth_failures_total", reason="invalid_key") == 1
    assert s.metric("sluice_auth_failures_total", reason="forbidden") == 1


@pytest.mark.parametrize("alg", ["HS256", "RS256", "ES256"])
def test_jwt_accepted_and_refused(mock, sluice_factory, keys, tmp_path, alg):
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(keys.jwks))
    routes = f"""\
      - match: {{ path_prefix: / }}
        upstream: mock
        auth:
          jwt:
            jwks_file: {jwks}
            issuer: https://idp.example
            audiences: [sluice]
            leeway_s: 0
          allow: [svc-a]
        inspect: {{}}
    """
    top = "caller: { sources: [header] }\n"
    s = sluice_factory(cfg(mock, routes, top_extra=top))
    now = int(time.time())
    good = {"sub": "svc-a", "iss": "https://idp.example", "aud": "sluice", "exp": now + 300, "nbf": now - 10}

    def call(tok):
        st, _, body, _ = request(s.port, "POST", "/v1/chat/completions", chat_body(),
                                 {"Authorization": f"Bearer {tok}"})
        return st, (json.loads(body).get("error") if st != 200 else None), body

    st, _, _ = call(keys.token(alg, good))
    assert st == 200
    assert "authorization" not in mock.requests()[-1]["headers"]
    # Cached verification gives the same answer.
    assert call(keys.token(alg, good))[0] == 200
    cases = {
        "expired": dict(good, exp=now - 5),
        "not_yet_valid": dict(good, nbf=now + 300),
        "bad_issuer": dict(good, iss="https://evil.example"),
        "bad_audience": dict(good, aud="other"),
    }
    for reason, claims in cases.items():
        st, err, body = call(keys.token(alg, claims))
        assert (st, err["code"], err["type"]) == (401, "invalid_token", "authentication_error"), reason
    tok = keys.token(alg, good)
    tampered = tok[:-4] + ("AAAA" if not tok.endswith("AAAA") else "BBBB")
    st, err, _ = call(tampered)
    assert st == 401 and "signature" in err["message"]
    # Signed by a key the JWKS does not have (same kid, other key).
    other = Keys()
    st, err, _ = call(other.token(alg, good))
    assert st == 401
    # alg confusion: an HS256 token whose kid points at the RSA key is refused.
    st, _, _ = call(keys.token("HS256", good, kid="rs"))
    assert st == 401
    # Valid token, identity not allowed: 403.
    st, err, _ = call(keys.token(alg, dict(good, sub="svc-b")))
    assert (st, err["code"]) == (403, "forbidden")
    time.sleep(0.3)
    assert s.metric("sluice_auth_failures_total", reason="expired") == 1
    assert s.metric("sluice_auth_failures_total", reason="bad_audience") == 1
    assert s.metric("sluice_auth_failures_total", reason="bad_signature") >= 2
    # The identity is the caller of the token metrics.
    assert s.metric("sluice_gen_ai_requests_total", caller="svc-a") == 2


def test_bad_auth_config_names_file_line_and_field(mock, sluice_factory, tmp_path):
    bad = tmp_path / "jwks.json"
    bad.write_text('{"keys":[{"kty":"oct","k":"c2hvcnQ"}]}')
    routes = f"""\
      - match: {{ path_prefix: / }}
        upstream: mock
        auth:
          api_keys:
            - {{ name: a, sha256: sk-plain-text-key }}
          jwt: {{ jwks_file: {bad} }}
    """
    s = sluice_factory(cfg(mock, routes), expect_ready=False)
    assert s.proc.wait(10) != 0
    log = s.log()
    assert "routes[0].auth.api_keys[0].sha256: must be 64 hex digits" in log
    assert "routes[0].auth.jwt.jwks_file" in log and "shorter than 32 bytes" in log
    assert "sk-plain-text-key" not in log


# --- secrets never leak -------------------------------------------------------------------


def test_secrets_never_leak(mock, sluice_factory, keys, tmp_path):
    client_key = "sk-client-PLANTED-7f3a9c"
    wrong_key = "sk-wrong-PLANTED-1b2c3d"
    upstream_key = "sk-upstream-PLANTED-44e1"
    file_key = "sk-file-PLANTED-9d8e"
    keyfile = tmp_path / "k"
    keyfile.write_text(file_key)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(keys.jwks))
    now = int(time.time())
    token = keys.token("RS256", {"sub": "svc-a", "exp": now + 300})
    expired = keys.token("HS256", {"sub": "svc-a", "exp": now - 300})
    routes = f"""\
      - name: keyed
        match: {{ path_prefix: /v1/chat }}
        upstream: mock
        auth:
          api_keys: [{{ name: team-a, sha256: "{sha(client_key)}" }}]
        rate_limits:
          - {{ name: rl, key: [caller, "header:x-tenant"], requests_per_second: 1000 }}
      - name: jwt
        match: {{ path_prefix: / }}
        upstream: filed
        auth:
          jwt: {{ jwks_file: {jwks} }}
    """
    text = cfg(mock, routes, upstream_extra="""\
    auth: { env: SLUICE_TEST_LEAK_KEY }
    """, top_extra="access_log: { enabled: true }\n")
    text += (f"  filed:\n    endpoints: [\"{mock.addr}\"]\n"
             f"    auth: {{ header: x-api-key, file: {keyfile} }}\n")
    s = sluice_factory(text, env={"SLUICE_TEST_LEAK_KEY": upstream_key, "SLUICE_LOG": "trace"})
    bodies = []
    statuses = []
    for hdrs, path in [
        ({"Authorization": f"Bearer {client_key}"}, "/v1/chat/completions"),
        ({"x-api-key": client_key, "x-tenant": "t"}, "/v1/chat/completions"),
        ({"Authorization": f"Bearer {wrong_key}"}, "/v1/chat/completions"),
        ({"Authorization": f"Bearer {token}"}, "/v1/models"),
        ({"Authorization": f"Bearer {expired}"}, "/v1/models"),
        ({"Authorization": f"Bearer {token[:-6]}xxxxxx"}, "/v1/models"),
    ]:
        method = "POST" if "chat" in path else "GET"
        st, h, body, _ = request(s.port, method, path, chat_body() if method == "POST" else None, hdrs)
        bodies.append(json.dumps(h).encode() + body)
        statuses.append((st, json.loads(body).get("error", {}).get("code") if st != 200 else None))
    assert statuses == [(200, None), (200, None), (401, "invalid_api_key"), (200, None),
                        (401, "invalid_token"), (401, "invalid_token")], statuses
    # The upstreams got their own keys.
    recs = mock.requests()
    assert any(r["headers"].get("authorization") == f"Bearer {upstream_key}" for r in recs)
    assert any(r["headers"].get("x-api-key") == file_key for r in recs)
    time.sleep(0.5)
    _, config = http_get(s.admin + "/config")
    metrics = s.metrics()
    log = s.log()
    planted = [client_key, wrong_key, upstream_key, file_key, token, expired,
               token.split(".")[2], keys.jwks["keys"][0]["k"]]
    for secret in planted:
        for where, text in [("log", log), ("metrics", metrics), ("config", config.decode()),
                            ("bodies", b"".join(bodies).decode(errors="replace"))]:
            assert secret not in text, f"{secret[:12]}... leaked into {where}"
    # The config shows where keys come from, not what they are.
    c = json.loads(config)
    up = c["config"]["upstreams"]["mock"]["auth"]
    assert up["env"] == "SLUICE_TEST_LEAK_KEY"
    assert sha(client_key) not in config.decode()
