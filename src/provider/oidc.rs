//! OpenID Connect: authorization code with PKCE (S256), state and nonce,
//! through the `openidconnect` crate; bearer JWTs through [`keys`].

mod claims;
pub mod discovery;
pub mod doctor;
mod http;
pub mod keys;
mod logout_token;
pub mod quirks;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use openidconnect::core::{CoreAuthenticationFlow, CoreIdToken};
use openidconnect::{
    AuthorizationCode, ClientId, CsrfToken, EndSessionUrl, LogoutRequest, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, PostLogoutRedirectUrl, RefreshToken,
    Scope, TokenResponse as _,
};
use tokio::task::JoinHandle;
use url::Url;

use self::discovery::Loaded;
use super::{
    Bearer, Begin, Callback, LoginOption, LogoutTarget, LogoutTokenError, ProviderError,
    RefreshError, Refreshed, SignedIn,
};
use crate::config::Secret;
use crate::session::{LoginState, Session};

/// Shortest time between two key reloads caused by unknown key ids, so a
/// flood of forged tokens cannot hammer the provider.
pub const MIN_KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(10);
/// Session lifetime after a refresh whose answer names no expiry.
const DEFAULT_TOKEN_LIFETIME_SECS: u64 = 300;
const OFFLINE_ACCESS: &str = "offline_access";
/// How often a loaded provider is discovered again (keys rotate).
const REDISCOVER_EVERY: Duration = Duration::from_secs(3600);

pub use self::quirks::Quirks;

/// One OpenID Connect provider, as configured.
#[derive(Clone, Debug)]
pub struct Settings {
    pub id: String,
    /// `CT_SSO_AUTHORIZATION_ENDPT`: the issuer.
    pub issuer: Url,
    /// `CT_SSO_TOKEN_ENDPT`: refresh sessions here; `None` means never refresh.
    pub token_endpoint: Option<Url>,
    pub client_id: String,
    pub client_secret: Secret<String>,
    pub quirks: Quirks,
    pub scopes: Vec<String>,
    /// Extra PEM roots for talking to the provider.
    pub ca_pem: Option<Vec<u8>>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// `CT_SSO_ALLOWED_TENANTS`: Entra tenant ids (`tid`) accepted; empty accepts any.
    pub allowed_tenants: Vec<String>,
    /// `CT_SSO_EMAIL_FALLBACK`: claims read, in order, for the email header
    /// when the token has no `email`; empty by default (no guessing).
    pub email_fallback: Vec<String>,
}

impl Settings {
    /// The issuer as written, without the trailing slash `url` adds to bare origins
    /// (Auth0's issuer, which really ends in `/`, is written with it).
    pub fn issuer_str(&self) -> String {
        let s = self.issuer.as_str();
        if self.issuer.path() == "/" && !s.is_empty() {
            s.trim_end_matches('/').to_string()
        } else {
            s.to_string()
        }
    }
}

struct Inner {
    settings: Settings,
    http: http::Http,
    redirect_uri: String,
    loaded: ArcSwapOption<Loaded>,
    last_key_reload: tokio::sync::Mutex<Option<Instant>>,
    seen_jtis: logout_token::SeenJtis,
}

pub struct Oidc {
    inner: Arc<Inner>,
    loader: JoinHandle<()>,
}

impl Drop for Oidc {
    fn drop(&mut self) {
        self.loader.abort();
    }
}

impl Oidc {
    /// Starts loading the provider in the background; sign-ins wait for it
    /// (`/sso/readyz` says when), retrying with backoff while it is down.
    pub fn start(
        settings: Settings,
        redirect_uri: String,
        jwks_fetches: metrics::Counter,
    ) -> Result<Self, ProviderError> {
        let mut http = http::Http::new(settings.ca_pem.as_deref())?;
        http.jwks_fetches = jwks_fetches;
        let inner = Arc::new(Inner {
            settings,
            http,
            redirect_uri,
            loaded: ArcSwapOption::empty(),
            last_key_reload: tokio::sync::Mutex::new(None),
            seen_jtis: logout_token::SeenJtis::default(),
        });
        let loader = tokio::spawn(load_forever(inner.clone()));
        Ok(Self { inner, loader })
    }

    fn loaded(&self) -> Result<Arc<Loaded>, ProviderError> {
        self.inner.loaded.load_full().ok_or(ProviderError::NotReady)
    }
}

