//! Authentication: who may call (inbound) and which credentials the upstream sees (outbound).
//!
//! Owns:
//! * Inbound: [`AuthFilter`], run first in filter phase 1 on a listener's or route's
//!   requests. It accepts static API keys (stored as SHA-256 digests in the configuration,
//!   never in clear) or JWTs (HS256/RS256/ES256, keys from a JWKS file, `exp`/`nbf`/`iss`/`aud`
//!   verified; see [`jwt`]). The authenticated identity becomes the exchange's caller, so
//!   accounting and rate limits key on it. Refusals are 401 (no or bad credentials) or 403
//!   (authenticated, but not in the route's `allow` list), in the OpenAI error shape.
//! * Outbound: [`Credential`], the `Authorization` / `x-api-key` value an upstream gets,
//!   read from an environment variable or a file (a Kubernetes Secret mount), re-read by the
//!   `sluice-secrets` thread when the file changes. Whatever credential the client sent is
//!   stripped (see `proxy::exchange::write_upstream_head`).
//!
//! Invariants:
//! * Keys and tokens are never logged, counted by value, echoed in an error body or shown by
//!   `/config` (the config holds only digests and references to env vars/files; `api_keys` is
//!   masked there anyway).
//! * No lock on the request path: static keys are a read-only map of digests; verified JWTs are
//!   cached per worker (`thread_local`, bounded), so a token's signature is checked once per
//!   core, not per request; the outbound value is an `ArcSwap` load.
//!
//! Why here and not in the codec or the proxy: auth is policy, per listener or route, and it
//! must run before rate limiting (the identity is the limit key): the first filter of the
//! chain is that place.

pub mod jwt;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::config::Loc;
use crate::filter::{ExchangeCtx, Reject};
use crate::http1::RequestHead;

/// Verified tokens cached per worker and verifier; the cache is emptied when full.
pub const JWT_CACHE_ENTRIES_MAX: usize = 4096;
/// Default clock skew tolerated on `exp` and `nbf`.
pub const JWT_LEEWAY_S_DEFAULT: u64 = 30;
/// Default interval at which an outbound credential file is re-read.
pub const CREDENTIAL_REFRESH_MS_DEFAULT: u64 = 1_000;
/// Largest credential (file or env var) accepted.
pub const CREDENTIAL_BYTES_MAX: usize = 16 * 1024;

// ---------------------------------------------------------------------------------------------
// Inbound

/// `auth:` on a listener or a route.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    /// Static API keys: the caller name and the SHA-256 (hex) of the key.
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// Identities allowed; empty: every authenticated caller. Others get 403.
    #[serde(default)]
    pub allow: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The caller identity this key authenticates.
    pub name: String,
    /// Hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    pub sha256: Loc<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// A JWKS document (`{"keys":[...]}`): RSA, EC P-256 or `oct` (HS256) keys.
    pub jwks_file: Loc<String>,
    /// Required `iss`, when set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Accepted `aud` values; empty: `aud` is not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The claim that names the caller.
    #[serde(default = "identity_claim_default")]
    pub identity_claim: String,
    #[serde(default = "leeway_default")]
    pub leeway_s: u64,
    /// Refuse tokens without `exp`.
    #[serde(default = "yes")]
    pub require_exp: bool,
}

