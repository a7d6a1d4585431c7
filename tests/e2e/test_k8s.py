"""The Kubernetes drop-in, end to end with the real binaries:

* the Istio ports: `admin.health_bind` (15021, `/healthz/ready`) and `admin.prometheus_bind`
  (15090, `/stats/prometheus`) serve only their own paths, never `/config`;
* `sluice inject` rewrites manifests (checked with an independent YAML reader, PyYAML);
* `sluice inject-webhook` over HTTPS with an openssl certificate: curl posts AdmissionReviews,
  the JSON Patch is applied with an independent implementation (python `jsonpatch`) and compared
  with the golden pod; bad requests, limits, keep-alive and certificate rotation;
* the example application of deploy/kubernetes/examples/chat (the official `openai` SDK, calling
  https://api.openai.com itself) runs behind the sidecar configuration of deploy/kubernetes/sidecar
  in network namespaces with the injected `sluice iptables` rules: transparent outbound with
  HTTPS interception, plain HTTP to an in-cluster model server, transparent inbound (root only).

Everything else binds 127.0.0.1 on free ports.
"""

import base64
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import jsonpatch
import pytest
import yaml

from conftest import (
    ROOT,
    SLUICE_BIN,
    chat_body,
    free_port,
    http_get,
    start_sluice,
    wait_port,
)

K8S = ROOT / "deploy" / "kubernetes"
FIXTURES = ROOT / "tests" / "fixtures" / "inject"


# --- the Istio health and Prometheus ports -------------------------------------------------

def extra_ports_config(health_port, prom_port):
    return f"""\
workers: 1
admin:
  bind: 127.0.0.1:{{admin_port}}
  health_bind: 127.0.0.1:{health_port}
  prometheus_bind: 127.0.0.1:{prom_port}
drain_timeout_ms: 10000
telemetry: {{ flush_interval_ms: 50 }}
listeners:
  - name: outbound
    bind: 127.0.0.1:{{port}}
    routes:
      - match: {{ path_prefix: / }}
        upstream: mock
        inspect: {{}}
upstreams:
  mock:
    endpoints: ["MOCK"]
"""


def post(url, body, headers=None, timeout=10):
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_health_and_prometheus_ports_serve_only_their_paths(mock):
    hp, pp = free_port(), free_port()
    s = start_sluice(extra_ports_config(hp, pp).replace("MOCK", mock.addr))
    try:
        status, _ = post(s.url + "/v1/chat/completions", chat_body())
        assert status == 200
        health = f"http://127.0.0.1:{hp}"
        prom = f"http://127.0.0.1:{pp}"
        for path in ("/healthz/ready", "/ready", "/healthz"):
            assert http_get(health + path)[0] == 200, path
        assert http_get(health + "/healthz/ready")[1] == b"ready\n"
        for path in ("/stats/prometheus", "/metrics", "/config", "/", "/stats"):
            assert http_get(health + path)[0] == 404, path
        for path in ("/healthz/ready", "/ready", "/healthz", "/config", "/"):
            assert http_get(prom + path)[0] == 404, path
        # The scrape port carries the same metrics as the admin port, tokens included.
        deadline = time.time() + 5
        while time.time() < deadline:
            status, body = http_get(prom + "/stats/prometheus")
            assert status == 200
            if b"sluice_gen_ai_tokens_total" in body:
                break
            time.sleep(0.05)
        assert b"sluice_gen_ai_tokens_total" in body, body[:500]
        assert http_get(prom + "/metrics")[0] == 200
        # The admin port still has everything, /config included.
        assert http_get(s.admin + "/config")[0] == 200
        assert http_get(s.admin + "/stats/prometheus")[0] == 200

        # Drain: the health port reports 503 while an exchange finishes.
        result = {}

        def slow_call():
            result["status"], _ = post(s.url + "/v1/chat/completions", chat_body(),
                                       headers={"x-mock-slow-first-byte-ms": "1500"})

        t = threading.Thread(target=slow_call)
        t.start()
        time.sleep(0.3)
        s.proc.send_signal(signal.SIGTERM)
        deadline = time.time() + 3
        seen = None
        while time.time() < deadline:
            try:
                seen = http_get(health + "/healthz/ready", timeout=1)
            except OSError:
                break
            if seen[0] == 503:
                break
            time.sleep(0.05)
        assert seen is not None and seen == (503, b"draining\n"), seen
        t.join(10)
        assert result.get("status") == 200
        assert s.proc.wait(15) == 0
    finally:
        s.stop()


