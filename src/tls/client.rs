//! What upstream TLS origination adds for a mesh: the pod's client certificate (rotating) and
//! verification of the peer by SPIFFE ID.
//!
//! Owns: [`ClientCert`] (a `ResolvesClientCert` backed by an `ArcSwap`, re-read by the watch
//! thread when `client_cert_file`/`client_key_file` change), [`SpiffeVerifier`] (webpki
//! verification whose roots follow `ca_file` rotations, with an optional SPIFFE ID check),
//! and [`client_config`], which `snapshot::build_client_tls` calls to finish an upstream's
//! `ClientConfig`.
//!
//! Invariants:
//! * The chain is always verified against the configured roots. With `peer_identities`, the
//!   host-name check is replaced by a SPIFFE ID check (mesh certificates name workloads, not
//!   hosts; this is what Istio does); without it, the usual host-name check applies.
//! * Rotation (client certificate or CA bundle) applies to new handshakes; pooled connections
//!   keep what they were opened with until they close.
//! * Upstreams without `ca_file` and `peer_identities` use rustls' stock verifier, unchanged.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, Error, SignatureScheme};

use super::reload;
use super::spiffe::{spiffe_id_of, IdentityPattern};

/// The pod's client certificate for one upstream.
pub struct ClientCert {
    upstream: String,
    cert_file: String,
    key_file: String,
    current: ArcSwap<CertifiedKey>,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert")
            .field("upstream", &self.upstream)
            .field("cert_file", &self.cert_file)
            .finish_non_exhaustive()
    }
}

impl ClientCert {
    pub fn load(upstream: &str, cert_file: &str, key_file: &str) -> Result<Arc<Self>, String> {
        let ck = super::load_certified_key(cert_file, key_file)?;
        let c = Arc::new(ClientCert {
            upstream: upstream.to_string(),
            cert_file: cert_file.to_string(),
            key_file: key_file.to_string(),
            current: ArcSwap::from_pointee(ck),
        });
        let r: Arc<dyn reload::Reloadable> = c.clone();
        reload::watch(&r);
        Ok(c)
    }
}

impl ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl reload::Reloadable for ClientCert {
    fn describe(&self) -> String {
        format!("upstream {} client certificate", self.upstream)
    }
    fn files(&self) -> Vec<PathBuf> {
        vec![
            PathBuf::from(&self.cert_file),
            PathBuf::from(&self.key_file),
        ]
    }
    fn reload(&self) -> Result<(), String> {
        let ck = super::load_certified_key(&self.cert_file, &self.key_file)?;
        self.current.store(Arc::new(ck));
        Ok(())
    }
}

/// Where an upstream's trusted roots come from, so they can be rebuilt when `ca_file` rotates.
#[derive(Debug, Clone)]
pub struct RootsSource {
    pub system_roots: bool,
    pub ca_file: String,
}

impl RootsSource {
    pub(crate) fn build(&self) -> Result<rustls::RootCertStore, String> {
        let mut roots = if self.system_roots {
            let mut r = rustls::RootCertStore::empty();
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = r.add(c);
            }
            if r.is_empty() {
                r.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            r
        } else {
            rustls::RootCertStore::empty()
        };
        for c in super::load_certs(&self.ca_file)? {
            roots.add(c).map_err(|e| format!("{}: {e}", self.ca_file))?;
        }
        Ok(roots)
    }
}

/// Verifies the chain with webpki against roots that follow `ca_file` rotations; then either
/// the host name (no `peer_identities`) or the peer's SPIFFE ID instead of it.
#[derive(Debug)]
pub struct SpiffeVerifier {
    upstream: String,
    inner: ArcSwap<Arc<WebPkiServerVerifier>>,
    /// `None`: verify the host name as usual.
    allowed: Option<Vec<IdentityPattern>>,
    roots: Option<RootsSource>,
}

impl reload::Reloadable for SpiffeVerifier {
    fn describe(&self) -> String {
        format!("upstream {} ca_file", self.upstream)
    }
    fn files(&self) -> Vec<PathBuf> {
        self.roots
            .iter()
            .map(|r| PathBuf::from(&r.ca_file))
            .collect()
    }
    fn reload(&self) -> Result<(), String> {
        let Some(src) = &self.roots else {
            return Ok(());
        };
        let roots = src.build()?;
        let v = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), super::provider())
            .build()
            .map_err(|e| e.to_string())?;
        self.inner.store(Arc::new(v));
        Ok(())
    }
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let inner = self.inner.load();
        let res =
            inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        let Some(allowed) = &self.allowed else {
            return res;
        };
        match res {
            // webpki checks the chain before the name: a name error means the chain is good.
            Ok(_)
            | Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => return Err(e),
        }
        let id = spiffe_id_of(end_entity);
        if super::spiffe::allowed(allowed, id.as_deref()) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(PeerIdentityRefused(id))),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.load().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.load().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.load().supported_verify_schemes()
    }
}

#[derive(Debug)]
struct PeerIdentityRefused(Option<String>);

impl std::fmt::Display for PeerIdentityRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(id) => write!(f, "peer identity {id} is not in tls.peer_identities"),
            None => write!(f, "peer certificate has no SPIFFE ID"),
        }
    }
}

impl std::error::Error for PeerIdentityRefused {}

/// Finish an upstream's client config: roots (already assembled by the caller from
/// `roots_source`, when there is a `ca_file`, which is then watched for rotation), optional
/// SPIFFE peer verification, optional client certificate, ALPN `http/1.1`.
pub fn client_config(
    upstream: &str,
    roots: rustls::RootCertStore,
    roots_source: Option<RootsSource>,
    client_cert: Option<(&str, &str)>,
    peer_identities: &[String],
) -> Result<ClientConfig, String> {
    let provider = super::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("upstream {upstream}: tls: {e}"))?;
    let builder = if peer_identities.is_empty() && roots_source.is_none() {
        builder.with_root_certificates(roots)
    } else {
        let allowed = if peer_identities.is_empty() {
            None
        } else {
            Some(
                peer_identities
                    .iter()
                    .map(|p| IdentityPattern::parse(p))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("upstream {upstream}: tls.peer_identities: {e}"))?,
            )
        };
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("upstream {upstream}: tls: {e}"))?;
        let watched = roots_source.is_some();
        let v = Arc::new(SpiffeVerifier {
            upstream: upstream.to_string(),
            inner: ArcSwap::from_pointee(inner),
            allowed,
            roots: roots_source,
        });
        if watched {
            let r: Arc<dyn reload::Reloadable> = v.clone();
            reload::watch(&r);
        }
        builder.dangerous().with_custom_certificate_verifier(v)
    };
    let mut cfg = match client_cert {
        Some((cert, key)) => builder.with_client_cert_resolver(
            ClientCert::load(upstream, cert, key)
                .map_err(|e| format!("upstream {upstream}: tls: {e}"))?,
        ),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}