fn identity_claim_default() -> String {
    "sub".into()
}
fn leeway_default() -> u64 {
    JWT_LEEWAY_S_DEFAULT
}
fn yes() -> bool {
    true
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Problems of one `auth:` block: `(line, field, problem)`.
pub fn validate_inbound(c: &InboundConfig, field: &str, out: &mut Vec<(u64, String, String)>) {
    if c.api_keys.is_empty() && c.jwt.is_none() {
        out.push((0, field.into(), "set api_keys and/or jwt".into()));
    }
    for (i, k) in c.api_keys.iter().enumerate() {
        if parse_digest(&k.sha256.value).is_none() {
            out.push((
                k.sha256.line,
                format!("{field}.api_keys[{i}].sha256"),
                "must be 64 hex digits (the SHA-256 of the key, not the key)".into(),
            ));
        }
        if k.name.is_empty() || k.name.len() > 128 {
            out.push((
                k.sha256.line,
                format!("{field}.api_keys[{i}].name"),
                "must be 1..=128 characters".into(),
            ));
        }
    }
    if let Some(j) = &c.jwt {
        if let Err(e) = load_jwks(&j.jwks_file.value) {
            out.push((j.jwks_file.line, format!("{field}.jwt.jwks_file"), e));
        }
    }
}

/// Check every `auth:` block of a configuration.
pub fn validate_config(c: &crate::config::Config, out: &mut Vec<(u64, String, String)>) {
    for (i, l) in c.listeners.iter().enumerate() {
        if let Some(a) = &l.auth {
            validate_inbound(a, &format!("listeners[{i}].auth"), out);
        }
        for (j, r) in l.routes.iter().enumerate() {
            if let Some(a) = &r.auth {
                validate_inbound(a, &format!("listeners[{i}].routes[{j}].auth"), out);
            }
        }
    }
    for (name, u) in &c.upstreams {
        if let Some(a) = &u.auth {
            validate_outbound(a, &format!("upstreams.{name}.auth"), out);
        }
    }
}

fn load_jwks(path: &str) -> Result<Vec<jwt::Key>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("`{path}`: {e}"))?;
    if meta.len() as usize > jwt::JWKS_BYTES_MAX {
        return Err(format!(
            "`{path}`: larger than {} bytes",
            jwt::JWKS_BYTES_MAX
        ));
    }
    let text = std::fs::read(path).map_err(|e| format!("`{path}`: {e}"))?;
    jwt::parse_jwks(&text).map_err(|e| format!("`{path}`: {e}"))
}

/// Why a request was refused (metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Missing,
    InvalidKey,
    Token(jwt::JwtError),
    Forbidden,
}

/// Every failure label, so their counters exist (at 0) from the start and a refusal costs one
/// atomic add, never a registry lookup.
const FAILURE_LABELS: [&str; 12] = [
    "missing",
    "invalid_key",
    "forbidden",
    "malformed_token",
    "bad_algorithm",
    "unknown_key",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "bad_issuer",
    "bad_audience",
    "no_identity",
];

impl Failure {
    pub fn label(self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::InvalidKey => "invalid_key",
            Failure::Token(e) => e.label(),
            Failure::Forbidden => "forbidden",
        }
    }
}

pub mod names {
    pub const AUTH_FAILURES_TOTAL: &str = "sluice_auth_failures_total";
    pub const CREDENTIAL_RELOADS_TOTAL: &str = "sluice_auth_credential_reloads_total";
    pub const CREDENTIAL_ERRORS_TOTAL: &str = "sluice_auth_credential_errors_total";
}

struct JwtVerifier {
    id: u64,
    keys: Vec<jwt::Key>,
    policy: jwt::Policy,
}

/// Inbound authentication of one listener or route.
pub struct AuthFilter {
    keys: HashMap<[u8; 32], Arc<str>>,
    jwt: Option<JwtVerifier>,
    allow: Vec<String>,
    /// `sluice_auth_failures_total{scope, reason}`, one per `FAILURE_LABELS` entry.
    failures: Vec<metrics::Counter>,
}

#[derive(Clone)]
struct Cached {
    identity: Arc<str>,
    exp: Option<u64>,
    nbf: Option<u64>,
}

/// Verified tokens of one verifier, by the whole token.
type TokenCache = HashMap<Box<[u8]>, Cached>;