def test_classic_form_hooks_wait_for_ready_and_delay(mock):
    hp = free_port()
    # Nothing listens yet: wait-ready gives up after its timeout, with a message.
    t0 = time.time()
    r = subprocess.run([SLUICE_BIN, "wait-ready", "--addr", f"127.0.0.1:{hp}", "--timeout-ms", "300"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 1 and "not ready after 300 ms" in r.stderr, r
    assert time.time() - t0 >= 0.3
    # Started in the background, the hook returns once sluice is ready.
    waiter = subprocess.Popen([SLUICE_BIN, "wait-ready", "--addr", f"127.0.0.1:{hp}",
                               "--timeout-ms", "20000"])
    time.sleep(0.3)
    assert waiter.poll() is None
    s = start_sluice(extra_ports_config(hp, free_port()).replace("MOCK", mock.addr))
    try:
        assert waiter.wait(10) == 0
        t0 = time.time()
        r = subprocess.run([SLUICE_BIN, "drain-delay", "--ms", "300"], timeout=20)
        assert r.returncode == 0 and time.time() - t0 >= 0.3
    finally:
        s.stop()


def test_extra_admin_binds_are_validated(tmp_path):
    cfg = tmp_path / "sluice.yaml"
    cfg.write_text("""\
admin:
  bind: 127.0.0.1:15000
  health_bind: 0.0.0.0:15021
  prometheus_bind: 127.0.0.1:15000
listeners:
  - name: outbound
    bind: 127.0.0.1:15001
    routes: [{ match: { path_prefix: / }, upstream: m }]
upstreams:
  m: { endpoints: ["127.0.0.1:1"] }
""")
    r = subprocess.run([SLUICE_BIN, "check", "--config", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 2, r
    assert f"{cfg}:4: admin.prometheus_bind" in r.stderr, r.stderr
    assert "already used" in r.stderr


def test_a_busy_health_port_fails_start_up_clearly(mock):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        hp = busy.getsockname()[1]
        s = start_sluice(extra_ports_config(hp, free_port()).replace("MOCK", mock.addr),
                         expect_ready=False)
        try:
            assert s.proc.wait(10) == 1
            assert "admin.health_bind" in s.log(), s.log()
        finally:
            s.stop()


# --- sluice inject ----------------------------------------------------------------------------

def inject(*args, stdin=None):
    return subprocess.run([SLUICE_BIN, "inject", "--image", "sluice:test", *args],
                          input=stdin, capture_output=True, text=True, timeout=30)


def test_inject_cli_rewrites_manifests_like_kube_inject(tmp_path):
    src = FIXTURES / "manifests" / "deployment.yaml"
    r = inject("-f", str(src))
    assert r.returncode == 0, r.stderr
    assert r.stdout == (FIXTURES / "manifests" / "deployment.injected.yaml").read_text()
    assert "Deployment/chat: injected" in r.stderr
    docs = list(yaml.safe_load_all(r.stdout))
    assert [d["kind"] for d in docs] == ["Deployment", "Service", "ConfigMap"]
    pod = docs[0]["spec"]["template"]
    init = pod["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["sluice-init", "sluice-trust", "sluice-proxy", "migrate"]
    iptables, trust, proxy = init[0], init[1], init[2]
    assert iptables["args"][0] == "iptables"
    assert iptables["securityContext"]["capabilities"] == {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
    a = iptables["args"]
    assert a[a.index("--proxy-uid") + 1] == "1337"
    assert a[a.index("--exclude-outbound-ports") + 1] == "5432,6379"
    assert a[a.index("--exclude-outbound-cidrs") + 1] == "169.254.169.254/32"
    assert a[a.index("--exclude-inbound-ports") + 1] == "15000,15021,15090"
    assert proxy["restartPolicy"] == "Always"
    sc = proxy["securityContext"]
    assert (sc["runAsUser"], sc["runAsNonRoot"], sc["readOnlyRootFilesystem"]) == (1337, True, True)
    assert proxy["startupProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    assert proxy["readinessProbe"]["httpGet"]["port"] == 15021
    assert {"name": "http-envoy-prom", "containerPort": 15090, "protocol": "TCP"} in proxy["ports"]
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/port"] == "15090" and ann["prometheus.io/scrape"] == "true"
    assert ann["sluice.dev/status"] == "injected"
    assert {"name": "sluice-config", "configMap": {"name": "sluice-config"}} in pod["spec"]["volumes"]
    # TLS interception: the proxy gets the CA Secret (optional), the app only the trust bundle
    # that sluice-trust (no capabilities, uid 1337) writes, and the variables naming it.
    assert {"name": "sluice-intercept-ca",
            "secret": {"secretName": "sluice-intercept-ca", "optional": True}} in pod["spec"]["volumes"]
    assert trust["args"][:2] == ["ca", "bundle"] and trust["securityContext"]["runAsUser"] == 1337
    assert "add" not in trust["securityContext"]["capabilities"]
    assert {"name": "sluice-intercept-ca", "mountPath": "/var/run/sluice/intercept",
            "readOnly": True} in proxy["volumeMounts"]
    for c in (pod["spec"]["containers"][0], init[3]):
        env = {e["name"]: e.get("value") for e in c["env"]}
        for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"):
            assert env[var] == "/var/run/sluice/trust/ca-bundle.pem", (c["name"], var)
        assert {"name": "sluice-trust", "mountPath": "/var/run/sluice/trust",
                "readOnly": True} in c["volumeMounts"]
        assert "/var/run/sluice/intercept" not in json.dumps(c)
    # What the application had is kept: strings stay strings, octal modes stay their value.
    app = pod["spec"]["containers"][0]
    assert {"name": "WORKERS", "value": "4"} in app["env"]
    assert {"name": "GREETING", "value": "hello\nworld\n"} in app["env"]
    creds = [v for v in pod["spec"]["volumes"] if v["name"] == "creds"][0]
    assert creds["secret"]["defaultMode"] == 0o440
    assert docs[2]["data"] == {"enabled": "true", "port": "8000",
                               "settings.yaml": "model: gpt-4o-mini\ntemperature: 0.2\n"}

    # Idempotent, through stdin and -o.
    out = tmp_path / "out.yaml"
    r2 = inject("-f", "-", "-o", str(out), stdin=r.stdout)
    assert r2.returncode == 0, r2.stderr
    assert out.read_text() == r.stdout
    assert "skipped: already injected" in r2.stderr


def test_inject_cli_classic_form_holds_the_app_until_the_proxy_is_ready():
    r = inject("-f", str(FIXTURES / "manifests" / "classic.yaml"), "--classic-sidecar")
    assert r.returncode == 0, r.stderr
    pod = yaml.safe_load(r.stdout)["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["sluice-proxy", "web", "worker"]
    assert [c["name"] for c in pod["initContainers"]] == ["sluice-init", "sluice-trust"]
    proxy = pod["containers"][0]
    assert "restartPolicy" not in proxy
    assert proxy["lifecycle"]["postStart"]["exec"]["command"][1] == "wait-ready"
    assert proxy["lifecycle"]["preStop"]["exec"]["command"][1:3] == ["drain-delay", "--ms"]


def test_inject_cli_errors_name_the_problem(tmp_path):
    r = inject("-f", "-", stdin="a: [\n")
    assert r.returncode == 1 and "invalid YAML" in r.stderr, r.stderr
    bad = ("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n"
           "    sluice.dev/excludeOutboundPorts: '80,http'\nspec:\n  containers: [{name: a, image: a}]\n")
    r = inject("-f", "-", stdin=bad)
    assert r.returncode == 1, r
    assert "document 1: Pod/p.metadata.annotations.sluice.dev/excludeOutboundPorts" in r.stderr
    assert "`http` is not a port" in r.stderr
    r = inject("-f", "-", "--cpu-request", "lots", stdin=bad)
    assert r.returncode == 2 and "--cpu-request" in r.stderr, r.stderr
    r = inject("-f", str(tmp_path / "missing.yaml"))
    assert r.returncode == 1 and "missing.yaml" in r.stderr


# --- sluice inject-webhook over HTTPS ---------------------------------------------------------

def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path, name: str):
    """A CA and a serving certificate for 127.0.0.1/localhost signed by it."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name} CA",
            "-keyout", f"{name}-ca.key", "-out", f"{name}-ca.pem", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=sluice-webhook",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
    (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                   "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{name}-ca.pem", "-CAkey", f"{name}-ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)
    return d / f"{name}-ca.pem", d / f"{name}.pem", d / f"{name}.key"


class Webhook:
    def __init__(self, proc, port):
        self.proc, self.port = proc, port

    @property
    def base(self):
        return f"https://127.0.0.1:{self.port}"


@pytest.fixture
def webhook(tmp_path):
    ca, cert, key = make_pki(tmp_path, "one")
    live_cert, live_key = tmp_path / "tls.crt", tmp_path / "tls.key"
    live_cert.write_bytes(cert.read_bytes())
    live_key.write_bytes(key.read_bytes())
    proc = subprocess.Popen(
        [SLUICE_BIN, "--log-format", "text", "inject-webhook", "--cert", str(live_cert),
         "--key", str(live_key), "--bind", "127.0.0.1:0", "--image", "sluice:test",
         "--cert-check-interval-ms", "200"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert "inject-webhook listening on" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
    port = int(line.rsplit(":", 1)[1])
    w = Webhook(proc, port)
    w.dir, w.ca = tmp_path, ca
    yield w
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()


def curl(w, path, *args, ca=None, data=None):
    cmd = ["curl", "-sS", "--max-time", "10", "--cacert", str(ca or w.ca), "-o", "-",
           "-w", "\n%{http_code}", *args]
    if data is not None:
        cmd += ["-X", "POST", "-H", "content-type: application/json", "--data-binary", f"@{data}"]
    r = subprocess.run(cmd + [w.base + path], capture_output=True, text=True, timeout=20)
    body, _, code = r.stdout.rpartition("\n")
    return r.returncode, int(code or 0), body, r.stderr


def test_webhook_answers_admission_reviews_over_https(webhook):
    rc, code, body, err = curl(webhook, "/healthz")
    assert (rc, code, body) == (0, 200, "ok\n"), err
    cases = sorted(p for p in (FIXTURES / "webhook").iterdir() if p.is_dir())
    assert len(cases) >= 8
    patched = 0
    for case in cases:
        endpoint = (case / "endpoint").read_text().strip()
        rc, code, body, err = curl(webhook, endpoint, data=case / "request.json")
        assert (rc, code) == (0, 200), (case.name, err, body)
        resp = json.loads(body)
        assert resp == json.loads((case / "response.json").read_text()), case.name
        if "patch" not in resp["response"]:
            continue
        patched += 1
        ops = json.loads(base64.b64decode(resp["response"]["patch"]))
        req = json.loads((case / "request.json").read_text())
        pod = jsonpatch.apply_patch(req["request"]["object"], ops)
        assert pod == json.loads((case / "pod.json").read_text()), case.name
        names = [c["name"] for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]]
        assert "sluice-proxy" in names, case.name
        # Posting the patched pod again changes nothing (idempotent).
        req["request"]["object"] = pod
        again = webhook.dir / "again.json"
        again.write_text(json.dumps(req))
        rc, code, body, err = curl(webhook, endpoint, data=again)
        assert code == 200 and "patch" not in json.loads(body)["response"], body
    assert patched >= 4


def raw_tls(w, data: bytes, timeout=5.0) -> bytes:
    ctx = ssl.create_default_context(cafile=str(w.ca))
    with socket.create_connection(("127.0.0.1", w.port), timeout=timeout) as s:
        with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
            t.sendall(data)
            out = b""
            try:
                while True:
                    chunk = t.recv(65536)
                    if not chunk:
                        break
                    out += chunk
            except (socket.timeout, ssl.SSLError, ConnectionResetError):
                pass
            return out


def test_webhook_refuses_bad_requests_and_survives_them(webhook, tmp_path):
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    rc, code, body, _ = curl(webhook, "/inject", data=garbage)
    assert code == 400
    err = json.loads(body)["error"]
    assert err["code"] == "bad_request" and "invalid JSON" in err["message"]
    rc, code, body, _ = curl(webhook, "/nope")
    assert code == 404 and json.loads(body)["error"]["code"] == "not_found"
    rc, code, _, _ = curl(webhook, "/inject")
    assert code == 405
    # Bounded: a declared body over the limit is refused before it is read.
    out = raw_tls(webhook, b"POST /inject HTTP/1.1\r\nhost: x\r\ncontent-length: 999999999\r\n\r\n{}")
    assert out.startswith(b"HTTP/1.1 413"), out[:100]
    out = raw_tls(webhook, b"POST /inject HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 411"), out[:100]
    out = raw_tls(webhook, b"GET /healthz HTTP/1.1\r\nx: " + b"a" * 20000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431"), out[:100]
    out = raw_tls(webhook, b"\x00\x01 garbage\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400"), out[:100]
    # Plain HTTP and a truncated body: the connection ends, the server stays.
    with socket.create_connection(("127.0.0.1", webhook.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        s.settimeout(5)
        try:
            s.recv(100)
        except (ConnectionResetError, socket.timeout):
            pass
    raw_tls(webhook, b"POST /inject HTTP/1.1\r\ncontent-length: 100\r\n\r\n{\"a\"", timeout=0.5)
    # Keep-alive: two reviews on one connection.
    ctx = ssl.create_default_context(cafile=str(webhook.ca))
    c = http.client.HTTPSConnection("127.0.0.1", webhook.port, context=ctx, timeout=10)
    body = (FIXTURES / "webhook" / "labelled" / "request.json").read_bytes()
    for _ in range(2):
        c.request("POST", "/inject", body=body, headers={"content-type": "application/json"})
        r = c.getresponse()
        assert r.status == 200
        assert json.loads(r.read())["response"]["patchType"] == "JSONPatch"
    c.close()
    assert webhook.proc.poll() is None
    assert curl(webhook, "/ready")[1] == 200


def test_webhook_picks_up_a_rotated_certificate(webhook):
    ca2, cert2, key2 = make_pki(webhook.dir, "two")
    # Rotate like the kubelet does for a Secret volume: new files swapped in whole.
    for src, dst in ((cert2, "tls.crt"), (key2, "tls.key")):
        tmp = webhook.dir / (dst + ".new")
        tmp.write_bytes(src.read_bytes())
        os.replace(tmp, webhook.dir / dst)
    deadline = time.time() + 10
    code = 0
    while time.time() < deadline:
        _, code, _, _ = curl(webhook, "/healthz", ca=ca2)
        if code == 200:
            break
        time.sleep(0.2)
    assert code == 200, "the rotated certificate was not served"
    rc, code, _, err = curl(webhook, "/healthz")  # the old CA no longer verifies
    assert rc != 0 and code == 0, err
    # A broken rotation (key of another certificate) is refused; the good pair stays.
    (webhook.dir / "tls.key").write_bytes((webhook.dir / "one.key").read_bytes())
    time.sleep(0.6)
    assert curl(webhook, "/healthz", ca=ca2)[1] == 200
    assert webhook.proc.poll() is None


def test_webhook_start_up_errors_name_the_file(tmp_path):
    _, cert, _ = make_pki(tmp_path, "a")
    _, _, other_key = make_pki(tmp_path, "b")
    r = subprocess.run([SLUICE_BIN, "inject-webhook", "--cert", str(cert), "--key", str(other_key),
                        "--bind", "127.0.0.1:0"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 1 and "b.key" in r.stderr and "does not match" in r.stderr, r.stderr
    r = subprocess.run([SLUICE_BIN, "inject-webhook", "--cert", str(tmp_path / "none.pem"),
                        "--key", str(other_key), "--bind", "127.0.0.1:0"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 1 and "none.pem" in r.stderr, r.stderr


# --- kustomize ---------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (its built-in kustomize) not installed")
def test_kustomizations_build():
    built = {}
    for d in ("monitoring", "webhook", "examples/chat"):
        r = subprocess.run(["kubectl", "kustomize", str(K8S / d)], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, (d, r.stderr)
        built[d] = list(yaml.safe_load_all(r.stdout))
    chat = built["examples/chat"]
    for doc in chat:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "chat", doc["metadata"]
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in chat)
    assert ("ConfigMap", "sluice-config") in kinds and ("Secret", "provider-keys") in kinds
    dep = [d for d in chat if d["kind"] == "Deployment"][0]
    spec = dep["spec"]["template"]["spec"]
    # The component adds the same containers the injector does.
    injected = list(yaml.safe_load_all((K8S / "examples" / "chat" / "app.injected.yaml").read_text()))
    want = [d for d in injected if d["kind"] == "Deployment"][0]["spec"]["template"]["spec"]
    def flags(c):
        a = c["args"]
        return c["args"][0], sorted(zip(a[1::2], a[2::2]))

    def without_args(c):
        return {k: v for k, v in c.items() if k != "args"}

    assert [flags(c) for c in spec["initContainers"]] == [flags(c) for c in want["initContainers"]]
    assert [without_args(c) for c in spec["initContainers"]] == \
        [without_args(c) for c in want["initContainers"]]
    assert spec["containers"] == want["containers"]
    assert sorted(v["name"] for v in spec["volumes"]) == sorted(v["name"] for v in want["volumes"])
    kinds = {d["kind"] for d in built["webhook"]}
    assert {"Deployment", "Service", "MutatingWebhookConfiguration", "Certificate"} <= kinds


# --- the example application through the sidecar's configuration ------------------------------
#
# A pod, as network namespaces (tests/e2e/test_transparent.py's `Net`): the "app" namespace is
# the pod (the example application, sluice as uid 1337 with the shipped config, the rules of the
# injected `sluice-init` container); the "model" namespace is the rest of the world: the
# provider (the mock over TLS, with a certificate for api.openai.com from a stand-in public CA)
# and an in-cluster vLLM (the mock over plain HTTP). The namespace's /etc/hosts sends
# api.openai.com and vllm.models.svc.cluster.local there, so the unmodified application calls
# them by name and never addresses sluice.

from test_transparent import SKIP as NETNS_SKIP, Net, sh  # noqa: E402

INJECTED = K8S / "examples" / "chat" / "app.injected.yaml"
CA_MOUNT = "/var/run/sluice/intercept"   # sluice::inject::INTERCEPT_CA_MOUNT_DIR
TRUST_MOUNT = "/var/run/sluice/trust"    # sluice::inject::TRUST_MOUNT_DIR
VLLM_HOST = "vllm.models.svc.cluster.local"


def shipped_sidecar_config():
    cm = yaml.safe_load((K8S / "sidecar" / "configmap.yaml").read_text())
    return cm["data"]["sluice.yaml"]


def adapt_sidecar_config(text, ca_dir, upstream_ca):
    """The shipped config with only what a test must change: the interception CA's directory
    (the Secret the injector mounts) and, because the stand-in provider's certificate is not
    from a public CA, that CA as `intercept_upstream_ca_file`. Everything else is checked
    unchanged."""
    cfg = yaml.safe_load(text.replace(CA_MOUNT, str(ca_dir)))
    out = [l for l in cfg["listeners"] if l["mode"] == "transparent_outbound"]
    assert len(out) == 1, cfg["listeners"]
    out[0]["transparent"]["intercept_upstream_ca_file"] = str(upstream_ca)
    shipped = yaml.safe_load(text)
    again = yaml.safe_load(yaml.safe_dump(cfg).replace(str(ca_dir), CA_MOUNT))
    for l in again["listeners"]:
        l.get("transparent", {}).pop("intercept_upstream_ca_file", None)
    assert again == shipped, "the test may adapt only the CA paths and the upstream CA"
    return yaml.safe_dump(cfg)


def injected_chat_pod():
    dep = [d for d in yaml.safe_load_all(INJECTED.read_text()) if d["kind"] == "Deployment"][0]
    spec = dep["spec"]["template"]["spec"]
    init = {c["name"]: c for c in spec["initContainers"]}
    app = [c for c in spec["containers"] if c["name"] == "app"][0]
    return init, app


@pytest.mark.skipif(NETNS_SKIP is not None, reason=NETNS_SKIP or "")
def test_example_app_through_the_sidecar_config():
    """deploy/kubernetes/examples/chat's app (the openai SDK, unmodified: no base URL) behind
    deploy/kubernetes/sidecar's config, transparent: its HTTPS call to api.openai.com is
    redirected by the injected iptables rules, intercepted with the CA, inspected and
    re-encrypted to the (verified) provider; an in-cluster vLLM is reached over plain HTTP,
    inspected; inbound calls reach the app through 15006; the Istio health and scrape ports
    stay reachable. Tokens are counted for the pod's caller, `chat`."""
    net = Net()
    try:
        net.up()
        d = net.dir
        init, app_c = injected_chat_pod()

        # The world: a stand-in public CA and the provider's certificate, the provider over TLS
        # on :443, an in-cluster vLLM over plain HTTP on :8000.
        sh(SLUICE_BIN, "ca", "init", "--out", str(d / "publicca"), "--trust-domain", "public.test")
        sh(SLUICE_BIN, "ca", "issue", "--ca", str(d / "publicca"), "--spiffe",
           "spiffe://public.test/ns/openai/sa/api", "--dns", "api.openai.com",
           "--dns", "api.anthropic.com", "--out", str(d / "provider"))
        net.start_mock(net.model, f"{net.model_ip}:443", "--tls-cert",
                       str(d / "provider" / "cert.pem"), "--tls-key", str(d / "provider" / "key.pem"))
        net.start_mock(net.model, f"{net.model_ip}:8000", "--tokens", "5")
        with open(Path("/etc/netns") / net.app / "hosts", "a") as h:
            h.write(f"{net.model_ip} api.openai.com\n{net.model_ip} api.anthropic.com\n"
                    f"{net.model_ip} {VLLM_HOST}\n")

        # The interception CA, as the Secret `sluice-intercept-ca` would hold it.
        ca_dir = d / "intercept"
        sh(SLUICE_BIN, "ca", "init", "--out", str(ca_dir), "--trust-domain", "sluice.test")
        trust_dir = d / "trust"
        trust_dir.mkdir()
        for p in [*d.rglob("*.pem"), ca_dir, d / "publicca", d / "provider"]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)  # the Secret's files: 0644
        os.chmod(trust_dir, 0o777)  # an emptyDir

        # sluice-trust, as injected: the app's bundle (system roots + interception CA), as 1337.
        args = [a.replace(CA_MOUNT, str(ca_dir)).replace(TRUST_MOUNT, str(trust_dir))
                for a in init["sluice-trust"]["args"]]
        r = sh("setpriv", "--reuid=1337", "--regid=1337", "--clear-groups", SLUICE_BIN, *args)
        assert "1 interception CA certificate" in r.stdout, r.stdout
        bundle = trust_dir / "ca-bundle.pem"

        # sluice-proxy with the shipped config; then sluice-init's rules, exactly as injected.
        net.start_sluice(adapt_sidecar_config(shipped_sidecar_config(), ca_dir,
                                              d / "publicca" / "ca.pem"))
        ipt = init["sluice-init"]["args"]
        assert ipt[0] == "iptables" and "--exclude-outbound-ports" not in ipt, ipt
        r = net.iptables(*ipt[1:])
        assert "rules installed" in r.stdout, r.stdout + r.stderr

        # The application, with the injected container's environment (the trust bundle) and the
        # key from the Secret. Nothing in it names sluice.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OPENAI_", "SSL_CERT", "REQUESTS_CA", "NODE_EXTRA", "CURL_CA"))
               and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
        for e in app_c["env"]:
            if "value" in e:
                env[e["name"]] = e["value"].replace(TRUST_MOUNT, str(trust_dir))
        assert "OPENAI_BASE_URL" not in env
        assert env["SSL_CERT_FILE"] == str(bundle) and env["REQUESTS_CA_BUNDLE"] == str(bundle)
        env["OPENAI_API_KEY"] = "sk-test-not-a-key"
        app_port = app_c["ports"][0]["containerPort"]
        code = [x for x in yaml.safe_load_all(INJECTED.read_text())
                if x["kind"] == "ConfigMap"][0]["data"]["app.py"]
        (d / "app.py").write_text(code)
        net.spawn(net.app, "python3", str(d / "app.py"), env=env, log=d / "app.log")
        net.wait_port(net.app, "127.0.0.1", app_port, timeout=30)

        # The kubelet and the Service, from outside the pod: the app's port goes through the
        # inbound listener; the health and scrape ports are sluice's own, never redirected.
        app_url = f"http://{net.app_ip}:{app_port}"
        r = net.exec(net.model, "curl", "-s", "-w", "\n%{http_code}", app_url + "/healthz")
        assert r.stdout == "ok\n\n200", r.stdout + r.stderr
        r = net.exec(net.model, "curl", "-s", f"http://{net.app_ip}:15021/healthz/ready")
        assert r.stdout == "ready\n", r.stdout + r.stderr

        # The example's request: inbound -> app -> openai SDK -> https://api.openai.com.
        r = net.exec(net.model, "curl", "-s", "--max-time", "30", "-w", "\n%{http_code}",
                     app_url + "/ask?q=hello")
        body, _, status = r.stdout.rpartition("\n")
        assert status == "200", r.stdout + r.stderr + (d / "app.log").read_text()
        answer = json.loads(body)
        assert answer["answer"] and answer["usage"]["completion_tokens"] > 0, answer

        # It was intercepted (the SDK trusted the minted leaf through SSL_CERT_FILE) and reached
        # the provider from sluice, addressed to api.openai.com, with the app's key.
        rec = json.loads(net.exec(net.model, "curl", "-sk",
                                  f"https://{net.model_ip}/__mock/requests").stdout)
        assert len(rec) == 1, rec
        assert rec[0]["path"] == "/v1/chat/completions"
        assert rec[0]["headers"]["host"] == "api.openai.com", rec[0]["headers"]
        assert "sluice" in rec[0]["headers"].get("via", ""), rec[0]["headers"]
        assert rec[0]["headers"].get("authorization") == "Bearer sk-test-not-a-key"
        assert net.wait_metric("sluice_transparent_tls_intercepted_total", 1,
                               listener="outbound") >= 1

        # An unmodified curl with the same environment: Anthropic over HTTPS (intercepted), and
        # the in-cluster vLLM over plain HTTP (inspected, no TLS at all).
        r = net.exec(net.app, "curl", "-s", "-w", "\n%{http_code}",
                     "https://api.anthropic.com/v1/messages",
                     "-H", "content-type: application/json", "-H", "x-api-key: sk-ant-test",
                     "-H", "anthropic-version: 2023-06-01",
                     "-d", json.dumps({"model": "claude-3-5-haiku-latest", "max_tokens": 64,
                                       "messages": [{"role": "user", "content": "hi"}]}),
                     env=env, check=False)
        body, _, status = r.stdout.rpartition("\n")
        assert status == "200", r.stdout + r.stderr
        anthropic_out = json.loads(body)["usage"]["output_tokens"]
        r = net.exec(net.app, "curl", "-s", "-w", "\n%{http_code}",
                     f"http://{VLLM_HOST}:8000/v1/chat/completions",
                     "-H", "content-type: application/json", "-d", chat_body().decode(), env=env)
        body, _, status = r.stdout.rpartition("\n")
        assert status == "200", r.stdout
        assert json.loads(body)["usage"]["completion_tokens"] == 5

        # Counted for the pod's caller, as scraped on the Istio port from outside the pod.
        want = answer["usage"]["completion_tokens"] + anthropic_out + 5
        deadline = time.time() + 10
        total = 0.0
        while time.time() < deadline:
            scrape = net.exec(net.model, "curl", "-s",
                              f"http://{net.app_ip}:15090/stats/prometheus").stdout
            total = sum(float(l.rsplit(" ", 1)[1]) for l in scrape.splitlines()
                        if l.startswith("sluice_gen_ai_tokens_total{") and 'caller="chat"' in l
                        and 'gen_ai_token_type="output"' in l)
            if total >= want:
                break
            time.sleep(0.1)
        assert total == want, (total, want)
        assert net.metric("sluice_requests_total", listener="outbound",
                          upstream="original_destination", status="200") == 3
        assert net.metric("sluice_transparent_tls_intercepted_total", listener="outbound") == 2
        # The inbound /healthz and /ask went through 15006, uninspected (not model calls).
        assert net.metric("sluice_requests_total", listener="inbound",
                          route="inbound-passthrough") == 2
    finally:
        net.down()
