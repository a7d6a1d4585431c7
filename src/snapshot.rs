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
    /// Model name (or prefix) → price; read by the telemetry thread.
    pub pricing: Pricing,
}

/// Prices per model, matched by exact name, else by the longest prefix.
#[derive(Debug, Default)]
pub struct Pricing {
    models: Vec<(String, crate::config::Price)>,
}

impl Pricing {
    pub fn lookup(&self, model: &str) -> Option<&crate::config::Price> {
        self.models
            .iter()
            .filter(|(m, _)| model.starts_with(m.as_str()))
            .max_by_key(|(m, _)| m.len())
            .map(|(_, p)| p)
    }

    /// Cost in USD of one call's usage at `model`'s price.
    pub fn cost_usd(&self, model: &str, u: &crate::inspect::Usage) -> Option<f64> {
        let p = self.lookup(model)?;
        let cached = u.cached_input_tokens.unwrap_or(0).min(u.input_tokens);
        let fresh = u.input_tokens - cached;
        let cached_price = p.cached_input_usd_per_mtok.unwrap_or(p.input_usd_per_mtok);
        Some(
            (fresh as f64 * p.input_usd_per_mtok
                + cached as f64 * cached_price
                + u.output_tokens as f64 * p.output_usd_per_mtok)
                / 1e6,
        )
    }
}

pub struct ListenerRt {
    pub name: Arc<str>,
    pub addr: SocketAddr,
    pub limits: HeadLimits,
    pub header_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub routes: Vec<RouteRt>,
    /// Some route matches on the body's `model`: bodies are read before routing.
    pub match_model: bool,
    /// Explicit or transparent (see `crate::transparent`).
    pub mode: crate::transparent::ListenerMode,
    pub transparent: crate::transparent::TransparentConfig,
    /// TLS termination or interception; `None` = plain TCP.
    pub tls: Option<Arc<crate::tls::server::ServerTls>>,
    /// Transparent listeners: the hosts whose TLS is intercepted, and the client config that
    /// verifies their real upstreams; `None` = no interception.
    pub intercept: Option<Arc<crate::transparent::intercept::Intercept>>,
}

pub struct RouteRt {
    pub name: Arc<str>,
    pub path_prefix: Option<String>,
    pub path_exact: Option<String>,
    pub host: Option<String>,
    pub method: Option<String>,
    /// (lower-case name, value)
    pub headers: Vec<(String, Vec<u8>)>,
    /// Index into `Snapshot::upstreams`, or `transparent::ORIGINAL_DST_IDX`.
    pub upstream: usize,
    pub first_byte_timeout_ms: u64,
    pub body_idle_timeout_ms: u64,
    pub total_timeout_ms: u64,
    /// The route's filters; `None` = plain proxying, nothing read or inspected.
    pub chain: Option<Arc<crate::filter::Chain>>,
    /// Body model match, splits, failover, retries (see `route`).
    pub policy: crate::route::RoutePolicy,
    /// Transparent listeners: conditions on the original destination.
    pub destination: Option<crate::transparent::Cidr>,
    pub destination_port: Option<u16>,
    /// Transparent listeners: a TLS pass-through route for this server name pattern.
    pub sni: Option<String>,
    /// mTLS authorization: identities that may call; `None` = anyone.
    pub allow_identities: Option<Vec<crate::tls::spiffe::IdentityPattern>>,
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
    /// Balancing, breaker, cool-down, throttle, model aliases (see `resilience`).
    pub policy: crate::resilience::UpstreamPolicy,
    /// The credential sluice sends (the client's is stripped); `None`: the client's passes.
    pub credential: Option<Arc<crate::auth::Credential>>,
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
    /// Breaker, cool-down and outstanding requests, shared by all workers.
    pub health: crate::resilience::breaker::EndpointHealth,
}

