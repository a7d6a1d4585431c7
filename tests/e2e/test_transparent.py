"""Transparent interception end to end, across network namespaces.

Each test builds its own pair of network namespaces joined by a veth pair on a private
10.211.N.0/24 network: an "app" namespace (the pod: the application's clients, sluice as uid
1337, the rules from `sluice iptables`) and a "model" namespace (the model server: the bundled
mock, a TLS mock, raw TCP servers). Clients in the app namespace are unmodified: they call
`http://model.test/...` (resolved by the namespace's own /etc/hosts) and never address sluice.
Everything is removed after each test, also when it fails.

Needs root, `ip netns`, `iptables` and `setpriv`; skipped with the reason otherwise.
"""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from conftest import LOADTEST_BIN, SLUICE_BIN, chat_body

PROXY_UID = 1337


def _skip_reason():
    if os.geteuid() != 0:
        return "needs root (network namespaces and iptables)"
    for tool in ("ip", "iptables", "iptables-save", "setpriv", "curl", "openssl"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    probe = f"sl-probe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"`ip netns add` failed: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


SKIP = _skip_reason()
pytestmark = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")

_counter = [0]


def sh(*args, check=True, **kw):
    r = subprocess.run(list(args), capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.returncode}: {r.stderr}")
    return r


class Net:
    """Two namespaces, a veth pair, the processes started in them."""

    def __init__(self):
        _counter[0] += 1
        n = (os.getpid() * 7 + _counter[0]) % 200 + 20
        self.n = n
        self.app = f"sl-app-{n}"
        self.model = f"sl-mdl-{n}"
        self.app_ip = f"10.211.{n}.1"
        self.model_ip = f"10.211.{n}.2"
        self.app_ip6 = f"fd00:211:{n:x}::1"
        self.model_ip6 = f"fd00:211:{n:x}::2"
        self.procs = []
        self.dir = Path(tempfile.mkdtemp(prefix="sluice-tp-"))
        os.chmod(self.dir, 0o755)

    def up(self):
        for ns in (self.app, self.model):
            sh("ip", "netns", "del", ns, check=False)
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        va, vb = f"slv{self.n}a", f"slv{self.n}b"
        sh("ip", "link", "del", va, check=False)
        sh("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
        sh("ip", "link", "set", va, "netns", self.app)
        sh("ip", "link", "set", vb, "netns", self.model)
        sh("ip", "-n", self.app, "addr", "add", f"{self.app_ip}/24", "dev", va)
        sh("ip", "-n", self.model, "addr", "add", f"{self.model_ip}/24", "dev", vb)
        # nodad: usable at once, no duplicate address detection wait.
        sh("ip", "-n", self.app, "addr", "add", f"{self.app_ip6}/64", "dev", va, "nodad")
        sh("ip", "-n", self.model, "addr", "add", f"{self.model_ip6}/64", "dev", vb, "nodad")
        sh("ip", "-n", self.app, "link", "set", va, "up")
        sh("ip", "-n", self.model, "link", "set", vb, "up")
        # `ip netns exec` bind-mounts /etc/netns/<ns>/hosts over /etc/hosts.
        hosts = Path("/etc/netns") / self.app
        hosts.mkdir(parents=True, exist_ok=True)
        (hosts / "hosts").write_text(f"127.0.0.1 localhost\n::1 localhost\n{self.model_ip} model.test\n"
                                    f"{self.model_ip6} model6.test\n")

    def down(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for ns in (self.app, self.model):
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(Path("/etc/netns") / self.app, ignore_errors=True)
        if not os.environ.get("SLUICE_TP_KEEP"):  # keep logs and configs for debugging
            shutil.rmtree(self.dir, ignore_errors=True)

    def exec(self, ns, *args, **kw):
        return sh("ip", "netns", "exec", ns, *args, **kw)

    def spawn(self, ns, *args, log=None, **kw):
        out = open(log, "w") if log else subprocess.DEVNULL
        p = subprocess.Popen(["ip", "netns", "exec", ns, *args], stdout=out,
                             stderr=subprocess.STDOUT if log else subprocess.DEVNULL, **kw)
        self.procs.append(p)
        return p

    def wait_port(self, ns, host, port, timeout=10.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = self.exec(ns, "python3", "-c",
                          f"import socket; socket.create_connection(('{host}', {port}), 0.3)",
                          check=False)
            if r.returncode == 0:
                return
            time.sleep(0.05)
        raise TimeoutError(f"{host}:{port} did not open in {ns}")

    # ---- the model side

    def start_mock(self, ns, addr, *extra):
        p = subprocess.Popen(["ip", "netns", "exec", ns, LOADTEST_BIN, "mock", "--listen", addr,
                              "--record", "50", *extra],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        line = p.stdout.readline()
        assert "mock listening on" in line, f"mock did not start: {line!r}"
        return p

    def start_script(self, ns, source, port, host):
        path = self.dir / f"srv{port}.py"
        path.write_text(textwrap.dedent(source))
        self.spawn(ns, "python3", str(path), host, str(port))
        self.wait_port(ns, host, port)

    # ---- the app side

    def start_sluice(self, config):
        cfg = self.dir / "sluice.yaml"
        cfg.write_text(textwrap.dedent(config))
        os.chmod(cfg, 0o644)
        self.sluice_log = self.dir / "sluice.log"
        self.sluice = self.spawn(
            self.app, "setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}", "--clear-groups",
            SLUICE_BIN, "run", "--config", str(cfg), log=self.sluice_log,
            env={**os.environ, "SLUICE_LOG": "debug"})
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.sluice.poll() is not None:
                raise RuntimeError(f"sluice exited: {self.sluice_log.read_text()}")
            r = self.exec(self.app, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                          "http://127.0.0.1:15000/ready", check=False)
            if r.stdout == "200":
                return
            time.sleep(0.05)
        raise TimeoutError("sluice not ready: " + self.sluice_log.read_text())

    def iptables(self, *args):
        return self.exec(self.app, SLUICE_BIN, "iptables", *args)

    def metrics(self):
        r = self.exec(self.app, "curl", "-s", "http://127.0.0.1:15000/metrics")
        return r.stdout

    def metric(self, name, **labels):
        total, found = 0.0, False
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            if head.split("{", 1)[0] != name:
                continue
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
                found = True
        return total if found else 0.0

    def wait_metric(self, name, at_least, timeout=5.0, **labels):
        deadline = time.time() + timeout
        v = self.metric(name, **labels)
        while v < at_least and time.time() < deadline:
            time.sleep(0.05)
            v = self.metric(name, **labels)
        return v


SLUICE_CONFIG = """\
workers: 1
admin: { bind: 127.0.0.1:15000 }
telemetry: { flush_interval_ms: 50 }
listeners:
  - name: outbound
    bind: "[::]:15001"          # dual stack: IPv4 clients arrive v4-mapped
    mode: transparent_outbound
    transparent: { sniff_timeout_ms: 300 }
    routes:
      - match: { path_prefix: /v1/ }
        upstream: original_destination
        inspect: {}
  - name: inbound
    bind: "[::]:15006"
    mode: transparent_inbound
    routes:
      - match: { path_prefix: /v1/ }
        upstream: original_destination
        inspect: {}
"""

ECHO_SERVER = """
import socket, sys, threading
def serve(c):
    with c:
        while True:
            b = c.recv(65536)
            if not b:
                c.shutdown(socket.SHUT_WR)
                return
            c.sendall(b)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# Server-first: speaks before the client does (SMTP, MySQL).
BANNER_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)
while True:
    c, _ = s.accept()
    try:
        with c:
            c.sendall(b"220 model.test ready\\r\\n")
            if c.recv(100).startswith(b"QUIT"):
                c.sendall(b"221 bye\\r\\n")
    except OSError:
        pass  # the readiness probe resets: serve the next one
"""


# Answers an HTTP/1.1 Upgrade with 101, then echoes raw bytes (a WebSocket server's shape).
UPGRADE_SERVER = """
import socket, sys, threading
def serve(c):
    with c:
        head = b""
        while b"\\r\\n\\r\\n" not in head:
            b = c.recv(4096)
            if not b:
                return
            head += b
        c.sendall(b"HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\n"
                  b"Connection: Upgrade\\r\\n\\r\\n")
        rest = head.split(b"\\r\\n\\r\\n", 1)[1]
        if rest:
            c.sendall(rest)
        while True:
            b = c.recv(65536)
            if not b:
                return
            c.sendall(b)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


@pytest.fixture
def net():
    n = Net()
    try:
        n.up()
        yield n
    finally:
        n.down()


@pytest.fixture
def pod(net):
    """The model namespace serving the mock on :80; the app namespace with sluice and rules."""
    net.start_mock(net.model, f"{net.model_ip}:80")
    net.start_sluice(SLUICE_CONFIG)
    r = net.iptables("--ipv6")
    assert "rules installed" in r.stdout, r.stdout + r.stderr
    return net


def test_unmodified_http_clients_are_intercepted_and_counted(pod):
    body = chat_body(content="Count my tokens through the sidecar, please.").decode()
    r = pod.exec(pod.app, "curl", "-s", "-w", "\n%{http_code}", "http://model.test/v1/chat/completions",
                 "-H", "content-type: application/json", "-H", "authorization: Bearer sk-test",
                 "-d", body)
    out, _, status = r.stdout.rpartition("\n")
    assert status == "200", r.stdout + r.stderr
    usage = json.loads(out)["usage"]

    sdk = textwrap.dedent("""
        import openai, json
        c = openai.OpenAI(base_url="http://model.test/v1", api_key="sk-test", max_retries=0)
        r = c.chat.completions.create(model="gpt-4o-mini",
                                      messages=[{"role": "user", "content": "Hello from the SDK"}])
        s = c.chat.completions.create(model="gpt-4o-mini", stream=True,
                                      stream_options={"include_usage": True},
                                      messages=[{"role": "user", "content": "Stream to me"}])
        text = "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices)
        print(json.dumps({"out": r.usage.completion_tokens, "text": text}))
    """)
    r = pod.exec(pod.app, "python3", "-c", sdk, check=False)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["out"] == 16 and got["text"].startswith("Hello from the sluice")

    # sluice saw every call: three model calls, output tokens counted from each answer.
    out_tokens = usage["completion_tokens"] + 16 + 16
    assert pod.wait_metric("sluice_gen_ai_tokens_total", out_tokens,
                           gen_ai_token_type="output") == out_tokens
    assert pod.metric("sluice_requests_total", listener="outbound",
                      route="outbound-0", upstream="original_destination", status="200") == 3
    assert pod.metric("sluice_transparent_connections_total", listener="outbound",
                      protocol="http") >= 2
    # The model server got them from sluice (Via), addressed to itself (Host untouched).
    rec = json.loads(pod.exec(pod.model, "curl", "-s",
                              f"http://{pod.model_ip}/__mock/requests").stdout)
    assert len(rec) == 3
    for req in rec:
        assert req["headers"].get("host") == "model.test", req["headers"]
        assert "sluice" in req["headers"].get("via", ""), req["headers"]


def test_ipv6_original_destinations(pod):
    pod.start_mock(pod.model, f"[{pod.model_ip6}]:80")
    r = pod.exec(pod.app, "curl", "-6", "-s", "-w", "\n%{http_code}",
                 "http://model6.test/v1/chat/completions", "-H", "content-type: application/json",
                 "-d", chat_body().decode())
    assert r.stdout.endswith("\n200"), r.stdout + r.stderr
    assert pod.wait_metric("sluice_gen_ai_tokens_total", 16, gen_ai_token_type="output") == 16
    assert pod.metric("sluice_requests_total", listener="outbound", route="outbound-0",
                      upstream="original_destination", status="200") == 1
    rec = json.loads(pod.exec(pod.model, "curl", "-s",
                              f"http://[{pod.model_ip6}]/__mock/requests").stdout)
    assert len(rec) == 1 and rec[0]["headers"]["host"] == "model6.test", rec
    assert "sluice" in rec[0]["headers"].get("via", "")


def test_unrouted_http_goes_to_the_original_destination_uninspected(pod):
    # No route matches /__mock/health: the implicit pass-through route takes it.
    r = pod.exec(pod.app, "curl", "-s", "-w", "\n%{http_code}", "http://model.test/__mock/health")
    assert r.stdout.endswith("\n200"), r.stdout
    assert pod.wait_metric("sluice_requests_total", 1, listener="outbound",
                           route="outbound-passthrough") == 1


def test_binary_tcp_passes_through_byte_for_byte(pod):
    pod.start_script(pod.model, ECHO_SERVER, 7000, pod.model_ip)
    pod.start_script(pod.model, BANNER_SERVER, 7001, pod.model_ip)
    client = textwrap.dedent(f"""
        import os, socket, hashlib, sys
        data = bytes(range(256)) * 1024 + os.urandom(300_000)
        c = socket.create_connection(("{pod.model_ip}", 7000), 5)
        c.sendall(data); c.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            b = c.recv(65536)
            if not b: break
            got += b
        assert got == data, (len(got), len(data))
        # A server-first protocol: the client waits for the banner (sniffing times out).
        c = socket.create_connection(("{pod.model_ip}", 7001), 5)
        c.settimeout(5)
        banner = c.recv(100)
        c.sendall(b"QUIT\\r\\n")
        bye = c.recv(100)
        print(len(data), banner.decode().strip(), bye.decode().strip())
    """)
    r = pod.exec(pod.app, "python3", "-c", client, check=False)
    assert r.returncode == 0, r.stderr
    n, *words = r.stdout.split()
    assert words == ["220", "model.test", "ready", "221", "bye"], r.stdout
    n = int(n)
    assert pod.wait_metric("sluice_transparent_passthrough_bytes_total", n + 6, listener="outbound",
                           protocol="tcp", direction="in") >= n + 6
    assert pod.metric("sluice_transparent_passthrough_bytes_total", listener="outbound",
                      protocol="tcp", direction="out") >= n
    assert pod.metric("sluice_transparent_connections_total", listener="outbound",
                      protocol="tcp") == 2


def test_http_upgrade_is_passed_through(pod):
    pod.start_script(pod.model, UPGRADE_SERVER, 8081, pod.model_ip)
    client = textwrap.dedent(f"""
        import socket
        c = socket.create_connection(("{pod.model_ip}", 8081), 5)
        c.settimeout(5)
        c.sendall(b"GET /ws HTTP/1.1\\r\\nHost: model.test:8081\\r\\nUpgrade: websocket\\r\\n"
                  b"Connection: Upgrade\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n")
        head = b""
        while b"\\r\\n\\r\\n" not in head:
            head += c.recv(4096)
        assert head.startswith(b"HTTP/1.1 101"), head
        frame = bytes([0x82, 0x7e, 0x01, 0x00]) + bytes(range(256))
        c.sendall(frame)
        got = b""
        while len(got) < len(frame):
            got += c.recv(65536)
        assert got == frame
        print("ok")
    """)
    r = pod.exec(pod.app, "python3", "-c", client, check=False)
    assert r.stdout.strip() == "ok", r.stdout + r.stderr
    assert pod.wait_metric("sluice_transparent_passthrough_bytes_total", 260, listener="outbound",
                           protocol="http", direction="out") >= 260
    assert pod.metric("sluice_requests_total", listener="outbound") == 0


def test_tls_passes_through_untouched_and_the_sni_is_recorded(pod):
    cert, key = pod.dir / "model.crt", pod.dir / "model.key"
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
       "/CN=model.test", "-addext", "subjectAltName=DNS:model.test",
       "-keyout", str(key), "-out", str(cert))
    os.chmod(key, 0o644)
    pod.start_mock(pod.model, f"{pod.model_ip}:443", "--tls-cert", str(cert), "--tls-key", str(key))
    # The client verifies the model server's own certificate: only untouched bytes pass.
    r = pod.exec(pod.app, "curl", "-s", "-w", "\n%{http_code}", "--cacert", str(cert),
                 "https://model.test/v1/chat/completions", "-H", "content-type: application/json",
                 "-d", chat_body().decode(), check=False)
    assert r.stdout.endswith("\n200"), r.stdout + r.stderr
    assert pod.wait_metric("sluice_transparent_tls_connections_total", 1, listener="outbound",
                           sni="model.test") == 1
    # Relayed bytes are counted when the relay ends (after curl has its answer) and published on
    # the next tick: wait for them rather than read once.
    deadline = time.time() + 10
    while pod.metric("sluice_transparent_passthrough_bytes_total", listener="outbound",
                     protocol="tls", direction="out") <= 500 and time.time() < deadline:
        time.sleep(0.1)
    assert pod.metric("sluice_transparent_passthrough_bytes_total", listener="outbound",
                      protocol="tls", direction="out") > 500
    # Not decrypted: no HTTP exchange was seen, and the request reached the server unmodified.
    assert pod.metric("sluice_requests_total", listener="outbound") == 0
    rec = json.loads(pod.exec(pod.model, "curl", "-sk",
                              f"https://{pod.model_ip}/__mock/requests").stdout)
    assert len(rec) == 1 and "via" not in rec[0]["headers"], rec


def test_inbound_calls_to_a_model_server_in_the_pod_are_inspected(pod):
    # The application in the pod: a model server on loopback only.
    pod.start_mock(pod.app, "127.0.0.1:8080", "--tokens", "5")
    r = pod.exec(pod.model, "curl", "-s", "-w", "\n%{http_code}",
                 f"http://{pod.app_ip}:8080/v1/chat/completions",
                 "-H", "content-type: application/json", "-d", chat_body().decode())
    assert r.stdout.endswith("\n200"), r.stdout
    assert json.loads(r.stdout.rpartition("\n")[0])["usage"]["completion_tokens"] == 5
    assert pod.wait_metric("sluice_gen_ai_tokens_total", 5,
                           gen_ai_token_type="output") == 5
    assert pod.metric("sluice_transparent_connections_total", listener="inbound",
                      protocol="http") == 1
    # sluice's own connection to the application (uid 1337, loopback) was not redirected again.
    assert pod.metric("sluice_requests_total", listener="outbound") == 0


def test_a_direct_connection_to_the_transparent_port_is_refused_politely(pod):
    # Addressed to sluice itself: there is no original destination to forward to.
    r = pod.exec(pod.app, "curl", "-s", "-w", "\n%{http_code}",
                 "http://127.0.0.1:15001/__mock/health")
    assert r.stdout.endswith("\n421"), r.stdout
    assert "no_original_destination" in r.stdout
    # Not HTTP either: closed, counted.
    client = textwrap.dedent(f"""
        import socket
        c = socket.create_connection(("127.0.0.1", 15001), 5)
        c.sendall(bytes([0, 1, 2, 3]))
        c.settimeout(5)
        try:
            print(len(c.recv(10)))
        except ConnectionResetError:
            print("reset")
        # A destination that refuses: the client sees its connection reset.
        c = socket.create_connection(("{pod.model_ip}", 7999), 5)
        c.sendall(b"hello")
        c.settimeout(5)
        try:
            print(len(c.recv(10)))
        except ConnectionResetError:
            print("reset")
    """)
    r = pod.exec(pod.app, "python3", "-c", client, check=False)
    assert r.stdout.split() == ["reset", "reset"], r.stdout + r.stderr
    assert pod.wait_metric("sluice_transparent_errors_total", 1, listener="outbound",
                           code="no_original_destination") == 1
    assert pod.wait_metric("sluice_transparent_errors_total", 1, listener="outbound",
                           code="connect_failed") == 1


def test_iptables_is_idempotent_and_cleans_up(net):
    def nat(save="iptables-save"):
        out = net.exec(net.app, save, "-t", "nat").stdout
        return [l for l in out.splitlines() if l and not l.startswith("#")]

    before = nat()
    dry = net.iptables("--dry-run")
    assert "-A SLUICE_OUTPUT -m owner --uid-owner 1337 -j RETURN" in dry.stdout
    assert nat() == before, "--dry-run must change nothing"

    net.iptables()
    once = nat()
    assert once.count("-A OUTPUT -p tcp -j SLUICE_OUTPUT") == 1
    assert once.count("-A PREROUTING -p tcp -j SLUICE_INBOUND") == 1
    assert "-A SLUICE_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in once
    net.iptables()
    assert nat() == once, "a second run must leave the same rules"

    net.iptables("--cleanup")
    assert not [l for l in nat() if "SLUICE" in l], nat()
    net.iptables("--cleanup")  # nothing left to remove: still fine

    # IPv6 the same way, through ip6tables.
    net.iptables("--ipv6")
    net.iptables("--ipv6")
    six = nat("ip6tables-save")
    assert six.count("-A OUTPUT -p tcp -j SLUICE_OUTPUT") == 1, six
    assert "-A SLUICE_OUTPUT -d ::1/128 -j RETURN" in six, six
    net.iptables("--ipv6", "--cleanup")
    assert not [l for l in nat("ip6tables-save") + nat() if "SLUICE" in l]

    bad = net.exec(net.app, SLUICE_BIN, "iptables", "--exclude-outbound-ports", "http", check=False)
    assert bad.returncode == 2 and "not a port" in bad.stderr


# ---- TLS interception (issue 7, test 2): the client trusts the sluice CA, sluice verifies the
# model server's certificate (issued by the model's own CA) before re-encrypting to it.

INTERCEPT_CONFIG = """\
workers: 1
admin: {{ bind: 127.0.0.1:15000 }}
telemetry: {{ flush_interval_ms: 50 }}
listeners:
  - name: outbound
    bind: "[::]:15001"
    mode: transparent_outbound
    tls:
      intercept_ca_cert_file: {d}/icpt/ca.pem
      intercept_ca_key_file: {d}/icpt/ca-key.pem
    transparent:
      sniff_timeout_ms: 300
      intercept_hosts: [model.test, "*.intercepted.test"]
{upstream_ca}
    routes:
      - match: {{ path_prefix: /v1/ }}
        upstream: original_destination
        inspect: {{}}
"""


def _tls_pod(net, trust_model_ca):
    """The model namespace serves the mock over TLS on :443 with a certificate for model.test
    and plain.test from its own CA; sluice intercepts model.test (trusting that CA or not)."""
    d = net.dir
    sh(SLUICE_BIN, "ca", "init", "--out", str(d / "modelca"), "--trust-domain", "model.test")
    sh(SLUICE_BIN, "ca", "issue", "--ca", str(d / "modelca"), "--spiffe",
       "spiffe://model.test/ns/models/sa/mock", "--dns", "model.test", "--dns", "plain.test",
       "--out", str(d / "model"))
    sh(SLUICE_BIN, "ca", "init", "--out", str(d / "icpt"), "--trust-domain", "sluice.test")
    for f in d.rglob("*.pem"):
        os.chmod(f, 0o644)  # sluice runs as uid 1337
    for sub in ("modelca", "model", "icpt"):
        os.chmod(d / sub, 0o755)
    with open(Path("/etc/netns") / net.app / "hosts", "a") as h:
        h.write(f"{net.model_ip} plain.test\n")
    net.start_mock(net.model, f"{net.model_ip}:443", "--tls-cert", str(d / "model" / "cert.pem"),
                   "--tls-key", str(d / "model" / "key.pem"))
    ca_line = (f"      intercept_upstream_ca_file: {d}/modelca/ca.pem" if trust_model_ca else "")
    net.start_sluice(INTERCEPT_CONFIG.format(d=d, upstream_ca=ca_line))
    r = net.iptables()
    assert "rules installed" in r.stdout, r.stdout + r.stderr
    return net


def _mock_requests(net):
    return json.loads(net.exec(net.model, "curl", "-sk",
                               f"https://{net.model_ip}/__mock/requests").stdout)


@pytest.fixture
def tls_pod(net):
    return _tls_pod(net, trust_model_ca=True)


@pytest.fixture
def tls_pod_untrusted(net):
    return _tls_pod(net, trust_model_ca=False)


def test_intercepted_tls_is_inspected_and_the_upstream_is_verified(tls_pod):
    pod = tls_pod
    sluice_ca = str(pod.dir / "icpt" / "ca.pem")
    body = chat_body(content="Count my tokens through TLS interception.").decode()
    # curl trusts only the sluice CA: it can only succeed through interception.
    r = pod.exec(pod.app, "curl", "-s", "-w", "\n%{http_code}", "--cacert", sluice_ca,
                 "https://model.test/v1/chat/completions", "-H", "content-type: application/json",
                 "-H", "authorization: Bearer sk-test", "-d", body, check=False)
    out, _, status = r.stdout.rpartition("\n")
    assert status == "200", r.stdout + r.stderr
    usage = json.loads(out)["usage"]

    sdk = textwrap.dedent(f"""
        import httpx, json, openai, ssl
        ctx = ssl.create_default_context(cafile="{sluice_ca}")
        c = openai.OpenAI(base_url="https://model.test/v1", api_key="sk-test", max_retries=0,
                          http_client=httpx.Client(verify=ctx))
        r = c.chat.completions.create(model="gpt-4o-mini",
                                      messages=[{{"role": "user", "content": "Hello over TLS"}}])
        s = c.chat.completions.create(model="gpt-4o-mini", stream=True,
                                      stream_options={{"include_usage": True}},
                                      messages=[{{"role": "user", "content": "Stream to me"}}])
        text = "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices)
        print(json.dumps({{"out": r.usage.completion_tokens, "text": text}}))
    """)
    r = pod.exec(pod.app, "python3", "-c", sdk, check=False)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["out"] == 16 and got["text"].startswith("Hello from the sluice")

    out_tokens = usage["completion_tokens"] + 16 + 16
    assert pod.wait_metric("sluice_gen_ai_tokens_total", out_tokens,
                           gen_ai_token_type="output") == out_tokens
    assert pod.metric("sluice_requests_total", listener="outbound", route="outbound-0",
                      upstream="original_destination", status="200") == 3
    # curl, and the SDK's one keep-alive connection (or two): all intercepted.
    assert pod.wait_metric("sluice_transparent_tls_intercepted_total", 2, listener="outbound") >= 2
    assert pod.metric("sluice_transparent_tls_connections_total", listener="outbound",
                      sni="model.test") >= 2
    assert pod.metric("sluice_transparent_passthrough_bytes_total", listener="outbound",
                      protocol="tls") == 0
    # The model server got them from sluice, over TLS, addressed to itself.
    rec = _mock_requests(pod)
    assert len(rec) == 3, rec
    for req in rec:
        assert req["headers"].get("host") == "model.test", req["headers"]
        assert "sluice" in req["headers"].get("via", ""), req["headers"]

    # A client that does not trust the sluice CA refuses the minted certificate: the failed
    # handshake is counted, nothing reaches the model.
    r = pod.exec(pod.app, "curl", "-s", "--cacert", str(pod.dir / "modelca" / "ca.pem"),
                 "https://model.test/v1/models", check=False)
    assert r.returncode == 60, (r.returncode, r.stderr)  # peer certificate cannot be verified
    assert pod.wait_metric("sluice_transparent_errors_total", 1, listener="outbound",
                           code="tls_intercept_failed") == 1
    assert len(_mock_requests(pod)) == 3 + 0  # (the record query itself is not recorded)

    # A server name not listed for interception passes through untouched: the client verifies
    # the model server's own certificate, and the request arrives without sluice's Via.
    r = pod.exec(pod.app, "curl", "-s", "-w", "\n%{http_code}", "--cacert",
                 str(pod.dir / "modelca" / "ca.pem"), "https://plain.test/v1/chat/completions",
                 "-H", "content-type: application/json", "-d", chat_body().decode(), check=False)
    assert r.stdout.endswith("\n200"), r.stdout + r.stderr
    assert pod.wait_metric("sluice_transparent_tls_connections_total", 1, listener="outbound",
                           sni="plain.test") == 1
    assert pod.wait_metric("sluice_transparent_passthrough_bytes_total", 500, listener="outbound",
                           protocol="tls", direction="out") > 500
    rec = _mock_requests(pod)
    assert len(rec) == 4 and "via" not in rec[3]["headers"], rec
    assert pod.metric("sluice_requests_total", listener="outbound") == 3


def test_intercepted_upstream_with_an_untrusted_certificate_is_a_502(tls_pod_untrusted):
    pod = tls_pod_untrusted
    sluice_ca = str(pod.dir / "icpt" / "ca.pem")
    r = pod.exec(pod.app, "curl", "-s", "-w", "\n%{http_code}", "--cacert", sluice_ca,
                 "https://model.test/v1/chat/completions", "-H", "content-type: application/json",
                 "-d", chat_body().decode(), check=False)
    out, _, status = r.stdout.rpartition("\n")
    assert status == "502", r.stdout + r.stderr
    err = json.loads(out)["error"]
    assert err["code"] == "upstream_tls_failed" and err["type"] and err["message"], err
    assert "UnknownIssuer" in pod.sluice_log.read_text()  # the log says why
    # The SDK sees the same error in the shape it knows.
    sdk = textwrap.dedent(f"""
        import httpx, openai, ssl
        ctx = ssl.create_default_context(cafile="{sluice_ca}")
        c = openai.OpenAI(base_url="https://model.test/v1", api_key="sk-test", max_retries=0,
                          http_client=httpx.Client(verify=ctx))
        try:
            c.chat.completions.create(model="gpt-4o-mini",
                                      messages=[{{"role": "user", "content": "hi"}}])
            print("no error")
        except openai.APIStatusError as e:
            print(e.status_code, e.body["code"])
    """)
    r = pod.exec(pod.app, "python3", "-c", sdk, check=False)
    assert r.stdout.split() == ["502", "upstream_tls_failed"], r.stdout + r.stderr
    assert pod.wait_metric("sluice_requests_total", 2, listener="outbound",
                           status="502") == 2
    # Nothing was sent to the server sluice could not verify.
    assert _mock_requests(pod) == []
    assert pod.metric("sluice_gen_ai_tokens_total") == 0
