//! Verifying bearer JWTs with the provider's published keys (jsonwebtoken).
//!
//! Only asymmetric algorithms are accepted, each key only with the algorithms
//! of its own type (an RSA key never verifies an HS256 token, whatever the
//! header says). A token naming a `kid` is checked with that key alone; one
//! without a `kid` is tried against every key of the matching type, at most
//! [`MAX_KEYS_WITHOUT_KID`] of them.

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;
use serde::de::DeserializeOwned;

mod verified;

use self::verified::Verified;
use super::quirks::{self, IssuerRule};
use crate::identity::Identity;
use crate::provider::Bearer;

/// Whose tokens are accepted: the issuer rule and the tenants allowed.
#[derive(Clone, Debug)]
pub struct Trust {
    pub issuer: IssuerRule,
    /// Entra tenant ids (`tid`); empty accepts any.
    pub allowed_tenants: Vec<String>,
}

impl Trust {
    /// Whether the issuer and tenant checks need the token's `iss` and `tid`
    /// after decoding (jsonwebtoken checks an exact issuer by itself).
    fn checks_after_decode(&self) -> bool {
        self.issuer.is_template() || !self.allowed_tenants.is_empty()
    }

    fn accepts(&self, iss: &str, tid: Option<&str>) -> Result<(), KeyError> {
        if !self.issuer.accepts(iss, tid) {
            return Err(KeyError::Invalid("wrong issuer".into()));
        }
        if !quirks::tenant_allowed(&self.allowed_tenants, tid) {
            return Err(KeyError::Invalid("tenant not allowed".into()));
        }
        Ok(())
    }
}

/// A token's claims with the `iss` and `tid` that [`Trust`] checks.
#[derive(Deserialize)]
struct Issued<T> {
    iss: String,
    #[serde(default)]
    tid: Option<String>,
    #[serde(flatten)]
    rest: T,
}

/// Keys tried for a token that names none.
const MAX_KEYS_WITHOUT_KID: usize = 8;
/// Longest bearer token looked at.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

struct Entry {
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// The provider's keys, ready for verification.
pub struct KeySet {
    entries: Vec<Entry>,
    validations: HashMap<Algorithm, Validation>,
    trust: Trust,
    client_id: String,
    /// Bearer tokens that verified, so a repeat costs no signature check.
    verified: Verified,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    /// One audience or several (the client id among them was checked).
    #[serde(default)]
    aud: Option<serde_json::Value>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    preferred_username: Option<String>,
}

fn algorithms_for(jwk: &Jwk) -> Vec<Algorithm> {
    let family: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa.algorithms(),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => &[],
        },
        AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed.algorithms(),
        _ => &[],
    };
    let pinned = jwk
        .common
        .key_algorithm
        .and_then(|ka| Algorithm::from_str(&ka.to_string()).ok());
    family
        .iter()
        .copied()
        .filter(|a| pinned.is_none_or(|p| p == *a))
        .collect()
}

use std::str::FromStr as _;

