//! `PiiConfig`: the serde (YAML-friendly) configuration embedded by the proxy under `pii:`.
//!
//! Every struct is `deny_unknown_fields` so typos fail at load time. Defaults give a safe,
//! useful engine: all built-in entities, action `redact`, built-in context words, 4 MiB bodies,
//! compressed bodies decompressed, streaming on. Validation (entity names, regexes, limits) is
//! done by [`crate::pii::Engine::new`], which is the single place a config becomes usable.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::entity::Action;

/// Default inspection limit for request bodies (raw and decompressed).
pub const BODY_BYTES_MAX_DEFAULT: usize = 4 * 1024 * 1024;
/// Default context window on each side of a match.
pub const CONTEXT_WINDOW_BYTES_DEFAULT: usize = 48;

/// Top-level PII configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PiiConfig {
    /// Master switch; a disabled engine finds nothing.
    pub enabled: bool,
    /// Built-in entities to detect by tag (`SSN`, `CREDIT_CARD`, ...). Empty = all built-ins.
    pub entities: Vec<String>,
    /// Action per entity tag (built-in or custom name). Missing = `default_action`.
    pub actions: BTreeMap<String, Action>,
    /// Action for entities without an entry in `actions`.
    pub default_action: Action,
    /// Report findings only; never rewrite or block.
    pub dry_run: bool,
    /// Where the proxy reads the HMAC key for the `hash` action. The library never reads it: pass
    /// the bytes to [`crate::pii::Engine::with_hash_key`].
    pub hash_key: Option<HashKeySource>,
    /// Custom regex patterns.
    pub custom_patterns: Vec<CustomPattern>,
    /// Literal dictionaries (customer names, code names), case-insensitive, whole words.
    pub dictionaries: Vec<Dictionary>,
    /// Context words that raise or lower confidence near a match.
    pub context: ContextConfig,
    /// Inspection limit for bodies, raw and after decompression.
    pub body_bytes_max: usize,
    /// What to do with `Content-Encoding: gzip|deflate|br|zstd` request bodies.
    pub compressed: CompressedPolicy,
    /// Inspect streaming (SSE) responses with the hold-back redactor.
    pub streaming: bool,
    /// Inspect non-streaming responses.
    pub responses: bool,
}

impl Default for PiiConfig {
    fn default() -> Self {
        PiiConfig {
            enabled: true,
            entities: Vec::new(),
            actions: BTreeMap::new(),
            default_action: Action::Redact,
            dry_run: false,
            hash_key: None,
            custom_patterns: Vec::new(),
            dictionaries: Vec::new(),
            context: ContextConfig::default(),
            body_bytes_max: BODY_BYTES_MAX_DEFAULT,
            compressed: CompressedPolicy::Decompress,
            streaming: true,
            responses: true,
        }
    }
}

/// Source of the hash key; resolved by the proxy (env var or file), never by this library.
/// Exactly one of `env` / `file` must be set (checked by `Engine::new`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HashKeySource {
    /// Name of an environment variable holding the key.
    pub env: Option<String>,
    /// Path of a file holding the key.
    pub file: Option<String>,
}

/// Compressed request body policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CompressedPolicy {
    /// Decompress (bounded by `body_bytes_max`) and inspect.
    #[default]
    Decompress,
    /// Refuse compressed bodies (415).
    Reject,
}

/// A custom regex entity.
///
/// Cost: with `anchor`, the regex runs *anchored* only at occurrences of the literal (found by the
/// shared Aho-Corasick automaton), so clean text costs nothing extra. Without `anchor`, the regex
/// (linear-time `regex` crate, no backtracking) runs over every scanned text: one extra pass,
/// typically 0.3-1 GB/s. Set `unanchored_ok: true` to accept that cost explicitly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomPattern {
    /// Entity tag, e.g. `EMPLOYEE_ID` (upper-case letters, digits, `_`).
    pub name: String,
    /// Regex (Rust `regex` syntax).
    pub pattern: String,
    /// Literal that every match *starts with*.
    #[serde(default)]
    pub anchor: Option<String>,
    /// Acknowledge the full-pass cost of a pattern without anchor.
    #[serde(default)]
    pub unanchored_ok: bool,
    /// Base confidence before context (default 0.9).
    #[serde(default = "default_custom_confidence")]
    pub confidence: f32,
    /// Longest match in bytes, for streaming hold-back (default 64).
    #[serde(default = "default_custom_len")]
    pub max_len_bytes: usize,
}

fn default_custom_confidence() -> f32 {
    0.9
}
fn default_custom_len() -> usize {
    64
}

/// A literal dictionary entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dictionary {
    /// Entity tag, e.g. `CUSTOMER`.
    pub name: String,
    /// Terms, matched ASCII-case-insensitively on word boundaries.
    pub terms: Vec<String>,
}

/// Context words: a positive word within `window_bytes` of a match adds `boost`; a negative word
/// subtracts `penalty`. A finding is kept when its confidence is `>= threshold`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContextConfig {
    pub window_bytes: usize,
    pub threshold: f32,
    pub boost: f32,
    pub penalty: f32,
    /// Include the built-in word lists (see `docs/pii.md`).
    pub builtin_words: bool,
    /// Extra positive words per entity tag.
    pub positive: BTreeMap<String, Vec<String>>,
    /// Extra negative words (apply to numeric entities: SSN, card, phone, IP, custom).
    pub negative: Vec<String>,
}

impl Default for ContextConfig {
    fn default() -> Self {
        ContextConfig {
            window_bytes: CONTEXT_WINDOW_BYTES_DEFAULT,
            threshold: 0.5,
            boost: 0.35,
            penalty: 0.4,
            builtin_words: true,
            positive: BTreeMap::new(),
            negative: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The YAML example from `docs/pii.md`.
    pub const YAML_EXAMPLE: &str = r#"
enabled: true
entities: [SSN, CREDIT_CARD, EMAIL, PHONE, IBAN, IP_ADDRESS, AWS_KEY, API_KEY, GITHUB_TOKEN, PRIVATE_KEY, JWT]
default_action: redact
actions:
  SSN: block
  CREDIT_CARD: mask
  EMAIL: hash
  IP_ADDRESS: log
  CUSTOMER: redact
dry_run: false
hash_key: { env: SLUICE_PII_HASH_KEY }
custom_patterns:
  - name: EMPLOYEE_ID
    pattern: 'EMP-[0-9]{6}'
    anchor: 'EMP-'
    confidence: 0.9
    max_len_bytes: 10
dictionaries:
  - name: CUSTOMER
    terms: ["Acme Corp", "Project Bluebird"]
context:
  window_bytes: 48
  threshold: 0.5
  boost: 0.35
  penalty: 0.4
  positive: { SSN: ["employee number"] }
  negative: ["ticket"]
body_bytes_max: 4194304
compressed: decompress
streaming: true
responses: true
"#;

    #[test]
    fn yaml_example_parses_and_builds() {
        let cfg: PiiConfig = serde_saphyr::from_str(YAML_EXAMPLE).expect("yaml");
        assert_eq!(cfg.actions.get("SSN"), Some(&Action::Block));
        assert_eq!(
            cfg.hash_key.as_ref().and_then(|h| h.env.as_deref()),
            Some("SLUICE_PII_HASH_KEY")
        );
        assert!(crate::pii::Engine::new(&cfg).is_err(), "hash needs a key");
        crate::pii::Engine::with_hash_key(&cfg, &[7u8; 32]).expect("engine");
        let typo = serde_saphyr::from_str::<PiiConfig>("dryrun: true");
        assert!(typo.is_err(), "unknown fields are rejected");
    }
}
