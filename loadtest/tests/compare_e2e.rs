//! End-to-end: start the mock (as a separate process, like CI would), run `compare` for about
//! two seconds against it directly and through sluice (which `compare` starts itself, so its
//! CPU and RSS are recorded), and check the JSON report's structure and sanity (positive
//! numbers only; no performance assertions). Also checks the error paths:
//! a target that does not answer, and a scenario with an unknown field.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_sluice-loadtest");

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_mock() -> (Kill, String) {
    let mut child = Command::new(BIN)
        .args(["mock", "--listen", "127.0.0.1:0", "--itl-ms", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn mock");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("mock listening on ")
        .expect("ready line")
        .to_string();
    (Kill(child), addr)
}

fn write_scenario(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let p = dir.join("sc.yaml");
    std::fs::write(
        &p,
        format!(
            "name: e2e\ndescription: e2e smoke\nrequests:\n  - path: /v1/chat/completions\n    weight: 3\n    body_json: {{model: m, messages: [{{role: user, content: hi}}]}}\n  - path: /v1/chat/completions\n    headers: {{x-mock-tokens: \"8\"}}\n    body_json: {{model: m, stream: true, messages: [{{role: user, content: hi}}]}}\nload:\n  concurrency: 4\n  duration: 1s\n  warmup: 200ms\n{extra}rounds: 1\n"
        ),
    )
    .unwrap();
    p
}

/// The sluice binary built by `cargo build` (SLUICE_BIN overrides).
fn sluice_bin() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("SLUICE_BIN") {
        return p.into();
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let p = target.join("debug/sluice");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build` first (scripts/test.sh does)",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn compare_direct_and_sluice_writes_sane_report() {
    let (_mock, addr) = start_mock();
    let dir = tempfile::tempdir().unwrap();
    let sc = write_scenario(dir.path(), "");
    let out = dir.path().join("out").join("e2e.json");
    let (port, admin) = (free_port(), free_port());
    let cfg = dir.path().join("sluice.yaml");
    std::fs::write(
        &cfg,
        format!(
            "workers: 1\nadmin: {{ bind: 127.0.0.1:{admin} }}\nlisteners:\n  - name: outbound\n    bind: 127.0.0.1:{port}\n    routes: [{{ upstream: mock }}]\nupstreams:\n  mock: {{ endpoints: [\"{addr}\"] }}\n"
        ),
    )
    .unwrap();
    let start = format!("{} run --config {}", sluice_bin().display(), cfg.display());
    let status = Command::new(BIN)
        .args(["compare", "--scenario"])
        .arg(&sc)
        .args(["--target", &format!("direct=http://{addr}")])
        .args(["--target", &format!("sluice=http://127.0.0.1:{port}")])
        .args(["--start", &format!("sluice={start}")])
        .args(["--rounds", "1", "--duration", "800ms", "--warmup", "200ms"])
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(v["scenario"], "e2e");
    assert_eq!(v["baseline"], "direct");
    assert!(v["machine"]["nproc"].as_u64().unwrap() > 0);
    assert!(v["command"].as_str().unwrap().contains("compare"));
    let targets = v["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    for t in targets {
        let r = &t["result"];
        assert!(r["rps"].as_f64().unwrap() > 0.0, "{t}");
        assert!(r["ok"].as_u64().unwrap() > 0);
        assert_eq!(r["errors"]["reset"], 0);
        let l = &r["latency_us"];
        for k in ["p50", "p90", "p99", "p999", "max"] {
            assert!(l[k].as_u64().unwrap() > 0, "{k}");
        }
        assert!(l["p50"].as_u64() <= l["p99"].as_u64());
        assert!(r["ttft_us"]["p50"].as_u64().unwrap() > 0);
        assert!(r["tokens"].as_u64().unwrap() > 0);
        assert!(t["overhead_us"]["p99"].is_i64());
        assert!(t["rps_ratio_vs_baseline"].as_f64().unwrap() > 0.0);
    }
    let svg = std::fs::read_to_string(out.with_extension("svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("sluice"));
    // compare started sluice, so it measured the proxy process.
    let sl = &targets[1];
    assert_eq!(sl["name"], "sluice");
    assert!(sl["cpu_s"].as_f64().unwrap() > 0.0, "{sl}");
    assert!(sl["peak_rss_bytes"].as_u64().unwrap() > 0, "{sl}");
}

#[test]
fn unreachable_target_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let sc = write_scenario(dir.path(), "");
    let out = Command::new(BIN)
        .args(["compare", "--scenario"])
        .arg(&sc)
        .args(["--target", "ghost=http://127.0.0.1:1", "--rounds", "1"])
        .arg("--out")
        .arg(dir.path().join("x.json"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("target ghost") && err.contains("does not answer"),
        "{err}"
    );
}

#[test]
fn scenario_unknown_field_is_reported_with_line() {
    let dir = tempfile::tempdir().unwrap();
    let sc = write_scenario(dir.path(), "  concurency: 3\n");
    let out = Command::new(BIN)
        .args(["run", "--target", "http://127.0.0.1:1", "--scenario"])
        .arg(&sc)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sc.yaml:14:") && err.contains("concurency"),
        "{err}"
    );
}
