//! JWT verification (HS256, RS256, ES256) against keys from a JWKS file, with `ring`.
//!
//! Owns: parsing a JWKS document into verification keys, and verifying a compact JWS: header,
//! signature, then the claims `exp`, `nbf`, `iss`, `aud` and the identity claim.
//!
//! Invariants:
//! * The algorithm is taken from the *key*, never trusted from the token alone: a token's
//!   `alg` must match the key's (`alg` confusion, e.g. an RS256 public key used as an HS256
//!   secret, is impossible), and `none` is never accepted.
//! * Signatures are checked before any claim is looked at; all crypto is `ring`'s.
//! * Nothing here logs or returns the token or key material; errors are reasons only.

use base64::Engine as _;
use ring::signature::{self, UnparsedPublicKey};
use serde::Deserialize;

/// Largest token accepted, in bytes.
pub const TOKEN_BYTES_MAX: usize = 8 * 1024;
/// Largest JWKS file read.
pub const JWKS_BYTES_MAX: usize = 1024 * 1024;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Hs256,
    Rs256,
    Es256,
}

impl Alg {
    fn parse(s: &str) -> Option<Alg> {
        match s {
            "HS256" => Some(Alg::Hs256),
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            _ => None,
        }
    }
}

enum KeyMat {
    Hmac(ring::hmac::Key),
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ec(Vec<u8>),
}

pub struct Key {
    kid: Option<String>,
    alg: Alg,
    mat: KeyMat,
}

/// Why a token was refused (also the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("malformed token")]
    Malformed,
    #[error("unsupported algorithm")]
    Algorithm,
    #[error("no key matches the token")]
    UnknownKey,
    #[error("bad signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong issuer")]
    Issuer,
    #[error("wrong audience")]
    Audience,
    #[error("token has no usable identity claim")]
    Identity,
}

impl JwtError {
    pub fn label(self) -> &'static str {
        match self {
            JwtError::Malformed => "malformed_token",
            JwtError::Algorithm => "bad_algorithm",
            JwtError::UnknownKey => "unknown_key",
            JwtError::Signature => "bad_signature",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::Issuer => "bad_issuer",
            JwtError::Audience => "bad_audience",
            JwtError::Identity => "no_identity",
        }
    }
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    k: Option<String>,
}

fn b64(field: &str, v: &Option<String>) -> Result<Vec<u8>, String> {
    let v = v.as_deref().ok_or_else(|| format!("missing `{field}`"))?;
    B64.decode(v.trim_end_matches('='))
        .map_err(|_| format!("`{field}` is not base64url"))
}

/// Parse a JWKS document. Errors never contain key material.
pub fn parse_jwks(text: &[u8]) -> Result<Vec<Key>, String> {
    let doc: Jwks =
        serde_json::from_slice(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    for (i, k) in doc.keys.iter().enumerate() {
        let at = |e: String| format!("keys[{i}]: {e}");
        let declared = match &k.alg {
            Some(a) => Some(Alg::parse(a).ok_or_else(|| at(format!("unsupported alg `{a}`")))?),
            None => None,
        };
        let (alg, mat) = match k.kty.as_str() {
            "oct" => {
                let s = b64("k", &k.k).map_err(at)?;
                if s.len() < 32 {
                    return Err(at("HS256 secret shorter than 32 bytes".into()));
                }
                (
                    Alg::Hs256,
                    KeyMat::Hmac(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &s)),
                )
            }
            "RSA" => {
                let n = b64("n", &k.n).map_err(at)?;
                let e = b64("e", &k.e).map_err(at)?;
                if n.len() < 256 {
                    return Err(at("RSA modulus shorter than 2048 bits".into()));
                }
                (Alg::Rs256, KeyMat::Rsa { n, e })
            }
            "EC" => {
                if k.crv.as_deref() != Some("P-256") {
                    return Err(at("only EC curve P-256 (ES256) is supported".into()));
                }
                let x = b64("x", &k.x).map_err(at)?;
                let y = b64("y", &k.y).map_err(at)?;
                if x.len() != 32 || y.len() != 32 {
                    return Err(at("P-256 coordinates must be 32 bytes".into()));
                }
                let mut p = Vec::with_capacity(65);
                p.push(4);
                p.extend_from_slice(&x);
                p.extend_from_slice(&y);
                (Alg::Es256, KeyMat::Ec(p))
            }
            other => return Err(at(format!("unsupported kty `{other}`"))),
        };
        if declared.is_some_and(|d| d != alg) {
            return Err(at("alg does not match the key type".into()));
        }
        keys.push(Key {
            kid: k.kid.clone(),
            alg,
            mat,
        });
    }
    if keys.is_empty() {
        return Err("the JWKS has no keys".into());
    }
    Ok(keys)
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// What is checked besides the signature.
pub struct Policy {
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub identity_claim: String,
    pub leeway_s: u64,
    pub require_exp: bool,
}

/// A verified token's identity and validity window (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub identity: String,
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
}

