//! TLS interception certificates: a leaf certificate per SNI, minted on demand from a
//! configured CA and served through rustls' [`ResolvesServerCert`].
//!
//! Owns: [`Minter`] (the CA, one leaf key, the validity policy) and the per-core leaf cache.
//!
//! Invariants and trade-offs:
//! * Leaves are short-lived ([`LEAF_TTL_SECS_DEFAULT`], 24 h) and re-minted when less than
//!   [`LEAF_RENEW_BEFORE_SECS`] remain, so a cached leaf is never served close to expiry.
//! * The cache is per core (a `thread_local`, since `resolve` runs on the worker that
//!   handshakes): no lock on the handshake path. The price is that each core mints its own
//!   leaf for a host (one ECDSA signature, ~50 µs, once per host per core per day).
//! * The cache is bounded ([`LEAF_CACHE_ENTRIES_MAX`] per core): when full, expired entries
//!   go first, then the entry closest to expiry. Keyed by (minter id, SNI), so a rotated CA
//!   (a new `Minter`) never serves leaves signed by the old one.
//! * One ECDSA P-256 key is shared by all leaves of a `Minter` (generated in memory, never
//!   written): signing a certificate is cheap, generating a key per host is not needed since
//!   the trust decision rests on the CA.
//! * No SNI, no certificate: the handshake fails (`no_sni`), rather than guessing a name.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::{CertifiedKey, SigningKey};
use time::{Duration, OffsetDateTime};

use super::ca::{load_ca, random_serial, Ca, CLOCK_SKEW_SECS};

/// Default lifetime of a minted leaf certificate, in seconds.
pub const LEAF_TTL_SECS_DEFAULT: u64 = 24 * 3600;
/// A cached leaf with less than this left is minted again, in seconds.
pub const LEAF_RENEW_BEFORE_SECS: u64 = 3600;
/// Leaves cached per core.
pub const LEAF_CACHE_ENTRIES_MAX: usize = 1024;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Mints leaf certificates for any SNI, signed by one CA.
pub struct Minter {
    id: u64,
    ca: Ca,
    leaf_key: KeyPair,
    signing_key: Arc<dyn SigningKey>,
    ttl_secs: u64,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("id", &self.id)
            .field("ca", &self.ca)
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

struct Cached {
    key: Arc<CertifiedKey>,
    /// When to mint again (expiry minus the renewal margin).
    renew_at: Instant,
}

thread_local! {
    static CACHE: RefCell<HashMap<(u64, String), Cached>> = RefCell::new(HashMap::new());
}

impl Minter {
    /// Load the CA from files and make a leaf key.
    pub fn from_files(
        cert_file: PathBuf,
        key_file: PathBuf,
        ttl_secs: u64,
    ) -> Result<Self, String> {
        let ca = load_ca(&cert_file, &key_file)?;
        let leaf_key = KeyPair::generate().map_err(|e| format!("leaf key: {e}"))?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let signing_key = super::provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| format!("leaf key: {e}"))?;
        if ttl_secs <= LEAF_RENEW_BEFORE_SECS {
            return Err(format!(
                "leaf lifetime {ttl_secs} s must be longer than the renewal margin {LEAF_RENEW_BEFORE_SECS} s"
            ));
        }
        Ok(Minter {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            ca,
            leaf_key,
            signing_key,
            ttl_secs,
            cert_file,
            key_file,
        })
    }

