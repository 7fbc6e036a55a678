//! Back-channel logout tokens (OpenID Connect Back-Channel Logout 1.0, 2.6):
//! signed by the provider's keys, `iss` and `aud` ours, recently issued, the
//! back-channel `events` member, `sid` or `sub`, no `nonce`, and a `jti` not
//! seen before (remembered for [`JTI_MEMORY_SECS`], bounded).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;

use super::keys::{KeyError, KeySet};
use crate::provider::{LogoutTarget, LogoutTokenError};

pub const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// How old (by `iat`) a logout token may be.
pub const MAX_AGE_SECS: u64 = 300;
/// How long a seen `jti` is remembered (longer than any acceptable token lives).
pub const JTI_MEMORY_SECS: u64 = MAX_AGE_SECS + 600;
pub const MAX_JTIS: usize = 10_000;

#[derive(Deserialize)]
struct Claims {
    iat: u64,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    sid: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    events: Option<serde_json::Value>,
    /// Whether the claim is there at all, even as `null`.
    #[serde(default, deserialize_with = "present")]
    nonce: bool,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

/// `jti`s already used, with when they may be forgotten.
#[derive(Default)]
pub struct SeenJtis(Mutex<HashMap<String, u64>>);

impl SeenJtis {
    /// Records `jti`; false when it was seen before (or the memory is full of live entries).
    fn first_use(&self, jti: &str, now: u64) -> bool {
        let Ok(mut seen) = self.0.lock() else {
            return false;
        };
        seen.retain(|_, until| *until > now);
        if seen.contains_key(jti) || seen.len() >= MAX_JTIS {
            return false;
        }
        seen.insert(jti.to_string(), now + JTI_MEMORY_SECS);
        true
    }
}

pub fn verify(
    keys: &KeySet,
    seen: &SeenJtis,
    token: &str,
    leeway: Duration,
    now: u64,
) -> Result<LogoutTarget, LogoutTokenError> {
    let invalid = |m: &str| LogoutTokenError::Invalid(m.to_string());
    let claims: Claims = keys
        .decode(token, |alg| {
            keys.base_validation(alg).map(|mut v| {
                v.validate_exp = false;
                v.validate_nbf = false;
                v.set_required_spec_claims(&["iss", "aud", "iat"]);
                v
            })
        })
        .map_err(|e| match e {
            KeyError::UnknownKey => LogoutTokenError::UnknownKey,
            KeyError::Invalid(m) => LogoutTokenError::Invalid(m),
        })?;
    let leeway = leeway.as_secs();
    if claims.iat > now + leeway {
        return Err(invalid("issued in the future"));
    }
    if claims.iat + MAX_AGE_SECS + leeway < now {
        return Err(invalid("issued too long ago"));
    }
    if claims.exp.is_some_and(|exp| exp + leeway <= now) {
        return Err(invalid("expired"));
    }
    let has_event = claims
        .events
        .as_ref()
        .and_then(|e| e.get(EVENT))
        .is_some_and(serde_json::Value::is_object);
    if !has_event {
        return Err(invalid(
            "events does not hold the back-channel logout event",
        ));
    }
    if claims.nonce {
        return Err(invalid("a logout token must not carry a nonce"));
    }
    if claims.sid.is_none() && claims.sub.is_none() {
        return Err(invalid("neither sid nor sub"));
    }
    let jti = claims
        .jti
        .as_deref()
        .filter(|j| !j.is_empty())
        .ok_or_else(|| invalid("no jti"))?;
    if !seen.first_use(jti, now) {
        return Err(invalid("jti already used"));
    }
    Ok(LogoutTarget {
        sid: claims.sid,
        sub: claims.sub,
    })
}
