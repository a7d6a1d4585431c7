//! Token estimation with a real BPE tokenizer, for responses that never reported usage.
//!
//! Owns: choosing an OpenAI encoding for a model name and counting tokens with it
//! (`tiktoken-rs`, whose vocabularies are embedded in the crate: no network at build or run
//! time).
//!
//! * `cl100k_base` for `gpt-3.5*`, `gpt-4` and `gpt-4-*` (but not `gpt-4o*`/`gpt-4.1*`),
//!   `text-embedding-ada-002` and `text-embedding-3-*`; `o200k_base` for everything else
//!   (gpt-4o, gpt-4.1, gpt-5, o-series, and unknown/open models, for which it is the best
//!   generic approximation available offline).
//! * Each BPE table is built lazily once per process ([`OnceLock`]) and then shared read-only
//!   by every core. Building o200k takes a few hundred milliseconds in release: call
//!   [`warm_up`] at startup to keep that off the request path.
//! * Counting is bounded by the caller (the accumulator caps the text it keeps); beyond the cap
//!   counts are extrapolated linearly by bytes.
//! * If a table cannot be built (it cannot fail with the embedded data, but no panics), the
//!   fallback is one token per 4 bytes.

use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;

/// An OpenAI BPE encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// gpt-4o, gpt-4.1, gpt-5, o-series; default for unknown models.
    O200kBase,
    /// gpt-3.5-turbo, gpt-4, gpt-4-turbo, text-embedding-ada-002 / -3.
    Cl100kBase,
}

/// The encoding used to estimate tokens for `model` (`None`: unknown model).
pub fn encoding_for_model(model: Option<&str>) -> Encoding {
    let Some(m) = model else {
        return Encoding::O200kBase;
    };
    let m = m.rsplit('/').next().unwrap_or(m).to_ascii_lowercase();
    let is_gpt4_classic = m == "gpt-4"
        || (m.starts_with("gpt-4-") && !m.starts_with("gpt-4-o"))
        || m.starts_with("gpt-4-32k");
    if m.starts_with("gpt-3.5")
        || m.starts_with("gpt-35")
        || is_gpt4_classic
        || m.starts_with("text-embedding-")
    {
        Encoding::Cl100kBase
    } else {
        Encoding::O200kBase
    }
}

fn table(enc: Encoding) -> Option<&'static CoreBPE> {
    static O200K: OnceLock<Option<CoreBPE>> = OnceLock::new();
    static CL100K: OnceLock<Option<CoreBPE>> = OnceLock::new();
    match enc {
        Encoding::O200kBase => O200K.get_or_init(|| tiktoken_rs::o200k_base().ok()),
        Encoding::Cl100kBase => CL100K.get_or_init(|| tiktoken_rs::cl100k_base().ok()),
    }
    .as_ref()
}

/// Build both BPE tables now (call once at startup, off the request path).
pub fn warm_up() {
    let _ = table(Encoding::O200kBase);
    let _ = table(Encoding::Cl100kBase);
}

/// Number of tokens of `text` in `enc` (special-token text is counted as ordinary text).
pub fn count_tokens(enc: Encoding, text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    match table(enc) {
        Some(bpe) => bpe.encode_ordinary(text).len() as u64,
        None => (text.len() as u64).div_ceil(4),
    }
}

/// Tokens of `text` for `model`, extrapolated to `total_bytes` when `text` is only the first
/// part of a longer text (pass `text.len()` when it is complete).
pub fn estimate_tokens(model: Option<&str>, text: &str, total_bytes: u64) -> u64 {
    let counted = count_tokens(encoding_for_model(model), text);
    let kept = text.len() as u64;
    if kept == 0 || total_bytes <= kept {
        return counted;
    }
    // Linear extrapolation by bytes, in u128 to avoid overflow.
    let est = u128::from(counted) * u128::from(total_bytes) / u128::from(kept);
    u64::try_from(est).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_to_encoding() {
        use Encoding::*;
        for (m, e) in [
            ("gpt-4o-mini", O200kBase),
            ("gpt-4o", O200kBase),
            ("gpt-4.1", O200kBase),
            ("o3-mini", O200kBase),
            ("gpt-4", Cl100kBase),
            ("gpt-4-turbo-2024-04-09", Cl100kBase),
            ("gpt-3.5-turbo", Cl100kBase),
            ("meta-llama/Llama-3.1-8B-Instruct", O200kBase),
        ] {
            assert_eq!(encoding_for_model(Some(m)), e, "{m}");
        }
        assert_eq!(encoding_for_model(None), O200kBase);
    }

    #[test]
    fn counts_with_real_bpe() {
        // Reference counts from OpenAI's tiktoken.
        assert_eq!(count_tokens(Encoding::Cl100kBase, "hello world"), 2);
        assert_eq!(count_tokens(Encoding::O200kBase, "hello world"), 2);
        assert_eq!(
            count_tokens(Encoding::O200kBase, "Hello! How can I help you today?"),
            9
        );
        assert_eq!(count_tokens(Encoding::O200kBase, ""), 0);
        assert_eq!(estimate_tokens(None, "hello world", 22), 4);
    }
}