    /// The CA certificate (DER) the leaves chain to.
    pub fn ca_der(&self) -> &rustls::pki_types::CertificateDer<'static> {
        &self.ca.cert_der
    }

    /// Mint a fresh leaf for `name` (a DNS name or an IP address), bypassing the cache.
    pub fn mint(&self, name: &str) -> Result<CertifiedKey, String> {
        let mut p =
            CertificateParams::new(vec![name.to_string()]).map_err(|e| format!("{name}: {e}"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "sluice interception");
        dn.push(DnType::CommonName, name);
        p.distinguished_name = dn;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        p.not_before = now - Duration::seconds(CLOCK_SKEW_SECS);
        p.not_after = now + Duration::seconds(self.ttl_secs as i64);
        p.serial_number = Some(random_serial());
        let cert = p
            .signed_by(&self.leaf_key, &self.ca.issuer)
            .map_err(|e| format!("{name}: {e}"))?;
        super::stats::minted();
        Ok(CertifiedKey::new(
            vec![cert.der().clone(), self.ca.cert_der.clone()],
            self.signing_key.clone(),
        ))
    }

    /// The leaf for `name`: from this core's cache, minted when absent or due for renewal.
    pub fn leaf(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.to_ascii_lowercase();
        let now = Instant::now();
        let hit = CACHE.with(|c| {
            c.borrow()
                .get(&(self.id, name.clone()))
                .filter(|e| e.renew_at > now)
                .map(|e| e.key.clone())
        });
        if hit.is_some() {
            return hit;
        }
        let key = match self.mint(&name) {
            Ok(k) => Arc::new(k),
            Err(e) => {
                tracing::warn!(sni = %name, error = %e, "cannot mint an interception certificate");
                return None;
            }
        };
        let renew_at = now + StdDuration::from_secs(self.ttl_secs - LEAF_RENEW_BEFORE_SECS);
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if c.len() >= LEAF_CACHE_ENTRIES_MAX {
                c.retain(|_, e| e.renew_at > now);
            }
            if c.len() >= LEAF_CACHE_ENTRIES_MAX {
                if let Some(k) = c
                    .iter()
                    .min_by_key(|(_, e)| e.renew_at)
                    .map(|(k, _)| k.clone())
                {
                    c.remove(&k);
                }
            }
            c.insert(
                (self.id, name),
                Cached {
                    key: key.clone(),
                    renew_at,
                },
            );
        });
        Some(key)
    }
}

/// Entries in this thread's leaf cache (tests).
pub fn cache_len() -> usize {
    CACHE.with(|c| c.borrow().len())
}

impl ResolvesServerCert for Minter {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.leaf(hello.server_name()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minter(dir: &std::path::Path) -> Minter {
        super::super::ca::cmd_init(dir, "intercept.test", 1).unwrap();
        Minter::from_files(
            dir.join("ca.pem"),
            dir.join("ca-key.pem"),
            LEAF_TTL_SECS_DEFAULT,
        )
        .unwrap()
    }

    #[test]
    fn minted_leaf_verifies_against_the_ca_for_its_name_only() {
        let d = tempfile::tempdir().unwrap();
        let m = minter(d.path());
        let k = m.mint("api.openai.com").unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(m.ca_der().clone()).unwrap();
        let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            super::super::provider(),
        )
        .build()
        .unwrap();
        use rustls::client::danger::ServerCertVerifier;
        let now = rustls::pki_types::UnixTime::now();
        let name = rustls::pki_types::ServerName::try_from("api.openai.com").unwrap();
        v.verify_server_cert(&k.cert[0], &k.cert[1..], &name, &[], now)
            .expect("minted leaf must verify");
        let other = rustls::pki_types::ServerName::try_from("evil.example").unwrap();
        assert!(v
            .verify_server_cert(&k.cert[0], &k.cert[1..], &other, &[], now)
            .is_err());
        // Validity: about 24 h from now.
        use x509_parser::prelude::*;
        let (_, c) = X509Certificate::from_der(&k.cert[0]).unwrap();
        let life = c.validity().not_after.timestamp() - OffsetDateTime::now_utc().unix_timestamp();
        assert!((LEAF_TTL_SECS_DEFAULT as i64 - life).abs() < 60, "{life}");
        // An IP address gets an IP SAN.
        assert!(m.mint("10.0.0.1").is_ok());
    }

    #[test]
    fn cache_hits_per_name_and_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        let m = minter(d.path());
        let before = super::super::stats::minted_total();
        let a = m.leaf("A.example").unwrap();
        let b = m.leaf("a.example").unwrap();
        assert!(
            Arc::ptr_eq(&a, &b),
            "same name (case-insensitive) is cached"
        );
        let c = m.leaf("b.example").unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(super::super::stats::minted_total() >= before + 2);
        for i in 0..LEAF_CACHE_ENTRIES_MAX + 10 {
            m.leaf(&format!("h{i}.example")).unwrap();
        }
        assert!(cache_len() <= LEAF_CACHE_ENTRIES_MAX);
        // A second minter (a rotated CA) never gets the first one's leaves.
        let d2 = tempfile::tempdir().unwrap();
        let m2 = minter(d2.path());
        let a2 = m2.leaf("a.example").unwrap();
        assert_ne!(a2.cert[1], a.cert[1]);
    }

    #[test]
    fn short_ttl_is_refused() {
        let d = tempfile::tempdir().unwrap();
        super::super::ca::cmd_init(d.path(), "td", 1).unwrap();
        let e = Minter::from_files(d.path().join("ca.pem"), d.path().join("ca-key.pem"), 60)
            .unwrap_err();
        assert!(e.contains("renewal margin"), "{e}");
    }
}
