//! A throwaway PKI: one CA and a `localhost`/`127.0.0.1` leaf, written to a temp dir.
//!
//! `TestPki::new()` makes the CA and a first leaf; `reissue()` signs a new
//! leaf (new key, new serial) with the same CA and replaces the files, so a
//! test can watch the gate pick up a renewed certificate.
#![allow(
    clippy::expect_used,
    reason = "test support: a failure to set up is a broken test machine and should fail loudly"
)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Names the leaf is valid for.
pub const LEAF_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// Installs ring as rustls' process-wide crypto provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub struct TestPki {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The first leaf certificate, PEM (`reissue` returns the newer ones;
    /// this field keeps the first).
    pub cert_pem: String,
    /// The first leaf's private key, PKCS#8 PEM.
    pub key_pem: String,
    /// Holds the files; removed when the `TestPki` is dropped.
    pub dir: tempfile::TempDir,
    /// `<dir>/ca.pem`
    pub ca_file: PathBuf,
    /// `<dir>/cert.pem`: the current leaf (no chain: the CA is the issuer).
    pub cert_file: PathBuf,
    /// `<dir>/key.pem`: the current leaf's key.
    pub key_file: PathBuf,
    ca_cert: Certificate,
    ca_key: KeyPair,
    next_serial: AtomicU64,
}

impl TestPki {
    /// A new CA and a leaf for `localhost` and `127.0.0.1`, written to
    /// `ca.pem`, `cert.pem` and `key.pem` in a fresh temp dir.
    pub fn new() -> Self {
        install_crypto_provider();
        let ca_key = KeyPair::generate().expect("generate CA key");
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = rcgen::DistinguishedName::new();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "ssogate test CA");
        ca_params
            .distinguished_name
            .push(DnType::OrganizationName, "ssogate tests");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca_params.serial_number = Some(SerialNumber::from(1u64));
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
        let ca_pem = ca_cert.pem();

        let dir = tempfile::Builder::new()
            .prefix("ssogate-pki-")
            .tempdir()
            .expect("create temp dir");
        let ca_file = dir.path().join("ca.pem");
        let cert_file = dir.path().join("cert.pem");
        let key_file = dir.path().join("key.pem");
        write_atomically(&ca_file, &ca_pem);

        let mut pki = TestPki {
            ca_pem,
            cert_pem: String::new(),
            key_pem: String::new(),
            dir,
            ca_file,
            cert_file,
            key_file,
            ca_cert,
            ca_key,
            next_serial: AtomicU64::new(2),
        };
        let (cert_pem, key_pem) = pki.reissue();
        pki.cert_pem = cert_pem;
        pki.key_pem = key_pem;
        pki
    }

    /// Signs a NEW leaf (new key, next serial) with the same CA, replaces
    /// `cert_file` and `key_file` (each by an atomic rename: key first, then
    /// certificate, so a reader may briefly see the new key beside the old
    /// certificate and must retry), and returns `(cert_pem, key_pem)`.
    pub fn reissue(&self) -> (String, String) {
        let serial = self.next_serial.fetch_add(1, Ordering::SeqCst);
        let key = KeyPair::generate().expect("generate leaf key");
        let mut params =
            CertificateParams::new(LEAF_NAMES.map(String::from).to_vec()).expect("leaf params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.serial_number = Some(SerialNumber::from(serial));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .expect("sign leaf");
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        write_atomically(&self.key_file, &key_pem);
        write_atomically(&self.cert_file, &cert_pem);
        (cert_pem, key_pem)
    }

    /// The CA as DER, e.g. for a `RootCertStore`.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca_cert.der().clone()
    }

    /// The CA for a reqwest client (`ClientBuilder::add_root_certificate`).
    /// Note that reqwest keeps trusting its built-in roots as well; use
    /// `rustls_client_config` when only this CA may be trusted.
    pub fn reqwest_certificate(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("CA PEM for reqwest")
    }

    /// A rustls client config trusting only this CA and offering `alpn`
    /// (e.g. `&["h2"]`, `&["http/1.1"]`, `&["h2", "http/1.1"]`, or `&[]`
    /// for no ALPN).
    pub fn rustls_client_config(&self, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der()).expect("add test CA to roots");
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("rustls protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(config)
    }

    /// A rustls server config for the CURRENT files (so it follows
    /// `reissue`), offering `alpn` to clients.
    pub fn rustls_server_config(&self, alpn: &[&str]) -> Arc<rustls::ServerConfig> {
        let certs = CertificateDer::pem_file_iter(&self.cert_file)
            .expect("open cert file")
            .collect::<Result<Vec<_>, _>>()
            .expect("parse cert file");
        let key = PrivateKeyDer::from_pem_file(&self.key_file).expect("parse key file");
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("rustls protocol versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server cert and key");
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(config)
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// The DER of the first certificate in a PEM string: compare what a TLS
/// peer presented (`peer_certificates()[0]`) with what `reissue` returned.
pub fn der_of_pem(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM certificate")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    install_crypto_provider();
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Writes `contents` to a sibling temp file and renames it over `path`, so
/// a reader never sees a half-written file.
fn write_atomically(path: &Path, contents: &str) {
    let dir = path.parent().expect("file in a directory");
    let mut tmp = tempfile::NamedTempFile::new_in(dir).expect("temp file");
    tmp.write_all(contents.as_bytes()).expect("write temp file");
    tmp.flush().expect("flush temp file");
    tmp.persist(path).expect("rename over target");
}
