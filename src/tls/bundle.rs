//! `sluice ca bundle`: the trust bundle an application needs when its HTTPS calls are
//! intercepted (`transparent.intercept_hosts`).
//!
//! Owns: writing one PEM file that holds the system's root certificates *and* the interception
//! CA certificate. That file is what `SSL_CERT_FILE` / `REQUESTS_CA_BUNDLE` must name: those
//! variables replace a client's default trust store, so a file with only the interception CA
//! would break every TLS connection sluice passes through undecrypted (PyPI, a database with
//! TLS, any host not in `intercept_hosts`). `NODE_EXTRA_CA_CERTS` adds to Node's own roots, so
//! the same file serves it too (duplicates are harmless).
//!
//! Where it runs: the `sluice-trust` init container the injector adds (`src/inject`), before
//! the application starts, writing into a memory `emptyDir` the application containers mount.
//! The roots are the ones of the sluice image (Debian's `ca-certificates`, read through
//! `rustls-native-certs`, which also honours `SSL_CERT_FILE`/`SSL_CERT_DIR` in *its* environment
//! for a custom set), so the application's own image needs nothing.
//!
//! Invariants: the interception CA is checked to be a parseable certificate before anything is
//! written; the file is written atomically (temporary name + rename) with mode 0644 (public
//! certificates, read by the application's UID); with `optional`, a missing CA file (the Secret
//! was not created: the configuration intercepts nothing) still yields a bundle of the system
//! roots, so the injected environment variables are harmless. The key is never read.
//!
//! Trade-off: the application then trusts the sluice image's roots instead of its own image's;
//! an application with a private CA in its own store should set `SSL_CERT_FILE` itself (the
//! injector never overrides a variable the container already sets) to a bundle that has its
//! private CA, the public roots it needs and the interception CA.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use rustls::pki_types::CertificateDer;

/// PEM line width (RFC 7468).
const PEM_LINE_CHARS: usize = 64;

/// What [`write_bundle`] put in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleSummary {
    pub path: PathBuf,
    /// System root certificates written.
    pub system_roots: usize,
    /// Interception CA certificates written (0 when the optional CA file was absent).
    pub intercept_certs: usize,
}

/// PEM-encode one DER certificate.
pub fn pem_of(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / PEM_LINE_CHARS + 64);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(PEM_LINE_CHARS) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The system's root certificates (those `rustls-native-certs` finds). Unreadable entries
/// are skipped, as TLS clients do.
pub fn system_roots() -> Vec<CertificateDer<'static>> {
    rustls_native_certs::load_native_certs().certs
}

/// Write `out`: `roots` then the certificates of `ca_cert` (when present).
///
/// `optional`: a missing `ca_cert` is not an error (the bundle is then the roots alone).
pub fn write_bundle(
    ca_cert: &Path,
    out: &Path,
    optional: bool,
    roots: &[CertificateDer<'static>],
) -> Result<BundleSummary, String> {
    let ca_certs = if optional && !ca_cert.exists() {
        Vec::new()
    } else {
        crate::tls::load_certs(&ca_cert.to_string_lossy())?
    };
    if roots.is_empty() && ca_certs.is_empty() {
        return Err(format!(
            "no system root certificates found and no interception CA at {}: the bundle would trust nothing",
            ca_cert.display()
        ));
    }
    let mut pem = String::new();
    for c in roots.iter().chain(ca_certs.iter()) {
        pem.push_str(&pem_of(c));
    }
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{}: not a file name", out.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = crate::tls::ca::write_file(dir, name, &pem, 0o644)?;
    Ok(BundleSummary {
        path,
        system_roots: roots.len(),
        intercept_certs: ca_certs.len(),
    })
}

/// `sluice ca bundle`.
pub fn cmd_bundle(ca_cert: &Path, out: &Path, optional: bool) -> Result<BundleSummary, String> {
    write_bundle(ca_cert, out, optional, &system_roots())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn bundle_holds_the_roots_and_the_ca_and_round_trips() {
        let d = tempfile::tempdir().unwrap();
        crate::tls::ca::cmd_init(&d.path().join("ca"), "sluice.test", 1).unwrap();
        let ca = d.path().join("ca/ca.pem");
        let other = d.path().join("other");
        crate::tls::ca::cmd_init(&other, "other.test", 1).unwrap();
        let root = crate::tls::load_certs(&other.join("ca.pem").to_string_lossy()).unwrap();
        let out = d.path().join("trust/ca-bundle.pem");
        let s = write_bundle(&ca, &out, false, &root).unwrap();
        assert_eq!((s.system_roots, s.intercept_certs), (1, 1));
        let back: Vec<CertificateDer> = CertificateDer::pem_file_iter(&out)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let want_ca = crate::tls::load_certs(&ca.to_string_lossy()).unwrap();
        assert_eq!(back, vec![root[0].clone(), want_ca[0].clone()]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        // Every line of the body is at most 64 characters.
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.lines().all(|l| l.len() <= PEM_LINE_CHARS), "{text}");
    }

    #[test]
    fn a_missing_ca_is_an_error_unless_optional_and_garbage_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let other = d.path().join("other");
        crate::tls::ca::cmd_init(&other, "other.test", 1).unwrap();
        let root = crate::tls::load_certs(&other.join("ca.pem").to_string_lossy()).unwrap();
        let missing = d.path().join("nope/ca.pem");
        let out = d.path().join("b.pem");
        let e = write_bundle(&missing, &out, false, &root).unwrap_err();
        assert!(e.contains("nope/ca.pem"), "{e}");
        assert!(!out.exists(), "nothing written on error");
        let s = write_bundle(&missing, &out, true, &root).unwrap();
        assert_eq!((s.system_roots, s.intercept_certs), (1, 0));
        // Nothing at all to trust: refused.
        assert!(write_bundle(&missing, &out, true, &[]).is_err());
        let junk = d.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let e = write_bundle(&junk, &out, true, &root).unwrap_err();
        assert!(e.contains("junk.pem"), "{e}");
    }
}