/// Check `exp`/`nbf` of a verified token at `now` (unix seconds).
pub fn check_time(v: &Verified, now: u64, leeway: u64) -> Result<(), JwtError> {
    if let Some(exp) = v.exp {
        if now >= exp.saturating_add(leeway) {
            return Err(JwtError::Expired);
        }
    }
    if let Some(nbf) = v.nbf {
        if now.saturating_add(leeway) < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    Ok(())
}

fn num(v: Option<&serde_json::Value>) -> Result<Option<u64>, JwtError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .filter(|f| *f >= 0.0)
            .map(|f| Some(f as u64))
            .ok_or(JwtError::Malformed),
    }
}

/// Verify a compact JWS and its claims.
pub fn verify(token: &[u8], keys: &[Key], p: &Policy, now: u64) -> Result<Verified, JwtError> {
    if token.len() > TOKEN_BYTES_MAX {
        return Err(JwtError::Malformed);
    }
    let mut it = token.splitn(3, |&b| b == b'.');
    let (Some(h), Some(c), Some(s)) = (it.next(), it.next(), it.next()) else {
        return Err(JwtError::Malformed);
    };
    let header = B64.decode(h).map_err(|_| JwtError::Malformed)?;
    let header: Header = serde_json::from_slice(&header).map_err(|_| JwtError::Malformed)?;
    let alg = Alg::parse(&header.alg).ok_or(JwtError::Algorithm)?;
    let sig = B64.decode(s).map_err(|_| JwtError::Malformed)?;
    let signed = &token[..h.len() + 1 + c.len()];
    let mut matched = false;
    let mut ok = false;
    for k in keys.iter().filter(|k| k.alg == alg) {
        if let (Some(want), Some(have)) = (&header.kid, &k.kid) {
            if want != have {
                continue;
            }
        }
        matched = true;
        ok = match &k.mat {
            KeyMat::Hmac(key) => ring::hmac::verify(key, signed, &sig).is_ok(),
            KeyMat::Rsa { n, e } => signature::RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, signed, &sig)
                .is_ok(),
            KeyMat::Ec(point) => UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(signed, &sig)
                .is_ok(),
        };
        if ok {
            break;
        }
    }
    if !matched {
        return Err(JwtError::UnknownKey);
    }
    if !ok {
        return Err(JwtError::Signature);
    }
    let claims = B64.decode(c).map_err(|_| JwtError::Malformed)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&claims).map_err(|_| JwtError::Malformed)?;
    let claims = claims.as_object().ok_or(JwtError::Malformed)?;
    let v = Verified {
        identity: String::new(),
        exp: num(claims.get("exp"))?,
        nbf: num(claims.get("nbf"))?,
    };
    if p.require_exp && v.exp.is_none() {
        return Err(JwtError::Expired);
    }
    check_time(&v, now, p.leeway_s)?;
    if let Some(iss) = &p.issuer {
        if claims.get("iss").and_then(|x| x.as_str()) != Some(iss.as_str()) {
            return Err(JwtError::Issuer);
        }
    }
    if !p.audiences.is_empty() {
        let ok = match claims.get("aud") {
            Some(serde_json::Value::String(a)) => p.audiences.iter().any(|x| x == a),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_str())
                .any(|a| p.audiences.iter().any(|x| x == a)),
            _ => false,
        };
        if !ok {
            return Err(JwtError::Audience);
        }
    }
    let identity = claims
        .get(&p.identity_claim)
        .and_then(|x| x.as_str())
        .filter(|s| !s.is_empty() && s.len() <= 128)
        .ok_or(JwtError::Identity)?;
    Ok(Verified {
        identity: identity.to_string(),
        ..v
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

    fn hs256(claims: &str, kid: Option<&str>) -> Vec<u8> {
        let header = match kid {
            Some(k) => format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{k}"}}"#),
            None => r#"{"alg":"HS256","typ":"JWT"}"#.to_string(),
        };
        let mut t = format!("{}.{}", B64.encode(header), B64.encode(claims));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
        let sig = ring::hmac::sign(&key, t.as_bytes());
        t.push('.');
        t.push_str(&B64.encode(sig.as_ref()));
        t.into_bytes()
    }

    fn jwks() -> Vec<Key> {
        parse_jwks(
            format!(
                r#"{{"keys":[{{"kty":"oct","kid":"k1","k":"{}"}}]}}"#,
                B64.encode(SECRET)
            )
            .as_bytes(),
        )
        .unwrap()
    }

    fn policy() -> Policy {
        Policy {
            issuer: Some("https://issuer".into()),
            audiences: vec!["sluice".into()],
            identity_claim: "sub".into(),
            leeway_s: 0,
            require_exp: true,
        }
    }

    #[test]
    fn hs256_claims_are_checked() {
        let keys = jwks();
        let p = policy();
        let good = hs256(
            r#"{"sub":"team-a","iss":"https://issuer","aud":["x","sluice"],"exp":2000,"nbf":1000}"#,
            Some("k1"),
        );
        assert_eq!(verify(&good, &keys, &p, 1500).unwrap().identity, "team-a");
        assert_eq!(verify(&good, &keys, &p, 2000), Err(JwtError::Expired));
        assert_eq!(verify(&good, &keys, &p, 999), Err(JwtError::NotYetValid));
        let iss = hs256(
            r#"{"sub":"a","iss":"evil","aud":"sluice","exp":2000}"#,
            None,
        );
        assert_eq!(verify(&iss, &keys, &p, 1500), Err(JwtError::Issuer));
        let aud = hs256(
            r#"{"sub":"a","iss":"https://issuer","aud":"other","exp":2000}"#,
            None,
        );
        assert_eq!(verify(&aud, &keys, &p, 1500), Err(JwtError::Audience));
        let noexp = hs256(r#"{"sub":"a","iss":"https://issuer","aud":"sluice"}"#, None);
        assert_eq!(verify(&noexp, &keys, &p, 1500), Err(JwtError::Expired));
        let kid = hs256(r#"{"sub":"a"}"#, Some("other"));
        assert_eq!(verify(&kid, &keys, &p, 1500), Err(JwtError::UnknownKey));
        // A flipped signature byte.
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 2] = if bad[n - 2] == b'A' { b'B' } else { b'A' };
        assert_eq!(verify(&bad, &keys, &p, 1500), Err(JwtError::Signature));
        // alg none and garbage.
        let none = format!("{}.{}.", B64.encode(r#"{"alg":"none"}"#), B64.encode("{}"));
        assert_eq!(
            verify(none.as_bytes(), &keys, &p, 1500),
            Err(JwtError::Algorithm)
        );
        for g in [&b""[..], b"a.b", b"...", b"\xff.\xff.\xff"] {
            assert!(verify(g, &keys, &p, 1500).is_err());
        }
    }

    #[test]
    fn jwks_errors_name_the_key_not_the_secret() {
        let e = parse_jwks(br#"{"keys":[{"kty":"oct","k":"c2hvcnQ"}]}"#)
            .err()
            .unwrap();
        assert!(e.contains("keys[0]") && !e.contains("c2hvcnQ"), "{e}");
        assert!(parse_jwks(br#"{"keys":[]}"#).is_err());
        assert!(parse_jwks(br#"{"keys":[{"kty":"EC","crv":"P-384","x":"","y":""}]}"#).is_err());
        assert!(parse_jwks(b"nope").is_err());
    }
}
