//! Errors of the proxy boundary: everything that can end an exchange between a client, sluice
//! and an upstream.
//!
//! Each variant says whose fault it is ([`Side`]), the status the client gets (when it can
//! still get one), and a short code for metrics and the OpenAI error body. Messages name the
//! upstream and the limit that was hit, never header values or body text.

use std::sync::Arc;

use crate::error::{Classify, Side};
use crate::http1::CodecError;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("invalid request: {0}")]
    BadRequest(#[from] CodecError),
    #[error("no route matches {method} {path}")]
    NoRoute { method: String, path: String },
    #[error("client did not send a complete request head within {0} ms")]
    HeaderTimeout(u64),
    #[error("client sent no body bytes for {0} ms")]
    ClientBodyTimeout(u64),
    #[error("client closed the connection")]
    ClientClosed,
    #[error("upstream `{0}` has no endpoint with a resolved address")]
    NoEndpoint(Arc<str>),
    #[error("upstream `{0}`: connect timed out after {1} ms")]
    ConnectTimeout(Arc<str>, u64),
    #[error("upstream `{0}`: connect failed: {1}")]
    ConnectFailed(Arc<str>, std::io::Error),
    #[error("upstream `{0}`: TLS handshake failed: {1}")]
    Tls(Arc<str>, String),
    #[error("upstream `{0}`: could not send the request: {1}")]
    UpstreamWrite(Arc<str>, std::io::Error),
    #[error("upstream `{0}`: no response within {1} ms")]
    FirstByteTimeout(Arc<str>, u64),
    #[error("upstream `{0}`: closed the connection before responding")]
    UpstreamClosed(Arc<str>),
    #[error("upstream `{0}`: invalid response: {1}")]
    BadResponse(Arc<str>, CodecError),
    #[error("upstream `{0}`: response body stalled for {1} ms")]
    UpstreamBodyTimeout(Arc<str>, u64),
    #[error("upstream `{0}`: response cut short: {1}")]
    UpstreamAborted(Arc<str>, String),
    #[error("exchange exceeded its total timeout of {0} ms")]
    TotalTimeout(u64),
    /// No attempt could be made: every endpoint is ejected, cooling down or throttled, and no
    /// failover target could take the request.
    #[error("upstream `{0}` is unavailable ({1}); retry in {2} ms")]
    Unavailable(Arc<str>, &'static str, u64, u16),
    #[error("request body exceeds the {0}-byte limit within which its model can be rewritten")]
    BodyTooLargeToRoute(usize),
    /// The upstream answered an error after sluice had already started an SSE response
    /// (keep-alives while waiting for the first token).
    #[error("upstream `{0}` answered {1} after the response stream had started")]
    StatusAfterStreamStart(Arc<str>, u16),
    #[error("the connection was not redirected to this transparent listener: no original destination to forward to")]
    NoOriginalDestination,
    #[error("caller identity {0} may not call route `{1}`")]
    IdentityNotAllowed(Arc<str>, Arc<str>),
}

impl ProxyError {
    /// Seconds for a `Retry-After` header, for errors that say when to come back.
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            ProxyError::Unavailable(_, _, ms, _) => Some(ms.div_ceil(1000).max(1)),
            _ => None,
        }
    }
}

impl Classify for ProxyError {
    fn side(&self) -> Side {
        use ProxyError::*;
        match self {
            BadRequest(_)
            | NoRoute { .. }
            | HeaderTimeout(_)
            | ClientBodyTimeout(_)
            | ClientClosed
            | BodyTooLargeToRoute(_)
            | NoOriginalDestination => Side::Downstream,
            IdentityNotAllowed(..) => Side::Downstream,
            NoEndpoint(_)
            | ConnectTimeout(..)
            | ConnectFailed(..)
            | Tls(..)
            | UpstreamWrite(..)
            | FirstByteTimeout(..)
            | UpstreamClosed(_)
            | BadResponse(..)
            | UpstreamBodyTimeout(..)
            | UpstreamAborted(..)
            | TotalTimeout(_)
            | Unavailable(..)
            | StatusAfterStreamStart(..) => Side::Upstream,
        }
    }

    fn status(&self) -> u16 {
        use ProxyError::*;
        match self {
            BadRequest(e) => e.status(),
            NoRoute { .. } => 404,
            // The client addressed the transparent port itself.
            NoOriginalDestination => 421,
            IdentityNotAllowed(..) => 403,
            HeaderTimeout(_) | ClientBodyTimeout(_) => 408,
            // Nobody to answer; 499 is what access logs conventionally show.
            ClientClosed => 499,
            NoEndpoint(_) => 503,
            Unavailable(_, _, _, status) => *status,
            BodyTooLargeToRoute(_) => 413,
            StatusAfterStreamStart(..) => 502,
            ConnectTimeout(..)
            | FirstByteTimeout(..)
            | UpstreamBodyTimeout(..)
            | TotalTimeout(_) => 504,
            ConnectFailed(..) | Tls(..) | UpstreamWrite(..) | UpstreamClosed(_)
            | BadResponse(..) | UpstreamAborted(..) => 502,
        }
    }

    fn code(&self) -> &'static str {
        use ProxyError::*;
        match self {
            BadRequest(e) => e.code(),
            NoRoute { .. } => "no_route",
            NoOriginalDestination => "no_original_destination",
            IdentityNotAllowed(..) => "identity_not_allowed",
            HeaderTimeout(_) => "header_timeout",
            ClientBodyTimeout(_) => "client_body_timeout",
            ClientClosed => "client_closed",
            NoEndpoint(_) => "no_healthy_upstream",
            ConnectTimeout(..) => "upstream_connect_timeout",
            ConnectFailed(..) => "upstream_connect_failed",
            Tls(..) => "upstream_tls_failed",
            UpstreamWrite(..) => "upstream_write_failed",
            FirstByteTimeout(..) => "upstream_timeout",
            UpstreamClosed(_) => "upstream_closed",
            BadResponse(..) => "upstream_bad_response",
            UpstreamBodyTimeout(..) => "upstream_body_timeout",
            UpstreamAborted(..) => "upstream_aborted",
            TotalTimeout(_) => "total_timeout",
            Unavailable(_, reason, ..) => match *reason {
                "circuit_open" => "upstream_circuit_open",
                "cooling_down" => "upstream_cooling_down",
                "throttled" => "upstream_throttled",
                _ => "no_healthy_upstream",
            },
            BodyTooLargeToRoute(_) => "request_too_large_to_route",
            StatusAfterStreamStart(..) => "upstream_error_after_stream_start",
        }
    }
}
