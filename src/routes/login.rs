//! `GET /sso/login?rd=PATH`: starts a sign-in.

use crate::request_body::RequestBody;
use http::{Request, Response};

use super::{query_param, return_to, with_cookies};
use crate::provider::ProviderError;
use crate::respond::{self, Body, Failure};
use crate::router::State;

pub fn login(state: &State, req: &Request<RequestBody>) -> Response<Body> {
    let html = respond::wants_html(req.headers());
    let now = crate::clock::now();
    let return_to = return_to::sanitize(query_param(req.uri(), "rd").as_deref());
    // Already signed in: nothing to do but land.
    if state
        .store
        .load(req.headers())
        .is_some_and(|s| s.expires_at > now && state.registry.get(&s.option).is_some())
    {
        return respond::redirect(&return_to);
    }
    let Some(option) = state.registry.default_option() else {
        return Failure::NotFound.respond(html);
    };
    let begin = match option.begin(&return_to, now) {
        Ok(b) => b,
        Err(ProviderError::NotReady) => return Failure::ProviderUnavailable.respond(html),
        Err(e) => {
            tracing::error!(error = %e, "cannot start a sign-in");
            return Failure::Internal.respond(html);
        }
    };
    let mut cookies = Vec::new();
    if let Err(e) = state
        .login_states
        .issue(&begin.state, req.headers(), now, &mut cookies)
    {
        tracing::error!(error = %e, "cannot store the sign-in state");
        return Failure::Internal.respond(html);
    }
    with_cookies(respond::redirect(&begin.redirect_to), cookies)
}
