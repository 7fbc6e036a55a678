//! `GET /sso/userinfo`: the signed-in user as JSON (refreshing the session
//! when due, like any request); 401 without a session.

use std::sync::Arc;

use crate::request_body::RequestBody;
use http::{Request, Response, StatusCode};

use super::with_cookies;
use crate::lifecycle::{self, Checked};
use crate::respond::{self, Body, Failure};
use crate::router::{State, bearer_token, verify_bearer};

pub async fn userinfo(state: &State, req: &Request<RequestBody>) -> Response<Body> {
    let now = crate::clock::now();
    let session = state
        .store
        .load(req.headers())
        .filter(|s| state.registry.get(&s.option).is_some());
    let mut cookies = Vec::new();
    let from_session = match session {
        Some(session) => match lifecycle::check(state, Arc::new(session), req.headers(), now).await
        {
            Checked::Valid {
                session,
                cookies: set,
            } => {
                cookies = set;
                Some((
                    std::sync::Arc::new(session.identity.clone()),
                    session.expires_at,
                ))
            }
            Checked::Ended { cookies: set } => {
                cookies = set;
                None
            }
            Checked::Expired => None,
            Checked::Unavailable => return Failure::ProviderUnavailable.respond(false),
        },
        None => None,
    };
    let found = match from_session {
        Some(found) => Some(found),
        None => match bearer_token(req.headers()) {
            Some(token) => verify_bearer(&state.registry, token, now)
                .await
                .map(|(id, expires_at, _)| (id, expires_at)),
            None => None,
        },
    };
    if let Some((id, _)) = &found {
        crate::telemetry::request_log::record_sub(&id.sub);
    }
    let resp = match found {
        Some((id, expires_at)) => respond::json(
            StatusCode::OK,
            &serde_json::json!({
                "sub": id.sub,
                "email": id.email,
                "name": id.name,
                "preferred_username": id.preferred_username,
                "expires_at": expires_at,
            }),
        ),
        None => respond::unauthorized(false),
    };
    with_cookies(resp, cookies)
}