async fn load_forever(inner: Arc<Inner>) {
    let issuer = inner.settings.issuer_str();
    let mut attempt = 0u32;
    loop {
        match discovery::discover(&inner.settings, &inner.http, &inner.redirect_uri).await {
            Ok(loaded) => {
                tracing::info!(%issuer, keys = loaded.keys.len(), "identity provider loaded");
                inner.loaded.store(Some(Arc::new(loaded)));
                super::keys_changed();
                break;
            }
            Err(e) => {
                let wait = discovery::backoff(attempt);
                tracing::warn!(%issuer, error = %e, retry_in_s = wait.as_secs(), "identity provider discovery failed");
                tokio::time::sleep(wait).await;
                attempt = attempt.saturating_add(1);
            }
        }
    }
    loop {
        tokio::time::sleep(REDISCOVER_EVERY).await;
        match discovery::discover(&inner.settings, &inner.http, &inner.redirect_uri).await {
            Ok(loaded) => {
                inner.loaded.store(Some(Arc::new(loaded)));
                super::keys_changed();
            }
            Err(e) => {
                tracing::warn!(%issuer, error = %e, "periodic rediscovery failed; keeping the loaded provider")
            }
        }
    }
}

#[async_trait]
impl LoginOption for Oidc {
    fn id(&self) -> &str {
        &self.inner.settings.id
    }

    fn is_ready(&self) -> bool {
        self.inner.loaded.load().is_some()
    }

    fn begin(&self, return_to: &str, now: u64) -> Result<Begin, ProviderError> {
        let loaded = self.loaded()?;
        let state = CsrfToken::new_random_len(32);
        let nonce = Nonce::new_random_len(32);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (state_c, nonce_c) = (state.clone(), nonce.clone());
        let mut request = loaded
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || state_c,
                move || nonce_c,
            )
            .set_pkce_challenge(challenge);
        // `offline_access` only where the provider lists it (when it lists
        // scopes at all): AD FS has none and issues refresh tokens anyway.
        let offline_ok = loaded
            .metadata
            .scopes_supported()
            .is_none_or(|list| list.iter().any(|s| s.as_str() == OFFLINE_ACCESS));
        for scope in self
            .inner
            .settings
            .scopes
            .iter()
            .filter(|s| *s != "openid" && (offline_ok || *s != OFFLINE_ACCESS))
        {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, _, _) = request.url();
        Ok(Begin {
            redirect_to: url.to_string(),
            state: LoginState {
                state: state.secret().clone(),
                nonce: nonce.secret().clone(),
                pkce_verifier: verifier.secret().clone(),
                return_to: return_to.to_string(),
                option: self.inner.settings.id.clone(),
                created_at: now,
            },
        })
    }

    async fn complete(
        &self,
        callback: &Callback,
        st: &LoginState,
    ) -> Result<SignedIn, ProviderError> {
        let code = callback
            .code
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                ProviderError::BadResponse("the callback carries no authorization code".into())
            })?;
        let settings = &self.inner.settings;
        let loaded = self.loaded()?;
        let response = loaded
            .client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| ProviderError::Config(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(st.pkce_verifier.clone()))
            .request_async(&self.inner.http)
            .await
            .map_err(claims::token_error)?;
        let (loaded, mut signed_in) =
            match claims::validate(settings, &loaded, &response, Some(&st.nonce)) {
                Err(ProviderError::InvalidToken(reason)) if reason == claims::UNKNOWN_KEY => {
                    // The provider may have rotated its keys: reload (rate-limited)
                    // and check the same token once more.
                    self.reload_keys().await;
                    let reloaded = self.loaded()?;
                    let signed_in =
                        claims::validate(settings, &reloaded, &response, Some(&st.nonce))?;
                    (reloaded, signed_in)
                }
                other => (loaded, other?),
            };
        if loaded.has_userinfo
            && (signed_in.identity.email.is_none()
                || signed_in.identity.preferred_username.is_none())
        {
            claims::merge_userinfo(
                &loaded,
                &self.inner.http,
                response.access_token(),
                &mut signed_in,
            )
            .await?;
        }
        claims::apply_quirks(settings, &mut signed_in);
        signed_in.refresh_token = response.refresh_token().map(|t| t.secret().clone());
        if let Some(expires_in) = response.expires_in() {
            signed_in.expires_at = signed_in
                .expires_at
                .min(crate::clock::now().saturating_add(expires_in.as_secs()));
        }
        Ok(signed_in)
    }

    fn can_refresh(&self) -> bool {
        self.inner.settings.token_endpoint.is_some()
    }

    async fn refresh(&self, session: &Session) -> Result<Refreshed, RefreshError> {
        let settings = &self.inner.settings;
        let loaded = self
            .loaded()
            .map_err(|e| RefreshError::Unavailable(e.to_string()))?;
        let client = loaded
            .refresh_client
            .as_ref()
            .ok_or(RefreshError::Unsupported)?;
        let token = session
            .refresh_token
            .as_ref()
            .ok_or(RefreshError::Rejected)?;
        let response = client
            .exchange_refresh_token(&RefreshToken::new(token.expose().clone()))
            .request_async(&self.inner.http)
            .await
            .map_err(|e| match claims::token_error(e) {
                ProviderError::InvalidGrant => RefreshError::Rejected,
                other => RefreshError::Unavailable(other.to_string()),
            })?;
        let now = crate::clock::now();
        let mut expires_at = response
            .expires_in()
            .map(|d| now.saturating_add(d.as_secs()));
        let mut id_token = None;
        if response.id_token().is_some() {
            let validated = match claims::validate(settings, &loaded, &response, None) {
                Err(ProviderError::InvalidToken(reason)) if reason == claims::UNKNOWN_KEY => {
                    self.reload_keys().await;
                    let reloaded = self
                        .loaded()
                        .map_err(|e| RefreshError::Unavailable(e.to_string()))?;
                    claims::validate(settings, &reloaded, &response, None)
                }
                other => other,
            };
            let signed_in = validated.map_err(|e| {
                tracing::warn!(error = %e, "refreshed ID token failed validation; ending the session");
                RefreshError::Rejected
            })?;
            if signed_in.identity.sub != session.identity.sub {
                tracing::warn!("refreshed ID token names another subject; ending the session");
                return Err(RefreshError::Rejected);
            }
            expires_at =
                Some(expires_at.map_or(signed_in.expires_at, |e| e.min(signed_in.expires_at)));
            id_token = signed_in.id_token;
        }
        Ok(Refreshed {
            expires_at: expires_at.unwrap_or(now + DEFAULT_TOKEN_LIFETIME_SECS),
            refresh_token: response.refresh_token().map(|t| t.secret().clone()),
            id_token,
        })
    }

    fn verify_logout_token(&self, token: &str, now: u64) -> Result<LogoutTarget, LogoutTokenError> {
        let loaded = self.inner.loaded.load_full().ok_or_else(|| {
            LogoutTokenError::Invalid("the identity provider is not loaded yet".into())
        })?;
        logout_token::verify(
            &loaded.keys,
            &self.inner.seen_jtis,
            token,
            self.inner.settings.leeway,
            now,
        )
    }

    fn verify_bearer(&self, token: &str, _now: u64) -> Bearer {
        match self.inner.loaded.load().as_ref() {
            Some(loaded) => loaded.keys.verify(token),
            None => Bearer::Invalid("the identity provider is not loaded yet".into()),
        }
    }

    async fn reload_keys(&self) {
        let mut last = self.inner.last_key_reload.lock().await;
        if last.is_some_and(|t| t.elapsed() < MIN_KEY_RELOAD_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        let Ok(current) = self.loaded() else { return };
        match discovery::reload_keys(
            &self.inner.settings,
            &self.inner.http,
            &current,
            &self.inner.redirect_uri,
        )
        .await
        {
            Ok(loaded) => {
                tracing::info!(
                    keys = loaded.keys.len(),
                    "signing keys reloaded after an unknown key id"
                );
                self.inner.loaded.store(Some(Arc::new(loaded)));
                super::keys_changed();
            }
            Err(e) => tracing::warn!(error = %e, "signing key reload failed"),
        }
    }

    fn logout_url(
        &self,
        session: &Session,
        post_logout_redirect: &str,
        state: &str,
    ) -> Option<String> {
        let loaded = self.inner.loaded.load_full()?;
        let endpoint = EndSessionUrl::new(loaded.end_session.clone()?).ok()?;
        let mut request = LogoutRequest::from(endpoint)
            .set_client_id(ClientId::new(self.inner.settings.client_id.clone()))
            .set_state(CsrfToken::new(state.to_string()));
        if let Ok(redirect) = PostLogoutRedirectUrl::new(post_logout_redirect.to_string()) {
            request = request.set_post_logout_redirect_uri(redirect);
        }
        if let Some(hint) = session
            .id_token
            .as_ref()
            .and_then(|t| t.expose().parse::<CoreIdToken>().ok())
        {
            request = request.set_id_token_hint(&hint);
        }
        Some(request.http_get_url().to_string())
    }
}

