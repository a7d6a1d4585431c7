//! Runtime snapshots: the validated configuration compiled into what workers read.
//!
//! Owns: the *precommit* phase of a (re)load. [`Snapshot::build`] does every fallible and slow
//! step (parsing CA files, building rustls configs, compiling routes, the first DNS lookup) on
//! the control thread. The result is immutable and shared read-only (`Arc`) by all workers.
//!
//! Invariants:
//! * Building a snapshot never touches a worker: a failed build leaves the running snapshot in
//!   place, whole.
//! * A snapshot never changes after it is published, except the resolved addresses of an
//!   endpoint, which the control thread refreshes through an `ArcSwap` (DNS re-resolution
//!   must not need a reload).
//! * Workers index routes and upstreams by position *within one snapshot*; telemetry records
//!   carry the snapshot generation so the telemetry thread resolves names from the right one.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};

use crate::config::{self, Config, ListenerConfig, RouteConfig, UpstreamConfig};
use crate::http1::HeadLimits;

/// Everything a worker needs for one generation of configuration.
pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<Config>,
    pub listeners: Vec<ListenerRt>,
    pub upstreams: Vec<Arc<UpstreamRt>>,
}

pub struct ListenerRt {
    pub name: Arc<str>,
    pub addr: SocketAddr,
    pub limits: HeadLimits,
    pub header_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub routes: Vec<RouteRt>,
}

pub struct RouteRt {
    pub name: Arc<str>,
    pub path_prefix: Option<String>,
    pub path_exact: Option<String>,
    pub host: Option<String>,
    pub method: Option<String>,
    /// (lower-case name, value)
    pub headers: Vec<(String, Vec<u8>)>,
    pub upstream: usize,
    pub first_byte_timeout_ms: u64,
    pub body_idle_timeout_ms: u64,
    pub total_timeout_ms: u64,
}

pub struct UpstreamRt {
    pub name: Arc<str>,
    /// Hash of this upstream's configuration: pools survive reloads that do not change it.
    pub fingerprint: u64,
    pub endpoints: Vec<EndpointRt>,
    pub tls: Option<monoio_rustls::TlsConnector>,
    pub connect_timeout_ms: u64,
    pub pool_idle_max: usize,
    pub pool_idle_timeout_ms: u64,
    pub host_rewrite: HostRewrite,
}

pub enum HostRewrite {
    /// Send the endpoint's `host[:port]`.
    Auto,
    /// Keep the client's Host header.
    Preserve,
    Literal(String),
}

pub struct EndpointRt {
    pub host: String,
    pub port: u16,
    /// `host` or `host:port` as a Host header value (default ports omitted).
    pub authority: String,
    pub server_name: Option<ServerName<'static>>,
    /// Refreshed by the control thread (DNS); read by workers only when they connect.
    pub addrs: ArcSwap<Vec<SocketAddr>>,
    pub is_literal_ip: bool,
}

impl Snapshot {
    /// Precommit: compile a validated config. `previous` lets unchanged upstreams keep their
    /// `Arc` (and so their resolved addresses and pooled connections).
    pub fn build(
        config: Config,
        generation: u64,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, String> {
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        let mut index = HashMap::new();
        let mut roots_cache: Option<rustls::RootCertStore> = None;
        for (name, u) in &config.upstreams {
            let fp = fingerprint(u);
            let reused = previous.and_then(|p| {
                p.upstreams
                    .iter()
                    .find(|x| &*x.name == name.as_str() && x.fingerprint == fp)
                    .cloned()
            });
            let up = match reused {
                Some(u) => u,
                None => Arc::new(build_upstream(name, u, fp, &mut roots_cache)?),
            };
            index.insert(name.clone(), upstreams.len());
            upstreams.push(up);
        }
        let listeners = config
            .listeners
            .iter()
            .map(|l| build_listener(l, &index))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Snapshot {
            generation,
            config: Arc::new(config),
            listeners,
            upstreams,
        })
    }

    pub fn listener(&self, name: &str) -> Option<(usize, &ListenerRt)> {
        self.listeners
            .iter()
            .enumerate()
            .find(|(_, l)| &*l.name == name)
    }

    /// Re-resolve every hostname endpoint. Called on the control thread only (blocking).
    pub fn refresh_dns(&self) {
        for u in &self.upstreams {
            for ep in &u.endpoints {
                if ep.is_literal_ip {
                    continue;
                }
                match (ep.host.as_str(), ep.port).to_socket_addrs() {
                    Ok(a) => {
                        let mut v: Vec<SocketAddr> = a.collect();
                        v.sort();
                        v.dedup();
                        if !v.is_empty() && **ep.addrs.load() != v {
                            tracing::info!(upstream = %u.name, host = %ep.host, addrs = ?v, "endpoint re-resolved");
                            ep.addrs.store(Arc::new(v));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(upstream = %u.name, host = %ep.host, error = %e, "DNS resolution failed; keeping previous addresses");
                    }
                }
            }
        }
    }
}

fn fingerprint(u: &UpstreamConfig) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(u).unwrap_or_default().hash(&mut h);
    // A CA file's contents are part of the identity: rotating the bundle must rebuild TLS.
    if let Some(ca) = &u.tls.ca_file {
        std::fs::read(&ca.value).unwrap_or_default().hash(&mut h);
    }
    h.finish()
}

