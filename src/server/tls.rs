//! The gate's HTTPS: rustls with HTTP/2 and HTTP/1.1 offered by ALPN, and a
//! certificate that follows its files.
//!
//! The certificate and key are re-read when the files change. The files are
//! polled (a Kubernetes Secret update swaps a `..data` symlink; metadata of
//! the paths, symlinks followed, shows it without an inotify watch). The
//! acceptor's one `ServerConfig` asks a resolver for the certificate at each
//! handshake, so a reload changes what new handshakes present while
//! established TLS sessions keep theirs. A pair that does not load (unreadable,
//! not PEM, key not matching the certificate) is logged and the previous
//! certificate stays in use.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::config::{TlsFiles, parse_certs, parse_private_key};

/// How often the certificate and key files are checked for a change.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("CT_TLS_CERT_FILE: cannot read {0}")]
    ReadCert(String),
    #[error("CT_TLS_KEY_FILE: cannot read {0}")]
    ReadKey(String),
    #[error("CT_TLS_CERT_FILE/CT_TLS_KEY_FILE: {0}")]
    Invalid(String),
}

/// Reads the certificate chain and key and builds an acceptor (with the
/// certificate fixed: use [`Tls`] to follow the files).
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    Tls::load(files).map(|tls| tls.acceptor())
}

/// The gate's TLS: an acceptor whose certificate can be swapped.
pub struct Tls {
    acceptor: TlsAcceptor,
    reloader: Reloader,
}

impl Tls {
    /// Reads the certificate chain and key; fails as [`acceptor`] does.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // Before reading: a change after this point is seen by the next poll.
        let seen = Fingerprint::of(files);
        let key = certified_key(files, &provider)?;
        let current = Arc::new(Current(ArcSwap::from_pointee(key)));
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Invalid(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            reloader: Reloader {
                files: files.clone(),
                provider,
                current,
                seen,
            },
        })
    }

    /// The acceptor; clones share the current certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Checks the files every `interval` (zero: never) and swaps in a
    /// changed pair that loads. Runs until the returned guard is dropped.
    /// Call inside a Tokio runtime.
    pub fn watch(&self, interval: Duration) -> Watch {
        if interval.is_zero() {
            return Watch(None);
        }
        let mut reloader = self.reloader.clone();
        Watch(Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // the first tick is immediate
            loop {
                ticks.tick().await;
                // File system calls block; the files may be on a slow volume.
                reloader = match tokio::task::spawn_blocking(move || {
                    reloader.poll();
                    reloader
                })
                .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        return tracing::error!(error = %e, "TLS certificate reloading stopped");
                    }
                };
            }
        })))
    }

    /// One check of the files, as the watch does it; true when a new
    /// certificate was swapped in.
    pub fn reload_if_changed(&mut self) -> bool {
        self.reloader.poll()
    }
}

/// Stops the polling when dropped.
pub struct Watch(Option<JoinHandle<()>>);

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Hands each handshake the current certificate.
#[derive(Debug)]
struct Current(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

#[derive(Clone)]
struct Reloader {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: Arc<Current>,
    /// The files as last read.
    seen: Fingerprint,
}

impl Reloader {
    /// Re-reads the pair if a file changed; true when a new one is in use.
    fn poll(&mut self) -> bool {
        let now = Fingerprint::of(&self.files);
        if now == self.seen {
            return false;
        }
        // Recorded whatever the outcome: a bad pair is reported once, and
        // read again when a file changes again.
        self.seen = now;
        let key = match certified_key(&self.files, &self.provider) {
            Ok(key) => key,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    cert_file = %self.files.cert_file.display(),
                    key_file = %self.files.key_file.display(),
                    "TLS certificate not reloaded; still serving the previous one"
                );
                return false;
            }
        };
        if key.cert == self.current.0.load().cert {
            return false; // touched, or rewritten with the same certificate
        }
        let leaf = key.cert.first().map(|c| Summary::of(c)).unwrap_or_default();
        self.current.0.store(Arc::new(key));
        tracing::info!(
            cert_file = %self.files.cert_file.display(),
            subject = %leaf.subject,
            serial = %leaf.serial,
            not_after = %leaf.not_after,
            sha256 = %leaf.sha256,
            "TLS certificate reloaded"
        );
        true
    }
}

