//! TLS with rustls (the `ring` provider): the server's certificate and key, and what a connector
//! (worker, task client, observer) trusts.
//!
//! - [`ServerTls`] loads a PEM certificate chain and private key; the server then accepts TLS on
//!   its one port next to plain connections (see [`crate::server`]).
//! - [`ClientTls`] trusts either the roots of a PEM file ([`ClientTls::ca_file`], names checked
//!   as usual) or exactly one certificate ([`ClientTls::pinned_file`], for self-signed server
//!   certificates: the name is not checked, the handshake signature is).
//!
//! Invariants:
//! - TLS never replaces the Colony handshake: a peer still proves the shared secret inside the
//!   TLS stream. TLS adds confidentiality and the server's identity.
//! - Every config names its crypto provider explicitly, so no process-wide default is needed.
//! - Errors name the file they came from.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::{
    self, CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{}: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the configuration (a key that does not match the certificate, ...).
    #[error("tls configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The host name is not a valid TLS server name.
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn pem_error(path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Every certificate in a PEM file, in order (at least one).
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no CERTIFICATE section"));
    }
    Ok(certs)
}

/// The server's side: a certificate chain and its private key.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    /// Loads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or
    /// SEC1).
    ///
    /// # Errors
    /// [`TlsError::Pem`] if a file cannot be read or holds no certificate or key;
    /// [`TlsError::Config`] if rustls refuses them (say, the key does not match).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let certs = load_certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, e))?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}

/// What a connector trusts when it reaches a server over TLS (`tls://` or `wss://`).
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<String>,
    what: &'static str,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("trust", &self.what)
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl ClientTls {
    /// Trusts the certificate authorities in a PEM file (a self-signed server certificate may
    /// serve as its own authority). The server's name must match its certificate.
    ///
    /// # Errors
    /// [`TlsError::Pem`] if the file cannot be read, holds no certificate, or one is not a
    /// usable authority; [`TlsError::Config`].
    pub fn ca_file(path: impl AsRef<Path>) -> Result<Self, TlsError> {
        let path = path.as_ref();
        let mut roots = RootCertStore::empty();
        for cert in load_certs(path)? {
            roots.add(cert).map_err(|e| pem_error(path, e))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls {
            config: Arc::new(config),
            server_name: None,
            what: "ca file",
        })
    }

    /// Trusts exactly the (first) certificate of a PEM file, whatever its name or issuer: for a
    /// server with a self-signed certificate copied to its workers. The server must still prove
    /// it holds the matching key.
    ///
    /// # Errors
    /// [`TlsError::Pem`] if the file cannot be read or holds no certificate;
    /// [`TlsError::Config`].
    pub fn pinned_file(path: impl AsRef<Path>) -> Result<Self, TlsError> {
        let path = path.as_ref();
        let cert = load_certs(path)?.swap_remove(0);
        Self::pinned(cert.as_ref())
    }

    /// As [`pinned_file`](Self::pinned_file), from the certificate's DER bytes.
    ///
    /// # Errors
    /// [`TlsError::Config`].
    pub fn pinned(der: &[u8]) -> Result<Self, TlsError> {
        let provider = provider();
        let verifier = Arc::new(Pinned {
            cert: CertificateDer::from(der.to_vec()),
            provider: Arc::clone(&provider),
        });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(ClientTls {
            config: Arc::new(config),
            server_name: None,
            what: "pinned certificate",
        })
    }

    /// Checks the server's certificate against `name` instead of the host of the URL (for a
    /// server reached by an address its certificate does not name).
    #[must_use]
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// A connector and the name to present for `host`.
    pub(crate) fn connector(
        &self,
        host: &str,
    ) -> Result<(TlsConnector, ServerName<'static>), TlsError> {
        let name = self.server_name.as_deref().unwrap_or(host);
        let name = ServerName::try_from(name.to_owned())
            .map_err(|_| TlsError::ServerName(name.to_owned()))?;
        Ok((TlsConnector::from(Arc::clone(&self.config)), name))
    }
}

/// Accepts exactly one certificate; checks handshake signatures with the provider's algorithms.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = ClientTls::ca_file(&missing).unwrap_err();
        assert!(err.to_string().contains("nope.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = ServerTls::from_pem_files(&empty, &empty).unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
    }

    #[test]
    fn a_key_that_does_not_match_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let one = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let two = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, one.cert.pem()).unwrap();
        std::fs::write(&key, two.signing_key.serialize_pem()).unwrap();
        assert!(ServerTls::from_pem_files(&cert, &key).is_err());
        std::fs::write(&key, one.signing_key.serialize_pem()).unwrap();
        ServerTls::from_pem_files(&cert, &key).unwrap();
        ClientTls::ca_file(&cert).unwrap();
        let pinned = ClientTls::pinned_file(&cert).unwrap();
        assert!(format!("{pinned:?}").contains("pinned"));
        assert!(pinned.connector("not a name!").is_err());
        assert!(pinned.connector("127.0.0.1").is_ok());
    }
}
