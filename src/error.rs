//! Error vocabulary shared by every boundary.
//!
//! Each boundary (codec, config, proxy, inspection, PII, ...) owns one `thiserror` enum. Every
//! variant is classified by [`Side`] so that logs, metrics and the client-facing answer agree on
//! *whose* fault an error is:
//!
//! * [`Side::Downstream`]: the client sent something we refuse (4xx, connection closed).
//! * [`Side::Upstream`]: the model server misbehaved or was unreachable (502/503/504).
//! * [`Side::Internal`]: sluice itself failed (500); always a bug or resource exhaustion.
//!
//! Client-facing bodies use the OpenAI error shape `{"error":{"message","type","code"}}` so that
//! OpenAI SDKs surface them as ordinary API errors. Messages never contain secrets or prompt text.

/// Whose fault an error is. Drives the HTTP status family, the log level and the
/// `sluice_errors_total{side}` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Downstream,
    Upstream,
    Internal,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Downstream => "downstream",
            Side::Upstream => "upstream",
            Side::Internal => "internal",
        }
    }
}

/// Implemented by every boundary error enum.
pub trait Classify {
    /// Whose fault it is.
    fn side(&self) -> Side;
    /// HTTP status to answer the client with, when an answer is still possible.
    fn status(&self) -> u16;
    /// Short machine-readable code, used as the OpenAI error `code` and as a metric label.
    fn code(&self) -> &'static str;
}

/// OpenAI error `type` for a status: the SDKs map these to exception classes.
pub fn openai_error_type(status: u16) -> &'static str {
    match status {
        400 | 405 | 413 | 414 | 415 | 422 | 431 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        408 | 504 => "timeout_error",
        429 => "rate_limit_error",
        _ if status >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}

/// Append an OpenAI-shaped JSON error body to `out`.
///
/// `message` is escaped; callers must still never put secrets or prompt text in it.
pub fn write_openai_error(out: &mut Vec<u8>, status: u16, code: &str, message: &str) {
    out.extend_from_slice(b"{\"error\":{\"message\":");
    write_json_string(out, message);
    out.extend_from_slice(b",\"type\":\"");
    out.extend_from_slice(openai_error_type(status).as_bytes());
    out.extend_from_slice(b"\",\"param\":null,\"code\":");
    write_json_string(out, code);
    out.extend_from_slice(b"}}");
}

/// Append `s` as a JSON string literal (with quotes) to `out`.
pub fn write_json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_is_valid_json_in_openai_shape() {
        let mut out = Vec::new();
        write_openai_error(&mut out, 429, "rate_limited", "slow \"down\"\n\u{1}");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["code"], "rate_limited");
        assert_eq!(v["error"]["message"], "slow \"down\"\n\u{1}");
    }
}
