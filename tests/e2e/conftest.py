"""Fixtures for end-to-end tests: the real sluice binary in front of the bundled mock server.

Every process binds 127.0.0.1 on a free port chosen here; nothing leaves the machine.
Binaries come from `cargo build` (SLUICE_BIN / SLUICE_LOADTEST_BIN override the paths).
"""

import json
import os
import signal
import socket
import socketserver
import subprocess
import tempfile
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
SLUICE_BIN = os.environ.get("SLUICE_BIN", str(TARGET / "debug" / "sluice"))
LOADTEST_BIN = os.environ.get("SLUICE_LOADTEST_BIN", str(TARGET / "debug" / "sluice-loadtest"))


def read_http_request(rfile):
    """Reads one HTTP/1.1 request (head, then a Content-Length body) from a file-like socket.
    Returns (head bytes, body bytes), or None when the peer closed first."""
    head, length = b"", 0
    while True:
        line = rfile.readline()
        if not line:
            return None
        head += line
        if line in (b"\r\n", b"\n"):
            break
        k, _, v = line.decode("latin-1").partition(":")
        if k.strip().lower() == "content-length":
            length = int(v.strip())
    return head, rfile.read(length)


class PyUpstream:
    """A tiny Python upstream for answers the bundled mock cannot give (canned bodies, byte-by-byte
    trickles, hand-built SSE). Each connection's request is read and kept in `requests`, then
    `respond(handler, head, body)` writes the answer (to `handler.wfile` or `handler.request`)."""

    def __init__(self, respond):
        outer = self
        self.requests = []

        class H(socketserver.StreamRequestHandler):
            def handle(self):
                req = read_http_request(self.rfile)
                if req is None:
                    return
                outer.requests.append(req)
                respond(self, *req)

        self.srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.addr = f"127.0.0.1:{self.srv.server_address[1]}"

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def py_upstream():
    """`py_upstream(respond)` -> a started PyUpstream, closed after the test."""
    servers = []

    def make(respond):
        u = PyUpstream(respond)
        servers.append(u)
        return u

    yield make
    for u in servers:
        u.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"port {port} did not open")


def http_get(url: str, timeout: float = 5.0):
    """GET returning (status, body bytes); never raises on HTTP errors."""
    import ssl
    ctx = ssl._create_unverified_context() if url.startswith("https") else None  # test mock only
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Mock:
    def __init__(self, proc, port, tls):
        self.proc = proc
        self.port = port
        self.tls = tls

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    @property
    def base(self):
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def requests(self):
        status, body = http_get(f"{self.base}/__mock/requests")
        assert status == 200
        return json.loads(body)

    def clear(self):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/__mock/requests", method="DELETE")
        urllib.request.urlopen(req, timeout=5).read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_mock(*args, tls_cert=None, tls_key=None, record=200) -> Mock:
    port = free_port()
    cmd = [LOADTEST_BIN, "mock", "--listen", f"127.0.0.1:{port}", "--record", str(record), *args]
    if tls_cert:
        cmd += ["--tls-cert", str(tls_cert), "--tls-key", str(tls_key)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert "mock listening on" in line, f"mock did not start: {line!r} {proc.stderr.read()}"
    return Mock(proc, port, tls_cert is not None)


@pytest.fixture
def mock():
    m = start_mock()
    yield m
    m.stop()


class Sluice:
    """A running sluice process with its config file."""

    def __init__(self, cfg_path: Path, port: int, admin_port: int, proc, log_path: Path):
        self.cfg_path = cfg_path
        self.port = port
        self.admin_port = admin_port
        self.proc = proc
        self.log_path = log_path

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self):
        return f"http://127.0.0.1:{self.admin_port}"

    def metrics(self) -> str:
        status, body = http_get(self.admin + "/metrics")
        assert status == 200
        return body.decode()

    def metric(self, name: str, **labels) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        found = False
        for line in self.metrics().splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            metric_name = head.split("{", 1)[0]
            if metric_name != name:
                continue
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
                found = True
        return total if found else 0.0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def write_config(self, text: str):
        # Write then rename: the watcher must never read a half-written file.
        tmp = self.cfg_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.cfg_path)

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode


def sluice_config(upstream_addr: str, port: int, admin_port: int, extra_upstream: str = "",
                  listener_extra: str = "", top_extra: str = "", routes: str = "",
                  workers: int = 1) -> str:
    routes = routes or textwrap.dedent("""\
          - match: { path_prefix: / }
            upstream: mock
    """)
    return textwrap.dedent(f"""\
workers: {workers}
admin: {{ bind: 127.0.0.1:{admin_port} }}
watch_interval_ms: 100
drain_timeout_ms: 10000
telemetry: {{ flush_interval_ms: 50 }}
{top_extra}
listeners:
  - name: outbound
    bind: 127.0.0.1:{port}
{textwrap.indent(listener_extra, '    ')}
    routes:
{textwrap.indent(routes, '    ')}
upstreams:
  mock:
    endpoints: ["{upstream_addr}"]
{textwrap.indent(extra_upstream, '    ')}
""")


def start_sluice(config_text: str | None = None, *, upstream: str | None = None, env=None,
                 expect_ready=True, **cfg_kwargs) -> Sluice:
    d = Path(tempfile.mkdtemp(prefix="sluice-e2e-"))
    port = free_port()
    admin_port = free_port()
    if config_text is None:
        config_text = sluice_config(upstream, port, admin_port, **cfg_kwargs)
    else:
        config_text = config_text.replace("{port}", str(port)).replace("{admin_port}", str(admin_port))
    cfg = d / "sluice.yaml"
    cfg.write_text(config_text)
    log_path = d / "sluice.log"
    logf = open(log_path, "w")
    e = dict(os.environ)
    e.setdefault("SLUICE_LOG", "info")
    if env:
        e.update(env)
    proc = subprocess.Popen([SLUICE_BIN, "run", "--config", str(cfg)], stdout=logf, stderr=subprocess.STDOUT, env=e)
    s = Sluice(cfg, port, admin_port, proc, log_path)
    if expect_ready:
        deadline = time.time() + 15
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"sluice exited {proc.returncode}: {s.log()}")
            try:
                status, _ = http_get(s.admin + "/ready", timeout=1)
                if status == 200:
                    return s
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError("sluice not ready: " + s.log())
    return s


@pytest.fixture
def sluice_factory():
    started = []

    def make(*args, **kwargs):
        s = start_sluice(*args, **kwargs)
        started.append(s)
        return s

    yield make
    for s in started:
        try:
            s.stop()
        except Exception:
            pass


@pytest.fixture(params=["io_uring", "epoll"])
def driver_env(request):
    """Run a test on both IO drivers: io_uring and the epoll fallback."""
    if request.param == "epoll":
        return {"MONOIO_FORCE_LEGACY_DRIVER": "1"}
    return {}


@pytest.fixture
def proxy(mock, sluice_factory):
    """sluice (1 worker, io_uring) in front of a fresh mock."""
    return sluice_factory(upstream=mock.addr)


def raw_exchange(port: int, data: bytes, timeout: float = 5.0, read_until_close=True) -> bytes:
    """Send raw bytes, return everything read until the server closes (or timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return recv_all(s, timeout, read_until_close)


def recv_all(s, timeout: float = 5.0, read_until_close=True) -> bytes:
    """Everything `s` receives until the peer closes (or, with read_until_close=False, until a
    head is complete), or until `timeout` passes without data."""
    out = b""
    s.settimeout(timeout)
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
            if not read_until_close and b"\r\n\r\n" in out:
                break
    except (socket.timeout, ConnectionResetError):
        # A reset is how a cut-short response must end: return what arrived.
        pass
    return out


def chat_body(model="gpt-4o-mini", stream=False, content="Hello there", **extra) -> bytes:
    b = {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}
    b.update(extra)
    return json.dumps(b).encode()
