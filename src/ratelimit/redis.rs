//! Global rate limits: leases taken in batches from a token bucket kept in Redis.
//!
//! Owns: the `rate_limit.redis` settings, the lease thread (`sluice-ratelimit-redis`) and a
//! minimal RESP client over a blocking `std::net::TcpStream` (Redis is never spoken to from a
//! worker: blocking IO belongs on its own thread).
//!
//! How a global limit works: every key has one bucket in Redis (a Lua script: refill by
//! Redis's clock, grant up to what is asked). A sidecar does not ask per request: each key's
//! slot holds a *lease*, a local balance of units granted in batches of
//! `limit × lease_ms / period`. Workers spend the lease with one atomic `fetch_sub`; when it
//! falls under half a batch they queue a refill (one message per slot at most; `try_send`,
//! never blocking), and this thread asks Redis for all queued keys in one pipelined round
//! trip. So the median request never waits on Redis; only the first request of a key never
//! seen before waits (bounded by `lease_wait_ms`) for its first lease.
//!
//! Accuracy: units are taken from the shared bucket before they are spent, so all sidecars
//! together never admit more than the bucket gives out; a sidecar may hold at most about one
//! batch per key that others cannot use (under-admission bounded by `sidecars × batch`).
//!
//! When Redis is unreachable: leases already held are spent; beyond them `on_unavailable`
//! decides (`open`: admit, counted in `sluice_ratelimit_fail_open_total`; `closed`: 503). The
//! state is logged on every change and exported as `sluice_ratelimit_redis_up`; the thread
//! reconnects every `reconnect_ms` on its own.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::bucket::{self, SlotRef};
use super::{names, Rule};
use crate::config::Loc;

pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 200;
pub const IO_TIMEOUT_MS_DEFAULT: u64 = 200;
pub const RECONNECT_MS_DEFAULT: u64 = 500;
pub const LEASE_MS_DEFAULT: u64 = 100;
pub const LEASE_WAIT_MS_DEFAULT: u64 = 50;
pub const KEY_PREFIX_DEFAULT: &str = "sluice:rl";
/// Refill requests that may wait for the lease thread; beyond, a refill is retried later.
pub const REFILL_QUEUE_MAX: usize = 4096;
/// Keys asked for in one pipelined round trip.
pub const PIPELINE_KEYS_MAX: usize = 256;
/// Largest Redis reply line accepted.
pub const REPLY_LINE_BYTES_MAX: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// Admit (beyond the leases already held).
    #[default]
    Open,
    /// Refuse with 503.
    Closed,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `host:port` of the Redis server.
    pub address: Loc<String>,
    #[serde(default = "key_prefix_default")]
    pub key_prefix: String,
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
    #[serde(default = "connect_timeout_ms_default")]
    pub connect_timeout_ms: u64,
    #[serde(default = "io_timeout_ms_default")]
    pub io_timeout_ms: u64,
    #[serde(default = "reconnect_ms_default")]
    pub reconnect_ms: u64,
    /// Lease batch, as time at the full rate: a batch is `limit × lease_ms / period`.
    #[serde(default = "lease_ms_default")]
    pub lease_ms: u64,
    /// Longest wait of a key's first request for its first lease.
    #[serde(default = "lease_wait_ms_default")]
    pub lease_wait_ms: u64,
}

fn key_prefix_default() -> String {
    KEY_PREFIX_DEFAULT.to_string()
}
fn connect_timeout_ms_default() -> u64 {
    CONNECT_TIMEOUT_MS_DEFAULT
}
fn io_timeout_ms_default() -> u64 {
    IO_TIMEOUT_MS_DEFAULT
}
fn reconnect_ms_default() -> u64 {
    RECONNECT_MS_DEFAULT
}
fn lease_ms_default() -> u64 {
    LEASE_MS_DEFAULT
}
fn lease_wait_ms_default() -> u64 {
    LEASE_WAIT_MS_DEFAULT
}