/// Reads and checks the pair (the key must belong to the first certificate).
fn certified_key(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_pem = std::fs::read(&files.cert_file)
        .map_err(|e| TlsError::ReadCert(format!("{}: {e}", files.cert_file.display())))?;
    let key_pem = std::fs::read(&files.key_file)
        .map_err(|e| TlsError::ReadKey(format!("{}: {e}", files.key_file.display())))?;
    let certs = parse_certs(&cert_pem)
        .map_err(|e| TlsError::Invalid(format!("{} {e}", files.cert_file.display())))?;
    let key = parse_private_key(&key_pem)
        .map_err(|e| TlsError::Invalid(format!("{} {e}", files.key_file.display())))?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| {
        TlsError::Invalid(format!(
            "the certificate in {} and the key in {} do not form a usable pair ({e})",
            files.cert_file.display(),
            files.key_file.display()
        ))
    })
}

/// What tells a changed file: size, modification time and (on Unix) the
/// file's identity, of the file a path leads to after symlinks.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fingerprint([Option<Stamp>; 2]);

#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    id: (u64, u64),
}

impl Fingerprint {
    fn of(files: &TlsFiles) -> Self {
        Fingerprint([stamp(&files.cert_file), stamp(&files.key_file)])
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        id: file_id(&meta),
    })
}

