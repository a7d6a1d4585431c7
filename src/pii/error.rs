//! Error type of the PII boundary.
//!
//! Invariant: every variant is *fail-closed*. The proxy turns any `PiiError` raised while
//! inspecting a request into a refusal (the request is never forwarded unscanned). Messages
//! never contain body text or matched values: only sizes, encodings and positions.

use crate::error::{Classify, Side};

/// Errors raised by [`crate::pii`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PiiError {
    /// The configuration is invalid (unknown entity, bad custom pattern, missing hash key...).
    #[error("pii config: {0}")]
    Config(String),
    /// The body is not valid JSON (or not valid UTF-8, or nested too deeply).
    #[error("body is not valid JSON at byte {offset}: {reason}")]
    BadJson { offset: usize, reason: &'static str },
    /// A JSON string contains an invalid escape (bad hex, lone surrogate).
    #[error("invalid JSON string escape at byte {offset}")]
    BadEscape { offset: usize },
    /// The (raw or decompressed) body exceeds `body_bytes_max`.
    #[error("body exceeds the inspection limit of {limit_bytes} bytes")]
    TooLarge { limit_bytes: usize },
    /// The body is compressed and the policy is `reject`.
    #[error("compressed bodies are refused by policy (content-encoding {0})")]
    CompressedRejected(String),
    /// The content-encoding is unknown to the inspector.
    #[error("unsupported content-encoding {0}")]
    UnsupportedEncoding(String),
    /// The compressed body could not be decoded.
    #[error("body could not be decompressed ({0})")]
    Decode(&'static str),
}

impl Classify for PiiError {
    fn side(&self) -> Side {
        match self {
            PiiError::Config(_) => Side::Internal,
            _ => Side::Downstream,
        }
    }

    fn status(&self) -> u16 {
        match self {
            PiiError::Config(_) => 500,
            PiiError::TooLarge { .. } => 413,
            PiiError::CompressedRejected(_) | PiiError::UnsupportedEncoding(_) => 415,
            _ => 400,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            PiiError::Config(_) => "pii_config",
            PiiError::BadJson { .. } => "pii_bad_json",
            PiiError::BadEscape { .. } => "pii_bad_escape",
            PiiError::TooLarge { .. } => "pii_body_too_large",
            PiiError::CompressedRejected(_) => "pii_compressed_rejected",
            PiiError::UnsupportedEncoding(_) => "pii_unsupported_encoding",
            PiiError::Decode(_) => "pii_undecodable_body",
        }
    }
}