/// Problems with the redis settings: `(line, field, problem)`.
pub fn validate(c: &RedisConfig, out: &mut Vec<(u64, String, String)>) {
    if let Err(e) = crate::config::split_host_port(&c.address.value) {
        out.push((c.address.line, "rate_limit.redis.address".into(), e));
    }
    for (v, n) in [
        (c.connect_timeout_ms, "connect_timeout_ms"),
        (c.io_timeout_ms, "io_timeout_ms"),
        (c.reconnect_ms, "reconnect_ms"),
        (c.lease_ms, "lease_ms"),
    ] {
        if v == 0 {
            out.push((
                c.address.line,
                format!("rate_limit.redis.{n}"),
                "must be > 0".into(),
            ));
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Requests,
    Tokens,
}

struct Refill {
    rule: Arc<Rule>,
    slot: SlotRef,
}

/// The lease source of global rules (one per distinct `rate_limit.redis`).
pub struct Leases {
    cfg: RedisConfig,
    tx: SyncSender<Refill>,
    up: Arc<AtomicBool>,
}

impl Leases {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn fail_open(&self) -> bool {
        self.cfg.on_unavailable == OnUnavailable::Open
    }

    pub fn retry_ns(&self) -> u64 {
        self.cfg.reconnect_ms * 1_000_000
    }

    pub fn lease_wait_ns(&self) -> u64 {
        self.cfg.lease_wait_ms * 1_000_000
    }

    /// Units per lease for `kind` of `rule`.
    pub fn batch(&self, rule: &Rule, kind: Kind) -> u64 {
        let l = match kind {
            Kind::Requests => rule.requests,
            Kind::Tokens => rule.tokens,
        };
        match l {
            Some(l) => {
                let period_ms = (l.period_ns / 1_000_000).max(1);
                (l.limit.saturating_mul(self.cfg.lease_ms) / period_ms).clamp(1, l.burst)
            }
            None => 0,
        }
    }

    pub fn low_water(&self, rule: &Rule, kind: Kind) -> u64 {
        self.batch(rule, kind) / 2
    }

    /// Queue a refill for `slot` (at most one queued per slot). `want`: units the waiting
    /// request needs beyond the balance (tokens), 0 for an ordinary top-up.
    pub fn request(&self, rule: &Arc<Rule>, slot: SlotRef, kind: Kind, want: u64) {
        let s = rule.table.get(slot);
        if kind == Kind::Tokens && want > 0 {
            s.want_tokens.fetch_max(want, Ordering::AcqRel);
        }
        if s.next_ask_ns.load(Ordering::Relaxed) > bucket::now_ns() {
            return;
        }
        if s.refill_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        match self.tx.try_send(Refill {
            rule: rule.clone(),
            slot,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                s.refill_pending.store(false, Ordering::Release);
            }
        }
    }
}

fn registry() -> &'static Mutex<HashMap<String, Weak<Leases>>> {
    static R: OnceLock<Mutex<HashMap<String, Weak<Leases>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// The lease source for `cfg`, started on first use (control thread, at snapshot build).
pub fn leases_for(cfg: &RedisConfig) -> Result<Arc<Leases>, String> {
    let id = serde_json::to_string(cfg).unwrap_or_default();
    let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
    reg.retain(|_, w| w.strong_count() > 0);
    if let Some(l) = reg.get(&id).and_then(Weak::upgrade) {
        return Ok(l);
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(REFILL_QUEUE_MAX);
    let up = Arc::new(AtomicBool::new(true));
    let thread_cfg = cfg.clone();
    let thread_up = up.clone();
    std::thread::Builder::new()
        .name("sluice-ratelimit-redis".into())
        .spawn(move || {
            crate::background::lower_priority();
            run(thread_cfg, rx, thread_up)
        })
        .map_err(|e| format!("rate_limit.redis: cannot start the lease thread: {e}"))?;
    let l = Arc::new(Leases {
        cfg: cfg.clone(),
        tx,
        up,
    });
    reg.insert(id, Arc::downgrade(&l));
    Ok(l)
}

/// Errors of the Redis boundary (logged and counted by the lease thread, never seen by a
/// client).
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("redis io: {0}")]
    Io(#[from] std::io::Error),
    #[error("redis protocol: {0}")]
    Protocol(String),
    #[error("redis error reply: {0}")]
    Reply(String),
}

impl RedisError {
    fn label(&self) -> &'static str {
        match self {
            RedisError::Connect(..) => "connect",
            RedisError::Io(_) => "io",
            RedisError::Protocol(_) => "protocol",
            RedisError::Reply(_) => "reply",
        }
    }
}

impl crate::error::Classify for RedisError {
    fn side(&self) -> crate::error::Side {
        crate::error::Side::Upstream
    }
    fn status(&self) -> u16 {
        503
    }
    fn code(&self) -> &'static str {
        "rate_limit_unavailable"
    }
}

