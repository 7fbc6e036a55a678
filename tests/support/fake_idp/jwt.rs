//! Keys and compact JWS for the fake provider: the throwaway fixture keys,
//! their public JWKs, and a hand-built compact form so a test can sign any
//! header (no `kid`, an unknown `kid`, `alg: none`, a lying `alg`) and any
//! claims.

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Map, Value};
use sha2::Digest as _;

const RSA1: &str = include_str!("../fixtures/rsa1.pem");
const RSA2: &str = include_str!("../fixtures/rsa2.pem");
const RSA3: &str = include_str!("../fixtures/rsa3.pem");
const EC1: &str = include_str!("../fixtures/ec1.pem");

/// What signs a token (and what a JWKS entry publishes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SigningKey {
    /// RSA 2048 (`tests/support/fixtures/rsa1.pem`); default kid `k1`, RS256.
    Rsa1,
    /// RSA 2048, default kid `k2`: not published unless a test publishes it.
    Rsa2,
    /// RSA 2048, default kid `k3`.
    Rsa3,
    /// EC P-256, default kid `e1`, ES256.
    Ec1,
    /// HS256 with the client secret as the key (the classic "alg
    /// confusion" token a relying party must refuse).
    Hs256Secret,
    /// HS256 (or HS384/HS512 per the header) with these bytes.
    Hmac(Vec<u8>),
    /// No signature at all: `header.payload.` (use with `alg: none`).
    None,
}

impl SigningKey {
    /// The kid the fake uses for this key unless told otherwise.
    pub fn default_kid(&self) -> Option<&'static str> {
        match self {
            SigningKey::Rsa1 => Some("k1"),
            SigningKey::Rsa2 => Some("k2"),
            SigningKey::Rsa3 => Some("k3"),
            SigningKey::Ec1 => Some("e1"),
            SigningKey::Hs256Secret | SigningKey::Hmac(_) | SigningKey::None => None,
        }
    }

    /// The JOSE `alg` this key signs with by default.
    pub fn default_alg(&self) -> &'static str {
        match self {
            SigningKey::Rsa1 | SigningKey::Rsa2 | SigningKey::Rsa3 => "RS256",
            SigningKey::Ec1 => "ES256",
            SigningKey::Hs256Secret | SigningKey::Hmac(_) => "HS256",
            SigningKey::None => "none",
        }
    }

    /// The private key, `client_secret` standing in for [`SigningKey::Hs256Secret`].
    fn encoding_key(&self, client_secret: &str) -> Option<EncodingKey> {
        fn cached(cell: &'static OnceLock<EncodingKey>, pem: &str, ec: bool) -> EncodingKey {
            cell.get_or_init(|| {
                if ec {
                    EncodingKey::from_ec_pem(pem.as_bytes()).expect("fixture EC key")
                } else {
                    EncodingKey::from_rsa_pem(pem.as_bytes()).expect("fixture RSA key")
                }
            })
            .clone()
        }
        static K1: OnceLock<EncodingKey> = OnceLock::new();
        static K2: OnceLock<EncodingKey> = OnceLock::new();
        static K3: OnceLock<EncodingKey> = OnceLock::new();
        static E1: OnceLock<EncodingKey> = OnceLock::new();
        Some(match self {
            SigningKey::Rsa1 => cached(&K1, RSA1, false),
            SigningKey::Rsa2 => cached(&K2, RSA2, false),
            SigningKey::Rsa3 => cached(&K3, RSA3, false),
            SigningKey::Ec1 => cached(&E1, EC1, true),
            SigningKey::Hs256Secret => EncodingKey::from_secret(client_secret.as_bytes()),
            SigningKey::Hmac(bytes) => EncodingKey::from_secret(bytes),
            SigningKey::None => return None,
        })
    }

    /// The algorithm actually used: the header's `alg` when it fits the
    /// key's family, else the key's default.
    fn algorithm(&self, header_alg: Option<&str>) -> Option<Algorithm> {
        use Algorithm as A;
        let wanted = header_alg.and_then(|a| a.parse::<Algorithm>().ok());
        let fits = |allowed: &[Algorithm], default: Algorithm| {
            Some(wanted.filter(|w| allowed.contains(w)).unwrap_or(default))
        };
        match self {
            SigningKey::Rsa1 | SigningKey::Rsa2 | SigningKey::Rsa3 => fits(
                &[A::RS256, A::RS384, A::RS512, A::PS256, A::PS384, A::PS512],
                A::RS256,
            ),
            SigningKey::Ec1 => Some(A::ES256),
            SigningKey::Hs256Secret | SigningKey::Hmac(_) => {
                fits(&[A::HS256, A::HS384, A::HS512], A::HS256)
            }
            SigningKey::None => None,
        }
    }

    /// The public JWK (`kty` and key material only; the caller adds
    /// `kid`/`alg`/`use`). `None` for [`SigningKey::None`].
    pub fn public_jwk(&self, client_secret: &str) -> Option<Map<String, Value>> {
        let key = self.encoding_key(client_secret)?;
        let alg = self.algorithm(None)?;
        let jwk = Jwk::from_encoding_key(&key, alg).expect("JWK from a fixture key");
        let Value::Object(mut map) = serde_json::to_value(jwk).expect("JWK as JSON") else {
            unreachable!("a JWK serializes to an object")
        };
        map.retain(|k, v| !v.is_null() && k != "alg");
        Some(map)
    }
}

/// `base64url(JSON)` of a map.
fn b64_json(map: &Map<String, Value>) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(map).expect("JSON"))
}

/// A compact JWS of exactly this header and these claims. The signature
/// follows `key` (with the header's `alg` when it fits the key), so a
/// header may lie about the algorithm. `corrupt` flips a bit of the
/// signature (or, unsigned, appends a bogus one).
pub fn sign_compact(
    header: &Map<String, Value>,
    claims: &Map<String, Value>,
    key: &SigningKey,
    client_secret: &str,
    corrupt: bool,
) -> String {
    let input = format!("{}.{}", b64_json(header), b64_json(claims));
    let header_alg = header.get("alg").and_then(Value::as_str);
    let signature = match (key.encoding_key(client_secret), key.algorithm(header_alg)) {
        (Some(k), Some(alg)) => {
            jsonwebtoken::crypto::sign(input.as_bytes(), &k, alg).expect("sign with fixture key")
        }
        _ => String::new(),
    };
    let signature = if !corrupt {
        signature
    } else if signature.is_empty() {
        "AAAA".to_owned()
    } else {
        let mut raw = URL_SAFE_NO_PAD
            .decode(&signature)
            .expect("own signature is base64url");
        raw[0] ^= 0x01;
        URL_SAFE_NO_PAD.encode(raw)
    };
    format!("{input}.{signature}")
}

/// `at_hash` / `c_hash` (OpenID Connect Core 3.1.3.6): the left half of the
/// hash of `value`, the hash chosen by the JOSE `alg`'s size.
pub fn left_half_hash(value: &str, alg: &str) -> String {
    let digest: Vec<u8> = if alg.ends_with("384") {
        sha2::Sha384::digest(value.as_bytes()).to_vec()
    } else if alg.ends_with("512") {
        sha2::Sha512::digest(value.as_bytes()).to_vec()
    } else {
        sha2::Sha256::digest(value.as_bytes()).to_vec()
    };
    URL_SAFE_NO_PAD.encode(&digest[..digest.len() / 2])
}

/// PKCE S256: `base64url(sha256(verifier))`.
pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

/// A random URL-safe token of 32 bytes.
pub fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}
