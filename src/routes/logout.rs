//! `GET|POST /sso/logout`: ends the session here, then at the provider.

use crate::request_body::RequestBody;
use http::{Request, Response, StatusCode};

use super::with_cookies;
use crate::lifecycle;
use crate::respond::{self, Body};
use crate::router::State;
use crate::session::{Revocation, random_id};
use crate::telemetry::metrics::Ended;

pub fn logout(state: &State, req: &Request<RequestBody>) -> Response<Body> {
    let session = state.store.load(req.headers());
    let mut cookies = Vec::new();
    state.store.clear(req.headers(), &mut cookies);
    let Some(session) = session else {
        return with_cookies(signed_out(), cookies);
    };
    crate::telemetry::request_log::record_sub(&session.identity.sub);
    // Sign-out holds: a copy of the cookie replayed later is refused until
    // it would have expired anyway, and live connections close now.
    let now = crate::clock::now();
    let until = now
        .saturating_add(session.cookie_max_age(now))
        .saturating_add(state.grace + 60);
    let closed = lifecycle::end(
        state,
        Revocation::Session {
            id: session.id.clone(),
        },
        until,
        now,
    );
    tracing::info!(sub = %session.identity.sub, option = %session.option, live_sessions_closed = closed, "signed out");
    state.metrics.session_ended(Ended::SignOut);
    let provider_logout = state
        .registry
        .get(&session.option)
        .and_then(|o| o.logout_url(&session, &state.config.logout_url(), &random_id()));
    match provider_logout {
        Some(url) => with_cookies(respond::redirect(&url), cookies),
        None => with_cookies(signed_out(), cookies),
    }
}

fn signed_out() -> Response<Body> {
    respond::page(
        StatusCode::OK,
        "Signed out",
        "You are signed out.",
        Some(("Sign in again", "/sso/login")),
    )
}
