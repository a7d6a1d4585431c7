//! `sluice ca`: a small certificate authority for development, tests and demos.
//!
//! Owns: creating a mesh CA (`ca init`) and issuing workload certificates whose identity is a
//! SPIFFE ID in the URI SAN (`ca issue`). Production meshes get their certificates from their
//! own CA (cert-manager, SPIRE, istiod); sluice only reads files, so anything that writes PEM
//! files works, and this command is a convenience, not a dependency.
//!
//! Layout of a CA directory: `ca.pem` (certificate) and `ca-key.pem` (PKCS#8 key, mode 0600).
//! A workload directory gets `cert.pem` (leaf), `key.pem` (mode 0600) and `ca.pem` (the bundle
//! to trust peers with).
//!
//! Invariants: the CA certificate carries its trust domain as a SPIFFE trust-domain URI SAN
//! (`spiffe://<td>`), and `ca issue` refuses an ID from another trust domain. Keys are ECDSA
//! P-256 (fast handshakes, small certificates). Files are written to a temporary name and
//! renamed, so a watcher never reads half a file.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::spiffe;

/// Default validity of a CA created by `sluice ca init`, in days.
pub const CA_DAYS_DEFAULT: u32 = 3650;
/// Default validity of a workload certificate issued by `sluice ca issue`, in days.
pub const WORKLOAD_DAYS_DEFAULT: u32 = 30;
/// Backdating of `not_before`, so a peer whose clock is slightly behind accepts a new certificate.
pub const CLOCK_SKEW_SECS: i64 = 300;

/// A loaded CA: its certificate (PEM and DER) and an issuer that can sign with its key.
pub struct Ca {
    pub cert_pem: String,
    pub cert_der: rustls::pki_types::CertificateDer<'static>,
    pub issuer: Issuer<'static, KeyPair>,
    /// From the CA certificate's `spiffe://<td>` URI SAN, when it has one.
    pub trust_domain: Option<String>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// Random positive serial number (RFC 5280: at most 20 octets, positive).
pub fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    for x in &mut b {
        *x = fastrand::u8(..);
    }
    b[0] &= 0x7f;
    b[0] |= 0x01;
    SerialNumber::from_slice(&b)
}

/// Read a CA from a certificate file and a key file (PEM).
pub fn load_ca(cert_file: &Path, key_file: &Path) -> Result<Ca, String> {
    let cert_pem =
        std::fs::read_to_string(cert_file).map_err(|e| format!("{}: {e}", cert_file.display()))?;
    let key_pem =
        std::fs::read_to_string(key_file).map_err(|e| format!("{}: {e}", key_file.display()))?;
    let key = KeyPair::from_pem(&key_pem)
        .map_err(|e| format!("{}: not a usable private key: {e}", key_file.display()))?;
    let der = pem_first_cert(&cert_pem)
        .ok_or_else(|| format!("{}: no CERTIFICATE block", cert_file.display()))?;
    {
        use x509_parser::prelude::*;
        let (_, c) =
            X509Certificate::from_der(&der).map_err(|e| format!("{}: {e}", cert_file.display()))?;
        if !c.is_ca() {
            return Err(format!(
                "{}: not a CA certificate (basicConstraints CA:FALSE)",
                cert_file.display()
            ));
        }
        use rcgen::PublicKeyData;
        if &*c.public_key().subject_public_key.data != key.der_bytes() {
            return Err(format!(
                "{} and {}: the key does not belong to the certificate",
                cert_file.display(),
                key_file.display()
            ));
        }
    }
    let trust_domain = trust_domain_of_ca(&der);
    let issuer = Issuer::from_ca_cert_der(&der.clone().into(), key)
        .map_err(|e| format!("{}: {e}", cert_file.display()))?;
    Ok(Ca {
        cert_pem,
        cert_der: der.into(),
        issuer,
        trust_domain,
    })
}

fn pem_first_cert(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()
        .map(|c| c.to_vec())
}

fn trust_domain_of_ca(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, c) = X509Certificate::from_der(der).ok()?;
    let san = c.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) if u.starts_with("spiffe://") && !u[9..].contains('/') => {
            Some(u[9..].to_string())
        }
        _ => None,
    })
}

/// Create a CA: returns (certificate PEM, key PEM).
pub fn create_ca(trust_domain: &str, days: u32) -> Result<(String, String), String> {
    spiffe::validate(&format!("spiffe://{trust_domain}"), true)
        .map_err(|e| format!("--trust-domain: {e}"))?;
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "sluice");
    dn.push(DnType::CommonName, format!("sluice mesh CA {trust_domain}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{trust_domain}")
            .try_into()
            .map_err(|e| format!("{e}"))?,
    )];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::seconds(CLOCK_SKEW_SECS);
    p.not_after = now + Duration::days(days as i64);
    p.serial_number = Some(random_serial());
    let cert = p.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Issue a workload certificate: returns (certificate PEM, key PEM). Usable as a server and a
