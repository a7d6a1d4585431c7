//! The admin server: readiness, liveness, Prometheus metrics and the running configuration.
//!
//! Owns: the admin listener (loopback by default, see `config::ADMIN_BIND_DEFAULT`).
//!
//! Why plain threads and blocking sockets: the admin port is off the data path and sees a
//! probe and a scrape every few seconds. A thread per admin connection (bounded by
//! [`ADMIN_CONNECTIONS_MAX`]) keeps it out of the workers' event loops entirely, so a slow
//! scrape can never delay a token.
//!
//! Endpoints:
//! * `GET /ready` (and Istio's `/healthz/ready`): 200 when every worker has bound its listeners
//!   and the proxy is not draining, else 503.
//! * `GET /healthz`: 200 while the process runs.
//! * `GET /metrics` (and Istio's `/stats/prometheus`): Prometheus text format.
//! * `GET /config`: the running configuration as JSON, secrets masked.
//!
//! Optional extra listeners (`admin.health_bind`, `admin.prometheus_bind`), the Istio ports
//! 15021 and 15090, serve one [`Role`] each: the health paths only, or the metrics paths only.
//! They usually bind the pod IP for the kubelet and Prometheus, so they never serve `/config`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::worker::Shared;

/// Concurrent admin connections; more are closed at once.
pub const ADMIN_CONNECTIONS_MAX: usize = 16;
/// Read/write timeout of an admin connection.
pub const ADMIN_IO_TIMEOUT_MS: u64 = 5_000;
/// Largest admin request head accepted.
pub const ADMIN_HEAD_BYTES_MAX: usize = 8 * 1024;

/// Field-name parts that mark a secret value, which `/config` never shows.
const SECRET_KEY_PARTS: &[&str] = &[
    "secret",
    "password",
    "authorization",
    "credential",
    "bearer",
];

/// Whether a config field name holds a secret (not a reference to one, like `*_env`/`*_file`).
fn is_secret_field(lk: &str) -> bool {
    if lk.ends_with("_env") || lk.ends_with("_file") || lk.ends_with("_path") {
        return false;
    }
    lk == "key"
        || lk == "token"
        || lk == "keys"
        || lk.ends_with("_key")
        || lk.ends_with("_keys")
        || lk.ends_with("_token")
        || SECRET_KEY_PARTS.iter().any(|p| lk.contains(p))
}

pub struct Admin {
    pub shared: Arc<Shared>,
    pub prometheus: PrometheusHandle,
}

/// Which paths a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything: `admin.bind`.
    Admin,
    /// `/healthz/ready`, `/ready`, `/healthz`: `admin.health_bind` (Istio's 15021).
    Health,
    /// `/stats/prometheus`, `/metrics`: `admin.prometheus_bind` (Istio's 15090).
    Prometheus,
}

impl Role {
    fn allows(self, path: &str) -> bool {
        match self {
            Role::Admin => true,
            Role::Health => matches!(path, "/healthz/ready" | "/ready" | "/healthz"),
            Role::Prometheus => matches!(path, "/stats/prometheus" | "/metrics"),
        }
    }
}

/// Serve the admin API on `listener` until the process exits.
pub fn serve(listener: TcpListener, admin: Arc<Admin>) {
    serve_role(listener, admin, Role::Admin)
}

/// Serve the paths of `role` on `listener` until the process exits.
pub fn serve_role(listener: TcpListener, admin: Arc<Admin>, role: Role) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        if active.fetch_add(1, Ordering::AcqRel) >= ADMIN_CONNECTIONS_MAX {
            active.fetch_sub(1, Ordering::AcqRel);
            drop(conn);
            continue;
        }
        let admin = admin.clone();
        let active = active.clone();
        let spawned = std::thread::Builder::new()
            .name("sluice-admin-conn".into())
            .spawn(move || {
                let _ = handle(conn, &admin, role);
                active.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            tracing::warn!("admin: cannot spawn connection thread");
        }
    }
}

