"""TLS end to end: termination, certificate rotation, mTLS between two sidecars with SPIFFE
identities (on loopback, and across two network namespaces when run as root), and TLS
interception in explicit mode.

Certificates come from `sluice ca` (the command under test too); clients are curl, Python's
ssl module and the official openai SDK.
"""

import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from conftest import SLUICE_BIN, chat_body, free_port, http_get, start_mock

TD = "cluster.local"


def ca_init(d: Path, td: str = TD) -> Path:
    subprocess.run([SLUICE_BIN, "ca", "init", "--out", str(d), "--trust-domain", td],
                   check=True, capture_output=True)
    return d / "ca.pem"


def ca_issue(ca_dir: Path, out: Path, spiffe: str, *dns: str, days: int = 1) -> Path:
    cmd = [SLUICE_BIN, "ca", "issue", "--ca", str(ca_dir), "--spiffe", spiffe, "--out", str(out),
           "--days", str(days)]
    for n in dns:
        cmd += ["--dns", n]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def cert_serial(der: bytes) -> int:
    from cryptography import x509
    return x509.load_der_x509_certificate(der).serial_number


def file_serial(pem_path: Path) -> int:
    from cryptography import x509
    return x509.load_pem_x509_certificate(pem_path.read_bytes()).serial_number


def tls_connect(port: int, ca: Path, server_name: str = "localhost", cert=None):
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert:
        ctx.load_cert_chain(str(cert / "cert.pem"), str(cert / "key.pem"))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname=server_name)


def curl(*args, timeout=20):
    return subprocess.run(["curl", "-sS", "--max-time", str(timeout), *args],
                          capture_output=True, text=True)


