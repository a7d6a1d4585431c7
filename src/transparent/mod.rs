//! Transparent interception: connections that iptables redirected to sluice, as a sidecar
//! replacing Envoy does it (see `docs/transparent.md`).
//!
//! Owns: what happens to a connection accepted on a listener whose `mode` is
//! `transparent_outbound` (the application's outgoing connections, port 15001 by convention)
//! or `transparent_inbound` (connections to the pod, 15006), before and instead of the
//! explicit-proxy connection loop:
//! 1. recover the original destination ([`origdst`]); inbound, the target becomes the same
//!    port on loopback (the application);
//! 2. sniff the first bytes ([`sniff`]): HTTP/1.x, TLS (with its ClientHello, [`clienthello`])
//!    or anything else;
//! 3. HTTP goes into the normal connection loop (`proxy::exchange`), routed by original
//!    destination and Host, with the route's filters, metrics and traces. An unmatched request
//!    goes to the original destination (an implicit last route, `<listener>-passthrough`);
//! 4. TLS for a server name in `intercept_hosts` is decrypted with a minted leaf and served
//!    as HTTP, re-encrypted to the original destination ([`intercept`]);
//! 5. other TLS and everything else are relayed byte for byte ([`tcp_relay`]) to the original
//!    destination (or to the upstream of a route matching the TLS server name).
//!
//! Per-core state ([`PerCore`]): the upstreams made on the fly for original destinations, in a
//! bounded LRU keyed by (address, SNI of an intercepted connection or none), so their keep-alive pools work like configured upstreams'
//! and memory stays bounded whatever the application connects to; and connection counters,
//! shipped to the telemetry thread with each tick's gauges (no lock, no atomic per
//! connection).
//!
//! Why a module in front of the exchange instead of inside it: explicit listeners must not pay
//! for any of this (no getsockopt, no sniff), and the exchange stays about HTTP.

pub mod clienthello;
pub mod intercept;
pub mod origdst;
pub mod sniff;
pub mod tcp_relay;

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use monoio::net::TcpStream;
use serde::{Deserialize, Serialize};

use crate::config::{ListenerConfig, Loc};
use crate::proxy::io::Io;
use crate::snapshot::{EndpointRt, HostRewrite, ListenerRt, RouteRt, UpstreamRt};
use crate::worker::{ConnGuard, Worker};
use sniff::Protocol;

/// The reserved upstream name of a route that forwards to the original destination.
pub const ORIGINAL_DESTINATION: &str = "original_destination";
/// Index standing for the original destination in `RouteRt::upstream` and telemetry records
/// (never a position in `Snapshot::upstreams`; `u16::MAX` is "none").
pub const ORIGINAL_DST_IDX: usize = (u16::MAX - 1) as usize;
/// Default bound on the wait for a redirected client's first bytes. A client that sends
/// nothing in this time (a server-first protocol) is passed through as TCP.
pub const SNIFF_TIMEOUT_MS_DEFAULT: u64 = 500;
/// Default idle timeout of a pass-through (TLS or TCP) connection: Envoy's `tcp_proxy` default.
pub const PASSTHROUGH_IDLE_TIMEOUT_MS_DEFAULT: u64 = 3_600_000;
/// Default number of original destinations each worker keeps an upstream (and a keep-alive
/// pool) for; the least recently used one is dropped beyond it.
pub const ORIGINAL_DESTINATIONS_MAX_DEFAULT: usize = 1024;
/// Largest accepted `original_destinations_max`.
pub const ORIGINAL_DESTINATIONS_MAX_LIMIT: usize = 65_536;
/// Default idle keep-alive connections pooled per original destination per worker: the same
/// as a configured upstream's, so a busy destination keeps its connections warm (a smaller
/// pool turns every request above it into a new connection). Worst case per worker:
/// `original_destinations_max` × this, each closed after `pool_idle_timeout_ms` idle.
pub const ORIGINAL_DESTINATION_POOL_IDLE_MAX_DEFAULT: usize = crate::config::POOL_IDLE_MAX_DEFAULT;
/// Longest accepted `sniff_timeout_ms`.
pub const SNIFF_TIMEOUT_MS_MAX: u64 = 60_000;
/// Distinct TLS server names counted per worker and listener; later ones count as `other`.
pub const SNI_LABELS_MAX: usize = 64;

/// How a listener gets its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ListenerMode {
    /// Clients address sluice (a base URL pointing at it).
    #[default]
    Explicit,
    /// The pod's outgoing connections, redirected by iptables (`SLUICE_REDIRECT`).
    TransparentOutbound,
    /// Connections to the pod, redirected by iptables (`SLUICE_IN_REDIRECT`); forwarded to the
    /// application on loopback, same port.
    TransparentInbound,
}

impl ListenerMode {
    pub fn is_transparent(self) -> bool {
        self != ListenerMode::Explicit
    }
}

/// `listeners[].transparent`: settings of a transparent listener.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TransparentConfig {
    /// Longest wait for the client's first bytes before it is treated as TCP.
    #[serde(default = "sniff_timeout_ms_default")]
    pub sniff_timeout_ms: u64,
    /// A pass-through (TLS/TCP) connection with no byte in either direction for this long is
    /// closed.
    #[serde(default = "passthrough_idle_timeout_ms_default")]
    pub idle_timeout_ms: u64,
    /// Connect timeout towards an original destination.
    #[serde(default = "connect_timeout_ms_default")]
    pub connect_timeout_ms: u64,
    /// Original destinations each worker keeps an HTTP upstream and pool for (LRU).
    #[serde(default = "original_destinations_max_default")]
    pub original_destinations_max: usize,
    /// Idle keep-alive connections per original destination per worker.
    #[serde(default = "pool_idle_max_default")]
    pub pool_idle_max: usize,
    /// Idle time after which a pooled connection to an original destination is closed.
    #[serde(default = "pool_idle_timeout_ms_default")]
    pub pool_idle_timeout_ms: u64,
    /// TLS server names to intercept (decrypt, serve as HTTP, re-encrypt): exact names or
    /// `*.suffix` patterns. Needs the listener's `tls` in interception mode. Other names are
    /// passed through undecrypted.
    #[serde(default)]
    pub intercept_hosts: Vec<Loc<String>>,
    /// PEM CA bundle trusted for the real upstreams of intercepted connections, in addition
    /// to the system roots. Watched: a rotated bundle applies to new connections.
    #[serde(default)]
    pub intercept_upstream_ca_file: Option<Loc<String>>,
}

