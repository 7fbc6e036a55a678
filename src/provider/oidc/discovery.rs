//! Loading a provider: discovery document (with the issuer check), signing
//! keys, and the clients built from them. What is loaded is immutable and
//! swapped whole ([`Loaded`] behind an `ArcSwap`), so readers never lock.

use std::time::Duration;

use openidconnect::core::{CoreClient, CoreJsonWebKeySet, CoreJwsSigningAlgorithm};
use openidconnect::{
    AuthType, ClientId, ClientSecret, EndpointMaybeSet, EndpointNotSet, EndpointSet,
    JsonWebKeySetUrl, ProviderMetadataWithLogout, RedirectUrl, TokenUrl,
};

use super::Settings;
use super::http::{Http, HttpError};
use super::keys::{KeySet, Trust};
use super::quirks::IssuerRule;
use crate::provider::ProviderError;

/// The client as discovery leaves it: auth URL set, token and userinfo URLs maybe.
pub type DiscoveredClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;
/// The same with the token URL of `CT_SSO_TOKEN_ENDPT`, for refreshes.
pub type RefreshClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
    EndpointMaybeSet,
>;

/// Everything loaded from the provider.
pub struct Loaded {
    pub metadata: ProviderMetadataWithLogout,
    pub client: DiscoveredClient,
    /// Present when `CT_SSO_TOKEN_ENDPT` is set.
    pub refresh_client: Option<RefreshClient>,
    pub keys: KeySet,
    /// How `iss` is checked (exactly, or Entra's multi-tenant template).
    pub issuer: IssuerRule,
    /// Asymmetric algorithms the provider publishes (never `none`, never HS*).
    pub algorithms: Vec<CoreJwsSigningAlgorithm>,
    pub end_session: Option<String>,
    pub has_userinfo: bool,
}

fn asymmetric(alg: &CoreJwsSigningAlgorithm) -> bool {
    use CoreJwsSigningAlgorithm as A;
    matches!(
        alg,
        A::RsaSsaPkcs1V15Sha256
            | A::RsaSsaPkcs1V15Sha384
            | A::RsaSsaPkcs1V15Sha512
            | A::RsaSsaPssSha256
            | A::RsaSsaPssSha384
            | A::RsaSsaPssSha512
            | A::EcdsaP256Sha256
            | A::EcdsaP384Sha384
            | A::EdDsa
    )
}

/// Fetches and checks the discovery document and keys. The document is
/// read here rather than by openidconnect so that its issuer can be checked
/// by [`IssuerRule`] (Entra's multi-tenant template, Auth0's trailing slash)
/// and its size is bounded.
pub async fn discover(
    settings: &Settings,
    http: &Http,
    redirect_uri: &str,
) -> Result<Loaded, ProviderError> {
    let url = document_url(settings);
    let (status, body) = http.get(&url).await.map_err(|e| match e {
        HttpError::TooLarge => ProviderError::BadResponse(format!("discovery: {e}")),
        HttpError::Transport(e) => ProviderError::Unreachable(e),
    })?;
    if !status.is_success() {
        return Err(ProviderError::BadResponse(format!(
            "discovery answered HTTP {status}"
        )));
    }
    let metadata: ProviderMetadataWithLogout = serde_json::from_slice(&body).map_err(|e| {
        ProviderError::BadResponse(format!(
            "the discovery document is not valid OpenID provider metadata ({})",
            serde_error(&e)
        ))
    })?;
    let jwks = fetch_jwks(http, metadata.jwks_uri()).await?;
    build(settings, metadata.set_jwks(jwks), redirect_uri)
}

/// `CT_SSO_AUTHORIZATION_ENDPT/.well-known/openid-configuration`.
pub fn document_url(settings: &Settings) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        settings.issuer_str().trim_end_matches('/')
    )
}

/// Where a JSON document broke, without echoing its content.
fn serde_error(e: &serde_json::Error) -> String {
    format!("line {} column {}", e.line(), e.column())
}