thread_local! {
    static JWT_CACHE: RefCell<HashMap<u64, TokenCache>> = RefCell::new(HashMap::new());
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The credential a client presented: `Authorization: Bearer …` or `x-api-key`.
pub fn presented(head: &RequestHead) -> Option<&[u8]> {
    let v = head
        .header("authorization")
        .and_then(|v| match v.get(..7) {
            Some(p) if p.eq_ignore_ascii_case(b"bearer ") => Some(v[7..].trim_ascii()),
            _ => None,
        })
        .or_else(|| head.header("x-api-key").map(|v| v.trim_ascii()))?;
    (!v.is_empty()).then_some(v)
}

impl AuthFilter {
    /// Build from configuration (control thread; reads the JWKS file).
    pub fn build(c: &InboundConfig, scope: &str) -> Result<AuthFilter, String> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let mut keys = HashMap::new();
        for k in &c.api_keys {
            let d = parse_digest(&k.sha256.value)
                .ok_or_else(|| format!("{scope}: auth.api_keys: `{}`: bad sha256", k.name))?;
            keys.insert(d, Arc::from(k.name.as_str()));
        }
        let jwt = match &c.jwt {
            Some(j) => Some(JwtVerifier {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                keys: load_jwks(&j.jwks_file.value)
                    .map_err(|e| format!("{scope}: auth.jwt: {e}"))?,
                policy: jwt::Policy {
                    issuer: j.issuer.clone(),
                    audiences: j.audiences.clone(),
                    identity_claim: j.identity_claim.clone(),
                    leeway_s: j.leeway_s,
                    require_exp: j.require_exp,
                },
            }),
            None => None,
        };
        let failures = FAILURE_LABELS
            .iter()
            .map(|&reason| {
                metrics::counter!(names::AUTH_FAILURES_TOTAL, "scope" => scope.to_string(), "reason" => reason)
            })
            .collect();
        Ok(AuthFilter {
            keys,
            jwt,
            allow: c.allow.clone(),
            failures,
        })
    }

    fn fail(&self, f: Failure) -> Reject {
        if let Some(i) = FAILURE_LABELS.iter().position(|&l| l == f.label()) {
            self.failures[i].increment(1);
        }
        // Never the key or token: only what kind of problem it was.
        let (status, code, message) = match f {
            Failure::Missing => (
                401,
                "missing_api_key",
                "no credentials: send `Authorization: Bearer <key>` or `x-api-key: <key>`"
                    .to_string(),
            ),
            Failure::InvalidKey => (
                401,
                "invalid_api_key",
                "the API key is not valid".to_string(),
            ),
            Failure::Token(e) => (401, "invalid_token", format!("the token is not valid: {e}")),
            Failure::Forbidden => (
                403,
                "forbidden",
                "the authenticated caller may not use this route".to_string(),
            ),
        };
        Reject {
            status,
            code,
            message,
        }
    }

    /// Phase 1: authenticate; on success the identity becomes `ctx.caller`.
    pub fn on_request_head(&self, ctx: &mut ExchangeCtx, head: &RequestHead) -> Result<(), Reject> {
        let Some(cred) = presented(head) else {
            return Err(self.fail(Failure::Missing));
        };
        let identity = match (&self.jwt, cred.iter().filter(|&&b| b == b'.').count() == 2) {
            (Some(v), true) => self
                .verify_jwt(v, cred)
                .map_err(|e| self.fail(Failure::Token(e)))?,
            _ => {
                let d: [u8; 32] = sha2::Sha256::digest(cred).into();
                match self.keys.get(&d) {
                    Some(name) => name.clone(),
                    None if self.keys.is_empty() => {
                        return Err(self.fail(Failure::Token(jwt::JwtError::Malformed)))
                    }
                    None => return Err(self.fail(Failure::InvalidKey)),
                }
            }
        };
        if !self.allow.is_empty() && !self.allow.iter().any(|a| **a == *identity) {
            return Err(self.fail(Failure::Forbidden));
        }
        ctx.caller = identity;
        ctx.authenticated = true;
        Ok(())
    }

    fn verify_jwt(&self, v: &JwtVerifier, token: &[u8]) -> Result<Arc<str>, jwt::JwtError> {
        let now = unix_now();
        let hit = JWT_CACHE.with(|c| c.borrow().get(&v.id).and_then(|m| m.get(token)).cloned());
        if let Some(h) = hit {
            jwt::check_time(
                &jwt::Verified {
                    identity: String::new(),
                    exp: h.exp,
                    nbf: h.nbf,
                },
                now,
                v.policy.leeway_s,
            )?;
            return Ok(h.identity);
        }
        let ok = jwt::verify(token, &v.keys, &v.policy, now)?;
        let identity: Arc<str> = Arc::from(ok.identity.as_str());
        JWT_CACHE.with(|c| {
            let mut c = c.borrow_mut();
            let m = c.entry(v.id).or_default();
            if m.len() >= JWT_CACHE_ENTRIES_MAX {
                m.clear();
            }
            m.insert(
                token.into(),
                Cached {
                    identity: identity.clone(),
                    exp: ok.exp,
                    nbf: ok.nbf,
                },
            );
        });
        Ok(identity)
    }
}

