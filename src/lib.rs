//! sluice: a thread-per-core, io_uring sidecar proxy for model traffic.
//!
//! Module map (see `docs/ARCHITECTURE.md` for the request flow):
//! * [`http1`]: HTTP/1.1 codec. Pure: no IO, no allocation per body chunk.
//! * [`inspect`]: SSE/NDJSON splitting and provider dialects (usage, model, stream flag).
//! * [`pii`]: PII detection and redaction engine, shared read-only by all cores.
//! * [`proxy`]: per-worker runtime: listeners, connection loop, upstream pools, filter chain.
//! * [`error`]: the error vocabulary shared by every boundary.

pub mod error;
pub mod http1;
pub mod inspect;
pub mod pii;