#[cfg(unix)]
fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn file_id(_meta: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

/// What the log tells about a certificate.
#[derive(Debug, Default, PartialEq)]
struct Summary {
    /// The subject's common name, if any.
    subject: String,
    /// Hex.
    serial: String,
    /// RFC 3339.
    not_after: String,
    /// SHA-256 of the DER, hex (as `openssl x509 -fingerprint -sha256` shows).
    sha256: String,
}

impl Summary {
    fn of(der: &[u8]) -> Self {
        use sha2::Digest as _;
        let sha256 = hex(&sha2::Sha256::digest(der));
        match tbs_fields(der) {
            Some((serial, not_after, subject)) => Summary {
                subject,
                serial: hex(serial.strip_prefix(&[0]).unwrap_or(serial)),
                not_after,
                sha256,
            },
            None => Summary {
                sha256,
                ..Summary::default()
            },
        }
    }
}

/// Serial, notAfter and subject common name from a certificate's DER.
fn tbs_fields(der: &[u8]) -> Option<(&[u8], String, String)> {
    let (0x30, cert, _) = tlv(der)? else {
        return None;
    };
    let (0x30, tbs, _) = tlv(cert)? else {
        return None;
    };
    let (mut tag, mut serial, mut rest) = tlv(tbs)?;
    if tag == 0xa0 {
        (tag, serial, rest) = tlv(rest)?; // [0] version
    }
    if tag != 0x02 {
        return None;
    }
    let (_, _, rest) = tlv(rest)?; // signature algorithm
    let (_, _, rest) = tlv(rest)?; // issuer
    let (0x30, validity, rest) = tlv(rest)? else {
        return None;
    };
    let (_, _, validity) = tlv(validity)?; // notBefore
    let (time_tag, not_after, _) = tlv(validity)?;
    let (0x30, subject, _) = tlv(rest)? else {
        return None;
    };
    Some((
        serial,
        rfc3339(time_tag, not_after)?,
        common_name(subject).unwrap_or_default(),
    ))
}

/// The first CN in a Name (a sequence of sets of type-value sequences).
fn common_name(mut name: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    while !name.is_empty() {
        let (_, mut rdn, rest) = tlv(name)?;
        name = rest;
        while !rdn.is_empty() {
            let (_, atv, rest) = tlv(rdn)?;
            rdn = rest;
            let (0x06, oid, value) = tlv(atv)? else {
                return None;
            };
            if oid == CN {
                let (_, text, _) = tlv(value)?;
                return Some(String::from_utf8_lossy(text).into_owned());
            }
        }
    }
    None
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn rfc3339(tag: u8, raw: &[u8]) -> Option<String> {
    let digits = std::str::from_utf8(raw.strip_suffix(b"Z")?).ok()?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let full = match (tag, digits.len()) {
        (0x17, 12) => {
            let century = if digits.get(..2)? >= "50" { "19" } else { "20" };
            format!("{century}{digits}")
        }
        (0x18, 14) => digits.to_owned(),
        _ => return None,
    };
    Some(format!(
        "{}-{}-{}T{}:{}:{}Z",
        full.get(0..4)?,
        full.get(4..6)?,
        full.get(6..8)?,
        full.get(8..10)?,
        full.get(10..12)?,
        full.get(12..14)?
    ))
}

/// One DER element: tag, contents, and what follows.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use rcgen::{CertificateParams, DnType, KeyPair, SerialNumber};

    use super::*;

    fn leaf(cn: &str, serial: u64) -> (String, String, Vec<u8>) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "ssogate tests");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_after = rcgen::date_time_ymd(2049, 12, 31);
        let cert = params.self_signed(&key).expect("self-sign");
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    /// Writes by rename, as a Secret update does.
    fn replace(path: &Path, contents: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, contents).expect("write");
        std::fs::rename(&tmp, path).expect("rename");
    }

    fn files(dir: &Path) -> TlsFiles {
        TlsFiles {
            cert_file: dir.join("tls.crt"),
            key_file: dir.join("tls.key"),
        }
    }

    fn serving(tls: &Tls) -> Vec<u8> {
        tls.reloader.current.0.load().cert[0].to_vec()
    }

    #[test]
    fn summary_names_subject_serial_and_expiry() {
        let (_, _, der) = leaf("gate.example", 0x1234_5678_9abc);
        let s = Summary::of(&der);
        assert_eq!(s.subject, "gate.example");
        assert_eq!(s.serial, "123456789abc");
        assert_eq!(s.not_after, "2049-12-31T00:00:00Z");
        assert_eq!(s.sha256.len(), 64);
        assert_eq!(Summary::of(b"junk").subject, "");
        assert_eq!(
            rfc3339(0x17, b"991231235959Z").as_deref(),
            Some("1999-12-31T23:59:59Z")
        );
        assert_eq!(
            rfc3339(0x18, b"20500101000000Z").as_deref(),
            Some("2050-01-01T00:00:00Z")
        );
    }

    #[test]
    fn a_changed_pair_is_swapped_in_and_a_bad_one_is_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = files(dir.path());
        let (cert1, key1, der1) = leaf("one", 1);
        replace(&files.cert_file, &cert1);
        replace(&files.key_file, &key1);
        let mut tls = Tls::load(&files).expect("first pair");
        assert!(!tls.reload_if_changed(), "nothing changed");
        assert_eq!(serving(&tls), der1);

        // A key that is not the certificate's: kept serving the old pair.
        let (cert2, key2, der2) = leaf("two", 2);
        replace(&files.key_file, &key2);
        assert!(!tls.reload_if_changed());
        assert_eq!(serving(&tls), der1);
        // Then the matching certificate arrives.
        replace(&files.cert_file, &cert2);
        assert!(tls.reload_if_changed());
        assert_eq!(serving(&tls), der2);

        // Garbage, then a missing file: still the second pair.
        replace(&files.cert_file, "not a certificate");
        assert!(!tls.reload_if_changed());
        std::fs::remove_file(&files.key_file).expect("remove");
        assert!(!tls.reload_if_changed());
        assert_eq!(serving(&tls), der2);

        // The same pair rewritten is no reload.
        replace(&files.cert_file, &cert2);
        replace(&files.key_file, &key2);
        assert!(!tls.reload_if_changed());
        assert_eq!(serving(&tls), der2);
    }

    #[cfg(unix)]
    #[test]
    fn a_kubernetes_style_symlink_swap_is_seen() {
        // tls.crt -> ..data/tls.crt, ..data -> ..v1; the update repoints ..data.
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        let version = |name: &str, cn: &str, serial: u64| -> Vec<u8> {
            let (cert, key, der) = leaf(cn, serial);
            std::fs::create_dir(root.join(name)).expect("mkdir");
            std::fs::write(root.join(name).join("tls.crt"), cert).expect("write");
            std::fs::write(root.join(name).join("tls.key"), key).expect("write");
            der
        };
        let der1 = version("..v1", "one", 1);
        std::os::unix::fs::symlink("..v1", root.join("..data")).expect("symlink");
        for f in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(PathBuf::from("..data").join(f), root.join(f))
                .expect("symlink");
        }
        let files = files(root);
        let mut tls = Tls::load(&files).expect("first pair");
        assert_eq!(serving(&tls), der1);

        let der2 = version("..v2", "two", 2);
        std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).expect("symlink");
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap");
        assert!(tls.reload_if_changed());
        assert_eq!(serving(&tls), der2);
    }

    #[test]
    fn acceptor_still_refuses_a_mismatched_pair() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = files(dir.path());
        let (cert1, _, _) = leaf("one", 1);
        let (_, key2, _) = leaf("two", 2);
        replace(&files.cert_file, &cert1);
        replace(&files.key_file, &key2);
        let err = acceptor(&files).err().expect("refused").to_string();
        assert!(err.contains("CT_TLS_CERT_FILE/CT_TLS_KEY_FILE"), "{err}");
        assert!(err.contains("do not form a usable pair"), "{err}");
    }
}