def wait_for(pred, timeout=10.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def pki(tmp_path):
    ca_dir = tmp_path / "ca"
    ca_init(ca_dir)
    return ca_dir


def test_ca_cli_issues_spiffe_certificates(pki, tmp_path):
    w = ca_issue(pki, tmp_path / "w", f"spiffe://{TD}/ns/app/sa/client", "client.app.svc")
    from cryptography import x509
    c = x509.load_pem_x509_certificate((w / "cert.pem").read_bytes())
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TD}/ns/app/sa/client"]
    assert san.get_values_for_type(x509.DNSName) == ["client.app.svc"]
    assert oct(os.stat(w / "key.pem").st_mode & 0o777) == "0o600"
    assert (w / "ca.pem").read_bytes() == (pki / "ca.pem").read_bytes()
    # The chain verifies with openssl.
    r = subprocess.run(["openssl", "verify", "-CAfile", str(pki / "ca.pem"), str(w / "cert.pem")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # Another trust domain, and re-initialising over a key, are refused with a reason.
    r = subprocess.run([SLUICE_BIN, "ca", "issue", "--ca", str(pki), "--spiffe", "spiffe://other/ns/a/sa/b",
                        "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert r.returncode == 2 and "trust domain" in r.stderr
    r = subprocess.run([SLUICE_BIN, "ca", "init", "--out", str(pki)], capture_output=True, text=True)
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr


def terminating_config(cert_dir: Path, extra_tls: str = "", routes: str = "", top: str = "") -> str:
    routes = routes or """\
      - match: { path_prefix: / }
        upstream: mock
        inspect: {}
"""
    return f"""\
workers: 1
admin: {{ bind: 127.0.0.1:{{admin_port}} }}
telemetry: {{ flush_interval_ms: 50 }}
{top}
listeners:
  - name: tls
    bind: 127.0.0.1:{{port}}
    tls:
      cert_file: {cert_dir}/cert.pem
      key_file: {cert_dir}/key.pem
{textwrap.indent(extra_tls, '      ')}
    routes:
{routes}
upstreams:
  mock:
    endpoints: ["MOCK"]
"""


def test_termination_with_curl_and_openai_sdk(pki, tmp_path, sluice_factory):
    mock = start_mock()
    try:
        srv = ca_issue(pki, tmp_path / "srv", f"spiffe://{TD}/ns/model/sa/sluice", "localhost")
        s = sluice_factory(terminating_config(srv).replace("MOCK", mock.addr))
        url = f"https://localhost:{s.port}/v1/chat/completions"
        r = curl("--cacert", str(pki / "ca.pem"), "-H", "content-type: application/json",
                 "-d", chat_body().decode(), "-w", "\n%{http_code} %{ssl_verify_result}", url)
        body, _, code = r.stdout.rpartition("\n")
        assert code == "200 0", r.stdout + r.stderr
        assert json.loads(body)["choices"][0]["message"]["content"]
        # ALPN: http/1.1 is negotiated.
        r = curl("-v", "--cacert", str(pki / "ca.pem"), "-o", "/dev/null", f"https://localhost:{s.port}/v1/models")
        assert "ALPN: server accepted http/1.1" in r.stderr or "ALPN, server accepted to use http/1.1" in r.stderr, r.stderr
        # Without trusting the CA, the client refuses the certificate.
        r = curl("-o", "/dev/null", url)
        assert r.returncode == 60, (r.returncode, r.stderr)

        import httpx
        import openai
        with httpx.Client(verify=ssl.create_default_context(cafile=str(pki / "ca.pem"))) as hc:
            client = openai.OpenAI(base_url=f"https://localhost:{s.port}/v1", api_key="sk-test", http_client=hc)
            out = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            assert out.choices[0].message.content
            stream = client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                                    messages=[{"role": "user", "content": "hi"}])
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            assert text
        wait_for(lambda: s.metric("sluice_tls_handshakes_total") >= 3, what="handshake count")
        # A plain-HTTP client on the TLS port is a handshake failure, counted by reason.
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                c.recv(100)
            except OSError:
                pass
        wait_for(lambda: s.metric("sluice_tls_handshake_failures_total", reason="protocol") >= 1,
                 what="protocol failure metric")
    finally:
        mock.stop()


def test_rotated_certificate_is_used_for_new_handshakes_without_dropping_a_stream(pki, tmp_path, sluice_factory):
    mock = start_mock()
    try:
        srv = ca_issue(pki, tmp_path / "srv", f"spiffe://{TD}/ns/model/sa/sluice", "localhost")
        old_serial = file_serial(srv / "cert.pem")
        s = sluice_factory(terminating_config(srv).replace("MOCK", mock.addr))
        # A slow SSE stream: 30 tokens, 100 ms apart.
        conn = tls_connect(s.port, pki / "ca.pem")
        assert cert_serial(conn.getpeercert(binary_form=True)) == old_serial
        body = chat_body(stream=True)
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"x-mock-tokens: 30\r\nx-mock-itl-ms: 100\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        got = conn.recv(65536)
        assert got.startswith(b"HTTP/1.1 200"), got[:200]

        # Rotate (sluice ca issue writes key.pem then cert.pem, each atomically).
        ca_issue(pki, srv, f"spiffe://{TD}/ns/model/sa/sluice", "localhost")
        new_serial = file_serial(srv / "cert.pem")
        assert new_serial != old_serial
        wait_for(lambda: s.metric("sluice_tls_cert_reloads_total", result="ok") >= 1, what="reload")

        def new_serial_seen():
            with tls_connect(s.port, pki / "ca.pem") as c2:
                return cert_serial(c2.getpeercert(binary_form=True)) == new_serial
        wait_for(new_serial_seen, what="new certificate on a new connection")
        # And the new connection serves requests.
        r = curl("--cacert", str(pki / "ca.pem"), "-o", "/dev/null", "-w", "%{http_code}",
                 f"https://localhost:{s.port}/v1/models")
        assert r.stdout == "200", r.stderr

        # The old stream is still going and completes intact.
        conn.settimeout(15)
        while not got.endswith(b"0\r\n\r\n"):
            chunk = conn.recv(65536)
            assert chunk, "stream was cut"
            got += chunk
        conn.close()
        text = got.decode()
        assert "data: [DONE]" in text
        assert text.count('"delta"') >= 30, text[-500:]
    finally:
        mock.stop()


def test_bad_rotation_keeps_the_old_certificate(pki, tmp_path, sluice_factory):
    mock = start_mock()
    try:
        srv = ca_issue(pki, tmp_path / "srv", f"spiffe://{TD}/ns/model/sa/sluice", "localhost")
        serial = file_serial(srv / "cert.pem")
        s = sluice_factory(terminating_config(srv).replace("MOCK", mock.addr))
        (srv / "key.pem").write_text("garbage\n")
        wait_for(lambda: s.metric("sluice_tls_cert_reloads_total", result="error") >= 1, what="failed reload")
        with tls_connect(s.port, pki / "ca.pem") as c:
            assert cert_serial(c.getpeercert(binary_form=True)) == serial
        assert "TLS certificate reload failed" in s.log()
    finally:
        mock.stop()


def mesh_pki(tmp_path: Path):
    ca_dir = tmp_path / "ca"
    ca_init(ca_dir)
    server = ca_issue(ca_dir, tmp_path / "server", f"spiffe://{TD}/ns/model/sa/server", "localhost", "model.mesh")
    client = ca_issue(ca_dir, tmp_path / "client", f"spiffe://{TD}/ns/app/sa/client")
    intruder = ca_issue(ca_dir, tmp_path / "intruder", f"spiffe://{TD}/ns/other/sa/intruder")
    return ca_dir, server, client, intruder


def server_sidecar_config(server: Path, ca: Path, bind: str, admin: str, mock_addr: str, access_log: str) -> str:
    return f"""\
workers: 1
admin: {{ bind: {admin} }}
telemetry: {{ flush_interval_ms: 50 }}
access_log: {{ enabled: true, path: {access_log} }}
caller: {{ sources: [peer_identity, header] }}
listeners:
  - name: inbound
    bind: {bind}
    tls:
      cert_file: {server}/cert.pem
      key_file: {server}/key.pem
      client_ca_file: {ca}/ca.pem
    routes:
      - match: {{ path_prefix: / }}
        upstream: app
        inspect: {{}}
        allow_identities: ["spiffe://{TD}/ns/app/*"]
upstreams:
  app:
    endpoints: ["{mock_addr}"]
"""


def client_sidecar_config(client: Path, ca: Path, bind: str, admin: str, server_addr: str,
                          peer_id: str = f"spiffe://{TD}/ns/model/sa/server") -> str:
    return f"""\
workers: 1
admin: {{ bind: {admin} }}
telemetry: {{ flush_interval_ms: 50 }}
listeners:
  - name: outbound
    bind: {bind}
    routes:
      - match: {{ path_prefix: / }}
        upstream: model
upstreams:
  model:
    endpoints: ["{server_addr}"]
    tls:
      enabled: true
      sni: model.mesh
      system_roots: false
      ca_file: {ca}/ca.pem
      client_cert_file: {client}/cert.pem
      client_key_file: {client}/key.pem
      peer_identities: ["{peer_id}"]
"""


def test_mtls_between_two_sidecars_on_loopback(tmp_path, sluice_factory):
    ca_dir, server, client, intruder = mesh_pki(tmp_path)
    mock = start_mock()
    try:
        log = tmp_path / "access.log"
        srv = sluice_factory(server_sidecar_config(server, ca_dir, "127.0.0.1:{port}", "127.0.0.1:{admin_port}",
                                                   mock.addr, str(log)))
        cli = sluice_factory(client_sidecar_config(client, ca_dir, "127.0.0.1:{port}", "127.0.0.1:{admin_port}",
                                                   f"127.0.0.1:{srv.port}"))
        # An unmodified plain-HTTP client talks to its sidecar; the sidecars talk mTLS.
        import openai
        c = openai.OpenAI(base_url=f"{cli.url}/v1", api_key="sk-test")
        out = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                        extra_headers={"x-sluice-caller": "spoofed"})
        assert out.choices[0].message.content
        # The verified identity is the caller (a header cannot spoof it).
        caller = f"spiffe://{TD}/ns/app/sa/client"
        wait_for(lambda: srv.metric("sluice_gen_ai_requests_total", caller=caller, outcome="ok") >= 1,
                 what="caller identity in metrics")
        assert srv.metric("sluice_gen_ai_tokens_total", caller=caller, gen_ai_token_type="output") > 0
        wait_for(lambda: log.exists() and caller in log.read_text(), what="caller in the access log")
        assert "spoofed" not in srv.metrics()

        # A client certificate from the mesh CA but not on the allow list: 403, OpenAI shape.
        r = curl("--cacert", str(ca_dir / "ca.pem"), "--cert", str(intruder / "cert.pem"),
                 "--key", str(intruder / "key.pem"), "-H", "content-type: application/json",
                 "-d", chat_body().decode(), "-w", "\n%{http_code}", f"https://localhost:{srv.port}/v1/chat/completions")
        body, _, code = r.stdout.rpartition("\n")
        assert code == "403", r.stdout + r.stderr
        err = json.loads(body)["error"]
        assert err["type"] == "permission_error" and err["code"] == "identity_not_allowed"
        assert "spiffe://cluster.local/ns/other/sa/intruder" in err["message"]
        # The access log names who was refused.
        def refused_logged():
            lines = [json.loads(l) for l in log.read_text().splitlines() if l.strip()]
            return any(l.get("status") == 403 and l.get("error") == "identity_not_allowed"
                       and l.get("peer_identity") == f"spiffe://{TD}/ns/other/sa/intruder" for l in lines)
        wait_for(refused_logged, what="the refusal in the access log")

        # No client certificate: the handshake fails.
        r = curl("--cacert", str(ca_dir / "ca.pem"), f"https://localhost:{srv.port}/v1/models")
        assert r.returncode != 0, r.stdout
        wait_for(lambda: srv.metric("sluice_tls_handshake_failures_total", reason="no_client_cert") >= 1,
                 what="no_client_cert metric")

        # A certificate from another CA: refused in the handshake too.
        other = tmp_path / "otherca"
        ca_init(other)
        stranger = ca_issue(other, tmp_path / "stranger", f"spiffe://{TD}/ns/app/sa/client")
        r = curl("--cacert", str(ca_dir / "ca.pem"), "--cert", str(stranger / "cert.pem"),
                 "--key", str(stranger / "key.pem"), f"https://localhost:{srv.port}/v1/models")
        assert r.returncode != 0, r.stdout
        wait_for(lambda: srv.metric("sluice_tls_handshake_failures_total", reason="bad_client_cert") >= 1,
                 what="bad_client_cert metric")

        # The client sidecar verifies the server's SPIFFE ID: a wrong expectation is a 502.
        cli2 = sluice_factory(client_sidecar_config(client, ca_dir, "127.0.0.1:{port}", "127.0.0.1:{admin_port}",
                                                    f"127.0.0.1:{srv.port}", peer_id=f"spiffe://{TD}/ns/model/sa/other"))
        status, body = http_get(cli2.url + "/v1/models")
        assert status == 502 and b"upstream_tls_failed" in body, body
    finally:
        mock.stop()


def test_config_errors_name_file_line_and_field(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        listeners:
          - name: a
            bind: 127.0.0.1:1
            tls:
              cert_file: {tmp_path}/missing.pem
            routes:
              - upstream: u
                allow_identities: ["https://not-spiffe"]
        upstreams:
          u:
            endpoints: ["127.0.0.1:2"]
            tls: {{ enabled: true, client_cert_file: {tmp_path}/c.pem }}
        """))
    r = subprocess.run([SLUICE_BIN, "check", "--config", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 2
    e = r.stderr
    assert f"{cfg}:5: listeners[0].tls.key_file: required with cert_file" in e, e
    assert f"{cfg}:5: listeners[0].tls.cert_file: `{tmp_path}/missing.pem`" in e, e
    assert f"{cfg}:8: listeners[0].routes[0].allow_identities: needs a listener with tls.client_ca_file" in e, e
    assert f"{cfg}:8: listeners[0].routes[0].allow_identities[0]:" in e, e
    assert f"{cfg}:12: upstreams.u.tls.client_key_file: required with client_cert_file" in e, e


def test_interception_explicit_mode(tmp_path, sluice_factory):
    # The "real" upstream: the mock over TLS with its own CA, for a public-looking name.
    mock_ca = tmp_path / "mockca"
    ca_init(mock_ca, td="mock.test")
    mcert = ca_issue(mock_ca, tmp_path / "mockcert", "spiffe://mock.test/ns/x/sa/mock", "api.openai.test")
    mock = start_mock(tls_cert=mcert / "cert.pem", tls_key=mcert / "key.pem")
    # The interception CA the application trusts.
    ica = tmp_path / "ica"
    ca_init(ica, td="intercept.local")
    try:
        cfg = f"""\
workers: 1
admin: {{ bind: 127.0.0.1:{{admin_port}} }}
telemetry: {{ flush_interval_ms: 50 }}
listeners:
  - name: intercept
    bind: 127.0.0.1:{{port}}
    tls:
      intercept_ca_cert_file: {ica}/ca.pem
      intercept_ca_key_file: {ica}/ca-key.pem
    routes:
      - match: {{ host: api.openai.test }}
        upstream: openai
        inspect: {{}}
      - match: {{ host: wrong-ca.test }}
        upstream: wrong_ca
upstreams:
  openai:
    endpoints: ["{mock.addr}"]
    host_rewrite: preserve
    tls: {{ enabled: true, sni: api.openai.test, system_roots: false, ca_file: {mock_ca}/ca.pem }}
  wrong_ca:
    endpoints: ["{mock.addr}"]
    tls: {{ enabled: true, sni: api.openai.test, system_roots: false, ca_file: {ica}/ca.pem }}
"""
        s = sluice_factory(cfg)
        resolve = f"api.openai.test:{s.port}:127.0.0.1"
        r = curl("-v", "--cacert", str(ica / "ca.pem"), "--resolve", resolve, "-H", "content-type: application/json",
                 "-d", chat_body().decode(), "-w", "\n%{http_code}", f"https://api.openai.test:{s.port}/v1/chat/completions")
        body, _, code = r.stdout.rpartition("\n")
        assert code == "200", r.stdout + r.stderr
        assert json.loads(body)["choices"]
        # The certificate the client saw was minted for the SNI by the interception CA.
        assert "CN=api.openai.test" in r.stderr.replace(" = ", "=").replace("; ", ","), r.stderr
        # Each SNI gets its own leaf; a second call reuses the cached one.
        minted = s.metric("sluice_tls_minted_certs_total")
        r = curl("--cacert", str(ica / "ca.pem"), "--resolve", f"other.test:{s.port}:127.0.0.1",
                 "-o", "/dev/null", "-w", "%{http_code}", f"https://other.test:{s.port}/v1/models")
        assert r.stdout == "404", r.stdout + r.stderr  # minted and trusted; no route for that host
        with tls_connect(s.port, ica / "ca.pem", server_name="other.test") as c:
            from cryptography import x509
            leaf = x509.load_der_x509_certificate(c.getpeercert(binary_form=True))
            assert leaf.subject.rfc4514_string().endswith("CN=other.test") or "CN=other.test" in leaf.subject.rfc4514_string()
            life = leaf.not_valid_after_utc - leaf.not_valid_before_utc
            assert 23 * 3600 < life.total_seconds() <= 24 * 3600 + 600
        wait_for(lambda: s.metric("sluice_tls_minted_certs_total") >= 2, what="minted metric")
        # The openai SDK trusting the interception CA.
        import httpx
        import openai
        # httpx has no --resolve: connect to 127.0.0.1, with the SNI (httpcore's
        # `sni_hostname` extension, also used for verification) and Host of the real name.
        def hook(request):
            request.extensions["sni_hostname"] = "api.openai.test"

        with httpx.Client(verify=ssl.create_default_context(cafile=str(ica / "ca.pem")),
                          event_hooks={"request": [hook]}) as hc:
            client = openai.OpenAI(base_url=f"https://127.0.0.1:{s.port}/v1", api_key="sk-test", http_client=hc,
                                   default_headers={"Host": "api.openai.test"})
            out = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            assert out.choices[0].message.content
        # sluice verifies the real upstream: a CA that did not sign it is a 502.
        r = curl("--cacert", str(ica / "ca.pem"), "--resolve", f"wrong-ca.test:{s.port}:127.0.0.1",
                 "-w", "\n%{http_code}", f"https://wrong-ca.test:{s.port}/v1/models")
        body, _, code = r.stdout.rpartition("\n")
        assert code == "502" and "upstream_tls_failed" in body, r.stdout
        # No SNI (a client connecting by IP): no name to mint for, the handshake fails.
        r = curl("-k", f"https://127.0.0.1:{s.port}/v1/models")
        assert r.returncode != 0
        wait_for(lambda: s.metric("sluice_tls_handshake_failures_total", reason="no_sni") >= 1, what="no_sni metric")
    finally:
        mock.stop()


# --- two network namespaces -------------------------------------------------------------------

NS_APP = "sluice-tls-app"
NS_MODEL = "sluice-tls-model"
APP_IP = "10.212.7.1"
MODEL_IP = "10.212.7.2"


def netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root for ip netns"
    if not shutil.which("ip"):
        return "no `ip` command"
    r = subprocess.run(["ip", "netns", "add", "sluice-tls-probe"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"ip netns unavailable: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", "sluice-tls-probe"], capture_output=True)
    return None


def sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture
def two_namespaces():
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    for ns in (NS_APP, NS_MODEL):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    try:
        sh("ip", "netns", "add", NS_APP)
        sh("ip", "netns", "add", NS_MODEL)
        sh("ip", "link", "add", "sltls-app", "type", "veth", "peer", "name", "sltls-model")
        sh("ip", "link", "set", "sltls-app", "netns", NS_APP)
        sh("ip", "link", "set", "sltls-model", "netns", NS_MODEL)
        for ns, dev, ip in ((NS_APP, "sltls-app", APP_IP), (NS_MODEL, "sltls-model", MODEL_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield
    finally:
        for ns in (NS_APP, NS_MODEL):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def in_ns(ns, *cmd, **kw):
    return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kw)


def ns_run(ns, *cmd, timeout=30):
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout)


def ns_wait_ready(ns, admin_port, proc, log):
    deadline = time.time() + 15
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sluice exited in {ns}: {Path(log).read_text()}")
        r = ns_run(ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{admin_port}/ready")
        if r.stdout == "200":
            return
        time.sleep(0.1)
    raise TimeoutError(Path(log).read_text())


def test_mtls_across_two_network_namespaces(tmp_path, two_namespaces):
    """The client sidecar (with its application) in one namespace, the server sidecar (with the
    model server) in another, connected by a veth pair: traffic between them is mTLS."""
    from conftest import LOADTEST_BIN
    ca_dir, server, client, intruder = mesh_pki(tmp_path)
    procs = []
    try:
        mock = in_ns(NS_MODEL, LOADTEST_BIN, "mock", "--listen", "127.0.0.1:18080", stdout=subprocess.PIPE,
                     stderr=subprocess.DEVNULL, text=True)
        procs.append(mock)
        assert "mock listening on" in mock.stdout.readline()
        log = tmp_path / "access.log"
        scfg = tmp_path / "server.yaml"
        scfg.write_text(server_sidecar_config(server, ca_dir, f"{MODEL_IP}:15006", "127.0.0.1:15000",
                                              "127.0.0.1:18080", str(log)))
        slog = tmp_path / "server.log"
        sp = in_ns(NS_MODEL, SLUICE_BIN, "run", "--config", str(scfg), stdout=open(slog, "w"), stderr=subprocess.STDOUT)
        procs.append(sp)
        ns_wait_ready(NS_MODEL, 15000, sp, slog)
        ccfg = tmp_path / "client.yaml"
        ccfg.write_text(client_sidecar_config(client, ca_dir, "127.0.0.1:15001", "127.0.0.1:15000", f"{MODEL_IP}:15006"))
        clog = tmp_path / "client.log"
        cp = in_ns(NS_APP, SLUICE_BIN, "run", "--config", str(ccfg), stdout=open(clog, "w"), stderr=subprocess.STDOUT)
        procs.append(cp)
        ns_wait_ready(NS_APP, 15000, cp, clog)

        # The application (curl, plain HTTP to its sidecar) in the app namespace.
        r = ns_run(NS_APP, "curl", "-sS", "-H", "content-type: application/json", "-d", chat_body().decode(),
                   "-w", "\n%{http_code}", "http://127.0.0.1:15001/v1/chat/completions")
        body, _, code = r.stdout.rpartition("\n")
        assert code == "200", r.stdout + r.stderr
        # The openai SDK, also from the app namespace.
        script = ("import openai;c=openai.OpenAI(base_url='http://127.0.0.1:15001/v1',api_key='k');"
                  "print(c.chat.completions.create(model='gpt-4o-mini',messages=[{'role':'user','content':'hi'}])"
                  ".choices[0].message.content)")
        r = ns_run(NS_APP, "python3", "-c", script)
        assert r.returncode == 0 and r.stdout.strip(), r.stderr
        caller = f"spiffe://{TD}/ns/app/sa/client"
        wait_for(lambda: log.exists() and log.read_text().count(caller) >= 2, what="caller identity in the access log")
        m = ns_run(NS_MODEL, "curl", "-s", "http://127.0.0.1:15000/metrics").stdout
        assert f'caller="{caller}"' in m

        # From the app namespace, straight to the server sidecar: not on the allow list → 403,
        # and without a certificate → handshake failure.
        r = ns_run(NS_APP, "curl", "-sS", "--cacert", str(ca_dir / "ca.pem"), "--cert", str(intruder / "cert.pem"),
                   "--key", str(intruder / "key.pem"), "--resolve", f"model.mesh:15006:{MODEL_IP}",
                   "-w", "\n%{http_code}", "https://model.mesh:15006/v1/models")
        body, _, code = r.stdout.rpartition("\n")
        assert code == "403" and "identity_not_allowed" in body, r.stdout + r.stderr
        r = ns_run(NS_APP, "curl", "-sS", "--cacert", str(ca_dir / "ca.pem"), "--resolve", f"model.mesh:15006:{MODEL_IP}",
                   "https://model.mesh:15006/v1/models")
        assert r.returncode != 0
        # The traffic on the veth really is TLS: the plain port of the mock is not reachable
        # from the app namespace (it listens on the model namespace's loopback only).
        r = ns_run(NS_APP, "curl", "-sS", "--max-time", "2", f"http://{MODEL_IP}:18080/v1/models")
        assert r.returncode != 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


def test_upstream_ca_bundle_rotation_without_a_config_reload(tmp_path, sluice_factory):
    """The mesh CA bundle an upstream is verified against is watched too: replacing it makes
    new connections verify against the new roots, with no config change or SIGHUP."""
    ca1 = tmp_path / "ca1"
    ca_init(ca1, td="mock.test")
    ca2 = tmp_path / "ca2"
    ca_init(ca2, td="mock.test")
    mcert = ca_issue(ca1, tmp_path / "mock", "spiffe://mock.test/ns/x/sa/mock", "model.mesh")
    mock = start_mock(tls_cert=mcert / "cert.pem", tls_key=mcert / "key.pem")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes((ca2 / "ca.pem").read_bytes())  # the wrong CA first
    try:
        s = sluice_factory(upstream=mock.addr, extra_upstream=textwrap.dedent(f"""\
            tls: {{ enabled: true, sni: model.mesh, system_roots: false, ca_file: {bundle} }}
            pool: {{ idle_max: 0 }}
            """))
        status, body = http_get(s.url + "/v1/models")
        assert status == 502 and b"upstream_tls_failed" in body, body
        # Rotate: old and new CA in one bundle (the usual overlap), written atomically.
        tmp = tmp_path / "bundle.tmp"
        tmp.write_bytes((ca2 / "ca.pem").read_bytes() + (ca1 / "ca.pem").read_bytes())
        os.replace(tmp, bundle)
        wait_for(lambda: http_get(s.url + "/v1/models")[0] == 200, what="the rotated bundle")
        wait_for(lambda: s.metric("sluice_tls_cert_reloads_total", result="ok") >= 1, what="reload metric")
        assert s.metric("sluice_config_reloads_total", result="ok") == 0
    finally:
        mock.stop()


def test_h2_only_client_is_refused_in_the_handshake(pki, tmp_path, sluice_factory):
    mock = start_mock()
    try:
        srv = ca_issue(pki, tmp_path / "srv", f"spiffe://{TD}/ns/model/sa/sluice", "localhost")
        s = sluice_factory(terminating_config(srv).replace("MOCK", mock.addr))
        ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        ctx.set_alpn_protocols(["h2"])
        with pytest.raises(ssl.SSLError):
            with socket.create_connection(("127.0.0.1", s.port), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost"):
                    pass
        wait_for(lambda: s.metric("sluice_tls_handshake_failures_total", reason="incompatible") >= 1,
                 what="incompatible metric")
        # A client offering h2 and http/1.1 gets http/1.1.
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as c:
                assert c.selected_alpn_protocol() == "http/1.1"
    finally:
        mock.stop()


def test_check_catches_a_key_that_does_not_match(pki, tmp_path):
    a = ca_issue(pki, tmp_path / "a", f"spiffe://{TD}/ns/a/sa/a", "localhost")
    b = ca_issue(pki, tmp_path / "b", f"spiffe://{TD}/ns/b/sa/b", "localhost")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        listeners:
          - name: a
            bind: 127.0.0.1:1
            tls: {{ cert_file: {a}/cert.pem, key_file: {b}/key.pem }}
            routes:
              - upstream: u
        upstreams:
          u:
            endpoints: ["127.0.0.1:2"]
            tls:
              enabled: true
              client_cert_file: {b}/cert.pem
              client_key_file: {a}/key.pem
        """))
    r = subprocess.run([SLUICE_BIN, "check", "--config", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 2, r.stdout
    assert f"{cfg}:3: listeners[0].tls: {a}/cert.pem / {b}/key.pem:" in r.stderr, r.stderr
    assert f"{cfg}:12: upstreams.u.tls.client_cert_file: {b}/cert.pem / {a}/key.pem:" in r.stderr, r.stderr


def test_config_reload_turns_tls_on_for_new_connections(pki, tmp_path, sluice_factory, mock):
    srv = ca_issue(pki, tmp_path / "srv", f"spiffe://{TD}/ns/model/sa/sluice", "localhost")
    s = sluice_factory(upstream=mock.addr)
    assert http_get(s.url + "/v1/models")[0] == 200
    # An open plain keep-alive connection, from before the reload.
    old = socket.create_connection(("127.0.0.1", s.port), timeout=5)
    old.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    assert old.recv(65536).startswith(b"HTTP/1.1 200")
    text = s.cfg_path.read_text().replace(
        "    routes:",
        f"    tls: {{ cert_file: {srv}/cert.pem, key_file: {srv}/key.pem }}\n    routes:", 1)
    s.write_config(text)
    wait_for(lambda: s.metric("sluice_config_reloads_total", result="ok") >= 1, what="config reload")
    r = curl("--cacert", str(pki / "ca.pem"), "-o", "/dev/null", "-w", "%{http_code}",
             f"https://localhost:{s.port}/v1/models")
    assert r.stdout == "200", r.stderr
    # The connection accepted as plain TCP stays plain until it closes.
    old.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    assert old.recv(65536).startswith(b"HTTP/1.1 200")
    old.close()


def test_close_without_close_notify_is_a_clean_close(pki, tmp_path, sluice_factory, mock):
    """Most clients just close the socket after a keep-alive exchange; that is not a 499."""
    srv = ca_issue(pki, tmp_path / "srv", f"spiffe://{TD}/ns/model/sa/sluice", "localhost")
    s = sluice_factory(terminating_config(srv).replace("MOCK", mock.addr))
    for _ in range(3):
        c = tls_connect(s.port, pki / "ca.pem")
        c.sendall(b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert c.recv(65536).startswith(b"HTTP/1.1 200")
        os.close(c.detach())  # the TCP socket closes without a TLS close_notify
    wait_for(lambda: s.metric("sluice_requests_total", status="200") >= 3, what="requests")
    time.sleep(0.3)
    assert s.metric("sluice_requests_total", status="4xx") == 0, s.metrics()
    assert s.metric("sluice_errors_total", code="client_closed") == 0