fn sniff_timeout_ms_default() -> u64 {
    SNIFF_TIMEOUT_MS_DEFAULT
}
fn passthrough_idle_timeout_ms_default() -> u64 {
    PASSTHROUGH_IDLE_TIMEOUT_MS_DEFAULT
}
fn connect_timeout_ms_default() -> u64 {
    crate::config::CONNECT_TIMEOUT_MS_DEFAULT
}
fn original_destinations_max_default() -> usize {
    ORIGINAL_DESTINATIONS_MAX_DEFAULT
}
fn pool_idle_max_default() -> usize {
    ORIGINAL_DESTINATION_POOL_IDLE_MAX_DEFAULT
}
fn pool_idle_timeout_ms_default() -> u64 {
    crate::config::POOL_IDLE_TIMEOUT_MS_DEFAULT
}

impl Default for TransparentConfig {
    fn default() -> Self {
        TransparentConfig {
            sniff_timeout_ms: SNIFF_TIMEOUT_MS_DEFAULT,
            idle_timeout_ms: PASSTHROUGH_IDLE_TIMEOUT_MS_DEFAULT,
            connect_timeout_ms: crate::config::CONNECT_TIMEOUT_MS_DEFAULT,
            original_destinations_max: ORIGINAL_DESTINATIONS_MAX_DEFAULT,
            pool_idle_max: ORIGINAL_DESTINATION_POOL_IDLE_MAX_DEFAULT,
            pool_idle_timeout_ms: crate::config::POOL_IDLE_TIMEOUT_MS_DEFAULT,
            intercept_hosts: Vec::new(),
            intercept_upstream_ca_file: None,
        }
    }
}

/// An IP network (`10.0.0.0/8`) or a single address (`10.1.2.3`, a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { addr, prefix_len })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Whether a TLS server name matches a route's `sni` pattern (exact or `*.suffix`).
pub fn sni_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            name.len() > suffix.len() + 1
                && name.ends_with(suffix)
                && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
        }
        None => pattern == name,
    }
}

/// Mode-dependent checks of one listener: `(line, field below the listener, problem)`.
pub fn validate_listener(l: &ListenerConfig) -> Vec<(u64, String, String)> {
    let mut out = Vec::new();
    let line = l.bind.line;
    let t = &l.transparent;
    if !l.mode.is_transparent() && *t != TransparentConfig::default() {
        out.push((
            line,
            "transparent".into(),
            "set, but the listener's mode is `explicit`: add `mode: transparent_outbound` or `transparent_inbound`".into(),
        ));
    }
    if l.mode.is_transparent() {
        if t.sniff_timeout_ms == 0 || t.sniff_timeout_ms > SNIFF_TIMEOUT_MS_MAX {
            out.push((
                line,
                "transparent.sniff_timeout_ms".into(),
                format!("must be between 1 and {SNIFF_TIMEOUT_MS_MAX}"),
            ));
        }
        if t.idle_timeout_ms == 0 {
            out.push((
                line,
                "transparent.idle_timeout_ms".into(),
                "must be > 0".into(),
            ));
        }
        if t.connect_timeout_ms == 0 {
            out.push((
                line,
                "transparent.connect_timeout_ms".into(),
                "must be > 0".into(),
            ));
        }
        if t.original_destinations_max == 0
            || t.original_destinations_max > ORIGINAL_DESTINATIONS_MAX_LIMIT
        {
            out.push((
                line,
                "transparent.original_destinations_max".into(),
                format!("must be between 1 and {ORIGINAL_DESTINATIONS_MAX_LIMIT}"),
            ));
        }
        out.extend(validate_interception(l));
    }
    for (j, r) in l.routes.iter().enumerate() {
        let f = format!("routes[{j}]");
        let m = &r.matcher;
        if !l.mode.is_transparent() {
            if r.upstream.value == ORIGINAL_DESTINATION {
                out.push((
                    r.upstream.line,
                    format!("{f}.upstream"),
                    "`original_destination` needs a transparent listener (mode: transparent_outbound or transparent_inbound)".into(),
                ));
            }
            if m.destination.is_some() || m.destination_port.is_some() || m.sni.is_some() {
                out.push((
                    r.upstream.line,
                    format!("{f}.match"),
                    "destination, destination_port and sni need a transparent listener".into(),
                ));
            }
        }
        if let Some(d) = &m.destination {
            if let Err(e) = d.value.parse::<Cidr>() {
                out.push((d.line, format!("{f}.match.destination"), e));
            }
        }
        if m.destination_port == Some(0) {
            out.push((
                r.upstream.line,
                format!("{f}.match.destination_port"),
                "port 0".into(),
            ));
        }
        if let Some(sni) = &m.sni {
            if let Err(e) = check_sni_pattern(&sni.value) {
                out.push((sni.line, format!("{f}.match.sni"), e));
            }
            let http_only = m.path_prefix.is_some()
                || m.path_exact.is_some()
                || m.method.is_some()
                || m.host.is_some()
                || !m.headers.is_empty()
                || r.inspect.is_some()
                || r.pii.is_some();
            if http_only {
                out.push((
                    sni.line,
                    format!("{f}.match.sni"),
                    "a TLS pass-through route sees no HTTP: it cannot also match path, method, host or headers, nor inspect or filter".into(),
                ));
            }
        }
    }
    out
}

/// Interception settings of a transparent listener: patterns, the listener's `tls` mode, the
/// upstream CA bundle.
fn validate_interception(l: &ListenerConfig) -> Vec<(u64, String, String)> {
    let mut out = Vec::new();
    let t = &l.transparent;
    for (i, h) in t.intercept_hosts.iter().enumerate() {
        if let Err(e) = check_sni_pattern(&h.value) {
            out.push((h.line, format!("transparent.intercept_hosts[{i}]"), e));
        }
    }
    let intercepting = l.tls.as_ref().is_some_and(|x| x.is_intercept());
    match (t.intercept_hosts.first(), &l.tls) {
        (Some(h), _) if !intercepting => out.push((
            h.line,
            "transparent.intercept_hosts".into(),
            "needs the listener's tls in interception mode (tls: { intercept_ca_cert_file, intercept_ca_key_file })".into(),
        )),
        (None, Some(_)) => out.push((
            l.bind.line,
            "tls".into(),
            "a transparent listener uses tls only to intercept: list the hosts in transparent.intercept_hosts (other TLS is passed through)".into(),
        )),
        _ => {}
    }
    if let Some(f) = &t.intercept_upstream_ca_file {
        if t.intercept_hosts.is_empty() {
            out.push((
                f.line,
                "transparent.intercept_upstream_ca_file".into(),
                "set, but transparent.intercept_hosts is empty".into(),
            ));
        } else if let Err(e) = crate::tls::load_roots(&f.value) {
            out.push((f.line, "transparent.intercept_upstream_ca_file".into(), e));
        }
    }
    out
}