/// Discovers the provider once (for `ssogate check-config`) and reports
/// what its document, keys and clock say about the configuration.
pub async fn check(
    settings: &Settings,
    redirect_uri: &str,
) -> Result<Vec<doctor::Finding>, ProviderError> {
    let http = http::Http::new(settings.ca_pem.as_deref())?;
    let loaded = discovery::discover(settings, &http, redirect_uri).await?;
    // Once more as served: for members openidconnect does not model, and
    // for the provider's clock.
    let (doc, skew) = match http.get_dated(&discovery::document_url(settings)).await {
        Ok((_, date, body)) => (
            serde_json::from_slice(&body).unwrap_or_default(),
            date.map(seconds_ahead),
        ),
        Err(_) => (serde_json::Value::Null, None),
    };
    Ok(doctor::findings(settings, &loaded, &doc, skew))
}

/// How far `then` is ahead of this machine's clock, in seconds.
fn seconds_ahead(then: std::time::SystemTime) -> i64 {
    let now = std::time::SystemTime::now();
    match then.duration_since(now) {
        Ok(ahead) => i64::try_from(ahead.as_secs()).unwrap_or(i64::MAX),
        Err(behind) => -i64::try_from(behind.duration().as_secs()).unwrap_or(i64::MAX),
    }
}