fn handle(conn: TcpStream, admin: &Admin, role: Role) -> std::io::Result<()> {
    let t = Some(Duration::from_millis(ADMIN_IO_TIMEOUT_MS));
    conn.set_read_timeout(t)?;
    conn.set_write_timeout(t)?;
    let mut reader = BufReader::new(conn.try_clone()?).take(ADMIN_HEAD_BYTES_MAX as u64);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // Drain the rest of the head.
    let mut h = String::new();
    loop {
        h.clear();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = if role.allows(path) {
        route(admin, method, path)
    } else {
        (404, "text/plain", b"not found\n".to_vec())
    };
    let mut conn = conn;
    let head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        crate::http1::canonical_reason(status),
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    if method != "HEAD" {
        conn.write_all(&body)?;
    }
    conn.flush()
}

fn route(admin: &Admin, method: &str, path: &str) -> (u16, &'static str, Vec<u8>) {
    if method != "GET" && method != "HEAD" {
        return (405, "text/plain", b"method not allowed\n".to_vec());
    }
    match path {
        "/ready" | "/healthz/ready" => {
            if admin.shared.is_ready() {
                (200, "text/plain", b"ready\n".to_vec())
            } else if admin.shared.draining.load(Ordering::Acquire) {
                (503, "text/plain", b"draining\n".to_vec())
            } else {
                (503, "text/plain", b"starting\n".to_vec())
            }
        }
        "/healthz" => (200, "text/plain", b"ok\n".to_vec()),
        "/metrics" | "/stats/prometheus" => {
            admin.prometheus.run_upkeep();
            (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                admin.prometheus.render().into_bytes(),
            )
        }
        "/config" => {
            let snap = admin.shared.current.load();
            let mut v = serde_json::to_value(&*snap.config).unwrap_or(serde_json::Value::Null);
            mask_secrets(&mut v);
            let mut body = serde_json::to_vec_pretty(&serde_json::json!({
                "generation": snap.generation,
                "config": v,
            }))
            .unwrap_or_default();
            body.push(b'\n');
            (200, "application/json", body)
        }
        _ => (404, "text/plain", b"not found\n".to_vec()),
    }
}

/// Replace the value of every field whose name looks like a secret with `"***"`.
pub fn mask_secrets(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, val) in m.iter_mut() {
                let lk = k.to_ascii_lowercase();
                let secret = is_secret_field(&lk);
                if secret && !val.is_null() && !val.is_object() && !val.is_array() {
                    *val = serde_json::Value::String("***".into());
                } else if secret && (val.is_array() || val.is_object()) {
                    mask_all(val);
                } else {
                    mask_secrets(val);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(mask_secrets),
        _ => {}
    }
}

fn mask_all(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => m.values_mut().for_each(mask_all),
        serde_json::Value::Array(a) => a.iter_mut().for_each(mask_all),
        serde_json::Value::Null => {}
        other => *other = serde_json::Value::String("***".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_serve_only_their_paths() {
        for p in ["/healthz/ready", "/ready", "/healthz"] {
            assert!(Role::Health.allows(p) && !Role::Prometheus.allows(p), "{p}");
        }
        for p in ["/stats/prometheus", "/metrics"] {
            assert!(Role::Prometheus.allows(p) && !Role::Health.allows(p), "{p}");
        }
        for r in [Role::Health, Role::Prometheus] {
            assert!(!r.allows("/config"));
            assert!(!r.allows("/"));
        }
        assert!(Role::Admin.allows("/config"));
    }

    #[test]
    fn masks_secret_fields_but_not_their_sources() {
        let mut v = serde_json::json!({
            "upstreams": {"openai": {"api_key": "sk-123", "api_key_env": "OPENAI_API_KEY",
              "auth": {"static_keys": ["a", "b"]}, "endpoints": ["x:1"]}},
            "tokens_per_minute": 5
        });
        mask_secrets(&mut v);
        let s = v.to_string();
        assert!(!s.contains("sk-123"), "{s}");
        assert!(s.contains("OPENAI_API_KEY"), "{s}");
        assert!(!s.contains("\"a\""), "{s}");
        assert!(s.contains("x:1"), "{s}");
        assert!(s.contains("\"tokens_per_minute\":5"), "{s}");
    }
}