/// client certificate (both extended key usages), as in Istio and SPIRE.
pub fn issue_workload(
    ca: &Ca,
    spiffe_id: &str,
    dns: &[String],
    days: u32,
) -> Result<(String, String), String> {
    spiffe::validate(spiffe_id, false).map_err(|e| format!("--spiffe: {e}"))?;
    if let (Some(td), Some(want)) = (spiffe::trust_domain(spiffe_id), &ca.trust_domain) {
        if td != want {
            return Err(format!(
                "--spiffe: trust domain `{td}` is not the CA's trust domain `{want}`"
            ));
        }
    }
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut p = CertificateParams::new(dns.to_vec()).map_err(|e| format!("--dns: {e}"))?;
    p.subject_alt_names.push(SanType::URI(
        spiffe_id
            .to_string()
            .try_into()
            .map_err(|e| format!("{e}"))?,
    ));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "sluice");
    dn.push(
        DnType::CommonName,
        spiffe_id.rsplit('/').next().unwrap_or(""),
    );
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::seconds(CLOCK_SKEW_SECS);
    p.not_after = now + Duration::days(days as i64);
    p.serial_number = Some(random_serial());
    let cert = p.signed_by(&key, &ca.issuer).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Write `data` to `dir/name` atomically (temporary file + rename), with `mode`.
pub fn write_file(dir: &Path, name: &str, data: &str, mode: u32) -> Result<PathBuf, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(data.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// `sluice ca init`.
pub fn cmd_init(out: &Path, trust_domain: &str, days: u32) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    if out.join("ca-key.pem").exists() {
        return Err(format!(
            "{}: already holds a CA key; refusing to overwrite it",
            out.join("ca-key.pem").display()
        ));
    }
    let (cert, key) = create_ca(trust_domain, days)?;
    Ok(vec![
        write_file(out, "ca-key.pem", &key, 0o600)?,
        write_file(out, "ca.pem", &cert, 0o644)?,
    ])
}

/// `sluice ca issue`.
pub fn cmd_issue(
    ca_dir: &Path,
    spiffe_id: &str,
    dns: &[String],
    out: &Path,
    days: u32,
) -> Result<Vec<PathBuf>, String> {
    let ca = load_ca(&ca_dir.join("ca.pem"), &ca_dir.join("ca-key.pem"))?;
    let (cert, key) = issue_workload(&ca, spiffe_id, dns, days)?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    // The key first: a watcher that sees the new certificate then finds its key in place.
    Ok(vec![
        write_file(out, "key.pem", &key, 0o600)?,
        write_file(out, "cert.pem", &cert, 0o644)?,
        write_file(out, "ca.pem", &ca.cert_pem, 0o644)?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_issue_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let ca_dir = d.path().join("ca");
        cmd_init(&ca_dir, "cluster.local", 10).unwrap();
        assert!(
            cmd_init(&ca_dir, "cluster.local", 10).is_err(),
            "no overwrite"
        );
        let w = d.path().join("w");
        cmd_issue(
            &ca_dir,
            "spiffe://cluster.local/ns/app/sa/client",
            &["client.local".into()],
            &w,
            1,
        )
        .unwrap();
        let cert = std::fs::read(w.join("cert.pem")).unwrap();
        let der = pem_first_cert(std::str::from_utf8(&cert).unwrap()).unwrap();
        assert_eq!(
            spiffe::spiffe_id_of(&der).as_deref(),
            Some("spiffe://cluster.local/ns/app/sa/client")
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(w.join("key.pem")).unwrap().permissions();
        assert_eq!(mode.mode() & 0o777, 0o600);
        // Another trust domain is refused.
        let e = cmd_issue(&ca_dir, "spiffe://other/ns/a/sa/b", &[], &w, 1).unwrap_err();
        assert!(e.contains("trust domain"), "{e}");
        let e = cmd_issue(&ca_dir, "spiffe://cluster.local", &[], &w, 1).unwrap_err();
        assert!(e.contains("--spiffe"), "{e}");
    }

    #[test]
    fn ca_key_mismatch_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        cmd_init(&d.path().join("a"), "td", 1).unwrap();
        cmd_init(&d.path().join("b"), "td", 1).unwrap();
        let e = load_ca(&d.path().join("a/ca.pem"), &d.path().join("b/ca-key.pem")).unwrap_err();
        assert!(e.contains("does not belong"), "{e}");
        let e = load_ca(
            &d.path().join("a/ca-key.pem"),
            &d.path().join("a/ca-key.pem"),
        )
        .unwrap_err();
        assert!(e.contains("no CERTIFICATE"), "{e}");
    }
}
