//! Sealing cookie values: AES-256-GCM under keys derived from `CT_COOKIE_SECRET`.
//!
//! Layout of a sealed value, before URL-safe base64 without padding:
//! `version (1 byte) || nonce (12 bytes) || ciphertext || tag (16 bytes)`.
//! The cookie's logical name is the associated data, so a value moved to
//! another cookie name does not open. The first key seals; every key opens,
//! which is how secrets rotate (see README, "Rotate the cookie secret").

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use rand::RngCore as _;
use sha2::Sha256;

use crate::config::Secret;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Info string binding derived keys to this use, so the raw secret can serve others later.
const KDF_INFO: &[u8] = b"ssogate cookie sealing v1";

/// Seals and opens cookie values.
#[derive(Clone)]
pub struct Sealer {
    ciphers: Vec<Aes256Gcm>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer({} keys)", self.ciphers.len())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cookie sealing failed")]
pub struct SealError;

impl Sealer {
    /// Derives one AEAD key per secret (HKDF-SHA256). At least one secret is required.
    pub fn new(secrets: &[Secret<Vec<u8>>]) -> Result<Self, SealError> {
        let ciphers = secrets
            .iter()
            .map(|s| {
                let mut key = [0u8; 32];
                Hkdf::<Sha256>::new(None, s.expose())
                    .expand(KDF_INFO, &mut key)
                    .map_err(|_| SealError)?;
                Aes256Gcm::new_from_slice(&key).map_err(|_| SealError)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if ciphers.is_empty() {
            return Err(SealError);
        }
        Ok(Self { ciphers })
    }

    /// Encrypts `plaintext` for the cookie called `name`.
    pub fn seal(&self, name: &str, plaintext: &[u8]) -> Result<String, SealError> {
        let cipher = self.ciphers.first().ok_or(SealError)?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| SealError)?;
        let mut raw = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        raw.push(VERSION);
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&ct);
        Ok(URL_SAFE_NO_PAD.encode(raw))
    }

    /// Decrypts a value sealed for `name` under any of the keys; `None` for
    /// anything tampered, truncated, foreign or malformed.
    pub fn open(&self, name: &str, sealed: impl AsRef<[u8]>) -> Option<Vec<u8>> {
        let raw = URL_SAFE_NO_PAD.decode(sealed.as_ref()).ok()?;
        if raw.len() < 1 + NONCE_LEN + TAG_LEN || raw[0] != VERSION {
            return None;
        }
        let (nonce, ct) = raw[1..].split_at(NONCE_LEN);
        let nonce = Nonce::from(<[u8; NONCE_LEN]>::try_from(nonce).ok()?);
        self.ciphers.iter().find_map(|cipher| {
            cipher
                .decrypt(
                    &nonce,
                    Payload {
                        msg: ct,
                        aad: name.as_bytes(),
                    },
                )
                .ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> Secret<Vec<u8>> {
        Secret::new(vec![b; 32])
    }

    #[test]
    fn round_trip_and_name_binding() {
        let s = Sealer::new(&[key(1)]).unwrap();
        let v = s.seal("a", b"hello").unwrap();
        assert_eq!(s.open("a", &v).as_deref(), Some(&b"hello"[..]));
        assert_eq!(
            s.open("b", &v),
            None,
            "a value moved to another cookie must not open"
        );
    }

    #[test]
    fn rotation_first_key_seals_all_keys_open() {
        let old = Sealer::new(&[key(1)]).unwrap();
        let rotated = Sealer::new(&[key(2), key(1)]).unwrap();
        let retired = Sealer::new(&[key(2)]).unwrap();
        let by_old = old.seal("n", b"x").unwrap();
        assert_eq!(rotated.open("n", &by_old).as_deref(), Some(&b"x"[..]));
        let by_new = rotated.seal("n", b"y").unwrap();
        assert_eq!(old.open("n", &by_new), None, "the new key seals");
        assert_eq!(
            retired.open("n", &by_old),
            None,
            "a dropped key no longer opens"
        );
    }

    #[test]
    fn foreign_key_and_garbage_do_not_open() {
        let a = Sealer::new(&[key(1)]).unwrap();
        let b = Sealer::new(&[key(9)]).unwrap();
        let v = a.seal("n", b"x").unwrap();
        assert_eq!(b.open("n", &v), None);
        for junk in ["", "AA", "!!!!", &"A".repeat(100), &v[..v.len() - 2]] {
            assert_eq!(a.open("n", junk), None);
        }
    }

    proptest! {
        #[test]
        fn any_plaintext_round_trips(data in proptest::collection::vec(any::<u8>(), 0..2048), name in "[a-z_-]{1,20}") {
            let s = Sealer::new(&[key(3)]).unwrap();
            let v = s.seal(&name, &data).unwrap();
            prop_assert_eq!(s.open(&name, &v), Some(data));
        }

        #[test]
        fn any_single_byte_change_is_rejected(data in proptest::collection::vec(any::<u8>(), 1..256), pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let s = Sealer::new(&[key(3)]).unwrap();
            let v = s.seal("n", &data).unwrap();
            let mut raw = URL_SAFE_NO_PAD.decode(&v).unwrap();
            let i = pos.index(raw.len());
            raw[i] ^= flip;
            prop_assert_eq!(s.open("n", URL_SAFE_NO_PAD.encode(raw)), None);
        }
    }
}
