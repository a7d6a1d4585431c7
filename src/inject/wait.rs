//! The lifecycle hooks of a *classic* sidecar (containers, not native init containers):
//! `sluice wait-ready` (`postStart`) and `sluice drain-delay` (`preStop`).
//!
//! Why they exist: the kubelet starts a pod's containers in order, but waits for a container's
//! `postStart` hook before starting the next one. With the proxy first and a `postStart` that
//! returns only once the proxy is ready, the application starts after the proxy can carry its
//! calls (Istio's `holdApplicationUntilProxyStarts`). On deletion every classic container gets
//! SIGTERM at once; a `preStop` delay keeps the proxy serving while the application finishes
//! its last calls. Both are subcommands of the binary itself, so the hooks need nothing else in
//! the image (no shell, `sleep` or `curl`), and a minimal or distroless image works. Native
//! sidecars need neither (the kubelet orders them).
//!
//! Blocking std code on purpose: these run once, in their own short-lived process.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::PORT_HEALTH;

/// Interval between two readiness polls.
pub const WAIT_READY_POLL_MS: u64 = 200;
/// Connect/read timeout of one readiness poll.
pub const WAIT_READY_IO_TIMEOUT_MS: u64 = 1_000;
/// Longest drain delay accepted (an hour): anything longer is a typo.
pub const DRAIN_DELAY_MS_MAX: u64 = 3_600_000;
/// Bytes of a poll's answer read (the status line is all that matters).
const WAIT_READY_ANSWER_BYTES_MAX: usize = 512;

/// The health address the hooks poll: the sidecar's own health listener.
pub fn default_health_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], PORT_HEALTH))
}

/// One poll: `GET /healthz/ready` answered with 200.
pub fn is_ready(addr: SocketAddr) -> bool {
    let t = Duration::from_millis(WAIT_READY_IO_TIMEOUT_MS);
    let Ok(mut s) = TcpStream::connect_timeout(&addr, t) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(t));
    let _ = s.set_write_timeout(Some(t));
    let req = format!("GET /healthz/ready HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; WAIT_READY_ANSWER_BYTES_MAX];
    let mut n = 0;
    while n < buf.len() {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
        if buf[..n].contains(&b'\n') {
            break;
        }
    }
    buf[..n].starts_with(b"HTTP/1.1 200") || buf[..n].starts_with(b"HTTP/1.0 200")
}

/// Poll `addr` until it is ready or `timeout_ms` passed. Returns whether it became ready.
pub fn wait_ready(addr: SocketAddr, timeout_ms: u64) -> bool {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        if is_ready(addr) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(WAIT_READY_POLL_MS));
    }
}

/// Sleep `ms` (bounded by [`DRAIN_DELAY_MS_MAX`]).
pub fn drain_delay(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms.min(DRAIN_DELAY_MS_MAX)));
}