/// A RESP reply (only the shapes the lease script returns, plus errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Int(i64),
    Str(Vec<u8>),
    Nil,
    Array(Vec<Reply>),
}

/// A blocking RESP2 connection.
pub struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
    /// SHA-1 of [`LEASE_SCRIPT`] as Redis reported it (`SCRIPT LOAD` on connect), so each lease
    /// sends `EVALSHA` and 40 bytes instead of the whole script.
    pub script_sha: Vec<u8>,
}

impl Conn {
    pub fn connect(
        addr: &str,
        connect_timeout: Duration,
        io_timeout: Duration,
    ) -> Result<Conn, RedisError> {
        let err = |e| RedisError::Connect(addr.to_string(), e);
        let sa = addr
            .to_socket_addrs()
            .map_err(err)?
            .next()
            .ok_or_else(|| err(std::io::Error::other("no address")))?;
        let s = TcpStream::connect_timeout(&sa, connect_timeout).map_err(err)?;
        s.set_nodelay(true).map_err(err)?;
        s.set_read_timeout(Some(io_timeout)).map_err(err)?;
        s.set_write_timeout(Some(io_timeout)).map_err(err)?;
        let r = BufReader::new(s.try_clone().map_err(err)?);
        let mut c = Conn {
            w: s,
            r,
            script_sha: Vec::new(),
        };
        c.load_script()?;
        Ok(c)
    }

    /// `SCRIPT LOAD` the lease script (on connect, and again after a `NOSCRIPT`: a restarted or
    /// flushed Redis forgot it).
    pub fn load_script(&mut self) -> Result<(), RedisError> {
        let mut buf = Vec::new();
        Conn::encode(&mut buf, &[b"SCRIPT", b"LOAD", LEASE_SCRIPT.as_bytes()]);
        self.w.write_all(&buf)?;
        match read_reply(&mut self.r, 0)? {
            Reply::Str(sha) if sha.len() == 40 => {
                self.script_sha = sha;
                Ok(())
            }
            _ => Err(RedisError::Protocol("SCRIPT LOAD: unexpected reply".into())),
        }
    }

