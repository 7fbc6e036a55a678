//! `POST /sso/backchannel-logout`: OpenID Connect Back-Channel Logout 1.0.
//! The provider posts a signed logout token; a valid one ends every session
//! it names (by `sid`, else every session of the `sub`) and closes their
//! live connections: 200. Anything else changes nothing: 400 with an OAuth
//! error body.

use crate::request_body::RequestBody;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Limited};

use crate::lifecycle;
use crate::provider::{LogoutTarget, LogoutTokenError};
use crate::respond::{self, Body};
use crate::router::State;
use crate::session::{MAX_COOKIE_AGE_SECS, Revocation};
use crate::telemetry::metrics::Ended;

/// Largest request body read (a logout token is a few KB).
const MAX_BODY: usize = 64 * 1024;

fn refuse(reason: &str) -> Response<Body> {
    tracing::info!(%reason, "back-channel logout refused");
    respond::json(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({ "error": "invalid_request", "error_description": reason }),
    )
}

pub async fn backchannel_logout(state: &State, req: Request<RequestBody>) -> Response<Body> {
    let form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if !form {
        return refuse("expected an application/x-www-form-urlencoded body");
    }
    let Ok(body) = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
    else {
        return refuse("the body could not be read or is too large");
    };
    let Some(token) = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "logout_token")
        .map(|(_, v)| v)
    else {
        return refuse("no logout_token");
    };
    let now = crate::clock::now();
    let mut reason = "no login option accepts logout tokens".to_string();
    for option in state.registry.iter() {
        let mut verdict = option.verify_logout_token(&token, now);
        if verdict == Err(LogoutTokenError::UnknownKey) {
            option.reload_keys().await;
            verdict = option.verify_logout_token(&token, now);
        }
        match verdict {
            Ok(target) => return end_sessions(state, target, now),
            Err(LogoutTokenError::UnknownKey) => reason = "signed with an unknown key".into(),
            Err(LogoutTokenError::Invalid(r)) => reason = r,
        }
    }
    refuse(&reason)
}

fn end_sessions(state: &State, target: LogoutTarget, now: u64) -> Response<Body> {
    // A revocation must outlive every cookie it refuses.
    let until = now.saturating_add(MAX_COOKIE_AGE_SECS);
    let (what, sub) = match (target.sid, target.sub) {
        (Some(sid), sub) => (Revocation::ProviderSession { sid }, sub),
        (None, Some(sub)) => (
            Revocation::Subject {
                sub: sub.clone(),
                before: now,
            },
            Some(sub),
        ),
        (None, None) => return refuse("neither sid nor sub"),
    };
    let closed = lifecycle::end(state, what, until, now);
    state.metrics.session_ended(Ended::Backchannel);
    tracing::info!(
        sub = sub.as_deref().unwrap_or("-"),
        live_sessions_closed = closed,
        "back-channel logout"
    );
    let mut resp = respond::json(StatusCode::OK, &serde_json::json!({}));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