impl crate::resilience::balance::Endpoints for [EndpointRt] {
    fn count(&self) -> usize {
        self.len()
    }
    fn has_address(&self, i: usize) -> bool {
        !self[i].addrs.load().is_empty()
    }
    fn health(&self, i: usize) -> &crate::resilience::breaker::EndpointHealth {
        &self[i].health
    }
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
        let engine = match &config.pii {
            Some(p) => Some(Arc::new(build_pii_engine(p)?)),
            None => None,
        };
        let listeners = config
            .listeners
            .iter()
            .map(|l| build_listener(l, &index, engine.as_ref(), &upstreams, &config.rate_limit))
            .collect::<Result<Vec<_>, _>>()?;
        let mut models = match &config.pricing.file {
            Some(f) => config::load_pricing_file(&f.value)?,
            None => Default::default(),
        };
        models.extend(config.pricing.models.clone());
        Ok(Snapshot {
            generation,
            config: Arc::new(config),
            listeners,
            upstreams,
            pricing: Pricing {
                models: models.into_iter().collect(),
            },
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

/// Build the PII engine, reading the HMAC key for the `hash` action from its env var or file.
fn build_pii_engine(p: &crate::pii::PiiConfig) -> Result<crate::pii::Engine, String> {
    let key = match &p.hash_key {
        None => None,
        Some(h) => {
            let k = match (&h.env, &h.file) {
                (Some(var), None) => std::env::var(var)
                    .map(|v| v.into_bytes())
                    .map_err(|_| format!("pii.hash_key: environment variable {var} is not set"))?,
                (None, Some(f)) => std::fs::read(f)
                    .map(|v| v.trim_ascii().to_vec())
                    .map_err(|e| format!("pii.hash_key: {f}: {e}"))?,
                _ => return Err("pii.hash_key: set exactly one of env or file".into()),
            };
            Some(k)
        }
    };
    match key {
        Some(k) => crate::pii::Engine::with_hash_key(p, &k),
        None => crate::pii::Engine::new(p),
    }
    .map_err(|e| format!("pii: {e}"))
}

fn build_listener(
    l: &ListenerConfig,
    index: &HashMap<String, usize>,
    engine: Option<&Arc<crate::pii::Engine>>,
    upstreams: &[Arc<UpstreamRt>],
    rl: &crate::ratelimit::RateLimitConfig,
) -> Result<ListenerRt, String> {
    let addr: SocketAddr = l
        .bind
        .value
        .parse()
        .map_err(|_| format!("listener {}: bad bind", l.name.value))?;
    let mut routes = l
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| build_route(&l.name.value, i, r, index, engine, upstreams, (l, rl)))
        .collect::<Result<Vec<_>, _>>()?;
    let match_model = routes.iter().any(|r| r.policy.model.is_some());
    if l.mode.is_transparent() {
        routes.push(crate::transparent::passthrough_route(&l.name.value));
    }
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
        match_model,
        mode: l.mode,
        transparent: l.transparent.clone(),
        tls: match &l.tls {
            Some(t) => Some(crate::tls::server::ServerTls::build(&l.name.value, t)?),
            None => None,
        },
        intercept: crate::transparent::intercept::build(&l.name.value, &l.transparent)?,
    })
}