// ---------------------------------------------------------------------------------------------
// Outbound

/// Which header carries the upstream credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialHeader {
    /// `Authorization: <scheme> <value>` (OpenAI, most OpenAI-compatible servers).
    #[default]
    Authorization,
    /// `x-api-key: <value>` (Anthropic).
    XApiKey,
}

/// `auth:` on an upstream.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    #[serde(default)]
    pub header: CredentialHeader,
    /// Scheme before the value in `Authorization`.
    #[serde(default = "scheme_default")]
    pub scheme: String,
    /// Environment variable holding the credential.
    #[serde(default)]
    pub env: Option<String>,
    /// File holding the credential (surrounding whitespace is trimmed); re-read when it
    /// changes.
    #[serde(default)]
    pub file: Option<Loc<String>>,
    #[serde(default = "refresh_ms_default")]
    pub refresh_ms: u64,
}

fn scheme_default() -> String {
    "Bearer".into()
}
fn refresh_ms_default() -> u64 {
    CREDENTIAL_REFRESH_MS_DEFAULT
}

pub fn validate_outbound(c: &OutboundConfig, field: &str, out: &mut Vec<(u64, String, String)>) {
    let line = c.file.as_ref().map(|f| f.line).unwrap_or(0);
    if c.env.is_some() == c.file.is_some() {
        out.push((line, field.into(), "set exactly one of env or file".into()));
    }
    if c.refresh_ms == 0 {
        out.push((line, format!("{field}.refresh_ms"), "must be > 0".into()));
    }
    if c.header == CredentialHeader::Authorization
        && (c.scheme.is_empty() || !c.scheme.bytes().all(|b| b.is_ascii_alphanumeric()))
    {
        out.push((
            line,
            format!("{field}.scheme"),
            "must be a token like Bearer".into(),
        ));
    }
}

/// An upstream's credential, as the header value sent (kept current by `sluice-secrets`).
pub struct Credential {
    pub header: CredentialHeader,
    scheme: String,
    file: Option<String>,
    refresh_ms: u64,
    upstream: Arc<str>,
    value: ArcSwap<Box<[u8]>>,
    raw: Mutex<Vec<u8>>,
}

fn read_secret(raw: &[u8], what: &str) -> Result<Vec<u8>, String> {
    let v = raw.trim_ascii();
    if v.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if v.len() > CREDENTIAL_BYTES_MAX {
        return Err(format!(
            "{what} is larger than {CREDENTIAL_BYTES_MAX} bytes"
        ));
    }
    if v.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(format!("{what} contains control characters"));
    }
    Ok(v.to_vec())
}

