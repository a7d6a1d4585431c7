//! sluice: a thread-per-core, io_uring sidecar proxy for model traffic.
//!
//! Module map (see `docs/ARCHITECTURE.md` for the request flow):
//! * [`config`]: the YAML schema, loading and validation (`file:line: field: problem`).
//! * [`snapshot`]: precommit: a validated config compiled into a read-only runtime snapshot.
//! * [`server`]: start-up, signals, config watch, reload commit, drain.
//! * [`worker`]: one pinned monoio runtime per core: listeners, tick, per-core state.
//! * [`proxy`]: the connection loop and exchanges, upstream pools, TLS origination.
//! * [`route`]: route matching facts, weighted splits, model aliasing and body model rewrite.
//! * [`resilience`]: circuit breakers, cool-downs, balancing, retry budgets, adaptive throttling.
//! * [`http1`]: HTTP/1.1 codec. Pure: no IO, no allocation per body chunk.
//! * [`inspect`]: SSE/NDJSON splitting and provider dialects (usage, model, stream flag).
//! * [`pii`]: PII detection and redaction engine, shared read-only by all cores.
//! * [`telemetry`]: per-request records batched off the hot path into metrics and access logs.
//! * [`tls`]: TLS termination, mTLS/SPIFFE identities, rotation, interception, `sluice ca`.
//! * [`admin`]: readiness, metrics, running config.
//! * [`inject`]: Kubernetes sidecar injection (`sluice inject`, `sluice inject-webhook`).
//! * [`transparent`]: iptables-redirected connections: original destination, sniffing,
//!   pass-through.
//! * [`iptables`]: the `sluice iptables` rules (init container).
//! * [`auth`]: inbound authentication (API keys, JWT) and outbound credential injection.
//! * [`ratelimit`]: requests/tokens rate limits, local (lock-free GCRA) or global (Redis leases).
//! * [`error`]: the error vocabulary shared by every boundary.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod background;
pub mod busypoll;
pub mod config;
pub mod error;
pub mod filter;
pub mod http1;
pub mod inject;
pub mod inspect;
pub mod iptables;
pub mod otel;
pub mod pii;
pub mod proxy;
pub mod ratelimit;
pub mod resilience;
pub mod route;
pub mod server;
pub mod snapshot;
pub mod telemetry;
#[cfg(test)]
pub(crate) mod testing;
pub mod tls;
pub mod transparent;
pub mod worker;
