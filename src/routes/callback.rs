//! `GET /sso/authorization-code/callback`: finishes a sign-in.

use crate::request_body::RequestBody;
use http::{Request, Response, StatusCode};

use super::{query_param, with_cookies};
use crate::config::Secret;
use crate::provider::{Callback, ProviderError};
use crate::respond::{self, Body, Failure};
use crate::router::State;
use crate::session::{LoginStateError, Session, StoreError, random_id};
use crate::telemetry::metrics::SignInFailure;

/// Keeps what the provider says in an error short and printable.
fn clean(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

fn sign_in_failed(status: StatusCode, reason: impl Into<String>) -> Failure {
    Failure::SignIn {
        status,
        reason: reason.into(),
    }
}

pub async fn callback(state: &State, req: &Request<RequestBody>) -> Response<Body> {
    // The callback is always a browser navigation coming back from the provider.
    let html = true;
    let uri = req.uri();
    let cb = Callback {
        code: query_param(uri, "code"),
        state: query_param(uri, "state"),
        error: query_param(uri, "error"),
        error_description: query_param(uri, "error_description"),
    };
    let now = crate::clock::now();
    let mut cookies = Vec::new();
    let Some(state_param) = cb.state.as_deref().filter(|s| !s.is_empty()) else {
        let reason = match &cb.error {
            Some(e) => format!(
                "The identity provider refused the sign-in ({}).",
                clean(e, 64)
            ),
            None => "The sign-in answer carries no state. Please sign in again.".to_string(),
        };
        state.metrics.sign_in_failed(SignInFailure::State);
        return sign_in_failed(StatusCode::BAD_REQUEST, reason).respond(html);
    };
    let taken = state
        .login_states
        .take(state_param, req.headers(), now, &mut cookies);
    let st = match taken {
        Ok(st) => st,
        Err(e) => {
            tracing::info!(reason = %e, "sign-in callback with an unusable state");
            state.metrics.sign_in_failed(SignInFailure::State);
            let reason = match e {
                LoginStateError::Expired => "The sign-in took too long. Please sign in again.",
                _ => {
                    "This sign-in is not under way in this browser (it may have been completed already). Please sign in again."
                }
            };
            return with_cookies(
                sign_in_failed(StatusCode::BAD_REQUEST, reason).respond(html),
                cookies,
            );
        }
    };
    // Only an answer to a sign-in this browser started is shown as the
    // provider's: anyone can send a link with `error_description` text.
    if let Some(error) = &cb.error {
        let description = cb
            .error_description
            .as_deref()
            .map(|d| format!(": {}", clean(d, 200)))
            .unwrap_or_default();
        tracing::info!(error = %clean(error, 64), "the provider refused the sign-in");
        state.metrics.sign_in_failed(SignInFailure::ProviderRefused);
        let status = if error == "access_denied" {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::BAD_REQUEST
        };
        let reason = format!(
            "The identity provider refused the sign-in ({}{description}).",
            clean(error, 64)
        );
        return with_cookies(sign_in_failed(status, reason).respond(html), cookies);
    }
    let Some(option) = state.registry.get(&st.option) else {
        state.metrics.sign_in_failed(SignInFailure::State);
        return with_cookies(
            sign_in_failed(
                StatusCode::BAD_REQUEST,
                "This sign-in option no longer exists.",
            )
            .respond(html),
            cookies,
        );
    };
    let signed_in = match option.complete(&cb, &st).await {
        Ok(s) => s,
        Err(e) => {
            let failure = match &e {
                ProviderError::InvalidGrant => sign_in_failed(
                    StatusCode::BAD_REQUEST,
                    "The sign-in code was already used or has expired. Please sign in again.",
                ),
                ProviderError::InvalidToken(reason) => sign_in_failed(
                    StatusCode::UNAUTHORIZED,
                    format!("The identity provider's answer failed validation: {reason}."),
                ),
                ProviderError::NotReady | ProviderError::Unreachable(_) => {
                    Failure::ProviderUnavailable
                }
                ProviderError::Denied(m) | ProviderError::BadResponse(m) => {
                    Failure::ProviderError(format!("{m}."))
                }
                ProviderError::Config(_) => Failure::Internal,
            };
            tracing::warn!(option = option.id(), error = %e, "sign-in failed");
            state.metrics.sign_in_failed(match &e {
                ProviderError::InvalidGrant => SignInFailure::InvalidGrant,
                ProviderError::InvalidToken(_) => SignInFailure::InvalidToken,
                ProviderError::NotReady | ProviderError::Unreachable(_) => {
                    SignInFailure::Unreachable
                }
                ProviderError::Denied(_) | ProviderError::BadResponse(_) => {
                    SignInFailure::BadResponse
                }
                ProviderError::Config(_) => SignInFailure::Internal,
            });
            return with_cookies(failure.respond(html), cookies);
        }
    };
    let mut session = Session {
        id: random_id(),
        option: st.option.clone(),
        identity: signed_in.identity,
        sid: signed_in.sid,
        created_at: now,
        issued_at: now,
        expires_at: signed_in.expires_at,
        // Kept only where it can be used: without CT_SSO_TOKEN_ENDPT it would
        // just make the cookie larger and live longer.
        refresh_token: signed_in
            .refresh_token
            .filter(|_| option.can_refresh())
            .map(Secret::new),
        id_token: signed_in.id_token.map(Secret::new),
    };
    let saved = match state.store.save(&session, req.headers(), now, &mut cookies) {
        Err(StoreError::TooLarge(size)) => {
            // The ID token is kept only as a logout hint: drop it before giving up.
            tracing::warn!(
                size,
                "session too large for cookies; keeping it without the ID token"
            );
            session.id_token = None;
            state.store.save(&session, req.headers(), now, &mut cookies)
        }
        other => other,
    };
    if let Err(e) = saved {
        tracing::error!(error = %e, "cannot store the session");
        state.metrics.sign_in_failed(SignInFailure::Internal);
        return with_cookies(Failure::Internal.respond(html), cookies);
    }
    crate::telemetry::request_log::record_sub(&session.identity.sub);
    tracing::info!(sub = %session.identity.sub, option = %session.option, "signed in");
    state.metrics.sign_ins.increment(1);
    with_cookies(respond::redirect(&st.return_to), cookies)
}