impl Credential {
    /// Build from configuration: the env var or file must hold a credential now.
    pub fn build(c: &OutboundConfig, upstream: &str) -> Result<Arc<Credential>, String> {
        let (raw, file) = match (&c.env, &c.file) {
            (Some(var), None) => {
                let v = std::env::var_os(var)
                    .ok_or_else(|| format!("upstream {upstream}: auth.env: {var} is not set"))?;
                let raw = read_secret(v.as_encoded_bytes(), &format!("environment variable {var}"))
                    .map_err(|e| format!("upstream {upstream}: auth: {e}"))?;
                (raw, None)
            }
            (None, Some(f)) => {
                let bytes = std::fs::read(&f.value)
                    .map_err(|e| format!("upstream {upstream}: auth.file `{}`: {e}", f.value))?;
                let raw = read_secret(&bytes, &format!("`{}`", f.value))
                    .map_err(|e| format!("upstream {upstream}: auth.file: {e}"))?;
                (raw, Some(f.value.clone()))
            }
            _ => {
                return Err(format!(
                    "upstream {upstream}: auth: set exactly one of env or file"
                ))
            }
        };
        let cred = Arc::new(Credential {
            header: c.header,
            scheme: c.scheme.clone(),
            file,
            refresh_ms: c.refresh_ms,
            upstream: Arc::from(upstream),
            value: ArcSwap::from_pointee(Box::from(&[][..])),
            raw: Mutex::new(Vec::new()),
        });
        cred.set(raw);
        if cred.file.is_some() {
            watch(&cred);
        }
        Ok(cred)
    }

    fn set(&self, raw: Vec<u8>) {
        let v: Vec<u8> = match self.header {
            CredentialHeader::Authorization => {
                let mut v = Vec::with_capacity(self.scheme.len() + 1 + raw.len());
                v.extend_from_slice(self.scheme.as_bytes());
                v.push(b' ');
                v.extend_from_slice(&raw);
                v
            }
            CredentialHeader::XApiKey => raw.clone(),
        };
        self.value.store(Arc::new(v.into_boxed_slice()));
        *self.raw.lock().unwrap_or_else(|e| e.into_inner()) = raw;
    }

    pub fn header_name(&self) -> &'static str {
        match self.header {
            CredentialHeader::Authorization => "authorization",
            CredentialHeader::XApiKey => "x-api-key",
        }
    }

    /// Append the credential header to a request head being written.
    pub fn write_header(&self, out: &mut Vec<u8>) {
        let v = self.value.load();
        crate::http1::write_header(out, self.header_name(), &v);
    }

    /// Re-read the file (secrets thread). Returns whether the value changed.
    fn refresh(&self) -> Result<bool, String> {
        let Some(f) = &self.file else {
            return Ok(false);
        };
        let bytes = std::fs::read(f).map_err(|e| format!("`{f}`: {e}"))?;
        let raw = read_secret(&bytes, &format!("`{f}`"))?;
        if *self.raw.lock().unwrap_or_else(|e| e.into_inner()) == raw {
            return Ok(false);
        }
        self.set(raw);
        Ok(true)
    }
}

/// Whether a request header is a client credential that must not reach an upstream whose
/// credential sluice injects.
pub fn is_credential_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("authorization") || name.eq_ignore_ascii_case("x-api-key")
}

fn watched() -> &'static Mutex<Vec<Weak<Credential>>> {
    static W: OnceLock<Mutex<Vec<Weak<Credential>>>> = OnceLock::new();
    W.get_or_init(Default::default)
}

/// Register a file-backed credential with the `sluice-secrets` thread (started once).
fn watch(c: &Arc<Credential>) {
    static STARTED: OnceLock<()> = OnceLock::new();
    watched()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Arc::downgrade(c));
    STARTED.get_or_init(|| {
        let r = std::thread::Builder::new()
            .name("sluice-secrets".into())
            .spawn(secrets_loop);
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot start the secrets thread; credential files will not be re-read");
        }
    });
}

/// Granularity of the secrets thread.
const SECRETS_TICK_MS: u64 = 100;

