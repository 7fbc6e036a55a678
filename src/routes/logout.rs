//! `GET|POST /sso/logout`: ends the session here, then at the provider.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::with_cookies;
use crate::respond::{self, Body};
use crate::router::State;

pub fn logout(state: &State, req: &Request<Incoming>) -> Response<Body> {
    let session = state.store.load(req.headers());
    let mut cookies = Vec::new();
    state.store.clear(req.headers(), &mut cookies);
    let Some(session) = session else {
        return with_cookies(signed_out(), cookies);
    };
    tracing::info!(sub = %session.identity.sub, option = %session.option, "signed out");
    let provider_logout = state
        .registry
        .get(&session.option)
        .and_then(|o| o.logout_url(&session, &state.config.logout_url()));
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
