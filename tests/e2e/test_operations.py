"""Operating sluice: admin API, hot reload, graceful drain, start-up checks, access log."""

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import SLUICE_BIN, chat_body, free_port, http_get, raw_exchange, sluice_config, start_sluice
from test_dataplane import post, split_response


def stream_in_thread(port, tokens=20, itl_ms=100):
    """Start a slow stream; returns (thread, result dict with 'raw' when done)."""
    result = {}

    def run():
        req = post(port, "/v1/chat/completions", chat_body(stream=True),
                   {"x-mock-tokens": str(tokens), "x-mock-itl-ms": str(itl_ms), "Connection": "close"})
        result["raw"] = raw_exchange(port, req, timeout=30)

    t = threading.Thread(target=run)
    t.start()
    return t, result


def stream_complete(raw: bytes, tokens: int) -> bool:
    # The mock sends a role chunk, `tokens` content chunks, a finish chunk and [DONE].
    return raw.endswith(b"0\r\n\r\n") and raw.count(b"data: ") == tokens + 3 and b"data: [DONE]" in raw


def test_admin_endpoints(proxy):
    assert http_get(proxy.admin + "/ready")[0] == 200
    assert http_get(proxy.admin + "/healthz/ready")[0] == 200
    assert http_get(proxy.admin + "/healthz")[0] == 200
    raw_exchange(proxy.port, post(proxy.port, "/v1/chat/completions", chat_body(), {"Connection": "close"}))
    time.sleep(0.3)
    m = proxy.metrics()
    for name in ["sluice_requests_total", "sluice_request_duration_seconds_bucket", "sluice_overhead_seconds_bucket",
                 "sluice_downstream_connections_active", "sluice_upstream_pool_idle_connections",
                 "sluice_io_driver_info", "sluice_config_generation"]:
        assert name in m, name
    assert 'sluice_requests_total{listener="outbound",route="outbound-0",upstream="mock",status="200"} 1' in m
    assert http_get(proxy.admin + "/stats/prometheus")[0] == 200
    status, body = http_get(proxy.admin + "/config")
    cfg = json.loads(body)
    assert status == 200 and cfg["generation"] == 1
    assert cfg["config"]["listeners"][0]["bind"] == f"127.0.0.1:{proxy.port}"
    assert http_get(proxy.admin + "/nope")[0] == 404