fn build_listener(
    l: &ListenerConfig,
    index: &HashMap<String, usize>,
) -> Result<ListenerRt, String> {
    let addr: SocketAddr = l
        .bind
        .value
        .parse()
        .map_err(|_| format!("listener {}: bad bind", l.name.value))?;
    let routes = l
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| build_route(&l.name.value, i, r, index))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ListenerRt {
        name: Arc::from(l.name.value.as_str()),
        addr,
        limits: HeadLimits {
            header_bytes_max: l.header_bytes_max,
            headers_count_max: l.headers_count_max,
        },
        header_timeout_ms: l.header_timeout_ms,
        idle_timeout_ms: l.idle_timeout_ms,
        routes,
    })
}

fn build_route(
    listener: &str,
    i: usize,
    r: &RouteConfig,
    index: &HashMap<String, usize>,
) -> Result<RouteRt, String> {
    let upstream = *index
        .get(&r.upstream.value)
        .ok_or_else(|| format!("route {i}: unknown upstream {}", r.upstream.value))?;
    let name = r.name.clone().unwrap_or_else(|| format!("{listener}-{i}"));
    Ok(RouteRt {
        name: Arc::from(name.as_str()),
        path_prefix: r.matcher.path_prefix.clone(),
        path_exact: r.matcher.path_exact.clone(),
        host: r.matcher.host.as_ref().map(|h| h.to_ascii_lowercase()),
        method: r.matcher.method.clone(),
        headers: r
            .matcher
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()))
            .collect(),
        upstream,
        first_byte_timeout_ms: r.timeouts.first_byte_ms,
        body_idle_timeout_ms: r.timeouts.idle_ms,
        total_timeout_ms: r.timeouts.total_ms,
    })
}

fn build_upstream(
    name: &str,
    u: &UpstreamConfig,
    fp: u64,
    roots_cache: &mut Option<rustls::RootCertStore>,
) -> Result<UpstreamRt, String> {
    let tls = if u.tls.enabled {
        Some(build_client_tls(name, u, roots_cache)?)
    } else {
        None
    };
    let default_port = if u.tls.enabled { 443 } else { 80 };
    let mut endpoints = Vec::new();
    for ep in &u.endpoints.value {
        let (host, port) =
            config::split_host_port(ep).map_err(|e| format!("upstream {name}: {e}"))?;
        let ip: Option<IpAddr> = host.parse().ok();
        let authority = match (ip, port == default_port) {
            (Some(IpAddr::V6(_)), true) => format!("[{host}]"),
            (Some(IpAddr::V6(_)), false) => format!("[{host}]:{port}"),
            (_, true) => host.clone(),
            (_, false) => format!("{host}:{port}"),
        };
        let sni_host = u.tls.sni.clone().unwrap_or_else(|| host.clone());
        let server_name = if u.tls.enabled {
            Some(ServerName::try_from(sni_host.clone()).map_err(|_| {
                format!("upstream {name}: `{sni_host}` is not a valid TLS server name")
            })?)
        } else {
            None
        };
        let addrs = match ip {
            Some(ip) => vec![SocketAddr::new(ip, port)],
            None => match (host.as_str(), port).to_socket_addrs() {
                Ok(a) => a.collect(),
                Err(e) => {
                    // Not a config error: DNS may come up after the proxy (Kubernetes).
                    tracing::warn!(upstream = name, host = %host, error = %e, "DNS resolution failed; will retry");
                    Vec::new()
                }
            },
        };
        endpoints.push(EndpointRt {
            host,
            port,
            authority,
            server_name,
            addrs: ArcSwap::from_pointee(addrs),
            is_literal_ip: ip.is_some(),
        });
    }
    let host_rewrite = match u.host_rewrite.as_str() {
        "auto" => HostRewrite::Auto,
        "preserve" => HostRewrite::Preserve,
        other => HostRewrite::Literal(other.to_string()),
    };
    Ok(UpstreamRt {
        name: Arc::from(name),
        fingerprint: fp,
        endpoints,
        tls,
        connect_timeout_ms: u.connect_timeout_ms,
        pool_idle_max: u.pool.idle_max,
        pool_idle_timeout_ms: u.pool.idle_timeout_ms,
        host_rewrite,
    })
}

/// rustls client configuration for one upstream: ring provider (one provider only, so
/// `builder_with_provider` never panics), system roots (or the bundled webpki roots where
/// the system has none) plus an optional CA file, ALPN `http/1.1`.
pub fn build_client_tls(
    name: &str,
    u: &UpstreamConfig,
    roots_cache: &mut Option<rustls::RootCertStore>,
) -> Result<monoio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    if u.tls.system_roots {
        let sys = roots_cache.get_or_insert_with(|| {
            let mut r = rustls::RootCertStore::empty();
            let res = rustls_native_certs::load_native_certs();
            for c in res.certs {
                let _ = r.add(c);
            }
            if r.is_empty() {
                r.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            r
        });
        roots.roots.extend(sys.roots.iter().cloned());
    }
    if let Some(ca) = &u.tls.ca_file {
        let mut n = 0;
        for c in CertificateDer::pem_file_iter(&ca.value)
            .map_err(|e| format!("upstream {name}: ca_file {}: {e}", ca.value))?
        {
            let c = c.map_err(|e| format!("upstream {name}: ca_file {}: {e}", ca.value))?;
            roots
                .add(c)
                .map_err(|e| format!("upstream {name}: ca_file {}: {e}", ca.value))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!(
                "upstream {name}: ca_file {}: no certificates found",
                ca.value
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("upstream {name}: tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(monoio_rustls::TlsConnector::from(Arc::new(cfg)))
}
