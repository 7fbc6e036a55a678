//! Sessions: what the gate remembers about a signed-in browser, behind a
//! [`Store`] trait whose first implementation keeps everything in sealed
//! cookies ([`CookieStore`]). Later stores (Redis) keep the same contract:
//! loading on the request path does no network I/O.

mod codec;
mod cookie_store;
pub mod cookies;
mod login_state;
pub(crate) mod recent;
pub mod refresh;
pub mod revocation;

use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};

pub use codec::{SealError, Sealer};
pub use cookie_store::CookieStore;
pub use cookies::CookieNames;
pub use login_state::{LoginState, LoginStateError, LoginStates};
pub use recent::Recent;
pub use revocation::{Revocation, Revocations};

use crate::config::Secret;
use crate::fields::Fields;
use crate::identity::Identity;

/// A cookie should not outlive this, even with a refresh token (30 days).
pub const MAX_COOKIE_AGE_SECS: u64 = 30 * 24 * 3600;

/// One signed-in browser.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    /// Random id; what revocation lists name.
    #[serde(rename = "i")]
    pub id: String,
    /// The login option that signed the user in.
    #[serde(rename = "o")]
    pub option: String,
    #[serde(rename = "u")]
    pub identity: Identity,
    /// The provider's session id (`sid`), for back-channel logout.
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// When the user signed in (unix seconds).
    #[serde(rename = "c")]
    pub created_at: u64,
    /// When the tokens behind the session were issued (sign-in or last
    /// refresh, unix seconds); with `expires_at` their lifetime, which
    /// decides how early a refresh is due. 0 when unknown.
    #[serde(rename = "n", default)]
    pub issued_at: u64,
    /// When the tokens behind the session expire (unix seconds).
    #[serde(rename = "e")]
    pub expires_at: u64,
    #[serde(
        rename = "r",
        default,
        skip_serializing_if = "Option::is_none",
        with = "secret_opt"
    )]
    pub refresh_token: Option<Secret<String>>,
    /// Kept only as the `id_token_hint` of RP-initiated logout.
    #[serde(
        rename = "t",
        default,
        skip_serializing_if = "Option::is_none",
        with = "secret_opt"
    )]
    pub id_token: Option<Secret<String>>,
}

impl Session {
    /// How long the browser should keep the cookie: the token lifetime, or
    /// longer when a refresh token can extend it.
    pub fn cookie_max_age(&self, now: u64) -> u64 {
        if self.refresh_token.is_some() {
            MAX_COOKIE_AGE_SECS.saturating_sub(now.saturating_sub(self.created_at))
        } else {
            self.expires_at.saturating_sub(now)
        }
    }
}

/// Errors a store reports when saving.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the session is too large to store ({0} bytes sealed)")]
    TooLarge(usize),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("the session could not be encoded")]
    Encode,
}

/// Where sessions live. `load` runs on every request: it must not do network I/O.
pub trait Store: Send + Sync {
    /// The session the request carries, if any opens; expiry is the gate's decision.
    fn load(&self, headers: &HeaderMap) -> Option<Session>;
    /// [`Store::load`] for a request of a connection whose last session is
    /// in `recent`: the request path's form, which may answer from it (see
    /// [`Recent`]); revocation is checked either way.
    /// `fields` are the request's headers in either form (the gate's own
    /// HTTP/1.1 path parses them in place). A store that needs a map for
    /// its look-up may answer `None` for the in-place form: the request is
    /// then served the usual way, which asks with the map.
    fn load_recent(&self, fields: Fields<'_>, recent: &Recent) -> Option<Arc<Session>> {
        let _ = recent;
        match fields {
            Fields::Map(headers) => self.load(headers).map(Arc::new),
            Fields::Spans { .. } => None,
        }
    }
    /// `Set-Cookie` values that make the browser carry `session` from now on.
    fn save(
        &self,
        session: &Session,
        request: &HeaderMap,
        now: u64,
        out: &mut Vec<HeaderValue>,
    ) -> Result<(), StoreError>;
    /// `Set-Cookie` values that remove the session the request carries.
    fn clear(&self, request: &HeaderMap, out: &mut Vec<HeaderValue>);
    /// Ends sessions before their cookies expire: `load` refuses them from
    /// now until `until` (when their cookies would have expired anyway).
    fn revoke(&self, what: Revocation, until: u64, now: u64);
    /// Whether `session` was ended since it was loaded (a live connection
    /// that opens after a sign-out must not outlive it).
    fn is_revoked(&self, session: &Session) -> bool;
}

/// A fresh random id (128 bits, URL-safe base64).
pub fn random_id() -> String {
    use base64::Engine as _;
    let mut b = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

mod secret_opt {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::config::Secret;

    pub fn serialize<S: Serializer>(v: &Option<Secret<String>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref().map(|x| x.expose()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Secret<String>>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(Secret::new))
    }
}
