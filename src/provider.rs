//! Login options: the seam every way of signing in plugs into.
//!
//! The core (routes, gate, proxy) talks only to [`LoginOption`]; it never
//! matches on a protocol. OpenID Connect is the first option; SAML, LDAP and
//! CAS, and several OIDC providers at once, are further implementations and
//! further variants of [`Config`], registered in one [`Registry`].

pub mod oidc;
pub mod recent_bearer;

use std::sync::Arc;

use async_trait::async_trait;

use crate::identity::Identity;
use crate::session::{LoginState, Session};

/// How a login option is configured; `build` makes the runtime object.
#[derive(Clone, Debug)]
pub enum Config {
    Oidc(oidc::Settings),
}

impl Config {
    /// Builds the option and starts whatever background loading it needs
    /// (discovery, keys). Must run inside a tokio runtime.
    pub fn build(
        &self,
        callback_url: &str,
        metrics: &crate::telemetry::metrics::Metrics,
    ) -> Result<Arc<dyn LoginOption>, ProviderError> {
        match self {
            Config::Oidc(settings) => Ok(Arc::new(oidc::Oidc::start(
                settings.clone(),
                callback_url.to_string(),
                metrics.jwks_fetches.clone(),
            )?)),
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Config::Oidc(s) => &s.id,
        }
    }
}

/// Where to send the browser to sign in, and what to remember meanwhile.
#[derive(Debug)]
pub struct Begin {
    pub redirect_to: String,
    pub state: LoginState,
}

/// What the provider sent back to the callback (query parameters).
#[derive(Debug, Default)]
pub struct Callback {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// A completed sign-in: everything a session is made from.
#[derive(Debug)]
pub struct SignedIn {
    pub identity: Identity,
    pub sid: Option<String>,
    pub expires_at: u64,
    pub refresh_token: Option<String>,
    pub id_token: Option<String>,
}

/// The outcome of checking an `Authorization: Bearer` token.
#[derive(Debug)]
pub enum Bearer {
    Valid {
        /// Shared with the cache of verified tokens: a repeat costs no copy.
        identity: std::sync::Arc<Identity>,
        expires_at: u64,
        /// Until when this answer may be reused without checking the
        /// token again (its expiry with the leeway, and an age limit); key
        /// changes ([`keys_epoch`]) end it sooner.
        until: u64,
    },
    /// Signed with a key the option does not know (yet): reload keys, try again.
    UnknownKey,
    Invalid(String),
    /// This option does not accept bearer tokens.
    NotAccepted,
}

/// Counts changes of any option's signing keys (a reload or a rediscovery),
/// so an answer remembered outside an option's own cache of verified tokens
/// (see [`recent_bearer`]) ends with the keys it was checked with.
static KEYS_EPOCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The current key epoch: read it before checking a token.
pub fn keys_epoch() -> u64 {
    KEYS_EPOCH.load(std::sync::atomic::Ordering::Acquire)
}

/// Called by an option once it has new signing keys in place.
pub fn keys_changed() {
    KEYS_EPOCH.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
}

/// New tokens from a refresh.
#[derive(Debug)]
pub struct Refreshed {
    pub expires_at: u64,
    /// A rotated refresh token; `None` keeps the old one.
    pub refresh_token: Option<String>,
    /// A new ID token (kept as the logout hint); `None` keeps the old one.
    pub id_token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The provider refused the refresh token (`invalid_grant`): the session is over.
    #[error("the provider refused the refresh token")]
    Rejected,
    /// The provider could not be asked or answered nonsense; try again later.
    #[error("the refresh could not be performed: {0}")]
    Unavailable(String),
    /// This option does not refresh (for OIDC: `CT_SSO_TOKEN_ENDPT` is unset).
    #[error("this login option does not refresh sessions")]
    Unsupported,
}

/// Who a verified back-channel logout token signs out.
#[derive(Debug, PartialEq, Eq)]
pub struct LogoutTarget {
    pub sid: Option<String>,
    pub sub: Option<String>,
}

/// Why a logout token was refused, or that the keys should be reloaded first.
#[derive(Debug, PartialEq, Eq)]
pub enum LogoutTokenError {
    UnknownKey,
    Invalid(String),
}

/// What can go wrong talking to a provider; [`crate::respond`] maps each to a response.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("the identity provider is not ready yet")]
    NotReady,
    #[error("the identity provider refused the sign-in: {0}")]
    Denied(String),
    #[error("the sign-in code was already used or has expired")]
    InvalidGrant,
    #[error("the identity provider could not be reached: {0}")]
    Unreachable(String),
    #[error("the identity provider sent an unusable answer: {0}")]
    BadResponse(String),
    #[error("the identity provider's token failed validation: {0}")]
    InvalidToken(String),
    #[error("the login option is misconfigured: {0}")]
    Config(String),
}

/// One way of signing in. `begin` and `complete` are required; the rest has
/// defaults so simple options stay simple.
#[async_trait]
pub trait LoginOption: Send + Sync {
    /// Stable id, stored in sessions and sign-in state.
    fn id(&self) -> &str;

    /// Whether the option can sign people in now (discovery and keys loaded).
    fn is_ready(&self) -> bool;

    /// Starts a sign-in that lands on `return_to` afterwards.
    fn begin(&self, return_to: &str, now: u64) -> Result<Begin, ProviderError>;

    /// Finishes a sign-in from the provider's answer and the remembered state.
    async fn complete(
        &self,
        callback: &Callback,
        state: &LoginState,
    ) -> Result<SignedIn, ProviderError>;

    /// Checks a bearer token without network I/O.
    fn verify_bearer(&self, _token: &str, _now: u64) -> Bearer {
        Bearer::NotAccepted
    }

    /// Re-reads signing keys after an unknown key id; rate-limited by the option.
    async fn reload_keys(&self) {}

    /// Whether sessions of this option can be refreshed.
    fn can_refresh(&self) -> bool {
        false
    }

    /// Exchanges the session's refresh token for new tokens.
    async fn refresh(&self, _session: &Session) -> Result<Refreshed, RefreshError> {
        Err(RefreshError::Unsupported)
    }

    /// Validates a back-channel logout token (OpenID Connect Back-Channel Logout 1.0).
    fn verify_logout_token(
        &self,
        _token: &str,
        _now: u64,
    ) -> Result<LogoutTarget, LogoutTokenError> {
        Err(LogoutTokenError::Invalid(
            "this login option does not accept logout tokens".into(),
        ))
    }

    /// Where to send the browser to end the provider's session as well.
    /// `state` is echoed back by the provider to the post-logout redirect.
    fn logout_url(
        &self,
        _session: &Session,
        _post_logout_redirect: &str,
        _state: &str,
    ) -> Option<String> {
        None
    }
}

/// The configured login options.
#[derive(Clone, Default)]
pub struct Registry {
    options: Vec<Arc<dyn LoginOption>>,
}

impl Registry {
    pub fn new(options: Vec<Arc<dyn LoginOption>>) -> Self {
        Self { options }
    }

    pub fn is_empty(&self) -> bool {
        self.options.is_empty()
    }

    /// The option a sign-in starts with when none is named.
    pub fn default_option(&self) -> Option<&Arc<dyn LoginOption>> {
        self.options.first()
    }

    pub fn get(&self, id: &str) -> Option<&Arc<dyn LoginOption>> {
        self.options.iter().find(|o| o.id() == id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn LoginOption>> {
        self.options.iter()
    }

    /// Ready when every option is.
    pub fn is_ready(&self) -> bool {
        self.options.iter().all(|o| o.is_ready())
    }
}
