//! The gate's HTTPS: rustls with HTTP/2 and HTTP/1.1 offered by ALPN.

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::config::{TlsFiles, parse_certs, parse_private_key};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("CT_TLS_CERT_FILE: cannot read {0}")]
    ReadCert(String),
    #[error("CT_TLS_KEY_FILE: cannot read {0}")]
    ReadKey(String),
    #[error("CT_TLS_CERT_FILE/CT_TLS_KEY_FILE: {0}")]
    Invalid(String),
}

/// Reads the certificate chain and key and builds an acceptor.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let cert_pem = std::fs::read(&files.cert_file)
        .map_err(|e| TlsError::ReadCert(format!("{}: {e}", files.cert_file.display())))?;
    let key_pem = std::fs::read(&files.key_file)
        .map_err(|e| TlsError::ReadKey(format!("{}: {e}", files.key_file.display())))?;
    let certs = parse_certs(&cert_pem).map_err(TlsError::Invalid)?;
    let key = parse_private_key(&key_pem).map_err(TlsError::Invalid)?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError::Invalid(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| {
        TlsError::Invalid(format!(
            "the certificate and key do not form a usable pair ({e})"
        ))
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