impl KeySet {
    /// Builds the set from a JWKS document; keys that are symmetric, for
    /// encryption only, or unparsable are skipped.
    pub fn from_jwks(
        jwks: &serde_json::Value,
        trust: Trust,
        client_id: &str,
        leeway: Duration,
    ) -> Self {
        let mut entries = Vec::new();
        for raw in jwks
            .get("keys")
            .and_then(|k| k.as_array())
            .into_iter()
            .flatten()
        {
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else {
                continue;
            };
            if raw
                .get("use")
                .and_then(|u| u.as_str())
                .is_some_and(|u| u != "sig")
            {
                continue;
            }
            let algorithms = algorithms_for(&jwk);
            if algorithms.is_empty() {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            entries.push(Entry {
                kid: jwk.common.key_id.clone(),
                key,
                algorithms,
            });
        }
        let mut validations = HashMap::new();
        for alg in entries.iter().flat_map(|e| e.algorithms.iter().copied()) {
            validations.entry(alg).or_insert_with(|| {
                let mut v = Validation::new(alg);
                if let IssuerRule::Exact(issuer) = &trust.issuer {
                    v.set_issuer(&[issuer]);
                }
                v.set_audience(&[client_id]);
                v.leeway = leeway.as_secs();
                v.validate_nbf = true;
                v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                v
            });
        }
        Self {
            entries,
            validations,
            trust,
            client_id: client_id.to_owned(),
            verified: Verified::new(leeway.as_secs()),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.entries.iter().any(|e| e.kid.as_deref() == Some(kid))
    }

    /// Verifies a bearer token: signature, `iss`, `aud`, `exp`, `nbf`; a
    /// token seen verified before is answered from [`Verified`].
    pub fn verify(&self, token: &str) -> Bearer {
        if token.len() > MAX_TOKEN_LEN {
            return Bearer::Invalid("token too long".into());
        }
        let now = crate::clock::now();
        let key = Verified::key(token);
        if let Some((identity, expires_at, until)) = self.verified.get(&key, now) {
            return Bearer::Valid {
                identity,
                expires_at,
                until,
            };
        }
        let outcome = self.verify_signed(token, now);
        if let Bearer::Valid {
            identity,
            expires_at,
            ..
        } = &outcome
        {
            self.verified.put(key, identity, *expires_at, now);
        }
        outcome
    }

    fn verify_signed(&self, token: &str, now: u64) -> Bearer {
        match self.decode::<Claims>(token, |alg| self.validations.get(&alg).cloned()) {
            // As for ID tokens (OpenID Connect Core 3.1.3.7): a token meant
            // for several parties must name this client as the one it was
            // issued to.
            Ok(c) if c.azp.as_deref().is_some_and(|azp| azp != self.client_id) => {
                Bearer::Invalid("azp is not this client".into())
            }
            Ok(c)
                if c.azp.is_none()
                    && c.aud
                        .as_ref()
                        .is_some_and(|a| a.as_array().is_some_and(|l| l.len() > 1)) =>
            {
                Bearer::Invalid("several audiences but no azp".into())
            }
            Ok(c) => Bearer::Valid {
                identity: std::sync::Arc::new(Identity {
                    sub: c.sub,
                    email: c.email,
                    name: c.name,
                    preferred_username: c.preferred_username,
                }),
                expires_at: c.exp,
                until: self.verified.until(c.exp, now),
            },
            Err(KeyError::UnknownKey) => Bearer::UnknownKey,
            Err(KeyError::Invalid(reason)) => Bearer::Invalid(reason),
        }
    }

    /// Checks a token's signature with the matching published key, then the
    /// claims `validation_for(alg)` asks for (`None` refuses the algorithm),
    /// then the issuer and tenant of [`Trust`].
    pub fn decode<T: DeserializeOwned>(
        &self,
        token: &str,
        validation_for: impl Fn(Algorithm) -> Option<Validation>,
    ) -> Result<T, KeyError> {
        if self.trust.checks_after_decode() {
            let issued: Issued<T> = self.decode_signed(token, validation_for)?;
            self.trust.accepts(&issued.iss, issued.tid.as_deref())?;
            return Ok(issued.rest);
        }
        self.decode_signed(token, validation_for)
    }

    fn decode_signed<T: DeserializeOwned>(
        &self,
        token: &str,
        validation_for: impl Fn(Algorithm) -> Option<Validation>,
    ) -> Result<T, KeyError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(KeyError::Invalid("token too long".into()));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| KeyError::Invalid("not a JWT".into()))?;
        let validation = validation_for(header.alg)
            .filter(|_| {
                self.entries
                    .iter()
                    .any(|e| e.algorithms.contains(&header.alg))
            })
            .ok_or_else(|| KeyError::Invalid("algorithm not accepted".into()))?;
        let candidates: Vec<&Entry> = match header.kid.as_deref() {
            Some(kid) => {
                let found: Vec<&Entry> = self
                    .entries
                    .iter()
                    .filter(|e| e.kid.as_deref() == Some(kid))
                    .collect();
                if found.is_empty() {
                    return Err(KeyError::UnknownKey);
                }
                found
            }
            None => self
                .entries
                .iter()
                .filter(|e| e.algorithms.contains(&header.alg))
                .take(MAX_KEYS_WITHOUT_KID)
                .collect(),
        };
        let mut last = "no key of that type".to_string();
        for entry in candidates
            .into_iter()
            .filter(|e| e.algorithms.contains(&header.alg))
        {
            match jsonwebtoken::decode::<T>(token, &entry.key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => last = describe(&e),
            }
        }
        Err(KeyError::Invalid(last))
    }

    /// The validation a bearer token of `alg` gets (issuer, audience, leeway).
    pub fn base_validation(&self, alg: Algorithm) -> Option<Validation> {
        self.validations.get(&alg).cloned()
    }
}

/// Why [`KeySet::decode`] refused a token.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyError {
    /// No published key has the token's `kid`: reload the keys and try again.
    UnknownKey,
    Invalid(String),
}

/// A short reason, never the token.
fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => "bad signature",
        K::ExpiredSignature => "expired",
        K::ImmatureSignature => "not valid yet",
        K::InvalidIssuer => "wrong issuer",
        K::InvalidAudience => "wrong audience",
        K::InvalidAlgorithm => "algorithm does not match the key",
        K::MissingRequiredClaim(_) => "a required claim is missing",
        _ => "malformed token",
    }
    .to_string()
}