fn check_sni_pattern(p: &str) -> Result<(), String> {
    let name = p.strip_prefix("*.").unwrap_or(p);
    let ok = !name.is_empty()
        && name.len() <= clienthello::SERVER_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{p}` is not a lower-case server name or `*.suffix` pattern"
        ))
    }
}

/// A route's transparent-mode conditions: destination network, destination port, SNI pattern.
pub type DestinationMatch = (Option<Cidr>, Option<u16>, Option<String>);

/// The routing-relevant parts of a route's match, compiled for the snapshot.
pub fn compile_route_match(m: &crate::config::RouteMatch) -> Result<DestinationMatch, String> {
    let dst = match &m.destination {
        Some(Loc { value, .. }) => Some(value.parse::<Cidr>()?),
        None => None,
    };
    Ok((
        dst,
        m.destination_port,
        m.sni.as_ref().map(|s| s.value.clone()),
    ))
}

/// The last route of every transparent listener: anything no configured route took goes to
/// its original destination, unfiltered (Istio's `PassthroughCluster`).
pub fn passthrough_route(listener: &str) -> RouteRt {
    RouteRt {
        name: Arc::from(format!("{listener}-passthrough").as_str()),
        path_prefix: None,
        path_exact: None,
        host: None,
        method: None,
        headers: Vec::new(),
        upstream: ORIGINAL_DST_IDX,
        first_byte_timeout_ms: crate::config::FIRST_BYTE_TIMEOUT_MS_DEFAULT,
        body_idle_timeout_ms: crate::config::BODY_IDLE_TIMEOUT_MS_DEFAULT,
        total_timeout_ms: 0,
        chain: None,
        destination: None,
        destination_port: None,
        sni: None,
        allow_identities: None,
        policy: crate::route::RoutePolicy::default(),
    }
}

/// Where a redirected connection was going, and where sluice sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnDst {
    /// The address the client connected to (from conntrack).
    pub original: SocketAddr,
    /// Outbound: the same. Inbound: the application, the same port on loopback.
    pub target: SocketAddr,
    /// An intercepted TLS connection: requests to the original destination are re-encrypted
    /// (client's SNI, full verification). `None`: plain HTTP.
    pub tls: Option<intercept::TlsOrigin>,
}

/// Whether an HTTP request on a connection with `dst` may take route `r` (its
/// destination conditions; TLS-only routes never match HTTP).
#[inline]
pub fn http_route_matches(r: &RouteRt, dst: Option<&ConnDst>) -> bool {
    if r.sni.is_some() {
        return false;
    }
    if r.destination.is_none() && r.destination_port.is_none() {
        return true;
    }
    let Some(d) = dst else { return false };
    r.destination.is_none_or(|c| c.contains(d.original.ip()))
        && r.destination_port.is_none_or(|p| p == d.original.port())
}

fn loopback_for(original: SocketAddr) -> SocketAddr {
    let ip = if original.is_ipv4()
        || matches!(original.ip(), IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())
    {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    };
    SocketAddr::new(ip, original.port())
}

/// Connection counters of one worker, sent as absolute values with each tick's gauges.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// (listener, protocol) → connections.
    pub connections: HashMap<(Arc<str>, Protocol), u64>,
    /// (listener, protocol) → (bytes client→destination, bytes destination→client) of
    /// pass-through connections.
    pub passthrough_bytes: HashMap<(Arc<str>, Protocol), (u64, u64)>,
    /// (listener, server name or `none`/`other`) → TLS connections.
    pub tls_server_names: HashMap<(Arc<str>, Arc<str>), u64>,
    /// (listener, code) → connections that failed before or while being passed through.
    pub errors: HashMap<(Arc<str>, &'static str), u64>,
    /// Original destinations with an upstream on this worker now.
    pub original_destinations: u64,
    /// listener → TLS connections intercepted (handshake with a minted leaf completed).
    pub intercepted: HashMap<Arc<str>, u64>,
}

impl Stats {
    fn sni(&mut self, listener: &Arc<str>, name: Option<&str>) {
        let mut name = name.unwrap_or("none");
        for _ in 0..2 {
            // A label already counted: bump it in place (no allocation per connection).
            if let Some(n) = self
                .tls_server_names
                .iter_mut()
                .find(|((l, n), _)| l == listener && &**n == name)
                .map(|(_, n)| n)
            {
                *n += 1;
                return;
            }
            let distinct = self
                .tls_server_names
                .keys()
                .filter(|(l, _)| l == listener)
                .count();
            if distinct < SNI_LABELS_MAX || name == "other" {
                break;
            }
            name = "other";
        }
        self.tls_server_names
            .insert((listener.clone(), Arc::from(name)), 1);
    }

    fn intercepted(&mut self, listener: &Arc<str>) {
        *self.intercepted.entry(listener.clone()).or_default() += 1;
    }

    fn error(&mut self, listener: &Arc<str>, code: &'static str) {
        *self.errors.entry((listener.clone(), code)).or_default() += 1;
    }
}

struct DynEntry {
    up: Arc<UpstreamRt>,
    /// (connect timeout, pool size, pool idle timeout, interception fingerprint or 0).
    settings: (u64, usize, u64, u64),
    last_used: u64,
}

/// An original-destination upstream's key: the address, and the SNI TLS is re-originated
/// with (intercepted connections) or `None` (plain).
type DynKey = (SocketAddr, Option<Arc<str>>);

/// Per-worker transparent-mode state. Lives in the [`Worker`]; never shared.
#[derive(Default)]
pub struct PerCore {
    upstreams: RefCell<HashMap<DynKey, DynEntry>>,
    clock: std::cell::Cell<u64>,
    pub stats: RefCell<Stats>,
}

impl PerCore {
    /// The upstream for original destination `target`, made on first use and kept in a
    /// bounded LRU. When full, the least recently used destination is dropped (an O(n) scan,
    /// only when a new destination arrives at a full map); its idle pooled connections are
    /// closed by the next pool eviction, which no longer sees it live.
    pub fn upstream_for(&self, target: SocketAddr, t: &TransparentConfig) -> Arc<UpstreamRt> {
        self.upstream_with(target, None, t)
    }

    /// The upstream for a connection's original destination: plain, or TLS with the
    /// client's SNI for an intercepted connection (one LRU entry per (address, SNI)).
    pub fn upstream_for_dst(&self, d: &ConnDst, t: &TransparentConfig) -> Arc<UpstreamRt> {
        self.upstream_with(d.target, d.tls.as_ref(), t)
    }

    fn upstream_with(
        &self,
        target: SocketAddr,
        tls: Option<&intercept::TlsOrigin>,
        t: &TransparentConfig,
    ) -> Arc<UpstreamRt> {
        let now = self.clock.get().wrapping_add(1);
        self.clock.set(now);
        let settings = (
            t.connect_timeout_ms,
            t.pool_idle_max,
            t.pool_idle_timeout_ms,
            tls.map_or(0, |o| o.intercept.fingerprint),
        );
        let key: DynKey = (target, tls.map(|o| o.sni.clone()));
        let mut map = self.upstreams.borrow_mut();
        if let Some(e) = map.get_mut(&key) {
            if e.settings == settings {
                e.last_used = now;
                return e.up.clone();
            }
        }
        if map.len() >= t.original_destinations_max && !map.contains_key(&key) {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        let up = Arc::new(dynamic_upstream(target, tls, t));
        map.insert(
            key,
            DynEntry {
                up: up.clone(),
                settings,
                last_used: now,
            },
        );
        self.stats.borrow_mut().original_destinations = map.len() as u64;
        up
    }

    /// Whether any original-destination upstream exists on this worker.
    pub fn has_upstreams(&self) -> bool {
        !self.upstreams.borrow().is_empty()
    }

    /// Upstreams made for original destinations, for the pool eviction's list of live ones.
    pub fn live_upstreams(&self) -> impl Iterator<Item = Arc<UpstreamRt>> {
        let v: Vec<Arc<UpstreamRt>> = self
            .upstreams
            .borrow()
            .values()
            .map(|e| e.up.clone())
            .collect();
        v.into_iter()
    }

    fn count(&self, listener: &Arc<str>, p: Protocol) {
        *self
            .stats
            .borrow_mut()
            .connections
            .entry((listener.clone(), p))
            .or_default() += 1;
    }
}

fn dynamic_upstream(
    target: SocketAddr,
    tls: Option<&intercept::TlsOrigin>,
    t: &TransparentConfig,
) -> UpstreamRt {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    target.hash(&mut h);
    t.hash(&mut h);
    if let Some(o) = tls {
        o.sni.hash(&mut h);
        o.intercept.fingerprint.hash(&mut h);
    }
    let host = target.ip().to_string();
    let authority = match target.ip() {
        IpAddr::V6(_) => format!("[{host}]:{}", target.port()),
        IpAddr::V4(_) => format!("{host}:{}", target.port()),
    };
    UpstreamRt {
        name: Arc::from(ORIGINAL_DESTINATION),
        fingerprint: h.finish(),
        endpoints: vec![EndpointRt {
            host,
            port: target.port(),
            authority,
            server_name: tls.map(|o| o.server_name.clone()),
            addrs: ArcSwap::from_pointee(vec![target]),
            is_literal_ip: true,
            health: crate::resilience::breaker::EndpointHealth::new(
                crate::resilience::config::BREAKER_WINDOW_MS_DEFAULT,
            ),
        }],
        tls: tls.map(|o| o.intercept.connector().clone()),
        connect_timeout_ms: t.connect_timeout_ms,
        pool_idle_max: t.pool_idle_max,
        pool_idle_timeout_ms: t.pool_idle_timeout_ms,
        host_rewrite: HostRewrite::Preserve,
        credential: None,
        // Pass-through: no breaker, throttle, aliases; a 429's Retry-After is the client's.
        policy: crate::resilience::UpstreamPolicy::new(
            crate::resilience::config::Balance::RoundRobin,
            None,
            0,
            None,
            &Default::default(),
        ),
    }
}

/// Serve one connection accepted on a transparent listener.
pub async fn serve(
    w: Rc<Worker>,
    listener: Arc<str>,
    stream: TcpStream,
    peer: SocketAddr,
    guard: ConnGuard,
) {
    let snap = w.snapshot();
    let Some((_, l)) = snap.listener(&listener) else {
        return;
    };
    let mode = l.mode;
    let t = l.transparent.clone();
    let original = match stream
        .local_addr()
        .and_then(|local| origdst::original_dst(stream.as_raw_fd(), local))
    {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(listener = %listener, %peer, error = %e, "no original destination");
            None
        }
    };
    let dst = original.map(|o| ConnDst {
        original: o,
        target: match mode {
            ListenerMode::TransparentInbound => loopback_for(o),
            _ => o,
        },
        tls: None,
    });
    let deadline = monoio::time::Instant::now() + Duration::from_millis(t.sniff_timeout_ms.max(1));
    let sniffed = match sniff::sniff(&stream, deadline).await {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(e) => return count_error(&w, &listener, peer, &TransparentError::Sniff(e)),
    };
    w.transparent.count(&listener, sniffed.protocol);
    match sniffed.protocol {
        Protocol::Http => {
            let mut sniffed = sniffed;
            let limits = l.limits;
            if first_request_upgrades(&stream, &mut sniffed, &limits, deadline).await {
                // WebSocket or h2c: the exchange does not switch protocols; the bytes go to
                // the original destination untouched, like any other pass-through.
                let target = dst.map(|d| d.target);
                drop(snap);
                pass_through(
                    &w,
                    &listener,
                    peer,
                    Protocol::Http,
                    stream,
                    sniffed,
                    target,
                    &t,
                )
                .await;
                drop(guard);
                return;
            }
            drop(snap);
            crate::proxy::exchange::serve_connection_with(
                w,
                listener,
                Io::Tcp(stream),
                peer,
                guard,
                sniffed.prefix,
                dst,
                None,
            )
            .await
        }
        Protocol::Tls => {
            let name = sniffed.hello.as_ref().and_then(|h| h.server_name.clone());
            w.transparent
                .stats
                .borrow_mut()
                .sni(&listener, name.as_deref());
            // TLS interception: a server name listed in `intercept_hosts` is decrypted with a
            // leaf minted for it (the sniffed ClientHello bytes are replayed into the
            // handshake), served as HTTP, and re-encrypted to the original destination.
            if let Some(decision) = intercept::decide(l, dst.as_ref(), name.as_deref()) {
                drop(snap);
                intercept::serve(w, listener, stream, peer, guard, sniffed.prefix, decision).await;
                return;
            }
            let target = tls_target(&snap, l, dst.as_ref(), name.as_deref());
            drop(snap);
            tracing::debug!(listener = %listener, %peer, sni = name.as_deref().unwrap_or(""), target = ?target, "TLS pass-through");
            pass_through(
                &w,
                &listener,
                peer,
                Protocol::Tls,
                stream,
                sniffed,
                target,
                &t,
            )
            .await;
            drop(guard);
        }
        Protocol::Tcp => {
            drop(snap);
            let target = dst.map(|d| d.target);
            pass_through(
                &w,
                &listener,
                peer,
                Protocol::Tcp,
                stream,
                sniffed,
                target,
                &t,
            )
            .await;
            drop(guard);
        }
    }
}

/// Read until the first request head is complete (bounded by the head limits and the sniff
/// deadline) and tell whether it asks for a protocol upgrade. A head that is not complete in
/// time, or malformed, is left to the exchange (which answers 408/400 as usual).
async fn first_request_upgrades(
    stream: &TcpStream,
    sniffed: &mut sniff::Sniffed,
    limits: &crate::http1::HeadLimits,
    deadline: monoio::time::Instant,
) -> bool {
    loop {
        match crate::http1::parse_request(&sniffed.prefix, limits) {
            Ok(Some((head, _))) => return sniff::wants_upgrade(&head),
            Ok(None) if !sniffed.client_eof && sniffed.prefix.len() < limits.header_bytes_max => {}
            _ => return false,
        }
        match sniff::fill(stream, &mut sniffed.prefix, deadline).await {
            Ok(sniff::Fill::Data) => {}
            Ok(sniff::Fill::Eof) => sniffed.client_eof = true,
            Ok(sniff::Fill::Timeout) | Err(_) => return false,
        }
    }
}

/// Where a TLS connection goes: the upstream of the first route whose `sni` (and destination
/// conditions) match, else the original destination.
fn tls_target(
    snap: &crate::snapshot::Snapshot,
    l: &ListenerRt,
    dst: Option<&ConnDst>,
    name: Option<&str>,
) -> Option<SocketAddr> {
    let route = l.routes.iter().find(|r| {
        r.sni
            .as_deref()
            .is_some_and(|p| name.is_some_and(|n| sni_matches(p, n)))
            && (r.destination.is_none() && r.destination_port.is_none()
                || dst.is_some_and(|d| {
                    r.destination.is_none_or(|c| c.contains(d.original.ip()))
                        && r.destination_port.is_none_or(|p| p == d.original.port())
                }))
    });
    match route {
        Some(r) if r.upstream != ORIGINAL_DST_IDX => snap
            .upstreams
            .get(r.upstream)
            .and_then(|u| {
                u.endpoints
                    .iter()
                    .find_map(|e| e.addrs.load().first().copied())
            })
            .or(dst.map(|d| d.target)),
        _ => dst.map(|d| d.target),
    }
}

/// Why a redirected connection could not be served or ended abnormally. Counted in
/// `sluice_transparent_errors_total{code}` and logged (debug: these are the application's
/// connections, and a failing destination is its business, not sluice's).
#[derive(Debug, thiserror::Error)]
pub enum TransparentError {
    #[error("connection not redirected to this listener: no original destination")]
    NoOriginalDestination,
    #[error("reading the first bytes failed: {0}")]
    Sniff(std::io::Error),
    #[error("original destination {0}: connect failed: {1}")]
    ConnectFailed(SocketAddr, std::io::Error),
    #[error("original destination {0}: connect timed out after {1} ms")]
    ConnectTimeout(SocketAddr, u64),
    #[error("pass-through reset or failed on one side; the other side was reset")]
    Reset,
    #[error("pass-through idle for {0} ms in both directions: closed")]
    IdleTimeout(u64),
    #[error("TLS interception: {0}")]
    Intercept(crate::tls::TlsError),
}

impl crate::error::Classify for TransparentError {
    fn side(&self) -> crate::error::Side {
        use crate::error::Side;
        match self {
            TransparentError::NoOriginalDestination
            | TransparentError::Sniff(_)
            | TransparentError::IdleTimeout(_)
            | TransparentError::Intercept(_) => Side::Downstream,
            // A reset may come from either peer; the destination is the usual suspect.
            TransparentError::ConnectFailed(..)
            | TransparentError::ConnectTimeout(..)
            | TransparentError::Reset => Side::Upstream,
        }
    }
    fn status(&self) -> u16 {
        match self {
            TransparentError::NoOriginalDestination => 421,
            TransparentError::Sniff(_) | TransparentError::Intercept(_) => 400,
            TransparentError::ConnectTimeout(..) | TransparentError::IdleTimeout(_) => 504,
            TransparentError::ConnectFailed(..) | TransparentError::Reset => 502,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            TransparentError::NoOriginalDestination => "no_original_destination",
            TransparentError::Sniff(_) => "sniff_failed",
            TransparentError::ConnectFailed(..) => "connect_failed",
            TransparentError::ConnectTimeout(..) => "connect_timeout",
            TransparentError::Reset => "reset",
            TransparentError::IdleTimeout(_) => "idle_timeout",
            TransparentError::Intercept(_) => "tls_intercept_failed",
        }
    }
}

fn count_error(w: &Worker, listener: &Arc<str>, peer: SocketAddr, e: &TransparentError) {
    use crate::error::Classify;
    w.transparent.stats.borrow_mut().error(listener, e.code());
    tracing::debug!(listener = %listener, %peer, code = e.code(), side = e.side().as_str(), "{e}");
}

/// Connect to `target` and relay bytes both ways until done; count everything.
#[allow(clippy::too_many_arguments)]
async fn pass_through(
    w: &Rc<Worker>,
    listener: &Arc<str>,
    peer: SocketAddr,
    protocol: Protocol,
    client: TcpStream,
    sniffed: sniff::Sniffed,
    target: Option<SocketAddr>,
    t: &TransparentConfig,
) {
    let r = relay_to(client, sniffed, target, t).await;
    let st = match r {
        Ok(st) => st,
        Err(e) => return count_error(w, listener, peer, &e),
    };
    {
        let mut stats = w.transparent.stats.borrow_mut();
        let e = stats
            .passthrough_bytes
            .entry((listener.clone(), protocol))
            .or_default();
        e.0 += st.bytes_in;
        e.1 += st.bytes_out;
    }
    match st.end {
        tcp_relay::RelayEnd::Closed => {}
        tcp_relay::RelayEnd::IdleTimeout => count_error(
            w,
            listener,
            peer,
            &TransparentError::IdleTimeout(t.idle_timeout_ms),
        ),
        tcp_relay::RelayEnd::Error => count_error(w, listener, peer, &TransparentError::Reset),
    }
}

async fn relay_to(
    client: TcpStream,
    sniffed: sniff::Sniffed,
    target: Option<SocketAddr>,
    t: &TransparentConfig,
) -> Result<tcp_relay::RelayStats, TransparentError> {
    let fail = |e: TransparentError| {
        // The client sees the failure as it would without sluice: a reset connection.
        tcp_relay::reset_on_close(client.as_raw_fd());
        e
    };
    // Connected to the listener directly: there is nowhere to pass the bytes to.
    let target = target.ok_or_else(|| fail(TransparentError::NoOriginalDestination))?;
    let timeout = Duration::from_millis(t.connect_timeout_ms);
    let up = match crate::proxy::timer::timeout(timeout, TcpStream::connect_addr(target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(fail(TransparentError::ConnectFailed(target, e))),
        Err(_) => {
            return Err(fail(TransparentError::ConnectTimeout(
                target,
                t.connect_timeout_ms,
            )))
        }
    };
    let _ = up.set_nodelay(true);
    let idle = Duration::from_millis(t.idle_timeout_ms);
    Ok(tcp_relay::relay(client, up, sniffed.prefix, sniffed.client_eof, idle).await)
}

/// Metric names (documented in docs/metrics.md).
pub mod names {
    pub const CONNECTIONS_TOTAL: &str = "sluice_transparent_connections_total";
    pub const PASSTHROUGH_BYTES_TOTAL: &str = "sluice_transparent_passthrough_bytes_total";
    pub const TLS_SERVER_NAMES_TOTAL: &str = "sluice_transparent_tls_connections_total";
    pub const ERRORS_TOTAL: &str = "sluice_transparent_errors_total";
    pub const ORIGINAL_DESTINATIONS: &str = "sluice_transparent_original_destinations";
    pub const TLS_INTERCEPTED_TOTAL: &str = "sluice_transparent_tls_intercepted_total";
}

/// On the telemetry thread: publish the sum of every worker's counters.
pub fn publish<'a>(all: impl Iterator<Item = &'a Stats>) {
    let mut conns: HashMap<(&str, Protocol), u64> = HashMap::new();
    let mut bytes: HashMap<(&str, Protocol), (u64, u64)> = HashMap::new();
    let mut sni: HashMap<(&str, &str), u64> = HashMap::new();
    let mut errors: HashMap<(&str, &'static str), u64> = HashMap::new();
    let mut dests = 0u64;
    let mut intercepted: HashMap<&str, u64> = HashMap::new();
    for s in all {
        for (l, n) in &s.intercepted {
            *intercepted.entry(l).or_default() += n;
        }
        for ((l, p), n) in &s.connections {
            *conns.entry((l, *p)).or_default() += n;
        }
        for ((l, p), (i, o)) in &s.passthrough_bytes {
            let e = bytes.entry((l, *p)).or_default();
            e.0 += i;
            e.1 += o;
        }
        for ((l, n), c) in &s.tls_server_names {
            *sni.entry((l, n)).or_default() += c;
        }
        for ((l, c), n) in &s.errors {
            *errors.entry((l, c)).or_default() += n;
        }
        dests += s.original_destinations;
    }
    for ((l, p), n) in conns {
        metrics::counter!(names::CONNECTIONS_TOTAL, "listener" => l.to_string(), "protocol" => p.as_str())
            .absolute(n);
    }
    for ((l, p), (i, o)) in bytes {
        metrics::counter!(names::PASSTHROUGH_BYTES_TOTAL, "listener" => l.to_string(), "protocol" => p.as_str(), "direction" => "in")
            .absolute(i);
        metrics::counter!(names::PASSTHROUGH_BYTES_TOTAL, "listener" => l.to_string(), "protocol" => p.as_str(), "direction" => "out")
            .absolute(o);
    }
    for ((l, n), c) in sni {
        metrics::counter!(names::TLS_SERVER_NAMES_TOTAL, "listener" => l.to_string(), "sni" => n.to_string())
            .absolute(c);
    }
    for ((l, c), n) in errors {
        metrics::counter!(names::ERRORS_TOTAL, "listener" => l.to_string(), "code" => c)
            .absolute(n);
    }
    for (l, n) in intercepted {
        metrics::counter!(names::TLS_INTERCEPTED_TOTAL, "listener" => l.to_string()).absolute(n);
    }
    metrics::gauge!(names::ORIGINAL_DESTINATIONS).set(dests as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parse_and_contains() {
        let c: Cidr = "10.211.0.0/16".parse().unwrap();
        assert!(c.contains("10.211.3.4".parse().unwrap()));
        assert!(!c.contains("10.212.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.211.9.9".parse().unwrap()));
        let one: Cidr = "10.1.2.3".parse().unwrap();
        assert_eq!(one.prefix_len, 32);
        assert!(one.contains("10.1.2.3".parse().unwrap()));
        assert!(!one.contains("10.1.2.4".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        assert!(!all.contains("::1".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("host/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn sni_patterns() {
        assert!(sni_matches("api.openai.com", "api.openai.com"));
        assert!(!sni_matches("api.openai.com", "xapi.openai.com"));
        assert!(sni_matches("*.openai.com", "api.openai.com"));
        assert!(!sni_matches("*.openai.com", "openai.com"));
        assert!(!sni_matches("*.openai.com", "apiopenai.com"));
        assert!(check_sni_pattern("*.example.com").is_ok());
        assert!(check_sni_pattern("Example.com").is_err());
        assert!(check_sni_pattern("*.").is_err());
    }

    #[test]
    fn inbound_targets_loopback_on_the_same_port() {
        assert_eq!(
            loopback_for("10.0.0.5:8080".parse().unwrap()),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            loopback_for("[fd00::5]:8080".parse().unwrap()),
            "[::1]:8080".parse().unwrap()
        );
    }

    #[test]
    fn original_destination_upstreams_are_a_bounded_lru() {
        let pc = PerCore::default();
        let t = TransparentConfig {
            original_destinations_max: 3,
            ..Default::default()
        };
        let a: Vec<SocketAddr> = (1..=5)
            .map(|i| format!("10.0.0.{i}:80").parse().unwrap())
            .collect();
        let ua = pc.upstream_for(a[0], &t);
        pc.upstream_for(a[1], &t);
        pc.upstream_for(a[2], &t);
        // a[0] used again: a[1] is now the least recently used.
        assert!(Arc::ptr_eq(&ua, &pc.upstream_for(a[0], &t)));
        pc.upstream_for(a[3], &t);
        let live: Vec<SocketAddr> = pc
            .live_upstreams()
            .map(|u| u.endpoints[0].addrs.load()[0])
            .collect();
        assert_eq!(live.len(), 3);
        assert!(live.contains(&a[0]) && live.contains(&a[2]) && live.contains(&a[3]));
        assert_eq!(pc.stats.borrow().original_destinations, 3);
        // Distinct destinations get distinct pool identities.
        let u3 = pc.upstream_for(a[3], &t);
        let u4 = pc.upstream_for(a[4], &t);
        assert_ne!(u3.fingerprint, u4.fingerprint);
        assert_eq!(&*u4.name, ORIGINAL_DESTINATION);
        assert!(matches!(u4.host_rewrite, HostRewrite::Preserve));
        // Changed settings (a reload) make a new upstream for the same address.
        let t2 = TransparentConfig {
            connect_timeout_ms: 7,
            ..t.clone()
        };
        let u4b = pc.upstream_for(a[4], &t2);
        assert!(!Arc::ptr_eq(&u4, &u4b));
        assert_eq!(u4b.connect_timeout_ms, 7);
    }

    const TP: &str = r#"
listeners:
  - name: outbound
    bind: 0.0.0.0:15001
    mode: transparent_outbound
    transparent: { sniff_timeout_ms: 250, original_destinations_max: 16 }
    routes:
      - match: { path_prefix: /v1/, destination: 10.211.0.0/16, destination_port: 80 }
        upstream: original_destination
        inspect: {}
      - match: { sni: "*.openai.com" }
        upstream: egress
upstreams:
  egress:
    endpoints: ["10.0.0.9:443"]
"#;

    #[test]
    fn transparent_config_parses_and_compiles() {
        let c = crate::config::parse("t.yaml", TP).unwrap();
        let l = &c.listeners[0];
        assert_eq!(l.mode, ListenerMode::TransparentOutbound);
        assert_eq!(l.transparent.sniff_timeout_ms, 250);
        assert_eq!(
            l.transparent.idle_timeout_ms,
            PASSTHROUGH_IDLE_TIMEOUT_MS_DEFAULT
        );
        let snap = crate::snapshot::Snapshot::build(c, 1, None).unwrap();
        let l = &snap.listeners[0];
        assert_eq!(l.routes.len(), 3, "the implicit pass-through route is last");
        assert_eq!(l.routes[0].upstream, ORIGINAL_DST_IDX);
        assert_eq!(
            l.routes[0].destination,
            Some("10.211.0.0/16".parse().unwrap())
        );
        assert_eq!(l.routes[1].sni.as_deref(), Some("*.openai.com"));
        assert_eq!(&*l.routes[2].name, "outbound-passthrough");
        assert_eq!(l.routes[2].upstream, ORIGINAL_DST_IDX);
        let dst = |o: &str| {
            Some(ConnDst {
                original: o.parse().unwrap(),
                target: o.parse().unwrap(),
                tls: None,
            })
        };
        assert!(http_route_matches(
            &l.routes[0],
            dst("10.211.1.2:80").as_ref()
        ));
        assert!(!http_route_matches(
            &l.routes[0],
            dst("10.211.1.2:8080").as_ref()
        ));
        assert!(!http_route_matches(
            &l.routes[0],
            dst("10.1.1.2:80").as_ref()
        ));
        assert!(!http_route_matches(&l.routes[0], None));
        assert!(!http_route_matches(
            &l.routes[1],
            dst("10.211.1.2:443").as_ref()
        ));
        assert!(http_route_matches(&l.routes[2], None));
        // TLS: the SNI route's upstream, else the original destination.
        let d = dst("1.2.3.4:443");
        let d = d.as_ref();
        assert_eq!(
            tls_target(&snap, l, d, Some("api.openai.com")),
            Some("10.0.0.9:443".parse().unwrap())
        );
        assert_eq!(
            tls_target(&snap, l, d, Some("example.com")),
            Some("1.2.3.4:443".parse().unwrap())
        );
        assert_eq!(
            tls_target(&snap, l, d, None),
            Some("1.2.3.4:443".parse().unwrap())
        );
    }

    /// The error text a config fails with.
    fn config_error(yaml: &str) -> String {
        crate::config::parse("t.yaml", yaml)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn transparent_config_errors_name_line_and_field() {
        // (edits of TP, what the error must say)
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case] = &[
            (
                &[("    mode: transparent_outbound\n", "")],
                &[
                    "t.yaml:8: listeners[0].routes[0].upstream: `original_destination` needs a transparent listener",
                    "listeners[0].routes[0].match: destination",
                    "t.yaml:4: listeners[0].transparent: set, but the listener's mode is `explicit`",
                ],
            ),
            (
                &[
                    ("10.211.0.0/16", "10.211.0.0/99"),
                    ("sni: \"*.openai.com\"", "sni: \"*.openai.com\", path_prefix: /x"),
                ],
                &[
                    "t.yaml:8: listeners[0].routes[0].match.destination: `10.211.0.0/99`",
                    "t.yaml:11: listeners[0].routes[1].match.sni: a TLS pass-through route sees no HTTP",
                ],
            ),
            (
                &[("  egress:", "  original_destination:")],
                &["upstreams.original_destination: `original_destination` is reserved"],
            ),
            (
                &[("sniff_timeout_ms: 250", "sniff_timeout_ms: 0")],
                &["t.yaml:4: listeners[0].transparent.sniff_timeout_ms: must be between 1 and 60000"],
            ),
            // Unknown field, unknown mode: refused (the loader's own messages).
            (&[("sniff_timeout_ms: 250", "sniff_timeout: 250")], &[]),
            (&[("transparent_outbound", "transparent")], &[]),
        ];
        for (edits, expected) in cases {
            let yaml = edits
                .iter()
                .fold(TP.to_string(), |y, (a, b)| y.replace(a, b));
            let e = config_error(&yaml);
            for x in *expected {
                assert!(e.contains(x), "{edits:?}: {e}");
            }
        }
    }

    fn intercept_yaml(dir: &std::path::Path, hosts: &str) -> String {
        if !dir.join("ca.pem").exists() {
            crate::tls::ca::cmd_init(dir, "intercept.test", 1).unwrap();
        }
        format!(
            r#"
listeners:
  - name: outbound
    bind: 127.0.0.1:0
    mode: transparent_outbound
    tls:
      intercept_ca_cert_file: {d}/ca.pem
      intercept_ca_key_file: {d}/ca-key.pem
    transparent:
      intercept_hosts: {hosts}
      intercept_upstream_ca_file: {d}/ca.pem
    routes:
      - match: {{ path_prefix: /v1/ }}
        upstream: original_destination
        inspect: {{}}
"#,
            d = dir.display()
        )
    }

    #[test]
    fn interception_is_decided_by_sni_and_keys_upstreams_by_address_and_sni() {
        let d = tempfile::tempdir().unwrap();
        let y = intercept_yaml(d.path(), r#"["api.openai.com", "*.example.com"]"#);
        let c = crate::config::parse("t.yaml", &y).unwrap();
        let snap = crate::snapshot::Snapshot::build(c, 1, None).unwrap();
        let l = &snap.listeners[0];
        let ic = l.intercept.as_ref().unwrap();
        assert!(ic.matches("api.openai.com") && ic.matches("a.example.com"));
        assert!(!ic.matches("example.com") && !ic.matches("openai.com"));
        let plain = ConnDst {
            original: "10.0.0.1:443".parse().unwrap(),
            target: "10.0.0.1:443".parse().unwrap(),
            tls: None,
        };
        let intercept::Decision { dst, server_tls } =
            intercept::decide(l, Some(&plain), Some("api.openai.com")).unwrap();
        assert!(server_tls.is_intercept());
        assert_eq!(dst.target, plain.target);
        assert_eq!(dst.tls.as_ref().map(|o| &*o.sni), Some("api.openai.com"));
        // Not listed, no SNI, no original destination: passed through.
        assert!(intercept::decide(l, Some(&plain), Some("model.test")).is_none());
        assert!(intercept::decide(l, Some(&plain), None).is_none());
        assert!(intercept::decide(l, None, Some("api.openai.com")).is_none());

        // One upstream per (address, SNI): TLS with the client's SNI as server name.
        let pc = PerCore::default();
        let t = &l.transparent;
        let up = pc.upstream_for_dst(&dst, t);
        assert!(up.tls.is_some());
        assert_eq!(
            up.endpoints[0].server_name.as_ref().map(|n| n.to_str()),
            Some("api.openai.com".into())
        );
        assert!(Arc::ptr_eq(&up, &pc.upstream_for_dst(&dst, t)));
        let raw = pc.upstream_for_dst(&plain, t);
        assert!(raw.tls.is_none() && raw.endpoints[0].server_name.is_none());
        let dst2 = intercept::decide(l, Some(&plain), Some("b.example.com"))
            .unwrap()
            .dst;
        let up2 = pc.upstream_for_dst(&dst2, t);
        assert!(!Arc::ptr_eq(&up, &up2));
        assert_ne!(up.fingerprint, up2.fingerprint);
        assert_ne!(up.fingerprint, raw.fingerprint);
        assert_eq!(pc.stats.borrow().original_destinations, 3);
    }

    #[test]
    fn interception_config_errors_name_line_and_field() {
        let d = tempfile::tempdir().unwrap();
        let y = intercept_yaml(d.path(), r#"["api.openai.com", "Bad_Host"]"#);
        let e = config_error(&y);
        assert!(
            e.contains("t.yaml:10: listeners[0].transparent.intercept_hosts[1]: `Bad_Host`"),
            "{e}"
        );
        // Hosts to intercept, but the listener cannot mint certificates.
        let no_tls = intercept_yaml(d.path(), r#"["api.openai.com"]"#)
            .lines()
            .filter(|l| !l.contains("tls:") && !l.contains("intercept_ca_"))
            .collect::<Vec<_>>()
            .join("\n");
        let e = config_error(&no_tls);
        assert!(
            e.contains("t.yaml:7: listeners[0].transparent.intercept_hosts: needs the listener's tls in interception mode"),
            "{e}"
        );
        // tls on a transparent listener without hosts to intercept.
        let no_hosts = y
            .lines()
            .filter(|l| {
                !l.contains("intercept_hosts")
                    && !l.contains("intercept_upstream")
                    && !l.contains("transparent:")
            })
            .collect::<Vec<_>>()
            .join("\n");
        let e = config_error(&no_hosts);
        assert!(
            e.contains(
                "t.yaml:4: listeners[0].tls: a transparent listener uses tls only to intercept"
            ),
            "{e}"
        );
        let bad_ca = intercept_yaml(d.path(), r#"["api.openai.com"]"#).replace(
            "intercept_upstream_ca_file: ",
            "intercept_upstream_ca_file: /nonexistent",
        );
        let e = config_error(&bad_ca);
        assert!(
            e.contains(
                "t.yaml:11: listeners[0].transparent.intercept_upstream_ca_file: /nonexistent"
            ),
            "{e}"
        );
    }

    #[test]
    fn sni_labels_are_capped_per_listener() {
        let mut s = Stats::default();
        let l: Arc<str> = Arc::from("outbound");
        for i in 0..(SNI_LABELS_MAX + 10) {
            s.sni(&l, Some(&format!("h{i}.example")));
        }
        s.sni(&l, Some("h0.example"));
        assert_eq!(s.tls_server_names.len(), SNI_LABELS_MAX + 1);
        assert_eq!(s.tls_server_names[&(l.clone(), Arc::from("other"))], 10);
        assert_eq!(s.tls_server_names[&(l.clone(), Arc::from("h0.example"))], 2);
    }
}