/// Re-reads only the key set (after an unknown `kid`), keeping the rest.
pub async fn reload_keys(
    settings: &Settings,
    http: &Http,
    current: &Loaded,
    redirect_uri: &str,
) -> Result<Loaded, ProviderError> {
    let jwks = fetch_jwks(http, current.metadata.jwks_uri()).await?;
    let metadata = current.metadata.clone().set_jwks(jwks);
    build(settings, metadata, redirect_uri)
}

async fn fetch_jwks(
    http: &Http,
    uri: &JsonWebKeySetUrl,
) -> Result<CoreJsonWebKeySet, ProviderError> {
    http.jwks_fetches.increment(1);
    let (status, body) = http.get(uri.url().as_str()).await.map_err(|e| match e {
        HttpError::TooLarge => ProviderError::BadResponse(format!("jwks_uri: {e}")),
        HttpError::Transport(e) => ProviderError::Unreachable(e),
    })?;
    if !status.is_success() {
        return Err(ProviderError::BadResponse(format!(
            "jwks_uri answered HTTP {status}"
        )));
    }
    serde_json::from_slice(&body)
        .map_err(|_| ProviderError::BadResponse("jwks_uri did not answer a JSON key set".into()))
}

pub(super) fn build(
    settings: &Settings,
    metadata: ProviderMetadataWithLogout,
    redirect_uri: &str,
) -> Result<Loaded, ProviderError> {
    let jwks_json = serde_json::to_value(metadata.jwks())
        .map_err(|e| ProviderError::BadResponse(e.to_string()))?;
    let issuer = IssuerRule::for_discovery(
        &settings.issuer_str(),
        metadata.issuer().as_str(),
        settings.quirks,
    )
    .map_err(ProviderError::BadResponse)?;
    let keys = KeySet::from_jwks(
        &jwks_json,
        Trust {
            issuer: issuer.clone(),
            allowed_tenants: settings.allowed_tenants.clone(),
        },
        &settings.client_id,
        settings.leeway,
    );
    let published = metadata.id_token_signing_alg_values_supported();
    let mut algorithms: Vec<CoreJwsSigningAlgorithm> = published
        .iter()
        .filter(|a| asymmetric(a))
        .cloned()
        .collect();
    if algorithms.is_empty() {
        algorithms.push(CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256);
    }
    let end_session = metadata
        .additional_metadata()
        .end_session_endpoint
        .as_ref()
        .map(|u| u.url().to_string());
    let has_userinfo = metadata.userinfo_endpoint().is_some();
    let auth_type = auth_type(&metadata);
    let client = CoreClient::from_provider_metadata(
        metadata.clone(),
        ClientId::new(settings.client_id.clone()),
        Some(ClientSecret::new(settings.client_secret.expose().clone())),
    )
    .set_redirect_uri(
        RedirectUrl::new(redirect_uri.to_string())
            .map_err(|e| ProviderError::Config(e.to_string()))?,
    )
    .set_auth_type(auth_type);
    let refresh_client = settings.token_endpoint.as_ref().map(|url| {
        client
            .clone()
            .set_token_uri(TokenUrl::from_url(url.clone()))
    });
    Ok(Loaded {
        metadata,
        client,
        refresh_client,
        keys,
        issuer,
        algorithms,
        end_session,
        has_userinfo,
    })
}

/// `client_secret_basic` unless the provider lists only `client_secret_post`.
fn auth_type(metadata: &ProviderMetadataWithLogout) -> AuthType {
    use openidconnect::core::CoreClientAuthMethod as M;
    match metadata.token_endpoint_auth_methods_supported() {
        Some(methods)
            if !methods.contains(&M::ClientSecretBasic)
                && methods.contains(&M::ClientSecretPost) =>
        {
            AuthType::RequestBody
        }
        _ => AuthType::BasicAuth,
    }
}

/// Delay before the next discovery attempt: 1 s doubling to 30 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(5)).min(Duration::from_secs(30))
}