fn build_route(
    listener: &str,
    i: usize,
    r: &RouteConfig,
    index: &HashMap<String, usize>,
    engine: Option<&Arc<crate::pii::Engine>>,
    upstreams: &[Arc<UpstreamRt>],
    (lc, rl): (&ListenerConfig, &crate::ratelimit::RateLimitConfig),
) -> Result<RouteRt, String> {
    use crate::filter::{Chain, Filter, InspectFilter, PiiFilter};
    let mut filters = Vec::new();
    let mut body_bytes_max = crate::config::INSPECT_BODY_BYTES_MAX_DEFAULT;
    let mut over_limit = crate::config::OverLimit::Pass;
    let mut fails_closed = false;
    if let (Some(p), Some(engine)) = (&r.pii, engine) {
        if p.enabled {
            let mut e = if p.actions.is_empty() {
                (**engine).clone()
            } else {
                engine
                    .with_actions(&p.actions)
                    .map_err(|e| format!("route {i}: pii.actions: {e}"))?
            };
            if let Some(d) = p.dry_run {
                e = e.with_dry_run(d);
            }
            body_bytes_max = body_bytes_max.max(e.body_bytes_max());
            fails_closed = e.can_block();
            filters.push(Filter::Pii(PiiFilter {
                engine: Arc::new(e),
            }));
        }
    }
    let name = r.name.clone().unwrap_or_else(|| format!("{listener}-{i}"));
    let rules = crate::ratelimit::rules_for_route(listener, &name, lc, r, rl)?;
    if let Some(ic) = &r.inspect {
        let dialect = if ic.dialect.value == "auto" {
            None
        } else {
            Some(
                ic.dialect
                    .value
                    .parse()
                    .map_err(|e| format!("route {i}: {e}"))?,
            )
        };
        body_bytes_max = if filters.is_empty() {
            ic.body_bytes_max
        } else {
            body_bytes_max.max(ic.body_bytes_max)
        };
        over_limit = ic.over_limit;
        filters.push(Filter::Inspect(InspectFilter {
            dialect,
            include_usage: ic.include_usage,
        }));
    }
    if let Some(rf) = rules {
        if rf.needs_body && r.inspect.is_none() {
            // Token limits and `model` keys need the request's facts and the response's
            // usage: they imply inspection (auto dialect).
            filters.push(Filter::Inspect(InspectFilter {
                dialect: None,
                include_usage: crate::config::IncludeUsage::Off,
            }));
        }
        filters.push(Filter::RateLimit(rf));
    }
    if let Some(a) = r.auth.as_ref().or(lc.auth.as_ref()) {
        let scope = if r.auth.is_some() {
            format!("{listener}/{name}")
        } else {
            listener.to_string()
        };
        filters.insert(0, Filter::Auth(crate::auth::AuthFilter::build(a, &scope)?));
    }
    let chain = (!filters.is_empty()).then(|| {
        Arc::new(Chain {
            filters,
            body_bytes_max,
            over_limit,
            fails_closed,
        })
    });
    let upstream = if r.upstream.value == crate::transparent::ORIGINAL_DESTINATION {
        crate::transparent::ORIGINAL_DST_IDX
    } else {
        *index
            .get(&r.upstream.value)
            .ok_or_else(|| format!("route {i}: unknown upstream {}", r.upstream.value))?
    };
    let (destination, destination_port, sni) = crate::transparent::compile_route_match(&r.matcher)
        .map_err(|e| format!("route {i}: {e}"))?;
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
        chain,
        policy: crate::route::RoutePolicy::build(r, index, upstreams)
            .map_err(|e| format!("route {i}: {e}"))?,
        destination,
        destination_port,
        sni,
        allow_identities: match &r.allow_identities {
            Some(a) => Some(
                a.value
                    .iter()
                    .map(|p| crate::tls::spiffe::IdentityPattern::parse(p))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("route {i}: allow_identities: {e}"))?,
            ),
            None => None,
        },
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
    let policy = crate::resilience::UpstreamPolicy::new(
        u.balance,
        u.breaker.clone(),
        u.retry_after_ms_max,
        u.throttle.as_ref(),
        &u.model_aliases,
    );
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
            health: crate::resilience::breaker::EndpointHealth::new(policy.window_ms()),
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
        policy,
        credential: u
            .auth
            .as_ref()
            .map(|a| crate::auth::Credential::build(a, name))
            .transpose()?,
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
    let client_cert = match (&u.tls.client_cert_file, &u.tls.client_key_file) {
        (Some(c), Some(k)) => Some((c.value.as_str(), k.value.as_str())),
        _ => None,
    };
    let roots_source = u
        .tls
        .ca_file
        .as_ref()
        .map(|ca| crate::tls::client::RootsSource {
            system_roots: u.tls.system_roots,
            ca_file: ca.value.clone(),
        });
    let cfg = crate::tls::client::client_config(
        name,
        roots,
        roots_source,
        client_cert,
        &u.tls.peer_identities,
    )?;
    Ok(monoio_rustls::TlsConnector::from(Arc::new(cfg)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Price;

    #[test]
    fn pricing_longest_prefix_and_cached_tokens() {
        let p = Pricing {
            models: vec![
                (
                    "gpt-4o".into(),
                    Price {
                        input_usd_per_mtok: 2.5,
                        output_usd_per_mtok: 10.0,
                        cached_input_usd_per_mtok: Some(1.25),
                    },
                ),
                (
                    "gpt-4o-mini".into(),
                    Price {
                        input_usd_per_mtok: 0.15,
                        output_usd_per_mtok: 0.6,
                        cached_input_usd_per_mtok: None,
                    },
                ),
            ],
        };
        assert_eq!(
            p.lookup("gpt-4o-mini-2024-07-18")
                .unwrap()
                .input_usd_per_mtok,
            0.15
        );
        assert_eq!(
            p.lookup("gpt-4o-2024-08-06").unwrap().input_usd_per_mtok,
            2.5
        );
        assert!(p.lookup("claude-3").is_none());
        let u = crate::inspect::Usage {
            input_tokens: 1_000_000,
            output_tokens: 500_000,
            total_tokens: 1_500_000,
            cached_input_tokens: Some(400_000),
            ..Default::default()
        };
        // 600k fresh × 2.5 + 400k cached × 1.25 + 500k × 10 = 1.5 + 0.5 + 5.0
        assert!((p.cost_usd("gpt-4o", &u).unwrap() - 7.0).abs() < 1e-9);
        // No cached price: cached tokens at the input price.
        assert!((p.cost_usd("gpt-4o-mini", &u).unwrap() - (0.15 + 0.3)).abs() < 1e-9);
    }
}
