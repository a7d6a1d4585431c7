//! Upstream connections: choosing an endpoint, connecting (TCP, then TLS), and the per-worker
//! keep-alive pool.
//!
//! Owns: [`Pools`], one per worker, never shared (`RefCell` in the worker). A pooled
//! connection is keyed by (upstream name, configuration fingerprint, endpoint index), so a
//! reload that leaves an upstream unchanged keeps its warm connections, and one that changes
//! it never hands out a connection built for the old settings.
//!
//! Invariants:
//! * Only a connection whose last response was read completely, with keep-alive on both sides
//!   and no stray bytes after it, goes back into the pool (the caller decides; see
//!   `exchange.rs`). A cancelled or failed exchange drops its connection.
//! * Idle connections older than `pool.idle_timeout_ms` are never handed out; the pool is LIFO
//!   so the most recently used (most likely alive) connection goes first.
//! * A reused connection may still turn out to be closed by the upstream; the exchange retries
//!   once on a fresh connection when the request can be replayed (see `exchange.rs`).

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use super::error::ProxyError;
use super::io::Io;
use crate::snapshot::UpstreamRt;

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub upstream: Arc<str>,
    pub fingerprint: u64,
    pub endpoint: usize,
}

/// A connection to one upstream endpoint.
pub struct UpConn {
    pub io: Io,
    pub key: PoolKey,
    /// True when it came from the pool (it may have been closed by the upstream meanwhile).
    pub reused: bool,
}

struct Idle {
    io: Io,
    since: Instant,
}

/// The worker's keep-alive pool and its gauges.
#[derive(Default)]
pub struct Pools {
    idle: HashMap<PoolKey, VecDeque<Idle>>,
    /// Connections checked out, per upstream name (for the active-connections gauge).
    active: HashMap<Arc<str>, u64>,
    rr: Cell<usize>,
}

impl Pools {
    /// Take a live idle connection for `up`, if one is pooled.
    fn take(&mut self, up: &UpstreamRt, endpoint: usize) -> Option<Io> {
        let key = PoolKey {
            upstream: up.name.clone(),
            fingerprint: up.fingerprint,
            endpoint,
        };
        let q = self.idle.get_mut(&key)?;
        let max_age = Duration::from_millis(up.pool_idle_timeout_ms);
        while let Some(c) = q.pop_back() {
            if c.since.elapsed() < max_age {
                return Some(c.io);
            }
        }
        None
    }

    /// Return a connection after a clean exchange.
    pub fn put(&mut self, c: UpConn, idle_max: usize) {
        self.checked_in(&c.key.upstream);
        if idle_max == 0 {
            return;
        }
        let q = self.idle.entry(c.key).or_default();
        if q.len() >= idle_max {
            // Drop the oldest: it is the most likely to be closed by the upstream soon.
            q.pop_front();
        }
        q.push_back(Idle {
            io: c.io,
            since: Instant::now(),
        });
    }

    /// A checked-out connection is being dropped (failed or not reusable).
    pub fn discard(&mut self, c: UpConn) {
        self.checked_in(&c.key.upstream);
        drop(c);
    }

    fn checked_out(&mut self, name: &Arc<str>) {
        *self.active.entry(name.clone()).or_default() += 1;
    }

    fn checked_in(&mut self, name: &Arc<str>) {
        if let Some(n) = self.active.get_mut(name) {
            *n = n.saturating_sub(1);
        }
    }

    /// Close idle connections that expired or belong to configurations no longer in use.
    pub fn evict(&mut self, live: &[Arc<UpstreamRt>]) {
        let now = Instant::now();
        self.idle.retain(|k, q| {
            let Some(up) = live
                .iter()
                .find(|u| u.name == k.upstream && u.fingerprint == k.fingerprint)
            else {
                return false;
            };
            let max_age = Duration::from_millis(up.pool_idle_timeout_ms);
            q.retain(|c| now.duration_since(c.since) < max_age);
            !q.is_empty()
        });
    }

    /// Close every idle connection (drain).
    pub fn clear_idle(&mut self) {
        self.idle.clear();
    }

    /// (upstream, idle, active) for the gauges.
    pub fn gauges(&self) -> Vec<(Arc<str>, u64, u64)> {
        let mut m: HashMap<Arc<str>, (u64, u64)> = HashMap::new();
        for (k, q) in &self.idle {
            m.entry(k.upstream.clone()).or_default().0 += q.len() as u64;
        }
        for (k, n) in &self.active {
            m.entry(k.clone()).or_default().1 += n;
        }
        m.into_iter().map(|(k, (i, a))| (k, i, a)).collect()
    }

