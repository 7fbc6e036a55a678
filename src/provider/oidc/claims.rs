//! What an ID token must prove before it becomes a session (OpenID Connect
//! Core 3.1.3.7): signature by a published asymmetric key, `iss`, `aud`,
//! `azp`, `exp` and `iat` within the leeway, `nonce`, and `at_hash` when present.
//! Reasons returned here name the failed check, never the token.

use chrono::Utc;
use openidconnect::core::{CoreErrorResponseType, CoreTokenResponse, CoreUserInfoClaims};
use openidconnect::{
    AccessToken, AccessTokenHash, ClaimsVerificationError, Nonce, OAuth2TokenResponse as _,
    RequestTokenError, SignatureVerificationError, StandardErrorResponse, SubjectIdentifier,
    TokenResponse as _, UserInfoError,
};

use super::Settings;
use super::discovery::Loaded;
use super::http::HttpError;
use super::quirks::{self, Extra};
use crate::identity::Identity;
use crate::provider::{ProviderError, SignedIn};

/// The reason given when no published key matches the token's `kid`.
pub const UNKNOWN_KEY: &str = "signed with an unknown key";

/// Maps a token-endpoint failure to what the user and operator should see.
pub fn token_error(
    e: RequestTokenError<HttpError, StandardErrorResponse<CoreErrorResponseType>>,
) -> ProviderError {
    match e {
        RequestTokenError::ServerResponse(r) => match r.error() {
            CoreErrorResponseType::InvalidGrant => ProviderError::InvalidGrant,
            other => ProviderError::Denied(format!("token endpoint error {}", other.as_ref())),
        },
        RequestTokenError::Request(HttpError::TooLarge) => ProviderError::BadResponse(format!(
            "the token endpoint's answer is larger than {} KiB",
            super::http::MAX_BODY / 1024
        )),
        RequestTokenError::Request(e) => ProviderError::Unreachable(e.to_string()),
        // `Other` is what oauth2 reports for a 200 that is not JSON.
        RequestTokenError::Parse(_, _) | RequestTokenError::Other(_) => ProviderError::BadResponse(
            "the token endpoint did not answer a JSON token response".into(),
        ),
    }
}

/// Reads claims openidconnect does not model from an already verified token.
pub fn extra_claims(compact: &str) -> Extra {
    use base64::Engine as _;
    compact
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|json| serde_json::from_slice(&json).ok())
        .unwrap_or_default()
}

fn describe(e: &ClaimsVerificationError) -> String {
    use ClaimsVerificationError as C;
    use SignatureVerificationError as S;
    match e {
        C::Expired(m) if m.contains("future") => "issued in the future",
        C::Expired(_) => "expired",
        C::InvalidAudience(_) => "wrong audience",
        C::InvalidIssuer(_) => "wrong issuer",
        C::InvalidNonce(_) => "nonce missing or mismatched",
        C::InvalidSubject(_) => "wrong subject",
        C::SignatureVerification(S::NoMatchingKey) => UNKNOWN_KEY,
        C::SignatureVerification(S::DisallowedAlg(_) | S::UnsupportedAlg(_)) => {
            "signature algorithm not accepted"
        }
        C::SignatureVerification(S::NoSignature) => "unsigned token",
        C::SignatureVerification(S::AmbiguousKeyId(_)) => "no key id and several matching keys",
        C::SignatureVerification(_) => "bad signature",
        C::Unsupported(_) => "unsupported (encrypted) token",
        _ => "invalid claims",
    }
    .to_string()
}

