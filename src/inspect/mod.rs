//! Model-traffic inspection: pure (no IO) functions and state machines the proxy calls while it
//! forwards requests and responses.
//!
//! Pieces (see `docs/inspection.md` for the integration guide):
//! * [`sse`] / [`ndjson`]: incremental, zero-copy event splitters ([`SseSplitter`],
//!   [`NdjsonSplitter`]).
//! * [`dialect`]: which provider API a request speaks ([`Dialect`], [`detect`]).
//! * [`request`]: request facts ([`inspect_request`]) and include-usage injection
//!   ([`inject_include_usage`]).
//! * [`strip`]: removal of the injected usage-only chunk from the forwarded stream
//!   ([`UsageChunkStripper`]).
//! * [`usage`]: token usage from responses ([`UsageAccumulator`]).
//! * [`estimate`]: BPE token estimation when no usage is reported.
//!
//! Invariants shared by all of them:
//! * **Observe, never alter by accident**: the proxy forwards bytes first and inspects after;
//!   nothing here panics on input, malformed input is counted, not fatal. Only the explicit
//!   rewrite ([`inject_include_usage`]) and strip decisions ([`UsageChunkStripper`]) change
//!   what is forwarded.
//! * **Zero copy when an event fits in the chunk**; carry buffers are bounded by named limits
//!   (`*_BYTES_MAX`) and reused.
//! * **No JSON parse for irrelevant events**: byte prefilters select the events that matter.
//! * JSON is parsed with simd-json on a reusable per-thread scratch copy (simd-json mutates its
//!   input; the forwarded bytes are never touched).

pub mod dialect;
pub mod estimate;
mod json;
pub mod ndjson;
pub(crate) mod objscan;
pub mod request;
pub mod sse;
pub mod strip;
pub mod usage;

pub use dialect::{detect, path_forces_stream, Dialect, UnknownDialect};
pub use json::JsonScratch;
pub use ndjson::{NdjsonSplitter, LINE_BYTES_MAX};
pub use request::{
    inject_include_usage, inspect_request, inspect_request_with, RequestFacts, RequestOptions,
    PROMPT_TEXT_BYTES_MAX,
};
pub use sse::{SseEvent, SseSplitter, EVENT_BYTES_MAX};
pub use strip::{is_usage_only_chunk, Forward, UsageChunkStripper};
pub use usage::{
    ChunkSignal, Usage, UsageAccumulator, UsageReport, CONTENT_KEEP_BYTES_MAX, USAGE_BODY_BYTES_MAX,
};

use crate::error::{Classify, Side};

/// Errors of request inspection. The proxy may still forward the request unchanged: the
/// upstream is the judge of validity; these only mean "could not inspect".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectError {
    /// The body is not valid JSON.
    #[error("request body is not valid JSON")]
    InvalidJson,
    /// The body is JSON but not an object.
    #[error("request body is not a JSON object")]
    NotAnObject,
}

impl Classify for InspectError {
    fn side(&self) -> Side {
        Side::Downstream
    }

    fn status(&self) -> u16 {
        400
    }

    fn code(&self) -> &'static str {
        match self {
            InspectError::InvalidJson => "invalid_json",
            InspectError::NotAnObject => "invalid_request_body",
        }
    }
}
