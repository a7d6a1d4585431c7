//! PII detection and redaction for model traffic. Pure: no IO, no global state.
//!
//! * [`Engine`]: built once per [`PiiConfig`], shared read-only (`Arc<Engine>`) by every core.
//!   [`Engine::scan`] is linear time over bytes (prefilter + hand-written validators, no
//!   backtracking regex on the hot path) and never stores matched values.
//! * [`redact_request`] / [`redact_response`]: JSON-aware, escape-decoding body redaction that
//!   copies every untouched byte verbatim; fail-closed ([`PiiError`]) on anything it cannot parse.
//! * [`StreamRedactor`]: SSE delta redaction with a bounded hold-back ([`HOLDBACK_CHARS_MAX`]).
//!
//! See `docs/pii.md` for entities, config reference, actions and accuracy/bench numbers.

pub mod config;
mod decode;
pub mod engine;
pub mod entity;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod json;
pub mod sse;
pub mod stream;
pub mod validate;

pub use config::{
    CompressedPolicy, ContextConfig, CustomPattern, Dictionary, HashKeySource, PiiConfig,
};
pub use engine::Engine;
pub use entity::{Action, Direction, Entity, Finding, BUILTIN_ENTITIES};
pub use error::PiiError;
pub use json::{
    redact_request, redact_response, rewrite_delta_content, try_rewrite_delta_content,
    AuditFinding, RequestOutcome,
};
pub use sse::SseRedactor;
pub use stream::{StreamRedactor, HOLDBACK_CHARS_MAX};