def test_admin_binds_loopback_by_default(mock, tmp_path):
    """No `admin:` section: the admin API listens on 127.0.0.1:15000 only."""
    port = free_port()
    text = f"""
listeners:
  - name: l
    bind: 127.0.0.1:{port}
    routes: [{{ upstream: mock }}]
upstreams:
  mock: {{ endpoints: ["{mock.addr}"] }}
"""
    s = start_sluice(text, expect_ready=False)
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                if http_get("http://127.0.0.1:15000/ready", 1)[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        ss = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
        assert "127.0.0.1:15000" in ss
        assert "0.0.0.0:15000" not in ss and "*:15000" not in ss
    finally:
        s.stop()


def test_check_reports_file_line_field(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("""listeners:
  - name: l
    bind: 127.0.0.1:1
    routes:
      - match: { path_prefix: /v1/ }
        upstream: nope
upstreams:
  mock: { endpoints: ["127.0.0.1:2"], bogus: 1 }
""")
    out = subprocess.run([SLUICE_BIN, "check", "--config", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 2
    assert f"{cfg}:8: upstreams.mock" in out.stderr and "bogus" in out.stderr, out.stderr
    cfg.write_text(cfg.read_text().replace(", bogus: 1", ""))
    out = subprocess.run([SLUICE_BIN, "check", "--config", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 2
    assert f"{cfg}:6: listeners[0].routes[0].upstream: no upstream named `nope`" in out.stderr, out.stderr


def test_version():
    out = subprocess.run([SLUICE_BIN, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("sluice ")


def test_busy_port_is_a_startup_error(mock):
    # Another process holds the port *with* SO_REUSEPORT: monoio would silently share it.
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    text = sluice_config(mock.addr, port, free_port())
    s = start_sluice(text.replace("{port}", str(port)), expect_ready=False)
    rc = s.proc.wait(10)
    holder.close()
    assert rc != 0
    assert "already in use" in s.log(), s.log()


def test_hot_reload_keeps_streams_and_applies_new_routes(mock, sluice_factory):
    s = sluice_factory(upstream=mock.addr)
    t, res = stream_in_thread(s.port, tokens=15, itl_ms=100)
    time.sleep(0.3)
    text = s.cfg_path.read_text()
    new = text.replace("- match: { path_prefix: / }", "- match: { path_prefix: /v1/ }")
    s.write_config(new)
    deadline = time.time() + 5
    while time.time() < deadline and s.metric("sluice_config_generation") < 2:
        time.sleep(0.05)
    assert s.metric("sluice_config_generation") == 2
    # New config applies to new requests: /other no longer routes.
    out = raw_exchange(s.port, b"GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert split_response(out)[0] == 404
    t.join()
    assert stream_complete(res["raw"], 15), res["raw"][-200:]
    assert s.metric("sluice_config_reloads_total", result="ok") == 1


def test_invalid_reload_keeps_old_config(mock, sluice_factory):
    s = sluice_factory(upstream=mock.addr)
    good = s.cfg_path.read_text()
    s.write_config(good.replace("upstream: mock", "upstream: missing"))
    deadline = time.time() + 5
    while time.time() < deadline and s.metric("sluice_config_reloads_total", result="error") < 1:
        time.sleep(0.05)
    assert s.metric("sluice_config_reloads_total", result="error") == 1
    assert "no upstream named `missing`" in s.log()
    out = raw_exchange(s.port, post(s.port, "/v1/chat/completions", chat_body(), {"Connection": "close"}))
    assert split_response(out)[0] == 200
    assert s.metric("sluice_config_generation") == 1


def test_sighup_reload(mock, sluice_factory):
    s = sluice_factory(upstream=mock.addr)
    s.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 5
    while time.time() < deadline and s.metric("sluice_config_generation") < 2:
        time.sleep(0.05)
    assert s.metric("sluice_config_generation") == 2


def test_configmap_symlink_swap_reloads(mock, tmp_path):
    """Kubernetes mounts ConfigMaps as ..data -> ..<timestamp>/ with file links into ..data."""
    port, admin = free_port(), free_port()
    base = tmp_path / "cm"
    v1 = base / "..2026_11_29_v1"
    v1.mkdir(parents=True)
    text = sluice_config(mock.addr, port, admin)
    (v1 / "sluice.yaml").write_text(text)
    os.symlink(v1.name, base / "..data")
    os.symlink("..data/sluice.yaml", base / "sluice.yaml")
    proc = subprocess.Popen([SLUICE_BIN, "run", "--config", str(base / "sluice.yaml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                if http_get(f"http://127.0.0.1:{admin}/ready", 1)[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        v2 = base / "..2026_11_29_v2"
        v2.mkdir()
        (v2 / "sluice.yaml").write_text(text.replace("path_prefix: /", "path_prefix: /v1/"))
        os.symlink(v2.name, base / "..data_tmp")
        os.replace(base / "..data_tmp", base / "..data")
        deadline = time.time() + 5
        gen = 1
        while time.time() < deadline and gen < 2:
            body = http_get(f"http://127.0.0.1:{admin}/config")[1]
            gen = json.loads(body)["generation"]
            time.sleep(0.05)
        assert gen == 2
    finally:
        proc.terminate()
        proc.wait(10)


def test_graceful_drain(mock, sluice_factory):
    s = sluice_factory(upstream=mock.addr)
    # An idle keep-alive connection, which drain must close.
    idle = socket.create_connection(("127.0.0.1", s.port))
    idle.sendall(post(s.port, "/v1/chat/completions", chat_body()))
    first = idle.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    t, res = stream_in_thread(s.port, tokens=10, itl_ms=100)
    time.sleep(0.3)
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    assert http_get(s.admin + "/ready")[0] == 503
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", s.port), timeout=1).close()
    idle.settimeout(2)
    assert idle.recv(100) == b"", "idle keep-alive connection must be closed on drain"
    t.join()
    assert stream_complete(res["raw"], 10), res["raw"][-200:]
    assert s.proc.wait(10) == 0


def test_drain_timeout_cuts_long_streams(mock, sluice_factory):
    s = sluice_factory(upstream=mock.addr, top_extra="")
    s.write_config(s.cfg_path.read_text().replace("drain_timeout_ms: 10000", "drain_timeout_ms: 300"))
    time.sleep(0.5)
    t, res = stream_in_thread(s.port, tokens=50, itl_ms=100)
    time.sleep(0.3)
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(10) == 0
    assert time.monotonic() - t0 < 3
    t.join()
    assert not stream_complete(res["raw"], 50)


def test_access_log_json_lines(mock, sluice_factory, tmp_path):
    log = tmp_path / "access.log"
    s = sluice_factory(upstream=mock.addr, top_extra=f"access_log: {{ enabled: true, path: {log} }}\n")
    raw_exchange(s.port, post(s.port, "/v1/chat/completions?x=1", chat_body(content="SECRET PROMPT"),
                              {"X-Request-Id": "rid-1", "Connection": "close"}))
    deadline = time.time() + 3
    while time.time() < deadline and not (log.exists() and log.read_text()):
        time.sleep(0.05)
    line = json.loads(log.read_text().splitlines()[0])
    assert line["request_id"] == "rid-1" and line["status"] == 200 and line["upstream"] == "mock"
    assert line["path"] == "/v1/chat/completions?x=1" and line["method"] == "POST"
    assert "SECRET PROMPT" not in log.read_text()


def _thread_nices(pid):
    """{thread name: nice} of a process, from /proc/PID/task/*/stat (field 19 is nice)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except FileNotFoundError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out.setdefault(name, set()).add(int(fields[16]))
    return out


def test_background_threads_run_below_the_workers(proxy):
    """Telemetry, admin and watcher threads run at background_thread_nice (10 by default);
    workers keep the process's priority, so they win a shared core."""
    raw_exchange(proxy.port, post(proxy.port, "/v1/chat/completions", chat_body(), {"Connection": "close"}))
    nices = _thread_nices(proxy.proc.pid)
    base = os.getpriority(os.PRIO_PROCESS, proxy.proc.pid)
    workers = {n: v for n, v in nices.items() if n.startswith("sluice-worker")}
    assert workers and all(v == {base} for v in workers.values()), nices
    for name in ("sluice-telemetr", "sluice-admin", "sluice-watch"):  # comm is cut at 15 bytes
        assert nices.get(name) == {max(base, 10)}, (name, nices)