    /// The worker's round-robin cursor (endpoint choice in `resilience::balance`).
    pub fn rr(&self) -> &Cell<usize> {
        &self.rr
    }

    /// Pick an endpoint (round robin over endpoints that have addresses), then a pooled
    /// connection to it or a new one.
    pub fn pick_endpoint(&self, up: &UpstreamRt) -> Option<usize> {
        let n = up.endpoints.len();
        let start = self.rr.get();
        self.rr.set(start.wrapping_add(1));
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| !up.endpoints[i].addrs.load().is_empty())
    }
}

/// Get a connection to `up`: pooled if possible (`fresh == false`), else a new one.
pub async fn acquire(
    pools: &std::cell::RefCell<Pools>,
    up: &UpstreamRt,
    fresh: bool,
) -> Result<UpConn, ProxyError> {
    let endpoint = pools
        .borrow()
        .pick_endpoint(up)
        .ok_or_else(|| ProxyError::NoEndpoint(up.name.clone()))?;
    acquire_at(pools, up, endpoint, fresh, up.connect_timeout_ms).await
}

/// Get a connection to one chosen endpoint of `up`: pooled if possible (`fresh == false`),
/// else a new one within `connect_timeout_ms`.
pub async fn acquire_at(
    pools: &std::cell::RefCell<Pools>,
    up: &UpstreamRt,
    endpoint: usize,
    fresh: bool,
    connect_timeout_ms: u64,
) -> Result<UpConn, ProxyError> {
    let key = PoolKey {
        upstream: up.name.clone(),
        fingerprint: up.fingerprint,
        endpoint,
    };
    if !fresh {
        let pooled = pools.borrow_mut().take(up, endpoint);
        if let Some(io) = pooled {
            pools.borrow_mut().checked_out(&up.name);
            return Ok(UpConn {
                io,
                key,
                reused: true,
            });
        }
    }
    // Boxed: connecting (TCP + a TLS handshake) is a ~2 KiB future, and inline it would sit in
    // every connection task's state, the keep-alive majority that never connects included
    // (see proxy::timer for the measurement). One allocation per new upstream connection.
    let io = Box::pin(connect(up, endpoint, connect_timeout_ms)).await?;
    pools.borrow_mut().checked_out(&up.name);
    Ok(UpConn {
        io,
        key,
        reused: false,
    })
}

async fn connect(up: &UpstreamRt, endpoint: usize, timeout_ms: u64) -> Result<Io, ProxyError> {
    let ep = &up.endpoints[endpoint];
    let addrs = ep.addrs.load();
    let n = addrs.len();
    if n == 0 {
        return Err(ProxyError::NoEndpoint(up.name.clone()));
    }
    let addr = addrs[fastrand::usize(..n)];
    let timeout = Duration::from_millis(timeout_ms);
    let deadline = monoio::time::Instant::now() + timeout;
    let tcp = match super::timer::timeout_at(deadline, TcpStream::connect_addr(addr)).await {
        Err(_) => return Err(ProxyError::ConnectTimeout(up.name.clone(), timeout_ms)),
        Ok(Err(e)) => return Err(ProxyError::ConnectFailed(up.name.clone(), e)),
        Ok(Ok(s)) => s,
    };
    let _ = tcp.set_nodelay(true);
    match (&up.tls, &ep.server_name) {
        (Some(connector), Some(name)) => {
            use std::os::fd::AsRawFd;
            let fd = tcp.as_raw_fd();
            match super::timer::timeout_at(deadline, connector.connect(name.clone(), tcp)).await {
                Err(_) => Err(ProxyError::ConnectTimeout(up.name.clone(), timeout_ms)),
                Ok(Err(e)) => Err(ProxyError::Tls(up.name.clone(), tls_error_detail(&e))),
                Ok(Ok(s)) => Ok(Io::TlsClient(Box::new(s), fd)),
            }
        }
        _ => Ok(Io::Tcp(tcp)),
    }
}

/// The cause of a failed upstream handshake (monoio-rustls' own `Display` says only "io
/// error"): e.g. `invalid peer certificate: UnknownIssuer`, so the log and the 502 say why.
fn tls_error_detail(e: &monoio_rustls::TlsError) -> String {
    match e {
        monoio_rustls::TlsError::Io(e) => e.to_string(),
        monoio_rustls::TlsError::Rustls(e) => e.to_string(),
    }
}