fn secrets_loop() {
    let mut last: HashMap<usize, std::time::Instant> = HashMap::new();
    loop {
        std::thread::sleep(Duration::from_millis(SECRETS_TICK_MS));
        let list: Vec<Arc<Credential>> = {
            let mut w = watched().lock().unwrap_or_else(|e| e.into_inner());
            w.retain(|x| x.strong_count() > 0);
            w.iter().filter_map(Weak::upgrade).collect()
        };
        for c in list {
            let key = Arc::as_ptr(&c) as usize;
            let due = last
                .get(&key)
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(c.refresh_ms));
            if !due {
                continue;
            }
            last.insert(key, std::time::Instant::now());
            match c.refresh() {
                Ok(true) => {
                    tracing::info!(upstream = %c.upstream, "upstream credential reloaded from its file");
                    metrics::counter!(names::CREDENTIAL_RELOADS_TOTAL, "upstream" => c.upstream.to_string())
                        .increment(1);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(upstream = %c.upstream, error = %e, "cannot re-read the upstream credential; keeping the previous one");
                    metrics::counter!(names::CREDENTIAL_ERRORS_TOTAL, "upstream" => c.upstream.to_string())
                        .increment(1);
                }
            }
        }
        if last.len() > 1024 {
            last.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::{parse_request, HeadLimits};

    fn head(extra: &str) -> RequestHead {
        let raw = format!("GET /v1/models HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
        parse_request(raw.as_bytes(), &HeadLimits::default())
            .unwrap()
            .unwrap()
            .0
    }

    fn hex(d: &[u8]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn static_keys_by_digest_with_allow_list() {
        let cfg = InboundConfig {
            api_keys: vec![
                ApiKeyConfig {
                    name: "team-a".into(),
                    sha256: Loc::new(hex(&sha2::Sha256::digest(b"sk-a"))),
                },
                ApiKeyConfig {
                    name: "team-b".into(),
                    sha256: Loc::new(hex(&sha2::Sha256::digest(b"sk-b"))),
                },
            ],
            jwt: None,
            allow: vec!["team-a".into()],
        };
        let f = AuthFilter::build(&cfg, "test").unwrap();
        let mut ctx = ExchangeCtx::new(Arc::from("x"));
        f.on_request_head(&mut ctx, &head("Authorization: bearer sk-a\r\n"))
            .unwrap();
        assert_eq!(&*ctx.caller, "team-a");
        let e = f
            .on_request_head(&mut ctx, &head("x-api-key: sk-b\r\n"))
            .unwrap_err();
        assert_eq!((e.status, e.code), (403, "forbidden"));
        let e = f
            .on_request_head(&mut ctx, &head("x-api-key: sk-nope\r\n"))
            .unwrap_err();
        assert_eq!((e.status, e.code), (401, "invalid_api_key"));
        assert!(!e.message.contains("sk-nope"));
        let e = f.on_request_head(&mut ctx, &head("")).unwrap_err();
        assert_eq!((e.status, e.code), (401, "missing_api_key"));
    }

    #[test]
    fn digests_parse() {
        assert!(parse_digest(&"ab".repeat(32)).is_some());
        assert!(parse_digest("sk-live-key").is_none());
        assert!(parse_digest(&"zz".repeat(32)).is_none());
    }

    #[test]
    fn outbound_value_from_file_and_refresh() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("key");
        std::fs::write(&p, "sk-one\n").unwrap();
        let cfg = OutboundConfig {
            header: CredentialHeader::Authorization,
            scheme: "Bearer".into(),
            env: None,
            file: Some(Loc::new(p.display().to_string())),
            refresh_ms: 1000,
        };
        let c = Credential::build(&cfg, "u").unwrap();
        let mut out = Vec::new();
        c.write_header(&mut out);
        assert_eq!(out, b"authorization: Bearer sk-one\r\n");
        std::fs::write(&p, "sk-two").unwrap();
        assert!(c.refresh().unwrap());
        assert!(!c.refresh().unwrap());
        out.clear();
        c.write_header(&mut out);
        assert_eq!(out, b"authorization: Bearer sk-two\r\n");
        std::fs::write(&p, "").unwrap();
        assert!(c.refresh().is_err());
    }
}