    /// Append one command in RESP to `out`.
    pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Send pipelined commands and read all `n` replies. An error reply (`-ERR`, `-NOSCRIPT`)
    /// is returned in its place, so the replies after it are still read and the connection
    /// stays in step; a transport or protocol error fails the whole call.
    pub fn pipeline(
        &mut self,
        buf: &[u8],
        n: usize,
    ) -> Result<Vec<Result<Reply, RedisError>>, RedisError> {
        self.w.write_all(buf)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            match read_reply(&mut self.r, 0) {
                Ok(r) => out.push(Ok(r)),
                Err(RedisError::Reply(m)) => out.push(Err(RedisError::Reply(m))),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

fn read_line(r: &mut impl BufRead) -> Result<Vec<u8>, RedisError> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take(REPLY_LINE_BYTES_MAX as u64)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(RedisError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    if !line.ends_with(b"\r\n") {
        return Err(RedisError::Protocol(
            "reply line too long or unterminated".into(),
        ));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn parse_int(b: &[u8]) -> Result<i64, RedisError> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| RedisError::Protocol("bad integer".into()))
}

/// Read one RESP2 reply.
pub fn read_reply(r: &mut impl BufRead, depth: usize) -> Result<Reply, RedisError> {
    if depth > 4 {
        return Err(RedisError::Protocol("reply nested too deep".into()));
    }
    let line = read_line(r)?;
    let (t, rest) = line
        .split_first()
        .ok_or_else(|| RedisError::Protocol("empty reply".into()))?;
    match t {
        b'+' => Ok(Reply::Str(rest.to_vec())),
        b'-' => Err(RedisError::Reply(
            String::from_utf8_lossy(&rest[..rest.len().min(200)]).into_owned(),
        )),
        b':' => Ok(Reply::Int(parse_int(rest)?)),
        b'$' => {
            let n = parse_int(rest)?;
            if n < 0 {
                return Ok(Reply::Nil);
            }
            if n as usize > REPLY_LINE_BYTES_MAX {
                return Err(RedisError::Protocol("bulk reply too large".into()));
            }
            let mut v = vec![0u8; n as usize + 2];
            r.read_exact(&mut v)?;
            v.truncate(n as usize);
            Ok(Reply::Str(v))
        }
        b'*' => {
            let n = parse_int(rest)?;
            if n < 0 {
                return Ok(Reply::Nil);
            }
            if n > 16 {
                return Err(RedisError::Protocol("array reply too long".into()));
            }
            (0..n)
                .map(|_| read_reply(r, depth + 1))
                .collect::<Result<Vec<_>, _>>()
                .map(Reply::Array)
        }
        _ => Err(RedisError::Protocol("unknown reply type".into())),
    }
}

/// The bucket in Redis: refill by Redis's clock, grant up to `want`. Returns
/// `{granted, left in the bucket, ms until the rest of want would be there}`.
pub const LEASE_SCRIPT: &str = r#"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(v[1])
local ts = tonumber(v[2])
if tokens == nil or ts == nil then tokens = burst; ts = now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local grant = math.floor(math.min(want, tokens))
if grant < 0 then grant = 0 end
tokens = tokens - grant
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate) + 1000)
local wait = 0
if grant < want then wait = math.ceil((want - grant - tokens) / rate) end
return {grant, math.floor(tokens), wait}
"#;

/// One key's ask in a pipeline.
struct Ask {
    idx: usize,
    kind: Kind,
    want: u64,
}

fn run(cfg: RedisConfig, rx: Receiver<Refill>, up: Arc<AtomicBool>) {
    let addr = cfg.address.value.clone();
    let connect_timeout = Duration::from_millis(cfg.connect_timeout_ms);
    let io_timeout = Duration::from_millis(cfg.io_timeout_ms);
    let reconnect = Duration::from_millis(cfg.reconnect_ms);
    let up_gauge = metrics::gauge!(names::REDIS_UP);
    let refills = metrics::counter!(names::LEASE_REFILLS_TOTAL);
    let mut conn: Option<Conn> = None;
    let mut last_attempt: Option<Instant> = None;
    let mut pending: Vec<Refill> = Vec::new();
    let mut buf = Vec::new();
    let mut asks: Vec<Ask> = Vec::new();
    let mut was_up = true;
    let set_state = |ok: bool, was_up: &mut bool, err: Option<&RedisError>| {
        up.store(ok, Ordering::Release);
        up_gauge.set(if ok { 1.0 } else { 0.0 });
        if ok != *was_up {
            if ok {
                tracing::info!(redis = %addr, "rate limit backend reachable again");
            } else {
                tracing::warn!(redis = %addr, error = %err.map(|e| e.to_string()).unwrap_or_default(),
                    mode = ?cfg.on_unavailable, "rate limit backend unreachable; on_unavailable applies");
            }
            *was_up = ok;
        }
    };
    loop {
        let timeout = if pending.is_empty() {
            reconnect
        } else {
            Duration::from_millis(1)
        };
        match rx.recv_timeout(timeout) {
            Ok(r) => pending.push(r),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if pending.is_empty() {
                    return;
                }
            }
        }
        while pending.len() < PIPELINE_KEYS_MAX {
            match rx.try_recv() {
                Ok(r) => pending.push(r),
                Err(_) => break,
            }
        }
        if conn.is_none() {
            if last_attempt.is_some_and(|t| t.elapsed() < reconnect) {
                if !pending.is_empty() {
                    // Down: park the asks (their slots stay marked, so workers do not queue
                    // more) until the next connection attempt.
                    std::thread::sleep(Duration::from_millis(5));
                }
                continue;
            }
            last_attempt = Some(Instant::now());
            match Conn::connect(&addr, connect_timeout, io_timeout) {
                Ok(c) => {
                    conn = Some(c);
                    set_state(true, &mut was_up, None);
                }
                Err(e) => {
                    metrics::counter!(names::REDIS_ERRORS_TOTAL, "kind" => e.label()).increment(1);
                    set_state(false, &mut was_up, Some(&e));
                    for p in pending.drain(..) {
                        p.rule
                            .table
                            .get(p.slot)
                            .refill_pending
                            .store(false, Ordering::Release);
                    }
                    continue;
                }
            }
        }
        if pending.is_empty() {
            continue;
        }
        buf.clear();
        asks.clear();
        let sha = conn
            .as_ref()
            .map(|c| c.script_sha.clone())
            .unwrap_or_default();
        for (idx, p) in pending.iter().enumerate() {
            let Some(g) = &p.rule.global else { continue };
            let s = p.rule.table.get(p.slot);
            let tag = s.tag.load(Ordering::Relaxed);
            for kind in [Kind::Requests, Kind::Tokens] {
                let (limit, bal) = match kind {
                    Kind::Requests => (p.rule.requests, &s.lease_requests),
                    Kind::Tokens => (p.rule.tokens, &s.lease_tokens),
                };
                let Some(l) = limit else { continue };
                let batch = g.batch(&p.rule, kind);
                let bal = bal.load(Ordering::Relaxed);
                let extra = if kind == Kind::Tokens {
                    s.want_tokens.swap(0, Ordering::AcqRel)
                } else {
                    0
                };
                if bal > (batch / 2) as i64 && extra == 0 {
                    continue;
                }
                let want = ((batch as i64 - bal).max(0) as u64)
                    .max(extra.saturating_sub(bal.max(0) as u64))
                    .clamp(1, l.burst);
                let rate = l.limit as f64 / (l.period_ns as f64 / 1e6);
                let key = format!(
                    "{}:{}:{}:{:016x}",
                    cfg.key_prefix,
                    p.rule.name,
                    if kind == Kind::Requests { "r" } else { "t" },
                    tag
                );
                Conn::encode(
                    &mut buf,
                    &[
                        b"EVALSHA",
                        &sha,
                        b"1",
                        key.as_bytes(),
                        rate.to_string().as_bytes(),
                        l.burst.to_string().as_bytes(),
                        want.to_string().as_bytes(),
                    ],
                );
                asks.push(Ask { idx, kind, want });
            }
        }
        let result = match conn.as_mut() {
            Some(c) if !asks.is_empty() => match c.pipeline(&buf, asks.len()) {
                // A restarted or flushed Redis forgot the script: load it again (same SHA) and
                // send the batch once more.
                Ok(r)
                    if r.iter().any(
                        |x| matches!(x, Err(RedisError::Reply(m)) if m.starts_with("NOSCRIPT")),
                    ) =>
                {
                    c.load_script().and_then(|()| c.pipeline(&buf, asks.len()))
                }
                r => r,
            },
            _ => Ok(Vec::new()),
        };
        match result {
            Ok(replies) => {
                let now = bucket::now_ns();
                refills.increment(1);
                for (a, r) in asks.iter().zip(replies) {
                    let p = &pending[a.idx];
                    let s = p.rule.table.get(p.slot);
                    let r = match r {
                        Ok(r) => r,
                        Err(e) => {
                            // One key's script failed: that key gets nothing this round (its
                            // slot is released below and asks again); the others are served.
                            metrics::counter!(names::REDIS_ERRORS_TOTAL, "kind" => e.label())
                                .increment(1);
                            tracing::warn!(redis = %addr, error = %e, "rate limit lease script failed");
                            Reply::Nil
                        }
                    };
                    let (grant, left, wait_ms) = match r {
                        Reply::Array(v) if v.len() == 3 => match (&v[0], &v[1], &v[2]) {
                            (Reply::Int(g), Reply::Int(l), Reply::Int(w)) => (*g, *l, *w),
                            _ => (0, 0, 1),
                        },
                        _ => (0, 0, 1),
                    };
                    let grant = grant.max(0);
                    metrics::counter!(names::LEASE_UNITS_TOTAL, "kind" => if a.kind == Kind::Requests { "requests" } else { "tokens" })
                        .increment(grant as u64);
                    match a.kind {
                        Kind::Requests => {
                            s.lease_requests.fetch_add(grant, Ordering::AcqRel);
                            s.remote_requests
                                .store(left.max(0) as u64, Ordering::Relaxed);
                        }
                        Kind::Tokens => {
                            s.lease_tokens.fetch_add(grant, Ordering::AcqRel);
                            s.remote_tokens.store(left.max(0) as u64, Ordering::Relaxed);
                        }
                    }
                    if (grant as u64) < a.want {
                        let wait = (wait_ms.max(1) as u64) * 1_000_000;
                        s.next_ask_ns.store(now + wait, Ordering::Relaxed);
                    }
                }
                for p in pending.drain(..) {
                    let s = p.rule.table.get(p.slot);
                    s.refill_pending.store(false, Ordering::Release);
                }
            }
            Err(e) => {
                metrics::counter!(names::REDIS_ERRORS_TOTAL, "kind" => e.label()).increment(1);
                if matches!(e, RedisError::Reply(_)) {
                    tracing::warn!(redis = %addr, error = %e, "rate limit lease script failed");
                } else {
                    conn = None;
                    last_attempt = Some(Instant::now());
                    set_state(false, &mut was_up, Some(&e));
                }
                for p in pending.drain(..) {
                    p.rule
                        .table
                        .get(p.slot)
                        .refill_pending
                        .store(false, Ordering::Release);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_encode_and_parse() {
        let mut out = Vec::new();
        Conn::encode(&mut out, &[b"GET", b"k"]);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        let mut r = std::io::Cursor::new(
            &b"*3\r\n:5\r\n:-1\r\n$3\r\nabc\r\n+OK\r\n-ERR boom\r\n$-1\r\n"[..],
        );
        assert_eq!(
            read_reply(&mut r, 0).unwrap(),
            Reply::Array(vec![
                Reply::Int(5),
                Reply::Int(-1),
                Reply::Str(b"abc".to_vec())
            ])
        );
        assert_eq!(read_reply(&mut r, 0).unwrap(), Reply::Str(b"OK".to_vec()));
        assert!(matches!(read_reply(&mut r, 0), Err(RedisError::Reply(m)) if m == "ERR boom"));
        assert_eq!(read_reply(&mut r, 0).unwrap(), Reply::Nil);
        // Truncated and garbage input are errors, never panics.
        for bad in [
            &b"*2\r\n:1\r\n"[..],
            b"?x\r\n",
            b":abc\r\n",
            b"$5\r\nab",
            b"*99\r\n",
        ] {
            assert!(read_reply(&mut std::io::Cursor::new(bad), 0).is_err());
        }
    }
}
