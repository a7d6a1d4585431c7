"""Run a real Prometheus server for end-to-end tests.

`ensure_prometheus()` returns the binary path, installing the Debian package when it is missing
(CI runs as root). `Prometheus` runs it on 127.0.0.1:<free port> with a temporary config and
TSDB directory, scraping the given targets every second; `stop()` terminates that one process.
There is no systemd here: the package's service is never used, only the binary.
"""

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from conftest import free_port, http_get

PROMETHEUS_BIN = os.environ.get("PROMETHEUS_BIN", "/usr/bin/prometheus")


def ensure_prometheus() -> str:
    """Path of the prometheus binary; installs the Debian package if it is missing."""
    found = PROMETHEUS_BIN if os.path.exists(PROMETHEUS_BIN) else shutil.which("prometheus")
    if found:
        return found
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update"], check=True, env=env, capture_output=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "prometheus"], check=True,
                   env=env, capture_output=True, timeout=900)
    found = PROMETHEUS_BIN if os.path.exists(PROMETHEUS_BIN) else shutil.which("prometheus")
    if not found:
        raise RuntimeError("apt-get install prometheus did not provide a prometheus binary")
    return found


class Prometheus:
    def __init__(self, targets: list[str], scrape_interval_s: int = 1, binary: str | None = None):
        self.binary = binary or ensure_prometheus()
        self.dir = Path(tempfile.mkdtemp(prefix="sluice-prom-"))
        self.port = free_port()
        self.targets = targets
        cfg = {
            "global": {"scrape_interval": f"{scrape_interval_s}s", "scrape_timeout": f"{scrape_interval_s}s",
                       "evaluation_interval": f"{scrape_interval_s}s"},
            "scrape_configs": [{"job_name": "sluice", "metrics_path": "/metrics",
                                "static_configs": [{"targets": targets}]}],
        }
        # JSON is valid YAML.
        (self.dir / "prometheus.yml").write_text(json.dumps(cfg))
        self.log_path = self.dir / "prometheus.log"
        self.proc = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "Prometheus":
        logf = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--storage.tsdb.retention.time=1h", "--web.enable-lifecycle"],
            stdout=logf, stderr=subprocess.STDOUT, cwd=self.dir)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}: {self.log()}")
            try:
                status, _ = http_get(self.url + "/-/ready", timeout=1)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError("prometheus not ready: " + self.log())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def query(self, promql: str) -> list:
        """Instant query; returns the `data.result` list."""
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_query(self, promql: str, pred, timeout: float = 30.0) -> list:
        """Poll `promql` until `pred(result)` holds; returns the last result either way."""
        deadline = time.time() + timeout
        res = self.query(promql)
        while time.time() < deadline and not pred(res):
            time.sleep(0.25)
            res = self.query(promql)
        return res

    def targets_health(self) -> list:
        with urllib.request.urlopen(self.url + "/api/v1/targets", timeout=5) as r:
            return json.loads(r.read())["data"]["activeTargets"]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
