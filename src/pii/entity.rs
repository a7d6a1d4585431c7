//! Entity identities, tag names and the per-entity length bounds used by streaming hold-back.
//!
//! An [`Entity`] is `Copy` and carries no value. Custom entities (custom patterns and
//! dictionaries) are indices into the engine's name table; resolve them with
//! [`crate::pii::Engine::entity_name`].

use serde::{Deserialize, Serialize};

/// A detected entity kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    Ssn,
    CreditCard,
    Email,
    Phone,
    Iban,
    IpAddress,
    AwsKey,
    ApiKey,
    GithubToken,
    PrivateKey,
    Jwt,
    /// Custom pattern or dictionary number `n` (index into the engine's custom name table).
    Custom(u16),
}

/// All built-in entities, in tag order.
pub const BUILTIN_ENTITIES: [Entity; 11] = [
    Entity::Ssn,
    Entity::CreditCard,
    Entity::Email,
    Entity::Phone,
    Entity::Iban,
    Entity::IpAddress,
    Entity::AwsKey,
    Entity::ApiKey,
    Entity::GithubToken,
    Entity::PrivateKey,
    Entity::Jwt,
];

/// Longest SSN text: `123-45-6789`.
pub const SSN_BYTES_MAX: usize = 11;
/// Longest card text: 19 digits plus 4 group separators.
pub const CARD_BYTES_MAX: usize = 23;
/// Longest phone text: `+` 15 digits, up to 6 separators and a pair of parentheses.
pub const PHONE_BYTES_MAX: usize = 26;
/// Longest IBAN text: 34 characters plus 8 group spaces.
pub const IBAN_BYTES_MAX: usize = 42;
/// Longest IP text: IPv4-mapped IPv6 `ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`.
pub const IP_BYTES_MAX: usize = 45;
/// Longest email detected: RFC 5321 path limit.
pub const EMAIL_BYTES_MAX: usize = 254;
/// Longest email local part (RFC 5321).
pub const EMAIL_LOCAL_BYTES_MAX: usize = 64;
/// AWS access key id length.
pub const AWS_KEY_BYTES: usize = 20;
/// Secret tokens (API keys, JWTs, GitHub tokens) have no fixed length; the streaming hold-back
/// covers their *recognisable prefix* up to this many bytes, then switches to "swallow the rest of
/// the run" mode (see `stream.rs`).
pub const SECRET_PREFIX_BYTES_MAX: usize = 96;
/// A PEM header line `-----BEGIN ENCRYPTED PRIVATE KEY-----` and a little slack.
pub const PEM_HEADER_BYTES_MAX: usize = 64;
/// A PEM block is searched for its footer at most this far from its header.
pub const PEM_BLOCK_BYTES_MAX: usize = 16 * 1024;

impl Entity {
    /// Tag of a built-in entity (`SSN`, `CREDIT_CARD`, ...); `None` for custom ones.
    pub fn builtin_tag(self) -> Option<&'static str> {
        Some(match self {
            Entity::Ssn => "SSN",
            Entity::CreditCard => "CREDIT_CARD",
            Entity::Email => "EMAIL",
            Entity::Phone => "PHONE",
            Entity::Iban => "IBAN",
            Entity::IpAddress => "IP_ADDRESS",
            Entity::AwsKey => "AWS_KEY",
            Entity::ApiKey => "API_KEY",
            Entity::GithubToken => "GITHUB_TOKEN",
            Entity::PrivateKey => "PRIVATE_KEY",
            Entity::Jwt => "JWT",
            Entity::Custom(_) => return None,
        })
    }

    /// Parse a built-in tag (case-insensitive).
    pub fn from_builtin_tag(tag: &str) -> Option<Entity> {
        BUILTIN_ENTITIES
            .iter()
            .copied()
            .find(|e| e.builtin_tag().is_some_and(|t| t.eq_ignore_ascii_case(tag)))
    }

    /// Upper bound of the matched text length in bytes, as used by the streaming hold-back.
    /// For unbounded secrets this is the recognisable-prefix bound.
    pub fn hold_bytes_max(self) -> usize {
        match self {
            Entity::Ssn => SSN_BYTES_MAX,
            Entity::CreditCard => CARD_BYTES_MAX,
            Entity::Email => EMAIL_BYTES_MAX,
            Entity::Phone => PHONE_BYTES_MAX,
            Entity::Iban => IBAN_BYTES_MAX,
            Entity::IpAddress => IP_BYTES_MAX,
            Entity::AwsKey => AWS_KEY_BYTES,
            Entity::ApiKey | Entity::GithubToken | Entity::Jwt => SECRET_PREFIX_BYTES_MAX,
            Entity::PrivateKey => PEM_HEADER_BYTES_MAX,
            Entity::Custom(_) => 0,
        }
    }

    /// Entities whose text is an unbounded run of token characters; streaming swallows the rest
    /// of the run once the prefix is recognised.
    pub fn is_run_secret(self) -> bool {
        matches!(self, Entity::ApiKey | Entity::GithubToken | Entity::Jwt)
    }
}

/// What to do with a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Replace with `[REDACTED:TAG]`.
    #[default]
    Redact,
    /// Keep the last 4 characters, replace the others with `*`.
    Mask,
    /// Replace with a keyed HMAC-SHA256 pseudonym `[TAG:8 hex]`, stable per value and key.
    Hash,
    /// Refuse the request (requests); redact (responses and streams, which cannot be refused).
    Block,
    /// Count and audit only; the text is forwarded unchanged.
    Log,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Redact => "redact",
            Action::Mask => "mask",
            Action::Hash => "hash",
            Action::Block => "block",
            Action::Log => "log",
        }
    }

    /// Whether the action rewrites the text.
    pub fn rewrites(self) -> bool {
        !matches!(self, Action::Log)
    }
}

/// Traffic direction of a finding, for metrics and audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Request,
    Response,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Request => "request",
            Direction::Response => "response",
        }
    }
}

/// One detection: entity and byte span in the scanned text. Never stores the value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finding {
    pub entity: Entity,
    /// Byte offset of the first byte (char boundary).
    pub start: usize,
    /// Byte offset one past the last byte (char boundary).
    pub end: usize,
    /// Confidence in `[0, 1]` after context adjustment.
    pub confidence: f32,
}
