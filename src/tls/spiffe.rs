//! SPIFFE identities: parsing a SPIFFE ID, reading it from a certificate's URI SAN, and
//! matching it against an allow list.
//!
//! Owns: the one definition of "the identity of a certificate" used by mTLS (the caller of a
//! request, per-route `allow_identities`) and by upstream peer verification
//! (`tls.peer_identities`).
//!
//! Invariants:
//! * An identity is only taken from a certificate that rustls already verified against the
//!   configured CA; this module never verifies anything, it only reads.
//! * A certificate with more than one `spiffe://` URI SAN has no identity (the SPIFFE X.509-SVID
//!   spec requires exactly one): ambiguity never grants access.
//! * Patterns are exact, or a prefix when they end in `*`. Nothing else (no regex): an allow
//!   list must be readable at a glance.

/// Longest SPIFFE ID accepted, in bytes (the SPIFFE spec's limit).
pub const SPIFFE_ID_BYTES_MAX: usize = 2048;

/// Check the shape of a SPIFFE ID: `spiffe://<trust-domain>/<path>` with a lower-case trust
/// domain of `[a-z0-9.-_]` and a path of non-empty segments without `.`/`..`.
/// A bare `spiffe://<trust-domain>` (a trust domain ID, used on CA certificates) is accepted
/// when `allow_no_path` is set.
pub fn validate(id: &str, allow_no_path: bool) -> Result<(), String> {
    if id.len() > SPIFFE_ID_BYTES_MAX {
        return Err(format!("longer than {SPIFFE_ID_BYTES_MAX} bytes"));
    }
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or_else(|| format!("`{id}` does not start with spiffe://"))?;
    let (td, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if td.is_empty() {
        return Err(format!("`{id}`: empty trust domain"));
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
    {
        return Err(format!(
            "`{id}`: the trust domain may only contain a-z 0-9 - . _"
        ));
    }
    if path.is_empty() {
        return if allow_no_path {
            Ok(())
        } else {
            Err(format!("`{id}`: no path (expected e.g. /ns/<ns>/sa/<sa>)"))
        };
    }
    for seg in path[1..].split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(format!("`{id}`: empty, `.` or `..` path segment"));
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            return Err(format!(
                "`{id}`: path segments may only contain a-z A-Z 0-9 - . _"
            ));
        }
    }
    Ok(())
}

/// The trust domain of a valid SPIFFE ID.
pub fn trust_domain(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("spiffe://")?;
    Some(rest.split('/').next().unwrap_or(rest))
}

/// The SPIFFE ID in a DER certificate's URI SANs: `None` when there is none, more than one, or
/// it is malformed, or the certificate does not parse.
pub fn spiffe_id_of(cert_der: &[u8]) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut found: Option<&str> = None;
    for n in &san.value.general_names {
        if let GeneralName::URI(u) = n {
            if u.starts_with("spiffe://") {
                if found.is_some() {
                    return None;
                }
                found = Some(u);
            }
        }
    }
    let id = found?;
    validate(id, false).ok()?;
    Some(id.to_string())
}

/// One allow-list entry: an exact SPIFFE ID, or a prefix when written with a trailing `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityPattern {
    Exact(String),
    Prefix(String),
}

impl IdentityPattern {
    /// Parse a configured pattern; the error says what is wrong (for `file:line: field:`).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.strip_suffix('*') {
            Some(p) => {
                if !p.starts_with("spiffe://") || p.len() <= "spiffe://".len() {
                    return Err(format!(
                        "`{s}`: a prefix pattern must start with spiffe://<trust-domain>"
                    ));
                }
                if p.contains('*') {
                    return Err(format!("`{s}`: `*` is only allowed at the end"));
                }
                Ok(IdentityPattern::Prefix(p.to_string()))
            }
            None => {
                validate(s, false)?;
                Ok(IdentityPattern::Exact(s.to_string()))
            }
        }
    }

    pub fn matches(&self, id: &str) -> bool {
        match self {
            IdentityPattern::Exact(e) => e == id,
            IdentityPattern::Prefix(p) => id.starts_with(p.as_str()),
        }
    }
}

/// True when `id` matches one of `patterns`.
pub fn allowed(patterns: &[IdentityPattern], id: Option<&str>) -> bool {
    match id {
        Some(id) => patterns.iter().any(|p| p.matches(id)),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_ids() {
        assert!(validate("spiffe://cluster.local/ns/a/sa/b", false).is_ok());
        assert!(validate("spiffe://cluster.local", true).is_ok());
        assert!(validate("spiffe://cluster.local", false).is_err());
        assert!(validate("spiffe://Cluster/ns/a", false).is_err());
        assert!(validate("spiffe:///ns/a", false).is_err());
        assert!(validate("spiffe://td/ns//a", false).is_err());
        assert!(validate("spiffe://td/ns/../a", false).is_err());
        assert!(validate("https://td/ns/a", false).is_err());
        assert!(validate("spiffe://td/ns/a b", false).is_err());
        assert_eq!(trust_domain("spiffe://td.x/ns/a"), Some("td.x"));
    }

    #[test]
    fn patterns_exact_and_prefix() {
        let e = IdentityPattern::parse("spiffe://td/ns/a/sa/b").unwrap();
        assert!(e.matches("spiffe://td/ns/a/sa/b"));
        assert!(!e.matches("spiffe://td/ns/a/sa/bb"));
        let p = IdentityPattern::parse("spiffe://td/ns/a/*").unwrap();
        assert!(p.matches("spiffe://td/ns/a/sa/x"));
        assert!(!p.matches("spiffe://td/ns/ab/sa/x"));
        assert!(IdentityPattern::parse("spiffe://*").is_err());
        assert!(IdentityPattern::parse("spiffe://td/*/x*").is_err());
        assert!(IdentityPattern::parse("td/ns/a").is_err());
        assert!(!allowed(std::slice::from_ref(&p), None));
        assert!(allowed(&[e, p], Some("spiffe://td/ns/a/sa/y")));
    }

    fn cert_with_uris(uris: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        for u in uris {
            p.subject_alt_names
                .push(rcgen::SanType::URI(u.to_string().try_into().unwrap()));
        }
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn extracts_exactly_one_spiffe_uri() {
        let c = cert_with_uris(&["spiffe://td/ns/a/sa/b"]);
        assert_eq!(spiffe_id_of(&c).as_deref(), Some("spiffe://td/ns/a/sa/b"));
        let c = cert_with_uris(&["https://x.example/", "spiffe://td/ns/a/sa/b"]);
        assert_eq!(spiffe_id_of(&c).as_deref(), Some("spiffe://td/ns/a/sa/b"));
        assert_eq!(spiffe_id_of(&cert_with_uris(&[])), None);
        let two = cert_with_uris(&["spiffe://td/ns/a/sa/b", "spiffe://td/ns/a/sa/c"]);
        assert_eq!(spiffe_id_of(&two), None, "two SPIFFE IDs are ambiguous");
        assert_eq!(spiffe_id_of(&cert_with_uris(&["spiffe://td"])), None);
        assert_eq!(spiffe_id_of(b"not a certificate"), None);
    }
}
