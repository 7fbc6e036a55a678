//! `GET /sso/userinfo`: the signed-in user as JSON; 401 without a session.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::respond::{self, Body};
use crate::router::{State, bearer_token, verify_bearer};

pub async fn userinfo(state: &State, req: &Request<Incoming>) -> Response<Body> {
    let now = crate::clock::now();
    let from_session = state
        .store
        .load(req.headers())
        .filter(|s| s.expires_at > now && state.registry.get(&s.option).is_some())
        .map(|s| (s.identity, s.expires_at));
    let found = match from_session {
        Some(found) => Some(found),
        None => match bearer_token(req.headers()) {
            Some(token) => verify_bearer(&state.registry, token, now).await,
            None => None,
        },
    };
    match found {
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
    }
}