/// Validates the ID token of a code exchange (with its nonce) or of a
/// refresh (`nonce` `None`) and reads the identity from it.
pub fn validate(
    settings: &Settings,
    loaded: &Loaded,
    response: &CoreTokenResponse,
    nonce: Option<&str>,
) -> Result<SignedIn, ProviderError> {
    let id_token = response
        .id_token()
        .ok_or_else(|| ProviderError::BadResponse("the token response holds no id_token".into()))?;
    let leeway = chrono::Duration::from_std(settings.leeway).unwrap_or_default();
    // An Entra multi-tenant issuer is a template: openidconnect cannot
    // compare it, so `iss` is checked below against the template filled
    // with the token's `tid`.
    let verifier = loaded
        .client
        .id_token_verifier()
        .require_issuer_match(!loaded.issuer.is_template())
        .set_allowed_algs(loaded.algorithms.clone())
        .set_time_fn(move || Utc::now() - leeway)
        .set_issue_time_verifier_fn(move |iat| {
            if iat > Utc::now() + leeway {
                Err("issued in the future".to_string())
            } else {
                Ok(())
            }
        });
    // A sign-in checks the nonce it sent; a refresh sent none (the new ID
    // token may repeat the original nonce or carry none).
    let claims = match nonce {
        Some(nonce) => id_token.claims(&verifier, &Nonce::new(nonce.to_string())),
        None => id_token.claims(&verifier, |_: Option<&Nonce>| Ok(())),
    }
    .map_err(|e| ProviderError::InvalidToken(describe(&e)))?;
    if let Some(azp) = claims.authorized_party() {
        if azp.as_str() != settings.client_id {
            return Err(ProviderError::InvalidToken("azp is not this client".into()));
        }
    } else if claims.audiences().len() > 1 {
        return Err(ProviderError::InvalidToken(
            "several audiences but no azp".into(),
        ));
    }
    if let Some(expected) = claims.access_token_hash() {
        let bad = || ProviderError::InvalidToken("at_hash does not match the access token".into());
        let alg = id_token.signing_alg().map_err(|_| bad())?;
        let key = id_token.signing_key(&verifier).map_err(|_| bad())?;
        let actual =
            AccessTokenHash::from_token(response.access_token(), alg, key).map_err(|_| bad())?;
        if actual != *expected {
            return Err(bad());
        }
    }
    let compact = id_token.to_string();
    let extra = extra_claims(&compact);
    if !loaded
        .issuer
        .accepts(claims.issuer().as_str(), extra.tid.as_deref())
    {
        return Err(ProviderError::InvalidToken("wrong issuer".into()));
    }
    if !quirks::tenant_allowed(&settings.allowed_tenants, extra.tid.as_deref()) {
        return Err(ProviderError::InvalidToken(
            "the user's tenant is not allowed (CT_SSO_ALLOWED_TENANTS)".into(),
        ));
    }
    Ok(SignedIn {
        identity: Identity {
            sub: claims.subject().as_str().to_string(),
            email: claims.email().map(|e| e.as_str().to_string()),
            name: claims
                .name()
                .and_then(|n| n.get(None))
                .map(|n| n.as_str().to_string()),
            preferred_username: claims.preferred_username().map(|u| u.as_str().to_string()),
        },
        sid: extra.sid,
        expires_at: session_expiry(claims.expiration().timestamp(), settings.leeway),
        refresh_token: None,
        id_token: Some(compact),
    })
}

/// When a session made from a token expiring at `exp` ends: then, or, for
/// a token accepted only thanks to the leeway (its `exp` already past on
/// this clock), when that leeway runs out, so the sign-in it allowed is
/// not a session that is over before it starts.
fn session_expiry(exp: i64, leeway: std::time::Duration) -> u64 {
    let exp = u64::try_from(exp).unwrap_or(0);
    let now = crate::clock::now();
    if exp <= now {
        exp.saturating_add(leeway.as_secs())
    } else {
        exp
    }
}

/// Completes the identity from provider-specific claims of the ID token
/// (after userinfo, whose standard claims win): see [`quirks::fill_identity`].
pub fn apply_quirks(settings: &Settings, signed_in: &mut SignedIn) {
    let Some(token) = signed_in.id_token.as_deref() else {
        return;
    };
    let extra = extra_claims(token);
    quirks::fill_identity(
        &mut signed_in.identity,
        &extra,
        settings.quirks,
        &settings.email_fallback,
    );
}

/// Fills claims the ID token left out from the userinfo endpoint. A `sub`
/// that differs from the ID token's refuses the sign-in; an unreachable or
/// broken endpoint only loses the extra claims.
pub async fn merge_userinfo(
    loaded: &Loaded,
    http: &super::http::Http,
    access_token: &AccessToken,
    signed_in: &mut SignedIn,
) -> Result<(), ProviderError> {
    let sub = SubjectIdentifier::new(signed_in.identity.sub.clone());
    let Ok(request) = loaded.client.user_info(access_token.clone(), Some(sub)) else {
        return Ok(());
    };
    let info: CoreUserInfoClaims = match request.request_async(http).await {
        Ok(info) => info,
        Err(UserInfoError::ClaimsVerification(_)) => {
            return Err(ProviderError::InvalidToken(
                "userinfo sub differs from the ID token's".into(),
            ));
        }
        Err(e) => {
            tracing::warn!(error = %e, "userinfo request failed; signing in with the ID token's claims only");
            return Ok(());
        }
    };
    let id = &mut signed_in.identity;
    id.email = id
        .email
        .take()
        .or_else(|| info.email().map(|e| e.as_str().to_string()));
    id.preferred_username = id
        .preferred_username
        .take()
        .or_else(|| info.preferred_username().map(|u| u.as_str().to_string()));
    id.name = id.name.take().or_else(|| {
        info.name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().to_string())
    });
    Ok(())
}
