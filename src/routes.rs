//! The gate's own routes, all under `/sso/`.

mod backchannel;
mod callback;
mod health;
mod login;
mod logout;
pub mod return_to;
mod userinfo;

use crate::request_body::RequestBody;
use http::{Method, Request, Response};

use crate::respond::{self, Body, Failure};
use crate::router::State;

pub const LOGIN: &str = "/sso/login";
pub const CALLBACK: &str = "/sso/authorization-code/callback";
pub const LOGOUT: &str = "/sso/logout";
pub const BACKCHANNEL_LOGOUT: &str = "/sso/backchannel-logout";
pub const USERINFO: &str = "/sso/userinfo";
pub const HEALTHZ: &str = "/sso/healthz";
pub const READYZ: &str = "/sso/readyz";

pub async fn handle(state: &State, req: Request<RequestBody>) -> Response<Body> {
    let html = respond::wants_html(req.headers());
    let method = req.method();
    let get = method == Method::GET || method == Method::HEAD;
    match req.uri().path() {
        HEALTHZ if get => health::healthz(),
        READYZ if get => health::readyz(state),
        LOGIN if get => login::login(state, &req),
        CALLBACK if get => callback::callback(state, &req).await,
        LOGOUT if get || method == Method::POST => logout::logout(state, &req),
        USERINFO if get => userinfo::userinfo(state, &req).await,
        BACKCHANNEL_LOGOUT if method == Method::POST => {
            backchannel::backchannel_logout(state, req).await
        }
        HEALTHZ | READYZ | LOGIN | CALLBACK | LOGOUT | USERINFO | BACKCHANNEL_LOGOUT => {
            Failure::BadRequest(format!("{method} is not allowed here")).respond(html)
        }
        _ => Failure::NotFound.respond(html),
    }
}

/// A query parameter, decoded; the first one wins.
pub fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    url::form_urlencoded::parse(uri.query()?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Adds `Set-Cookie` values to a response.
pub fn with_cookies(mut resp: Response<Body>, cookies: Vec<http::HeaderValue>) -> Response<Body> {
    for c in cookies {
        resp.headers_mut().append(http::header::SET_COOKIE, c);
    }
    resp
}
