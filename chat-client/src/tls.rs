//! TLS for `https` and `wss`: which roots a server's certificate must chain
//! to. One rustls configuration serves the HTTP calls and the WebSocket.

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use crate::error::{ClientError, Result};

/// The certificate roots the SDK trusts. The default is the Mozilla root
/// program's (webpki roots, built in); [`TlsOptions::native_roots`] takes
/// the platform's instead, and [`TlsOptions::add_root_pem`] adds one more,
/// such as a test's self-signed certificate or a private CA.
#[derive(Clone)]
pub struct TlsOptions {
    roots: RootCertStore,
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("roots", &self.roots.len())
            .finish()
    }
}

impl Default for TlsOptions {
    fn default() -> Self {
        Self::webpki_roots()
    }
}

impl TlsOptions {
    /// The Mozilla root program's certificates, built into the SDK.
    pub fn webpki_roots() -> Self {
        Self {
            roots: RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        }
    }

    /// The platform's certificate store (on Linux, the system's CA bundle).
    /// Fails if it holds no usable certificate.
    pub fn native_roots() -> Result<Self> {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(ClientError::Config(format!(
                "no usable certificate in the platform's store ({} errors)",
                found.errors.len()
            )));
        }
        Ok(Self { roots })
    }

    /// No roots at all: add the ones to trust with
    /// [`add_root_pem`](Self::add_root_pem).
    pub fn empty() -> Self {
        Self {
            roots: RootCertStore::empty(),
        }
    }

    /// Also trusts the certificates in `pem` (one or more PEM blocks).
    pub fn add_root_pem(mut self, pem: &[u8]) -> Result<Self> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Config(format!("cannot read the root certificate: {e}")))?;
        if certs.is_empty() {
            return Err(ClientError::Config(
                "the root certificate PEM holds no certificate".into(),
            ));
        }
        for cert in certs {
            self.roots
                .add(cert)
                .map_err(|e| ClientError::Config(format!("unusable root certificate: {e}")))?;
        }
        Ok(self)
    }

    /// The rustls client configuration: these roots, ring's cryptography,
    /// HTTP/1.1 (the WebSocket upgrade needs it).
    pub(crate) fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Config(format!("TLS configuration: {e}")))?
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}
